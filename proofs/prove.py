"""Public API of the Z3 proofs, used by ``autoconverge verify`` and the report.

- :func:`prove_all` - a :class:`.results.ProofResult` per property of a spec (shipped or
  bug-zoo variant): name, kind, method, verdict, every obligation
  (:class:`.z3_obligations.ObligationResult`), time, counterexample if any, Spacer's verdict.
  ``verdict`` is ``proved`` (every obligation discharged, unbounded), ``violated`` (an
  obligation failed and a real counterexample from Init was found and attached) or ``not
  proved`` (an obligation failed or ran out of resources; no counterexample found).
  ``holds`` is true only for ``proved``: ``not proved`` never counts as holding.
- :func:`prove_one` - one property on its own (the same verdict as inside :func:`prove_all`).
- :func:`prove_timing` - the timing arithmetic (``autoconverge.spec.timing``): a
  :class:`.timing_proofs.TimingProof`.
- :func:`check_vacuity` - every obligation's hypotheses satisfiable, every antecedent
  reachable from Init: :class:`.results.VacuityCheck` records.

Each record's ``as_dict()`` is its JSON form (``autoconverge verify --json``).

Methods: ``induction`` (hand-written strengthening, :mod:`z3_safety`), ``induction+spacer``
(plus Spacer finding its own invariant, re-checked), ``ranking`` (:mod:`z3_liveness`).

Counterexamples, and determinism. When a proof fails, Z3 searches from Init for a real
violation: BMC for safety (``counterexample_source`` ``z3-bmc``), a fair lasso for liveness
(``z3-lasso``), as deep as the bug zoo's longest counterexample (:data:`.z3_bmc.BMC_DEPTH`,
read from :mod:`autoconverge.spec.variants`). If that search ends without one, the explorer's
shortest counterexample at its bound (``model/explorer.toml``, ``[ci]``), if it has one, is
replayed through the Z3 encoding (:func:`.z3_bmc.confirm`) and, confirmed, makes the verdict
``violated`` (``explorer-replay``); else it stays ``not proved``. No Z3 check has a
wall-clock timeout: each runs under a resource limit with fixed seeds (``rlimit``, ``seed``
in every result), so the verdict of a property depends only on the spec and the bound - the
same in a full run as on its own (:func:`prove_one`), on a loaded machine as on an idle one.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import z3

from autoconverge.spec import Spec, State, Transition, terminal

from .encoding import Encoding, as_bool, fmt_expr
from .results import (
    NOT_PROVED,
    PROVED,
    VIOLATED,
    InductionAttempt,
    ProofResult,
    ReachTarget,
    VacuityCheck,
)
from .timing_proofs import TimingProof, prove_timing
from .z3_bmc import (
    BMC_DEPTH,
    LASSO_DEPTH,
    SEARCH_RLIMIT,
    Unrolling,
    confirm,
    format_trace,
    reach_many,
)
from .z3_liveness import PLANS, LivenessProver
from .z3_obligations import RLIMIT, SEED, Outcome, satisfiable
from .z3_safety import SafetyProver
from .z3_spacer import SPACER_RLIMIT, SpacerResult, spacer

if TYPE_CHECKING:
    from autoconverge.model.results import ExplorationResult

SPACER_PROPERTIES: tuple[str, ...] = (
    "PercentInRange", "PausedOnlyInPausePhase", "HandoverKeepsVcpusPaused",
    "PauseResumeAlternate",
)
"""Safety properties also given to Spacer (their invariants are quantifier-free). Not
ReturnsOnlyAfterJoin since the spec models callers, timeouts and calls in progress (issue
15): in the shipped spec Spacer needs 3 to 6 M of its 10 M resource limit for it (too close
to call its verdict stable), and in four bug-zoo variants it ends "unknown" at the limit
(4 s each spent for nothing), while the named lemmas prove it by induction."""
VACUITY_DEPTH = 8
"""Steps from Init within which every antecedent must be reachable."""

__all__ = [
    "ProofResult",
    "Provers",
    "TimingProof",
    "VacuityCheck",
    "check_vacuity",
    "format_proof",
    "prove_all",
    "prove_one",
    "prove_property",
    "prove_timing",
    "z3_search_limits",
]


def z3_search_limits() -> dict[str, Any]:
    """The limits every Z3 proof runs under, JSON-ready (``autoconverge verify``): the
    counterexample search depths and where they come from, the resource limits, the seed."""
    return {
        "bmc_depth": BMC_DEPTH, "lasso_depth": LASSO_DEPTH,
        "depth_from": "the bug zoo's longest counterexample (max max_trace, spec/variants.py)",
        "rlimit": RLIMIT, "search_rlimit": SEARCH_RLIMIT, "spacer_rlimit": SPACER_RLIMIT,
        "seed": SEED, "beyond_depth": "explorer-replay",
    }


class Provers:
    """The provers of one spec (obligations cached across its properties) and, on demand,
    the explorer's result for it (counterexamples beyond Z3's search depth)."""

    def __init__(self, spec: Spec, rlimit: int = RLIMIT,
                 explored: ExplorationResult | None = None) -> None:
        self.safety = SafetyProver(spec, rlimit)
        self.liveness = LivenessProver(self.safety)
        self._explored = explored

    def explored(self) -> ExplorationResult:
        """The explorer's verdicts on the spec at the ``[ci]`` bound (run once, if needed)."""
        if self._explored is None:
            from autoconverge.model.explorer import explore, load_config

            self._explored = explore(self.safety.spec, load_config())
        return self._explored


def prove_property(provers: Provers, name: str, *, use_spacer: bool = True,
                   counterexamples: bool = True) -> ProofResult:
    """One property's proof, with a counterexample when it fails and one can be found."""
    result = _prove(provers, name, use_spacer, counterexamples)
    if counterexamples and result.verdict == NOT_PROVED:
        return _explorer_replay(provers, result)
    return result


def _prove(provers: Provers, name: str, use_spacer: bool, counterexamples: bool
           ) -> ProofResult:
    spec = provers.safety.spec
    prop = spec.property(name)
    if prop.kind == "leadsto":
        if name not in PLANS:
            return ProofResult(name, prop.kind, "ranking", NOT_PROVED, (), 0.0,
                               prop.statement, prop.formula,
                               note="no ranking function written for this property",
                               bmc_depth=LASSO_DEPTH, rlimit=provers.safety.rlimit, seed=SEED)
        return provers.liveness.prove(name, counterexample=counterexamples)
    result = provers.safety.prove(name)
    if use_spacer and name in SPACER_PROPERTIES and result.verdict != VIOLATED:
        return _with_spacer(result, spacer(spec, name, enc=provers.safety.enc))
    return result


def _explorer_replay(provers: Provers, result: ProofResult) -> ProofResult:
    """``not proved`` by Z3: the explorer's shortest counterexample, if it has one and it
    replays through the Z3 encoding, makes the verdict ``violated``."""
    t0 = time.perf_counter()
    found = next((p for p in provers.explored().properties if p.name == result.name), None)
    before = f"{result.note}; " if result.note else ""
    if found is None or found.counterexample is None:
        what = "not checked by" if found is None else "no counterexample from"
        return dataclasses.replace(
            result, time_s=round(result.time_s + time.perf_counter() - t0, 4),
            note=before + f"{what} the explorer at its bound [{_bound(provers)}] either")
    cex = dict(found.counterexample)
    cex["text"] = format_trace(cex)
    prop = provers.safety.spec.property(result.name)
    ok = confirm(provers.safety.enc, prop, cex, provers.safety.rlimit)
    dt = time.perf_counter() - t0
    if not ok:
        return dataclasses.replace(
            result, time_s=round(result.time_s + dt, 4),
            note=before + "the explorer's counterexample does NOT replay through the Z3 "
                 "encoding: the checkers disagree")
    return dataclasses.replace(
        result, verdict=VIOLATED, counterexample=cex, counterexample_source="explorer-replay",
        time_s=round(result.time_s + dt, 4),
        note=before + f"the explorer's shortest counterexample ({cex['length']} steps, bound "
                      f"[{_bound(provers)}]) replayed through the Z3 encoding: a real "
                      "behaviour that violates the property")


def _bound(provers: Provers) -> str:
    """The explorer bound's name (its ``explorer.toml`` section)."""
    return provers.explored().stats.config.section


def _with_spacer(result: ProofResult, sp: SpacerResult) -> ProofResult:
    """Merge Spacer's verdict: a second, independent method for the same property."""
    merged = dataclasses.replace(result, spacer=sp, time_s=round(result.time_s + sp.time_s, 4))
    if result.holds:
        merged = dataclasses.replace(merged, method="induction+spacer")
        if sp.verdict == VIOLATED:  # an engine is wrong: never hide the disagreement
            return dataclasses.replace(
                merged, verdict=NOT_PROVED,
                note="Spacer found a counterexample the induction proof missed")
        return merged
    if sp.holds:
        # the hand-written strengthening is not inductive here, but Spacer found (and the
        # plain solver re-checked) another inductive invariant: the property is proved
        assert sp.obligations is not None
        return dataclasses.replace(
            merged, verdict=PROVED, method="spacer", obligations=sp.obligations,
            induction_attempt=InductionAttempt(result.verdict, result.obligations),
            note="the hand-written strengthening is not inductive in this spec; "
                 "Spacer's invariant (re-checked) proves the property")
    if sp.verdict == VIOLATED:
        before = f"{result.note}; " if result.note else ""
        return dataclasses.replace(
            merged, note=before + "Spacer: a counterexample is reachable (the Horn clauses "
                                  "are unsat)")
    return merged


def prove_all(spec: Spec, *, use_spacer: bool = True, counterexamples: bool = True,
              rlimit: int = RLIMIT, explored: ExplorationResult | None = None
              ) -> list[ProofResult]:
    """Prove every property of ``spec``; one result per property.

    ``explored``: the explorer's result for ``spec`` at the ``[ci]`` bound, if already at
    hand (else it is run when a property ends ``not proved``)."""
    provers = Provers(spec, rlimit, explored)
    return [prove_property(provers, p.name, use_spacer=use_spacer,
                           counterexamples=counterexamples)
            for p in spec.properties]


def prove_one(spec: Spec, name: str, *, use_spacer: bool = True, counterexamples: bool = True,
              rlimit: int = RLIMIT, explored: ExplorationResult | None = None) -> ProofResult:
    """Prove the property ``name`` of ``spec`` on its own (fresh provers)."""
    return prove_property(Provers(spec, rlimit, explored), name, use_spacer=use_spacer,
                          counterexamples=counterexamples)


# --- vacuity ---------------------------------------------------------------------------------


def _antecedents(e: z3.BoolRef) -> list[z3.BoolRef]:
    """The left-hand sides of the implications a formula is a conjunction of."""
    if z3.is_and(e):
        return [a for i in range(e.num_args()) for a in _antecedents(e.arg(i))]
    if z3.is_app_of(e, z3.Z3_OP_IMPLIES):
        return [e.arg(0)]
    return []


def _hypotheses(spec: Spec, provers: Provers) -> list[VacuityCheck]:
    out: list[VacuityCheck] = []
    rlimit = provers.safety.rlimit
    for prop in spec.properties:
        if prop.kind == "leadsto" and prop.name not in PLANS:
            continue
        t0 = time.perf_counter()
        prove_property(provers, prop.name, use_spacer=False, counterexamples=False)
        obligations: list[Outcome] = provers.safety.outcomes[prop.name]
        vacuous: list[str] = []
        unknown: list[str] = []
        expected: list[str] = []
        n = 0
        for ob in obligations:
            for leaf in ob.leaves():
                assert leaf.query is not None and leaf.enc is not None
                if rlimit not in leaf.hypotheses_sat:  # shared leaves are checked once
                    leaf.hypotheses_sat[rlimit] = satisfiable(leaf.enc, leaf.query, rlimit,
                                                              witness=False)[0]
                n += 1
                sat = leaf.hypotheses_sat[rlimit]
                label = leaf.name if leaf.name.startswith(ob.name) else f"{ob.name}: {leaf.name}"
                if sat is False and leaf.may_be_vacuous:
                    expected.append(label)
                elif sat is False:
                    vacuous.append(label)
                elif sat is None:
                    unknown.append(label)
        detail = f"{n} Z3 queries: hypotheses satisfiable"
        if expected:
            detail += (f"; {len(expected)} rank steps cannot occur while H (expected, "
                       f"reported as such): " + ", ".join(expected))
        if vacuous:
            detail = "VACUOUS (hypotheses unsatisfiable): " + ", ".join(vacuous)
        if unknown:
            detail += "; satisfiability unknown (rlimit reached): " + ", ".join(unknown)
        out.append(VacuityCheck(f"{prop.name}: obligation hypotheses satisfiable", prop.name,
                                "hypotheses", not vacuous and not unknown, detail,
                                round(time.perf_counter() - t0, 4), queries=n))
    return out


Target = Callable[[Unrolling, int], z3.BoolRef]


def _antecedent_target(inv: Callable[[State], Any], i: int) -> Target:
    return lambda u, k: _antecedents(as_bool(inv(u.states[k])))[i]


def _enabled_target(enc: Encoding, t: Transition) -> Target:
    return lambda u, k: enc.enabled(t, u.states[k], u.params[k])


def _pred_target(pred: Callable[[State], z3.BoolRef]) -> Target:
    return lambda u, k: pred(u.states[k])


def _pending(p: Callable[[State], Any], q: Callable[[State], Any]) -> Callable[[State], Any]:
    return lambda s: z3.And(as_bool(p(s)), z3.Not(as_bool(q(s))))


def _reachability(spec: Spec, provers: Provers, depth: int) -> list[VacuityCheck]:
    enc = provers.safety.enc
    targets: dict[str, Target] = {}
    owners: dict[str, list[str]] = {}
    probe = enc.state("probe")
    probe2 = enc.state("probe'")
    for prop in spec.properties:
        names: list[str] = []
        if prop.kind == "invariant":
            assert prop.invariant is not None
            for i, a in enumerate(_antecedents(as_bool(prop.invariant(probe)))):
                label = f"{prop.name}: {fmt_expr(a)}"
                targets[label] = _antecedent_target(prop.invariant, i)
                names.append(label)
        elif prop.kind == "step":
            assert prop.step is not None
            for t in enc.relation:
                if z3.is_true(z3.simplify(as_bool(prop.step(probe, t, probe2)))):
                    continue
                label = f"{prop.name}: {t.label} enabled"
                targets[label] = _enabled_target(enc, t)
                names.append(label)
        elif prop.kind == "deadlock":
            label = f"{prop.name}: non-terminal state"
            targets[label] = _pred_target(lambda s: z3.Not(as_bool(terminal(s))))
            names.append(label)
        elif prop.kind == "leadsto":
            assert prop.leads_from is not None and prop.leads_to is not None
            label = f"{prop.name}: p /\\ ~q"
            targets[label] = _pred_target(_pending(prop.leads_from, prop.leads_to))
            names.append(label)
        owners[prop.name] = names
    t0 = time.perf_counter()
    found = reach_many(enc, targets, depth)
    dt = time.perf_counter() - t0
    out: list[VacuityCheck] = []
    for prop in spec.properties:
        names = owners[prop.name]
        rows = tuple(ReachTarget(n.split(": ", 1)[1], found[n]["reached"], found[n]["depth"])
                     for n in names)
        missing = [r.target for r in rows if not r.reached]
        detail = ("every antecedent reachable from Init: " + ", ".join(
            f"{r.target} in {r.depth} steps" for r in rows)) if rows else \
            "unconditional property: no antecedent"
        if missing:
            detail = f"NOT reachable within {depth} steps: " + ", ".join(missing)
        out.append(VacuityCheck(f"{prop.name}: antecedent reachable", prop.name,
                                "reachability", not missing, detail,
                                round(dt / max(1, len(spec.properties)), 4), targets=rows))
    return out


def check_vacuity(spec: Spec, *, depth: int = VACUITY_DEPTH,
                  rlimit: int = RLIMIT) -> list[VacuityCheck]:
    """Non-vacuity of every proof of ``spec``: one check per property and kind of check."""
    provers = Provers(spec, rlimit)
    return [*_hypotheses(spec, provers), *_reachability(spec, provers, depth)]


# --- text ------------------------------------------------------------------------------------


def format_proof(result: ProofResult) -> str:
    """A property's proof as readable lines: verdict, method, each obligation."""
    lines = [f"{result.name} [{result.kind}]: {result.verdict} by {result.method} "
             f"({result.time_s:.2f} s)"]
    if result.strengthening:
        lines.append("  Inv = " + " /\\ ".join(x.name for x in result.strengthening))
    if result.ranking is not None:
        lines.append(f"  rank = {result.ranking.rank}; helpful = {result.ranking.helpful}")
    for o in result.obligations:
        mark = "ok " if o.holds else o.verdict.upper()
        lines.append(f"  {mark:7} {o.name:42} {o.time_s:7.3f} s  {o.formula}")
        if not o.holds:
            lines.extend("          " + x for x in o.detail.splitlines())
    sp = result.spacer
    if sp is not None:
        lines.append(f"  spacer: {sp.verdict} ({sp.time_s:.2f} s) {sp.detail}")
        if sp.invariant_text:
            lines.append(sp.invariant_text)
    if result.note:
        lines.append(f"  note: {result.note}")
    if result.counterexample_text:
        lines.append(f"  counterexample ({result.counterexample_source}):")
        lines.append(result.counterexample_text)
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover - manual use
    import json
    import sys

    from autoconverge.spec import SPEC
    from autoconverge.spec.variants import variant

    target = SPEC if len(sys.argv) < 2 else variant(sys.argv[1]).build(SPEC)
    results = prove_all(target)
    if "--json" in sys.argv:
        print(json.dumps([r.as_dict() for r in results], indent=1, default=str))
    else:
        for r in results:
            print(format_proof(r))
