"""Both cores for the Z3 part of ``autoconverge verify``: the proofs and vacuity checks of
one or more specs, spread over worker processes, gathered in the order of a sequential run.

The work is cut into units: one per property (its proof, :func:`.prove.prove_property`,
Spacer and the counterexample search included, then the satisfiability of its obligations'
hypotheses, :func:`.prove.hypotheses_check`, asked of the same provers), one per spec (the
reachability of every antecedent, :func:`.prove.reachability_checks`) and one per lemma of
the throttle's strengthenings (:func:`.prove.prove_lemma`: most of the throttle's work,
shared by its properties). A pool of ``workers`` forked processes takes the units one at a
time, the longest kinds first, in two stages: the lemmas (with every unit that does not
need them), then the properties that rest on them, in workers forked after the lemmas'
verdicts were installed here; each worker keeps one :class:`.prove.Provers` per spec for
every unit it runs. The specs and the explorer's results reach the workers by the
fork (what is pickled to a worker is a unit's name); each unit's result comes back as JSON-ready
data (:meth:`ProofResult.as_dict`) and :class:`.results.VacuityCheck` records, and is put in
its place: the report's order does not depend on which worker ran what, or when.

Verdicts are those of one process: every obligation is decided under its own resource limit
with fixed seeds (:func:`.z3_obligations.limited`), whatever ran before it in the process
that asked it, so a property's verdict is the same whichever worker proves it
(``tests/test_z3_parallel.py`` compares a two-worker run with a one-process run). What may
differ is what no verdict rests on: the invariant Spacer prints (its search depends on the
process's history; it is re-checked either way) and the timing proof's witnesses.
``workers`` 1 runs the same units in this process, in the same order.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoconverge.spec import Spec

from .prove import (
    Provers,
    hypotheses_check,
    prove_lemma,
    prove_property,
    reachability_checks,
    shared_lemmas,
)
from .results import VacuityCheck
from .z3_obligations import RLIMIT

if TYPE_CHECKING:
    from autoconverge.model.results import ExplorationResult

__all__ = ["SpecProofs", "default_workers", "prove_and_check"]

Unit = tuple[str, int, str]
"""(``reach``, ``lemma`` or ``prove``; the spec's index in the job; the lemma's or the
property's name, or "")."""


@dataclass(frozen=True)
class SpecProofs:
    """One spec's Z3 results, in the spec's order."""

    proofs: list[dict[str, Any]]
    """Each property's :meth:`ProofResult.as_dict` (its ``holds`` included)."""
    vacuity: list[VacuityCheck]
    """Every property's hypotheses check, then every property's reachability check (the
    order of :func:`.prove.check_vacuity`)."""

    @property
    def vacuity_holds(self) -> bool:
        return all(v.holds for v in self.vacuity)


def default_workers() -> int:
    """The processes to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# The job being run: set before the workers are forked (they inherit it), cleared after.
_JOB: list[tuple[Spec, ExplorationResult | None]] = []
_RLIMIT: list[int] = [RLIMIT]
_PROVERS: dict[int, Provers] = {}
"""This process's provers, by the spec's index in the job (built on the first unit)."""


def _provers(index: int) -> Provers:
    if index not in _PROVERS:
        spec, explored = _JOB[index]
        _PROVERS[index] = Provers(spec, _RLIMIT[0], explored)
    return _PROVERS[index]


def _run(unit: Unit) -> Any:
    kind, index, name = unit
    provers = _provers(index)
    if kind == "reach":
        return reachability_checks(provers)
    if kind == "lemma":
        return prove_lemma(provers, name)
    result = prove_property(provers, name)
    return result.as_dict(), hypotheses_check(provers, name)


def _stages(job: Sequence[tuple[Spec, ExplorationResult | None]]
            ) -> tuple[list[Unit], list[Unit]]:
    """The units of the two stages, the longest kinds first in each (for the pool; the
    report's order is restored). First the reachability searches, the shared lemmas and
    the properties of every spec without shared lemmas (certificate proofs); then the
    properties whose strengthenings are made of those lemmas."""
    reach: list[Unit] = [("reach", i, "") for i in range(len(job))]
    lemmas: list[Unit] = []
    first_live: list[Unit] = []
    first_rest: list[Unit] = []
    second_live: list[Unit] = []
    second_rest: list[Unit] = []
    for i, (spec, _) in enumerate(job):
        shared = [("lemma", i, lem.name) for lem in shared_lemmas(_provers(i))]
        lemmas.extend(shared)
        live, rest = (second_live, second_rest) if shared else (first_live, first_rest)
        for p in spec.properties:
            (live if p.kind == "leadsto" else rest).append(("prove", i, p.name))
    return reach + first_live + first_rest + lemmas, second_live + second_rest


def _map(units: list[Unit], workers: int) -> dict[Unit, Any]:
    """Each unit's result: on ``workers`` forked processes (they inherit this process's
    job and provers), or here."""
    if workers <= 1 or len(units) <= 1:
        return dict(zip(units, map(_run, units), strict=True))
    ctx = multiprocessing.get_context("fork")  # specs hold functions: not picklable
    # Ctrl-C is this process's to handle: leaving the pool terminates the workers
    with ctx.Pool(min(workers, len(units)), initializer=signal.signal,
                  initargs=(signal.SIGINT, signal.SIG_IGN)) as pool:
        return dict(zip(units, pool.map(_run, units, chunksize=1), strict=True))


def prove_and_check(job: Sequence[tuple[Spec, ExplorationResult | None]], *,
                    workers: int | None = None, rlimit: int = RLIMIT) -> list[SpecProofs]:
    """Prove every property of every spec of ``job`` and check the proofs' vacuity, on
    ``workers`` processes (default :func:`default_workers`; 1: in this process).

    ``job``: each spec with the explorer's result for it at its default bound (the
    certificates of a finite lifecycle, counterexamples beyond Z3's search depth), or None
    (then run when needed).

    Two stages: the reachability searches, the lemmas shared by the throttle's
    strengthenings (:func:`.prove.prove_lemma`) and the certificate-proved properties;
    the lemmas' obligations come back detached from Z3 and are installed in this process's
    provers (:meth:`SafetyProver.install`); then the throttle's properties, in workers
    forked from this process (so they start with every lemma decided)."""
    workers = default_workers() if workers is None else workers
    _JOB[:] = list(job)
    _RLIMIT[0] = rlimit
    _PROVERS.clear()
    try:
        first, second = _stages(job)
        done = _map(first, workers)
        if workers > 1:
            for (kind, i, name), outcomes in done.items():
                if kind == "lemma":
                    safety = _provers(i).safety
                    assert safety is not None
                    safety.install(name, outcomes)
        done.update(_map(second, workers))
    finally:
        _JOB.clear()
        _PROVERS.clear()
    out: list[SpecProofs] = []
    for i, (spec, _) in enumerate(job):
        proofs: list[dict[str, Any]] = []
        hypotheses: list[VacuityCheck] = []
        for p in spec.properties:
            proof, check = done[("prove", i, p.name)]
            proofs.append(proof)
            if check is not None:
                hypotheses.append(check)
        out.append(SpecProofs(proofs, [*hypotheses, *done[("reach", i, "")]]))
    return out
