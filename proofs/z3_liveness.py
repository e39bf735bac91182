"""Unbounded liveness proofs (``p ~> q``) by ranking functions under per-thread weak fairness.

For each leads-to property a :class:`RankPlan` gives a predicate ``H`` that holds from ``p``
until ``q`` (usually ``p`` itself), a lexicographic rank over naturals, and a *helpful* fair
group ``h(s)`` (worker, clock or blocking-call completion). With ``Inv`` the conjunction of
proved safety lemmas (:mod:`z3_safety`), the obligations are:

- ``start``: ``Inv /\\ p /\\ ~q => H``;
- ``bounded``: ``Inv /\\ H /\\ ~q => rank >= 0`` (every component);
- ``(a) enabled``: ``Inv /\\ H /\\ ~q => ENABLED <<h(s)>>`` - the helpful group can move,
  so the behaviour never gets stuck;
- ``(b)/(c)/(d) steps of G`` for each group G (worker, clock, completions, user calls):
  ``Inv /\\ H /\\ ~q /\\ T_t => q' \\/ (H' /\\ (rank' < rank \\/ (G # h(s) /\\ rank' = rank /\\
  h(s') = h(s))))`` for every transition ``t`` of G: the helpful group's steps decrease the
  rank, every other step (user calls included, which have no fairness) never increases it
  and, when it keeps it, keeps the helpful group.

Soundness (why these imply ``p ~> q`` on every behaviour fair to WF(worker), WF(clock),
WF(completions)): from a reachable state with ``p`` and without ``q``, suppose ``q`` never
holds. Every state then satisfies ``Inv /\\ H`` and the rank never increases; a
lexicographic order on naturals is well-founded, so the rank is eventually constant. From
then on no helpful step happens and ``h`` stays one group ``G``, enabled in every state
(``(a)``): ``G`` is continuously enabled but never takes a step, contradicting ``WF(G)``.
User calls may happen any number of times; they are covered by ``(d)``.

When an obligation fails, :func:`z3_bmc.lasso` searches for a real fair lasso from ``Init``
to print (:data:`LASSO_DEPTH` steps, read from the bug zoo's declaration; each depth one Z3
check under a resource limit, no wall-clock budget); without one the property is ``not
proved`` (not ``violated``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import z3

from autoconverge.spec import THROTTLE_SCHEMA, State
from autoconverge.spec.core import FairnessGroup
from autoconverge.spec.expr import And, If, Or, Value, chan_empty, chan_len, in_states, is_state
from autoconverge.spec.lifecycle import (
    AWAITING_EXIT,
    CLOCK_GROUP,
    COMPLETION_GROUP,
    EXIT,
    NO_CALL,
    RESUMING,
    VCPU_GROUP,
    WAITING,
    WORKER_GROUP,
)

from . import results
from .encoding import as_bool
from .z3_bmc import lasso, lasso_depth
from .z3_lemmas import closure
from .z3_obligations import (
    FAILED,
    PROVED,
    SEED,
    UNKNOWN,
    Outcome,
    Query,
    Step,
    discharge,
    hypotheses_satisfiable,
)
from .z3_safety import MEMO, SafetyProver, lemma_key

FAIR_NAMES: tuple[str, ...] = tuple(g.name for g in THROTTLE_SCHEMA.weak_fairness)
"""The throttle's weakly fair groups: the helpful group's code in a rank obligation is its
index in the spec's weakly fair groups (this order, for the throttle)."""

Helpful = list[tuple[Callable[[State], Value], FairnessGroup]]


@dataclass(frozen=True)
class RankPlan:
    during: Callable[[State], Value] | None
    """H: holds from p until q (None: p itself)."""
    during_text: str
    rank: Callable[[State], tuple[Value, ...]]
    rank_text: str
    helpful: Helpful
    """(condition, group) pairs, first match wins; the last condition should be True."""
    helpful_text: str
    lemmas: tuple[str, ...]


def _shutdown_progress(s: State) -> Value:
    """Inside a phase with a command queued: expired (1) before a fresh phase (0); polled and
    not expired (2) before expired (the clock may fire)."""
    return If(s.expired, 1, If(s.polled, 2, 0))


def _phase_rank(s: State) -> Value:
    """Distance to the next phase boundary: expired 0, polled 1, fresh with a command 2,
    fresh with an empty queue 3 (a user call moves 3 to 2)."""
    return If(s.expired, 0, If(s.polled, 1, If(chan_empty(s.chan), 3, 2)))


def _in_call(s: State) -> Value:
    return s.call != NO_CALL


def _phase_helpful() -> Helpful:
    return [
        (_in_call, VCPU_GROUP),
        (lambda s: s.expired, WORKER_GROUP),
        (lambda s: s.polled, CLOCK_GROUP),
        (lambda s: chan_empty(s.chan), CLOCK_GROUP),
        (lambda s: True, WORKER_GROUP),
    ]


_PHASE_HELPFUL_TEXT = ("a vCPU call in progress: vcpu; expired: worker (phase boundary); "
                       "polled: clock (deadline); fresh phase, empty queue: clock; fresh "
                       "phase, command queued: worker")


def _gone(s: State) -> Value:
    return And(is_state(s.w, EXIT), s.call == NO_CALL)


def _blocking_plan(answered: Callable[[State], Value], answered_text: str,
                   lemmas: tuple[str, ...], during: tuple[str, ...] = ()) -> RankPlan:
    """A caller blocked until ``answered`` lets its completion step fire (``during``: the
    controller states it may pass through before returning, e.g. ``resuming``)."""
    def rank(s: State) -> tuple[Value, ...]:
        stage = If(is_state(s.c, RESUMING), 0, If(answered(s), 1, 2))
        return (stage, chan_len(s.chan),
                If(is_state(s.w, EXIT), 0, If(is_state(s.w, WAITING), 2, 1)),
                _shutdown_progress(s), If(_in_call(s), 1, 0), If(s.failed, 0, 1))
    helpful: Helpful = [
        (lambda s: And(is_state(s.c, RESUMING), _in_call(s)), VCPU_GROUP),
        (lambda s: is_state(s.c, RESUMING), COMPLETION_GROUP),
        (answered, COMPLETION_GROUP),
        *_phase_helpful(),
    ]
    return RankPlan(
        during=(lambda s: in_states(s.c, during)) if during else None,
        during_text=(f"c \\in {{{', '.join(during)}}}" if during
                     else "p (the controller stays blocked until q)"),
        rank=rank,
        rank_text=(f"(IF c = resuming THEN 0 ELSE IF {answered_text} THEN 1 ELSE 2, "
                   "Len(chan), IF w = exit THEN 0 ELSE IF w = waiting THEN 2 ELSE 1, "
                   "IF expired THEN 1 ELSE IF polled THEN 2 ELSE 0, IF call # NONE THEN 1 "
                   "ELSE 0, IF failed THEN 0 ELSE 1)"),
        helpful=helpful,
        helpful_text=(f"resuming: vcpu, then completion; {answered_text}: completion; "
                      f"otherwise {_PHASE_HELPFUL_TEXT}"),
        lemmas=lemmas,
    )


_BLOCKING_LEMMAS = ("SentCommandQueued", "NoAbortHeadWhileWaiting", "QueueValid",
                    "PhaseFlagsOnlyInPhase", "CallOnlyAtPhaseStart", "ClosedMeansGone",
                    "LockMatchesCall", "CallInRange")

PLANS: dict[str, RankPlan] = {
    "ShutdownCompletes": _blocking_plan(
        _gone, "w = exit /\\ call = NONE", _BLOCKING_LEMMAS,
        during=(AWAITING_EXIT, RESUMING)),
    "HandoverCompletes": _blocking_plan(
        _gone, "w = exit /\\ call = NONE", _BLOCKING_LEMMAS),
    "AbortCompletes": _blocking_plan(
        lambda s: And(s.call == NO_CALL, Or(s.resp, is_state(s.w, EXIT))),
        "call = NONE /\\ (resp \\/ w = exit)", _BLOCKING_LEMMAS),
    "PercentApplied": RankPlan(
        during=None, during_text="p (throttling with a new percent not yet applied)",
        rank=lambda s: (_phase_rank(s),),
        rank_text=("(IF expired THEN 0 ELSE IF polled THEN 1 ELSE IF Len(chan) = 0 THEN 3 "
                   "ELSE 2)"),
        helpful=_phase_helpful(), helpful_text=_PHASE_HELPFUL_TEXT,
        lemmas=("CallOnlyAtPhaseStart", "QueueValid")),
    "VcpusResumed": RankPlan(
        during=None, during_text="p (paused, not handed over, not failed)",
        rank=lambda s: (If(_in_call(s), 0, 1), _phase_rank(s)),
        rank_text=("(IF call # NONE THEN 0 ELSE 1, IF expired THEN 0 ELSE IF polled THEN 1 "
                   "ELSE IF Len(chan) = 0 THEN 3 ELSE 2)"),
        helpful=_phase_helpful(), helpful_text=_PHASE_HELPFUL_TEXT,
        lemmas=("VcpusMatchState", "CallOnlyAtPhaseStart", "QueueValid", "CallInRange")),
}


def _lex_lt(a: tuple[Value, ...], b: tuple[Value, ...]) -> z3.BoolRef:
    out: z3.BoolRef = z3.BoolVal(False)
    for x, y in reversed(list(zip(a, b, strict=True))):
        out = z3.Or(x < y, z3.And(x == y, out))
    return out


def _lex_eq(a: tuple[Value, ...], b: tuple[Value, ...]) -> z3.BoolRef:
    return z3.And(*(x == y for x, y in zip(a, b, strict=True)))


def _helpful_code(plan: RankPlan, s: State, fair_names: tuple[str, ...]) -> z3.ArithRef:
    code: Any = z3.IntVal(fair_names.index(plan.helpful[-1][1].name))
    for cond, g in reversed(plan.helpful[:-1]):
        code = z3.If(as_bool(cond(s)), z3.IntVal(fair_names.index(g.name)), code)
    return code


class LivenessProver:
    """Ranking-function proofs for one spec; reuses a :class:`SafetyProver` for ``Inv``."""

    def __init__(self, safety: SafetyProver) -> None:
        self.safety = safety
        self.enc = safety.enc
        self.pre, self.post, self.params = safety.pre, safety.post, safety.params
        self.rlimit = safety.rlimit
        self.fair_names = tuple(g.name for g in safety.spec.weak_fairness)
        """The spec's weakly fair groups, in its order: their indices are the helpful codes."""
        self.depth = lasso_depth(safety.spec)
        """Steps (prefix + cycle) searched from Init for a fair lasso when the proof fails."""

    def prove(self, name: str, counterexample: bool = True) -> results.ProofResult:
        t0 = time.perf_counter()
        prop = self.safety.spec.property(name)
        assert prop.kind == "leadsto" and prop.leads_from and prop.leads_to
        plan = PLANS[name]
        inv = closure(plan.lemmas, self.safety._extra)
        obligations: list[Outcome] = self.safety.inv_outcomes(inv)
        obligations.extend(self.rank_obligations(name, plan))
        self.safety.outcomes[name] = obligations
        holds = all(o.holds for o in obligations)
        note: str | None = None
        cex: dict[str, Any] | None = None
        if not holds:
            ranking_failed = any(not o.holds and not o.name.startswith(("init[", "step["))
                                 for o in obligations)
            if not ranking_failed:
                note = ("the ranking obligations hold, but a safety lemma they rest on is not "
                        "inductive in this spec (see that lemma's obligation); no lasso search")
            elif counterexample:
                cex, depth = lasso(self.enc, prop.leads_from, prop.leads_to, self.depth,
                                   name=name, rlimit=self.safety.search_rlimit)
                if cex is None:
                    note = (f"no fair lasso of up to {depth} steps from Init (Z3 lasso "
                            f"search: {self.depth} steps, rlimit "
                            f"{self.safety.search_rlimit} per depth)")
        return results.ProofResult(
            name, "leadsto", "ranking",
            results.PROVED if holds else results.NOT_PROVED if cex is None else results.VIOLATED,
            tuple(o.result() for o in obligations), round(time.perf_counter() - t0, 4),
            prop.statement, prop.formula, strengthening=inv,
            ranking=results.RankingArgument(
                {g.name: g.statement for g in self.safety.spec.fairness_groups},
                plan.during_text,
                plan.rank_text, plan.helpful_text),
            counterexample=cex, note=note,
            counterexample_source=None if cex is None else "z3-lasso", bmc_depth=self.depth,
            rlimit=self.rlimit, seed=SEED,
        )

    def rank_obligations(self, name: str, plan: RankPlan) -> list[Outcome]:
        prop = self.safety.spec.property(name)
        assert prop.leads_from is not None and prop.leads_to is not None
        s, s2 = self.pre, self.post
        inv = closure(plan.lemmas, self.safety._extra)
        facts = [(lem, s) for lem in inv]
        p = as_bool(prop.leads_from(s))
        q, q2 = as_bool(prop.leads_to(s)), as_bool(prop.leads_to(s2))
        during = plan.during or prop.leads_from
        h, h2 = as_bool(during(s)), as_bool(during(s2))
        r, r2 = plan.rank(s), plan.rank(s2)
        fair_names = self.fair_names
        help1, help2 = _helpful_code(plan, s, fair_names), _helpful_code(plan, s2, fair_names)
        live = [h, z3.Not(q)]
        out: list[Outcome] = []
        out.append(discharge(
            self.enc, "start", "Inv /\\ p /\\ ~q => H",
            Query(ground=[p, z3.Not(q)], facts=facts, goal=h, states={"s": s}),
            self.rlimit))
        out.append(discharge(
            self.enc, "bounded", f"Inv /\\ H /\\ ~q => rank >= 0, rank = {plan.rank_text}",
            Query(ground=live, facts=facts, goal=z3.And(*(x >= 0 for x in r)),
                  states={"s": s}),
            self.rlimit))
        enabled = z3.And(*(
            z3.Implies(help1 == i, self.enc.group_enabled(g, s)) for i, g in enumerate(fair_names)
        ))
        out.append(discharge(
            self.enc, "(a) helpful group enabled",
            f"Inv /\\ H /\\ ~q => ENABLED <<h(s)>>, h = {plan.helpful_text}",
            Query(ground=live, facts=facts, goal=enabled, states={"s": s}),
            self.rlimit))
        for group in self.safety.spec.fairness_groups:
            g = group.name
            ts = self.enc.group(g)
            parts: list[Outcome] = []
            disabled: list[str] = []
            for t in ts:
                gi = fair_names.index(g) if group.weak else -1
                keep = z3.And(h2, z3.Or(
                    _lex_lt(r2, r),
                    z3.And(help1 != gi, _lex_eq(r2, r), help2 == help1),
                ))
                goal = z3.Or(q2, keep)
                query = Query(ground=[*live, self.enc.step(t, s, s2, self.params)], facts=facts,
                              goal=goal, step=Step(s, s2, self.params, (t,)))
                key = ("rank", name, id(plan), prop.leads_from, prop.leads_to, lemma_key(inv), t)
                if key not in MEMO:
                    MEMO[key] = discharge(self.enc, f"{g}@{t.label}", "", query, self.rlimit)
                    if MEMO[key].holds:
                        # no wider set: H /\ ~q is this property's own, and a rank step
                        # that cannot occur while H is common (the wider set would be
                        # refuted, then this one asked anyway)
                        sat = hypotheses_satisfiable(self.enc, query, self.rlimit)
                        MEMO[key].hypotheses_sat[self.rlimit] = sat
                        if sat is False:
                            MEMO[key].detail = "cannot occur: Inv /\\ H /\\ ~q /\\ T is unsat"
                MEMO[key].may_be_vacuous = True
                parts.append(MEMO[key])
                if "cannot occur" in MEMO[key].detail:
                    disabled.append(t.label)
            out.append(_combine_group(group, ts, parts, disabled))
        return out


def _combine_group(group: FairnessGroup, ts: Any, parts: list[Outcome],
                   disabled: list[str]) -> Outcome:
    name = f"{'(b/c)' if group.weak else '(d)'} {group.name} steps"
    fair = "the helpful group's steps decrease the rank; " if group.weak else ""
    formula = (f"Inv /\\ H /\\ ~q /\\ T_t => q' \\/ H' /\\ (rank' < rank \\/ t not helpful "
               f"/\\ rank' = rank /\\ h' = h) for every {group.statement} transition t "
               f"({fair}no step increases it)")
    total = sum(p.time_s for p in parts)
    labels = [t.label for t in ts]
    failed = [(lab, p) for lab, p in zip(labels, parts, strict=True) if p.verdict == FAILED]
    unknown = [(lab, p) for lab, p in zip(labels, parts, strict=True) if p.verdict == UNKNOWN]
    if failed:
        lab, p = failed[0]
        return Outcome(name, formula, FAILED, total,
                       f"the rank is not a ranking function for {lab}: {p.detail}", p.cti,
                       parts=parts)
    if unknown:
        return Outcome(name, formula, UNKNOWN, total,
                       f"not proved for {', '.join(x for x, _ in unknown)}", parts=parts)
    live = [lab for lab in labels if lab not in disabled]
    detail = (f"z3: unsat for each of the {len(labels)} transitions"
              + (f"; cannot occur while H: {', '.join(disabled)}" if disabled else "")
              + (f"; can occur: {', '.join(live)}" if live else ""))
    if not labels:
        detail = "the group has no transitions"
    return Outcome(name, formula, PROVED, total, detail, parts=parts)

