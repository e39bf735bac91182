"""The Z3 proofs of the shipped spec and of the bug zoo for one test session (conftest's
``z3_proofs``): ``prove_all`` once per spec, when a test first asks for it.

The zoo's full runs (counterexamples included) are most of the Z3 tests' time - about 90 s
of CPU on the 2-core CI machine, half of it two variants' 9-step lasso searches - and the
test run itself uses one core. So a second process (``spawn``: a fresh interpreter, nothing
inherited) proves variants - the slowest first, then from the end of :data:`VARIANTS` -
while the tests go on, and the session proves the others itself, in the order the tests
ask for them (and, while it waits for one the other process is proving, the next one nobody
took). A shared flag per variant says who took it, so no variant is proved twice; if the
other process fails, the session proves the variant itself. A verdict does not depend on
the process that reached it (no wall-clock budget anywhere, fixed seeds;
``test_z3_determinism`` proves variants alone in this process and compares). Results come
back pickled, a strengthening's lemmas by name (their definitions are functions).
"""

from __future__ import annotations

import copyreg
import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Iterator, Mapping
from multiprocessing.process import BaseProcess
from typing import Any

from autoconverge.proofs.prove import ProofResult, prove_all
from autoconverge.proofs.z3_lemmas import LEMMAS, Lemma
from autoconverge.proofs.z3_safety import SafetyProver
from autoconverge.spec import SPEC, Spec
from autoconverge.spec.variants import VARIANTS, variant

Proofs = tuple[Spec, dict[str, ProofResult]]


def lemma_by_name(name: str) -> Lemma:
    """A lemma of :data:`LEMMAS`, or a property of the shipped spec as its own lemma (the
    variants share the shipped spec's properties)."""
    for lem in LEMMAS:
        if lem.name == name:
            return lem
    return SafetyProver(SPEC).property_lemma(name)


def _reduce_lemma(lem: Lemma) -> tuple[Any, tuple[str]]:
    return lemma_by_name, (lem.name,)


SLOWEST: tuple[str, ...] = ("two_step_update",)
"""The variant whose proofs take longest (measured: a third of the zoo's time, its 9-step
lasso search that finds nothing): the other process starts with it, so that neither process
waits for it at the end. Only a hint for sharing the work: nothing else depends on it."""


def _prove_variants(names: tuple[str, ...], taken: Any, results: Any) -> None:
    """The other process: every variant not yet taken - the slowest first, then from the
    last - sent back pickled (or the error's text)."""
    copyreg.pickle(Lemma, _reduce_lemma)
    order = [names.index(n) for n in SLOWEST if n in names]
    for i in [*order, *(j for j in reversed(range(len(names))) if j not in order)]:
        with taken.get_lock():
            if taken[i]:
                continue
            taken[i] = 1
        try:
            proofs = prove_all(variant(names[i]).build(SPEC))
            results.put((names[i], pickle.dumps(proofs)))
        except Exception:
            results.put((names[i], traceback.format_exc()))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class SessionProofs(Mapping[str, Proofs]):
    """``{spec name: (spec, {property: ProofResult})}`` for the shipped spec and every
    variant, each ``prove_all`` run once, on first access (or by the other process)."""

    def __init__(self, explored: Mapping[str, Any], *, background: bool = True) -> None:
        self._specs = {SPEC.name: SPEC, **{v.name: v.build(SPEC) for v in VARIANTS}}
        self._zoo = tuple(v.name for v in VARIANTS)
        self._explored = explored
        self._done: dict[str, Proofs] = {}
        self._received: dict[str, bytes | str] = {}
        self._proc: BaseProcess | None = None
        if background and _cores() > 1:
            ctx = mp.get_context("spawn")
            self._taken = ctx.Array("b", len(self._zoo))
            self._results = ctx.Queue()
            self._proc = ctx.Process(target=_prove_variants, name="z3-zoo-proofs",
                                     args=(self._zoo, self._taken, self._results),
                                     daemon=True)
            self._proc.start()

    def close(self) -> None:
        """Stop the other process (at the end of the session, done or not)."""
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join()
            self._proc = None

    def __getitem__(self, name: str) -> Proofs:
        if name not in self._specs:
            raise KeyError(name)
        if name not in self._done:
            proofs = self._from_other_process(name)
            if proofs is None:
                self._prove_here(name)
            else:
                self._done[name] = (self._specs[name], {r.name: r for r in proofs})
        return self._done[name]

    def _prove_here(self, name: str) -> None:
        spec = self._specs[name]
        explored = self._explored.get(name)
        self._done[name] = (spec, {r.name: r for r in prove_all(spec, explored=explored)})

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def _take(self, name: str) -> bool:
        """Take ``name`` for this process, unless the other one took it already."""
        i = self._zoo.index(name)
        with self._taken.get_lock():
            if self._taken[i]:
                return False
            self._taken[i] = 1
            return True

    def _from_other_process(self, name: str) -> list[ProofResult] | None:
        """The other process's proofs of ``name``: None if it is not running, did not take
        ``name`` (now taken here), or failed on it."""
        if self._proc is None or name not in self._zoo:
            return None
        if self._take(name):
            return None
        while name not in self._received:
            try:
                other, payload = self._results.get(timeout=1.0)
            except queue.Empty:
                if self._proc.is_alive():
                    # meanwhile, prove a variant nobody took yet (the next test's, likely)
                    spare = next((n for n in self._zoo if self._take(n)), None)
                    if spare is not None:
                        self._prove_here(spare)
                    continue
                try:  # it exited: what it sent last may still be in the pipe
                    other, payload = self._results.get(timeout=1.0)
                except queue.Empty:
                    return None
            self._received[other] = payload
        payload = self._received.pop(name)
        if isinstance(payload, str):  # its error: proving here raises it again, in place
            return None
        proofs: list[ProofResult] = pickle.loads(payload)
        return proofs
