"""Shared test configuration: Hypothesis profiles, the KVM marker's skip rule, and the Z3
proofs of the shipped spec and the bug zoo with the explorer's results for the zoo (each
computed once per session, when first needed, and shared by the Z3 tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest

try:
    from autoconverge.model.hypothesis_profiles import register_profiles
except ImportError:  # pragma: no cover - model/ not installed yet
    register_profiles = None

if register_profiles is not None:
    register_profiles()


def _kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm is absent on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is present but not readable and writable by this user"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ok, why = _kvm_usable()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"KVM test skipped: {why}")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


class LazyByName(Mapping[str, Any]):
    """A read-only mapping computed entry by entry, on first access (then kept)."""

    def __init__(self, names: Iterable[str], compute: Callable[[str], Any]) -> None:
        self._names = tuple(names)
        self._compute = compute
        self._done: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._done:
            self._done[name] = self._compute(name)
        return self._done[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


@pytest.fixture(scope="session")
def zoo_explored() -> Mapping[str, Any]:
    """The explorer's result (its ``[ci]`` bound) for every bug-zoo variant, by name; each
    explored once per session, when first needed (shared by the Z3 proofs below, whose
    counterexamples beyond Z3's depth are the explorer's, and by the Z3 tests)."""
    from autoconverge.model.explorer import explore
    from autoconverge.spec import SPEC
    from autoconverge.spec.variants import VARIANTS, variant

    return LazyByName((v.name for v in VARIANTS),
                      lambda name: explore(variant(name).build(SPEC)))


@pytest.fixture(scope="session")
def z3_proofs(zoo_explored: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """``prove_all`` of the shipped spec and of every bug-zoo variant, by spec name:
    ``(spec, {property name: ProofResult})``. One full run per spec and session, when a test
    first asks for it, part of the zoo in a second process meanwhile (``tests/z3_zoo.py``);
    a variant proved here reuses its exploration (``zoo_explored``)."""
    from z3_zoo import SessionProofs

    proofs = SessionProofs(zoo_explored)
    yield proofs
    proofs.close()


class Z3SolverLog:
    """Every parameter set on every Z3 solver, and which solvers were checked."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, object]] = {}
        self.checked: list[int] = []

    def assert_limited(self, seed: int) -> None:
        """Some solver was checked, and each checked one had an rlimit and the fixed seeds,
        no timeout."""
        assert self.checked
        for sid in set(self.checked):
            p = self.params.get(sid, {})
            assert "timeout" not in p, p
            rlimit = p.get("rlimit")
            assert isinstance(rlimit, int) and rlimit > 0, p
            assert p.get("random_seed") == seed and p.get("smt.random_seed") == seed, p


@pytest.fixture
def z3_solver_log(monkeypatch: pytest.MonkeyPatch) -> Z3SolverLog:
    """Records the parameters of every Z3 solver created while the test runs."""
    import z3

    log = Z3SolverLog()
    set_orig, check_orig = z3.Solver.set, z3.Solver.check

    def set_(self: z3.Solver, *args: Any, **kw: Any) -> None:
        log.params.setdefault(id(self), {})[str(args[0])] = args[1]
        set_orig(self, *args, **kw)

    def check(self: z3.Solver, *args: Any) -> z3.CheckSatResult:
        log.checked.append(id(self))
        return check_orig(self, *args)

    monkeypatch.setattr(z3.Solver, "set", set_)
    monkeypatch.setattr(z3.Solver, "check", check)
    return log


@pytest.fixture
def realtime_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCHED_FIFO refused, as for a user without CAP_SYS_NICE (other policies still set)."""
    from autoconverge.impl.sched import RESET_ON_FORK

    real = os.sched_setscheduler

    def refuse(pid: int, policy: int, param: os.sched_param) -> None:
        if policy & ~RESET_ON_FORK == os.SCHED_FIFO:  # the boost adds the flag
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
