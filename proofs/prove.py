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
  reachable from Init: :class:`.results.VacuityCheck` records (per property:
  :func:`hypotheses_check`; per spec: :func:`reachability_checks`).
- :func:`shared_lemmas`, :func:`prove_lemma` - the throttle's lemmas, each proved once for
  every property whose strengthening has it (in a process of its own: :mod:`.z3_parallel`).

Each record's ``as_dict()`` is its JSON form (``autoconverge verify --json``).

Two ways to prove, by lifecycle (:attr:`Spec.family`):

- the throttle (:data:`LEMMA_FAMILIES`: an unbounded FIFO and percents, infinite-state):
  hand-written lemmas and ranking plans. Methods ``induction`` (strengthening,
  :mod:`z3_safety`), ``induction+spacer`` (plus Spacer finding its own invariant,
  re-checked), ``spacer``, ``ranking`` (:mod:`z3_liveness`);
- every other lifecycle (the migration: finite as declared): certificates the explorer
  proposes and Z3 checks, no per-property lemma (:mod:`z3_certificate`). Methods
  ``certificate`` (the reachable set, checked inductive, implies the property),
  ``certificate+spacer`` (and Spacer's own invariant, re-checked, agrees: a second method that
  does not use the explorer) and ``certificate+ranking`` (leads-to: a ranking derived from
  the explorer's graph, checked under the spec's weak fairness). Counterexamples: one Z3 check
  of every behaviour up to the variant's declared ``max_trace``
  (:class:`.z3_bmc.OneShot`).

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import z3

from autoconverge.spec import Spec, Transition

from .encoding import Encoding, as_bool, fmt_expr, lifted_state
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
    bmc_depth,
    confirm,
    confirm_path,
    format_trace,
    lasso_depth,
    reach_many,
    substitute_all,
)
from .z3_certificate import SAFETY_METHOD, CertificateProver, search_depth
from .z3_lemmas import Lemma, closure
from .z3_liveness import PLANS, LivenessProver
from .z3_obligations import RLIMIT, SEED, Outcome, detach, fill_satisfiable
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
"""Steps from Init within which every antecedent must be reachable (the throttle; a finite
lifecycle's antecedents are witnessed by the explorer's shortest paths, replayed through the
Z3 encoding)."""
LEMMA_FAMILIES: tuple[str, ...] = ("throttle",)
"""The lifecycles proved with hand-written lemmas and ranking plans (:mod:`z3_lemmas`,
:mod:`z3_safety`, :mod:`z3_liveness`); every other one by certificates
(:mod:`z3_certificate`)."""

__all__ = [
    "ProofResult",
    "Provers",
    "TimingProof",
    "VacuityCheck",
    "check_vacuity",
    "format_proof",
    "hypotheses_check",
    "prove_all",
    "prove_lemma",
    "prove_one",
    "prove_property",
    "prove_timing",
    "reachability_checks",
    "shared_lemmas",
    "z3_search_limits",
]


def z3_search_limits(spec: Spec | None = None) -> dict[str, Any]:
    """The limits every Z3 proof runs under, JSON-ready (``autoconverge verify``): the
    counterexample search depths and where they come from, the resource limits, the seed.
    The top-level depths are the throttle's (``spec``: that spec's); ``lifecycles`` gives
    each lifecycle's."""
    from autoconverge.spec.specs import SPECS

    def depths(s: Spec) -> dict[str, Any]:
        if s.family in LEMMA_FAMILIES:
            return {"bmc_depth": bmc_depth(s), "lasso_depth": lasso_depth(s),
                    "depth_from": f"the {s.family} bug zoo's longest counterexample (max "
                                  "max_trace), searched depth by depth (shortest first)"}
        return {"bmc_depth": search_depth(s), "lasso_depth": search_depth(s) + 1,
                "depth_from": f"the variant's declared max_trace (the {s.family} bug zoo's "
                              "longest for the shipped spec), one Z3 check of every behaviour "
                              "that long"}

    top = depths(spec) if spec is not None else {
        "bmc_depth": BMC_DEPTH, "lasso_depth": LASSO_DEPTH,
        "depth_from": "the bug zoo's longest counterexample (max max_trace, spec/variants.py)"}
    return {
        **top,
        "rlimit": RLIMIT, "search_rlimit": SEARCH_RLIMIT, "spacer_rlimit": SPACER_RLIMIT,
        "seed": SEED, "beyond_depth": "explorer-replay",
        "lifecycles": {name: depths(s) for name, s in SPECS.items()},
    }


class Provers:
    """The provers of one spec (obligations cached across its properties) and, on demand,
    the explorer's result for it (the certificates of a finite lifecycle; counterexamples
    beyond Z3's search depth).

    A lifecycle of :data:`LEMMA_FAMILIES` gets :attr:`safety` and :attr:`liveness` (the
    hand-written lemmas and plans), any other :attr:`certificate`."""

    def __init__(self, spec: Spec, rlimit: int = RLIMIT,
                 explored: ExplorationResult | None = None) -> None:
        self.spec = spec
        self.rlimit = rlimit
        self._explored = explored
        self.safety: SafetyProver | None = None
        self.liveness: LivenessProver | None = None
        self.certificate: CertificateProver | None = None
        if spec.family in LEMMA_FAMILIES:
            self.safety = SafetyProver(spec, rlimit)
            self.liveness = LivenessProver(self.safety)
            self.enc = self.safety.enc
            self.safety.vacuity_context = tuple((lem, self.safety.pre)
                                                for lem in shared_lemmas(self))
        else:
            self.certificate = CertificateProver(spec, rlimit, explored=self.explored)
            self.enc = self.certificate.enc

    @property
    def outcomes(self) -> dict[str, list[Outcome]]:
        """Every property's obligations so far (for the vacuity check)."""
        prover = self.safety if self.safety is not None else self.certificate
        assert prover is not None
        return prover.outcomes

    def explored(self) -> ExplorationResult:
        """The explorer's verdicts on the spec at its lifecycle's default bound (``[ci]``
        for the throttle, ``[migration]``; run once, if needed)."""
        if self._explored is None:
            from autoconverge.model.config import default_section
            from autoconverge.model.explorer import explore, load_config

            self._explored = explore(self.spec, load_config(section=default_section(self.spec)))
        return self._explored


def shared_lemmas(provers: Provers) -> tuple[Lemma, ...]:
    """The lemmas the strengthenings of the throttle's properties are made of (each proved
    once, for all of them: :func:`prove_lemma`); none for a certificate-proved lifecycle."""
    safety = provers.safety
    if safety is None:
        return ()
    found: dict[str, Lemma] = {}
    for prop in provers.spec.properties:
        if prop.kind != "leadsto":
            inv = safety.strengthening(prop.name)
        elif prop.name in PLANS:
            inv = closure(PLANS[prop.name].lemmas, safety._extra)
        else:
            continue
        for lem in inv:
            found.setdefault(lem.name, lem)
    return tuple(found.values())


def prove_lemma(provers: Provers, name: str) -> list[Outcome]:
    """The lemma ``name``'s obligations (``Init => L``, ``Inv_L /\\ Next => L'``) with the
    satisfiability of their hypotheses answered, detached from Z3 (for another process:
    :meth:`SafetyProver.install`)."""
    assert provers.safety is not None
    lem = next(x for x in shared_lemmas(provers) if x.name == name)
    outcomes = provers.safety.lemma_outcomes(lem)
    for o in outcomes:
        fill_satisfiable(o.leaves(), provers.rlimit, provers.safety.vacuity_context)
    return [detach(o) for o in outcomes]


def prove_property(provers: Provers, name: str, *, use_spacer: bool = True,
                   counterexamples: bool = True) -> ProofResult:
    """One property's proof, with a counterexample when it fails and one can be found."""
    result = _prove(provers, name, use_spacer, counterexamples)
    if counterexamples and result.verdict == NOT_PROVED:
        return _explorer_replay(provers, result)
    return result


def _prove(provers: Provers, name: str, use_spacer: bool, counterexamples: bool
           ) -> ProofResult:
    spec = provers.spec
    prop = spec.property(name)
    if provers.certificate is not None:
        result = provers.certificate.prove(name, counterexample=counterexamples)
        if use_spacer and prop.kind in ("invariant", "step") and result.verdict != VIOLATED:
            return _with_spacer_check(result, spacer(spec, name, enc=provers.enc))
        return result
    assert provers.safety is not None and provers.liveness is not None
    if prop.kind == "leadsto":
        if name not in PLANS:
            return ProofResult(name, prop.kind, "ranking", NOT_PROVED, (), 0.0,
                               prop.statement, prop.formula,
                               note="no ranking function written for this property",
                               bmc_depth=lasso_depth(spec), rlimit=provers.rlimit, seed=SEED)
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
    cex["text"] = format_trace(cex, provers.spec)
    prop = provers.spec.property(result.name)
    ok = confirm(provers.enc, prop, cex, provers.rlimit)
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
    return str(provers.explored().stats.config.section)


def _with_spacer_check(result: ProofResult, sp: SpacerResult) -> ProofResult:
    """A certificate proof and Spacer's verdict: the certificate decides; Spacer agreeing is a
    second method (``certificate+spacer``) that does not use the explorer; Spacer finding a
    counterexample the certificate proof missed makes it ``not proved``; Spacer running out
    of its resource limit changes nothing."""
    merged = dataclasses.replace(result, spacer=sp, time_s=round(result.time_s + sp.time_s, 4))
    if result.holds and sp.holds:
        return dataclasses.replace(merged, method=f"{SAFETY_METHOD}+spacer")
    if result.holds and sp.verdict == VIOLATED:  # an engine is wrong: never hide it
        return dataclasses.replace(
            merged, verdict=NOT_PROVED,
            note="Spacer found a counterexample the certificate proof missed")
    return merged


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
    return [c for prop in spec.properties
            if (c := hypotheses_check(provers, prop.name)) is not None]


def hypotheses_check(provers: Provers, name: str) -> VacuityCheck | None:
    """The property ``name``'s obligations all have satisfiable hypotheses (None: a
    liveness property of the throttle without a ranking plan: nothing was attempted).
    Proves the property first if ``provers`` have not."""
    prop = provers.spec.property(name)
    rlimit = provers.rlimit
    if provers.certificate is None and prop.kind == "leadsto" and prop.name not in PLANS:
        return None
    t0 = time.perf_counter()
    if prop.name not in provers.outcomes:  # not proved yet by these provers
        prove_property(provers, prop.name, use_spacer=False, counterexamples=False)
    obligations: list[Outcome] = provers.outcomes[prop.name]
    if provers.certificate is not None:
        provers.certificate.fill_hypotheses(obligations)
    vacuous: list[str] = []
    unknown: list[str] = []
    expected: list[str] = []
    n = 0
    for ob in obligations:
        leaves = ob.leaves()
        fill_satisfiable(leaves, rlimit,  # shared leaves are checked once
                         provers.safety.vacuity_context if provers.safety else ())
        for leaf in leaves:
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
    if expected and provers.certificate is not None:
        detail += (f"; {len(expected)} steps cannot occur there (a transition enabled in "
                   f"no state of R, or of H /\\ ~q; expected, reported as such): "
                   + ", ".join(expected))
    elif expected:
        detail += (f"; {len(expected)} rank steps cannot occur while H (expected, "
                   f"reported as such): " + ", ".join(expected))
    if vacuous:
        detail = "VACUOUS (hypotheses unsatisfiable): " + ", ".join(vacuous)
    if unknown:
        detail += "; satisfiability unknown (rlimit reached): " + ", ".join(unknown)
    return VacuityCheck(f"{prop.name}: obligation hypotheses satisfiable", prop.name,
                        "hypotheses", not vacuous and not unknown, detail,
                        round(time.perf_counter() - t0, 4), queries=n)


Target = Callable[[Unrolling, int], z3.BoolRef]


def _antecedent_target(inv: Callable[[Any], Any], i: int, ctx: z3.Context) -> Target:
    return lambda u, k: _antecedents(as_bool(inv(u.states[k]), ctx))[i]


def _enabled_target(enc: Encoding, t: Transition) -> Target:
    return lambda u, k: enc.enabled(t, u.states[k], u.params[k])


def _enabled_any_target(enc: Encoding, ts: tuple[Transition, ...]) -> Target:
    return lambda u, k: z3.Or(*(enc.enabled(t, u.states[k], u.params[k]) for t in ts))


def _pred_target(pred: Callable[[Any], z3.BoolRef]) -> Target:
    return lambda u, k: pred(u.states[k])


def _pending(p: Callable[[Any], Any], q: Callable[[Any], Any], ctx: z3.Context
             ) -> Callable[[Any], Any]:
    return lambda s: z3.And(as_bool(p(s), ctx), z3.Not(as_bool(q(s), ctx)))


def reachability_checks(provers: Provers, depth: int | None = None) -> list[VacuityCheck]:
    """Every antecedent of every property of the provers' spec reachable from Init (one
    record per property; ``depth``: as :func:`check_vacuity`)."""
    return _reachability(provers.spec, provers, depth)


def _reachability(spec: Spec, provers: Provers, depth: int | None) -> list[VacuityCheck]:
    enc = provers.enc
    terminal = spec.terminal
    targets: dict[str, Target] = {}
    owners: dict[str, list[str]] = {}
    probe = enc.state("probe")
    probe2 = enc.state("probe'")
    for prop in spec.properties:
        names: list[str] = []
        if prop.kind == "invariant":
            assert prop.invariant is not None
            for i, a in enumerate(_antecedents(as_bool(prop.invariant(probe), enc.ctx))):
                label = f"{prop.name}: {fmt_expr(a)}"
                targets[label] = _antecedent_target(prop.invariant, i, enc.ctx)
                names.append(label)
        elif prop.kind == "step":
            assert prop.step is not None
            environment: dict[tuple[str, str], list[Transition]] = {}
            for t in enc.relation:
                if z3.is_true(z3.simplify(as_bool(prop.step(probe, t, probe2), enc.ctx))):
                    continue
                if provers.certificate is not None and t.source == t.dest \
                        and t.actor != t.machine:
                    # an environment step declared on every state of the machine it steps
                    # (as the declaration check): enabled in some state of it, not each
                    environment.setdefault((t.actor, t.trigger), []).append(t)
                    continue
                label = f"{prop.name}: {t.label} enabled"
                targets[label] = _enabled_target(enc, t)
                names.append(label)
            for (actor, trigger), ts in environment.items():
                label = f"{prop.name}: {actor}: {trigger} enabled (in some state)"
                targets[label] = _enabled_any_target(enc, tuple(ts))
                names.append(label)
        elif prop.kind == "deadlock":
            label = f"{prop.name}: non-terminal state"
            targets[label] = _pred_target(lambda s: z3.Not(as_bool(terminal(s), enc.ctx)))
            names.append(label)
        elif prop.kind == "leadsto":
            assert prop.leads_from is not None and prop.leads_to is not None
            label = f"{prop.name}: p /\\ ~q"
            targets[label] = _pred_target(_pending(prop.leads_from, prop.leads_to, enc.ctx))
            names.append(label)
        owners[prop.name] = names
    t0 = time.perf_counter()
    if provers.certificate is not None and depth is None:
        found = _witnessed(provers, targets)
        how = ("the explorer's shortest path to the first state of R that has it, replayed "
               "through the Z3 encoding")
    else:
        depth = VACUITY_DEPTH if depth is None else depth
        found = reach_many(enc, targets, depth, traces=False)  # depths only
        how = ""
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
        if rows and how:
            detail += f" ({how})"
        if missing:
            detail = (f"NOT reachable within {depth} steps: " if depth is not None else
                      "NOT reachable (no state of the inductive certificate R has it): "
                      ) + ", ".join(missing)
        out.append(VacuityCheck(f"{prop.name}: antecedent reachable", prop.name,
                                "reachability", not missing, detail,
                                round(dt / max(1, len(spec.properties)), 4), targets=rows))
    return out


def _witnessed(provers: Provers, targets: dict[str, Target]) -> dict[str, dict[str, Any]]:
    """Reachability of each target in a finite lifecycle, from its proved certificate R (an
    inductive invariant: every reachable state is in it). Each target is evaluated by Z3 on
    each record of R (the record's values substituted, simplified to true or false), in the
    explorer's breadth-first order: the first record that has it is reached by the
    explorer's shortest path to it, which is replayed through the Z3 encoding from Init
    (:func:`.z3_bmc.confirm_path`) - that makes the target reachable, in that many steps
    (the fewest). No record has it: unreachable (R inductive), or not shown (R not)."""
    from autoconverge.model.trace import state_dict, step_dicts

    cert = provers.certificate
    assert cert is not None
    enc = provers.enc
    graph = provers.explored().graph
    records = cert.records()
    inductive = all(o.holds for o in cert.reachable_outcomes())
    params = enc.params(enc.fresh("w"))
    at = _AtState(cert.pre, params)
    labels = list(targets)
    formulas = [as_bool(targets[label](at, 0), enc.ctx)  # type: ignore[arg-type]
                for label in labels]
    found: dict[str, Any] = {}
    open_: list[int] = list(range(len(labels)))
    for rec in records:
        if not open_:
            break
        lifted = lifted_state(rec)
        pairs = [(getattr(cert.pre, f), getattr(lifted, f)) for f in provers.spec.variables]
        values = substitute_all([formulas[i] for i in open_], pairs)
        still: list[int] = []
        for i, v in zip(open_, values, strict=True):
            v = z3.simplify(v)
            if z3.is_true(v):
                found[labels[i]] = rec
            else:
                still.append(i)  # false, or not ground (a parameter): not this record
        open_ = still
    first: dict[Any, int] = {}
    if graph is not None:
        for n in range(len(graph.nodes)):
            first.setdefault(graph.state(n), n)
    out: dict[str, dict[str, Any]] = {}
    replayed: dict[int, bool] = {}  # node -> its path replays (targets share records)
    for label in labels:
        rec = found.get(label)
        node = first.get(rec) if rec is not None else None
        if node is None or graph is None:
            out[label] = {"reached": False, "depth": None,
                          "searched": "no state of the inductive certificate R has it"
                          if inductive else "R is not inductive: nothing shown"}
            continue
        path = graph.path_to(node)
        if node not in replayed:
            cex = {"initial": state_dict(provers.spec.initial),
                   "steps": step_dicts(graph, path)}
            replayed[node] = confirm_path(enc, cex, provers.rlimit)
        ok = replayed[node]
        out[label] = {"reached": ok, "depth": len(path) if ok else None,
                      "searched": "" if ok else "the explorer's path does NOT replay"}
    return out


@dataclass
class _AtState:
    """What a reachability target reads: the state checked (``states[0]``) and the step's
    parameters (``params[0]``)."""

    state: Any
    step_params: dict[str, z3.ArithRef]

    @property
    def states(self) -> list[Any]:
        return [self.state]

    @property
    def params(self) -> list[dict[str, z3.ArithRef]]:
        return [self.step_params]


def check_vacuity(spec: Spec, *, depth: int | None = None, rlimit: int = RLIMIT,
                  provers: Provers | None = None) -> list[VacuityCheck]:
    """Non-vacuity of every proof of ``spec``: one check per property and kind of check.

    Reachability: the throttle's antecedents within ``depth`` steps from Init (default
    :data:`VACUITY_DEPTH`), by Z3's search; a finite lifecycle's (``depth`` None) each by a
    state of its proved certificate and the explorer's path to it, replayed through the Z3
    encoding (``depth`` given: Z3's search to that depth).

    ``provers``: provers that already proved some properties (their obligations are
    checked as they are: they do not depend on whether Spacer or a counterexample search
    ran after them); default fresh ones, at ``rlimit``. ``autoconverge verify`` runs these
    checks property by property on several processes (:mod:`.z3_parallel`)."""
    if provers is None:
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
