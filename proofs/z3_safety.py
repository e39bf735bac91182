"""Unbounded safety proofs: invariants, step properties and deadlock freedom by induction.

For each safety property a strengthening ``Inv`` - a conjunction of named lemmas from
:mod:`z3_lemmas` (plus the property itself where it is its own strengthening) - is shown
inductive and sufficient, obligation by obligation:

- ``init[L]``: ``Init => L`` for every lemma ``L`` of ``Inv``;
- ``step[L]``: ``Inv_L /\\ Next => L'`` where ``Inv_L`` is the closure of ``L``'s needs
  (so ``Inv`` as a whole is inductive);
- invariant: ``Inv => P``; step property: ``Inv /\\ T_t(s, s') => P(s, t, s')`` for every
  declared transition ``t``; deadlock: ``Inv /\\ ~terminal => ENABLED Next`` where
  a fault does not count as a way on (failing is not progress; the explorer's notion).

All obligations range over every percent, channel length and content and number of calls:
nothing is bounded. When an obligation fails, a bounded search from ``Init``
(:func:`z3_bmc.reach`, :data:`BMC_DEPTH` steps: as deep as the bug zoo's longest
counterexample) looks for a real violation to print; without one the property is reported
``not proved`` (a counterexample to induction only), never ``violated``. Every Z3 check runs
under a resource limit with fixed seeds (:func:`z3_obligations.limited`), never a wall-clock
timeout: the verdicts depend only on the spec and the bound.
"""

from __future__ import annotations

import time
from typing import Any

import z3

from autoconverge.spec import Spec

from . import results
from .encoding import Encoding, as_bool
from .z3_bmc import SEARCH_RLIMIT, Unrolling, bmc_depth, reach
from .z3_lemmas import LEMMAS, Lemma, closure
from .z3_obligations import (
    FAILED,
    PROVED,
    RLIMIT,
    SEED,
    UNKNOWN,
    Outcome,
    Query,
    Step,
    discharge,
)

STRENGTHENING: dict[str, tuple[str, ...]] = {
    "PercentInRange": ("PercentInRange",),
    "WorkerAcceptsEveryCommand": ("QueueValid",),
    "PausedOnlyInPausePhase": ("VcpusMatchState",),
    "HandoverKeepsVcpusPaused": ("HandedMeansExitedPaused",),
    "ReturnsOnlyAfterJoin": ("ClosedRunningUnlessOwned", "ClosedMeansGone",
                             "OwnerOnlyAfterHandover", "LockMatchesCall", "VcpusMatchState"),
    "HandoverMeansOwnedPause": ("OwnerOnlyAfterHandover",),
    "ShutdownAlwaysCallable": ("LockMatchesCall",),
    "LockHeldOnlyInCall": ("LockMatchesCall",),
    "PauseResumeAlternate": ("VcpusMatchState", "ClosedMeansGone"),
    "PausedFollowsCalls": (),
    "ExitIsAbsorbing": (),
    "NoBusyWaiting": (),
    "PauseServedInFull": (),
    "RunServedInFull": (),
    "QueueReadEveryPhase": (),
    "AbortReturnsWithVcpusRunning": (
        "RespMeansAnswered", "AliveBeforeClose", "VcpusMatchState",
    ),
    "NoDeadlock": ("LockMatchesCall", "ClosedMeansGone", "CallInRange"),
}
"""The lemmas each property's strengthening is built from (before closure). A property
missing here (added to the spec later) gets every lemma plus itself."""


MEMO: dict[tuple[Any, ...], Outcome] = {}
"""Per-transition obligations by (hypothesis lemmas, goal, transition). A variant shares most
transitions (the very same declared objects) with the shipped spec, and an obligation about
an unchanged transition is literally the same formula, so it is proved once per process.
Reusing an outcome cannot change a verdict: each is a fresh solver under the same resource
limit and seeds, so the same formula gets the same answer whichever property asked first."""


def lemma_key(lemmas: Any) -> tuple[tuple[str, Any, Any], ...]:
    """Identity of a set of lemmas: names and the functions that define them."""
    return tuple(sorted(((x.name, x.holds, x.each) for x in lemmas), key=lambda k: k[0]))


def combine(name: str, formula: str, parts: list[Outcome], labels: list[str],
            what: str) -> Outcome:
    """One obligation made of per-transition queries: proved iff all are."""
    total = sum(p.time_s for p in parts)
    failed = [(lab, p) for lab, p in zip(labels, parts, strict=True) if p.verdict == FAILED]
    unknown = [(lab, p) for lab, p in zip(labels, parts, strict=True) if p.verdict == UNKNOWN]
    if failed:
        lab, p = failed[0]
        others = f" (also: {', '.join(x for x, _ in failed[1:])})" if failed[1:] else ""
        return Outcome(name, formula, FAILED, total,
                       f"{what} is not preserved by {lab}{others}: {p.detail}", p.cti,
                       parts=parts)
    if unknown:
        labs = ", ".join(lab for lab, _ in unknown)
        return Outcome(name, formula, UNKNOWN, total,
                       f"not proved for {labs}: {unknown[0][1].detail}", parts=parts)
    return Outcome(name, formula, PROVED, total,
                   f"z3: unsat for each of the {len(parts)} transitions", parts=parts)


class SafetyProver:
    """Proof obligations for one spec, with per-lemma results cached across properties."""

    def __init__(self, spec: Spec, rlimit: int = RLIMIT,
                 search_rlimit: int = SEARCH_RLIMIT, depth: int | None = None) -> None:
        self.spec = spec
        self.enc = Encoding(spec)
        self.rlimit = rlimit
        """Z3 resource limit of each obligation check."""
        self.search_rlimit = search_rlimit
        """Z3 resource limit of each depth of a counterexample search."""
        self.depth = bmc_depth(spec) if depth is None else depth
        """Steps from Init searched for a counterexample when an obligation fails (default:
        the spec's zoo depth, :func:`z3_bmc.bmc_depth`)."""
        self.pre = self.enc.state("s")
        self.post = self.enc.state("s'")
        self.params = self.enc.params("step")
        self._cache: dict[str, list[Outcome]] = {}
        self.outcomes: dict[str, list[Outcome]] = {}
        """Every property's obligations (kept for the vacuity check)."""
        self._extra = tuple(self.property_lemma(p.name) for p in spec.properties
                            if p.kind == "invariant")
        self.vacuity_context: tuple[tuple[Lemma, Any], ...] = ()
        """Facts the vacuity check may add to a query's hypotheses to ask fewer queries
        (:func:`.z3_obligations.hypotheses_satisfiable`): the strengthenings' lemmas on the
        pre-state (:class:`.prove.Provers` sets it)."""

    # strengthenings ---------------------------------------------------------------------
    def property_lemma(self, name: str) -> Lemma:
        prop = self.spec.property(name)
        assert prop.invariant is not None
        return Lemma(name, f"the property {name} itself", prop.formula, holds=prop.invariant,
                     needs=())

    def strengthening(self, name: str) -> tuple[Lemma, ...]:
        prop = self.spec.property(name)
        if name in STRENGTHENING:
            return closure(STRENGTHENING[name], self._extra)
        names = [lem.name for lem in LEMMAS]
        if prop.kind == "invariant":
            names.append(name)
        return closure(names, self._extra)

    def step_of(self, pre_facts: tuple[Lemma, ...]) -> tuple[list[tuple[Lemma, Any]], Step]:
        facts = [(lem, self.pre) for lem in pre_facts]
        return facts, Step(self.pre, self.post, self.params)

    # lemma obligations ------------------------------------------------------------------
    def lemma_outcomes(self, lem: Lemma) -> list[Outcome]:
        """``Init => L`` and ``Inv_L /\\ Next => L'`` (cached per lemma)."""
        if lem.name in self._cache:
            return self._cache[lem.name]
        need = closure([lem.name], self._extra)
        hyp_text = " /\\ ".join(x.name for x in need)
        init = discharge(
            self.enc, f"init[{lem.name}]", f"Init => {lem.formula}",
            Query(ground=[self.enc.init(self.pre)], goal=(lem, self.pre),
                  states={"s": self.pre}),
            self.rlimit,
        )
        cons = self.consecution(lem, need, hyp_text)
        self._cache[lem.name] = [init, cons]
        return self._cache[lem.name]

    def install(self, name: str, outcomes: list[Outcome]) -> None:
        """Take the lemma ``name``'s obligations as decided elsewhere (another process:
        :func:`.prove.prove_lemma`) instead of asking them here."""
        self._cache[name] = outcomes

    def consecution(self, lem: Lemma, need: tuple[Lemma, ...], hyp_text: str) -> Outcome:
        """``Inv_L /\\ T_t => L'`` for every transition ``t``, one Z3 query each, as one
        obligation (a disjunctive ``Next`` is much harder for Z3's sequence theory)."""
        facts = [(x, self.pre) for x in need]
        parts: list[Outcome] = []
        for t in self.enc.relation:
            key = ("consecution", lemma_key(need), lemma_key((lem,)), t)
            if key not in MEMO:
                MEMO[key] = discharge(
                    self.enc, f"step[{lem.name}]@{t.label}", "",
                    Query(ground=[self.enc.step(t, self.pre, self.post, self.params)],
                          facts=facts, goal=(lem, self.post),
                          step=Step(self.pre, self.post, self.params, (t,))),
                    self.rlimit,
                )
            parts.append(MEMO[key])
        return combine(f"step[{lem.name}]", f"{hyp_text} /\\ Next => {lem.name}'", parts,
                       [t.label for t in self.enc.relation], what=f"lemma {lem.name}")

    def inv_outcomes(self, inv: tuple[Lemma, ...]) -> list[Outcome]:
        out: list[Outcome] = []
        for lem in inv:
            out.extend(self.lemma_outcomes(lem))
        return out

    # properties -------------------------------------------------------------------------
    def prove(self, name: str) -> results.ProofResult:
        t0 = time.perf_counter()
        prop = self.spec.property(name)
        inv = self.strengthening(name)
        obligations = self.inv_outcomes(inv)
        facts = [(lem, self.pre) for lem in inv]
        if prop.kind == "invariant":
            assert prop.invariant is not None
            obligations.append(discharge(
                self.enc, "property", f"Inv => {prop.formula}",
                Query(facts=facts, goal=as_bool(prop.invariant(self.pre)),
                      states={"s": self.pre}),
                self.rlimit,
            ))
        elif prop.kind == "step":
            obligations.extend(self._step_obligations(name, facts))
        elif prop.kind == "deadlock":
            obligations.append(discharge(
                self.enc, "deadlock-free",
                "Inv /\\ ~terminal => ENABLED (Next without fault)",
                Query(facts=facts, goal=z3.Implies(z3.Not(as_bool(self.spec.terminal(self.pre))),
                                                   self.enc.progress_enabled(self.pre)),
                      states={"s": self.pre}),
                self.rlimit,
            ))
        else:
            raise ValueError(f"{name} is not a safety property")
        self.outcomes[name] = obligations
        holds = all(o.holds for o in obligations)
        cex: dict[str, Any] | None = None
        note: str | None = None
        if not holds:
            cex, depth = self.counterexample(name)
            if cex is None:
                note = (f"no counterexample of up to {depth} steps from Init (Z3 BMC: "
                        f"{self.depth} steps, rlimit {self.search_rlimit} per depth)")
        return results.ProofResult(
            name, prop.kind, "induction",
            results.PROVED if holds else results.NOT_PROVED if cex is None else results.VIOLATED,
            tuple(o.result() for o in obligations), round(time.perf_counter() - t0, 4),
            prop.statement, prop.formula, strengthening=inv, counterexample=cex, note=note,
            counterexample_source=None if cex is None else "z3-bmc", bmc_depth=self.depth,
            rlimit=self.rlimit, seed=SEED,
        )

    def _step_obligations(self, name: str, facts: list[tuple[Lemma, Any]]) -> list[Outcome]:
        prop = self.spec.property(name)
        assert prop.step is not None
        out: list[Outcome] = []
        trivial: list[str] = []
        for t in self.enc.relation:
            pred = prop.step(self.pre, t, self.post)
            if isinstance(pred, bool) and pred:
                trivial.append(t.label)
                continue
            p = as_bool(pred)
            if z3.is_true(z3.simplify(p)):
                trivial.append(t.label)
                continue
            key = ("step-property", prop.step, lemma_key([f[0] for f in facts]), t)
            if key not in MEMO:
                MEMO[key] = discharge(
                    self.enc, f"step-property[{t.label}]",
                    f"Inv /\\ T[{t.label}] => P(s, t, s')",
                    Query(ground=[self.enc.step(t, self.pre, self.post, self.params)],
                          facts=facts, goal=p,
                          step=Step(self.pre, self.post, self.params, (t,))),
                    self.rlimit,
                )
            out.append(MEMO[key])
        if trivial:
            out.append(Outcome(
                "step-property[static]", "P(s, t, s') for the remaining transitions",
                PROVED, 0.0,
                "P is identically true for these transitions (their trigger/actor/calls "
                "decide it): " + ", ".join(trivial),
            ))
        return out

    # counterexamples --------------------------------------------------------------------
    def counterexample(self, name: str,
                       depth: int | None = None) -> tuple[dict[str, Any] | None, int]:
        """The shortest violation of ``name`` from Init within ``depth`` steps (default: the
        prover's), and the depth searched (:func:`z3_bmc.reach`)."""
        prop = self.spec.property(name)
        enc = self.enc
        bound = self.depth if depth is None else depth
        rl = self.search_rlimit
        if prop.kind == "invariant":
            inv = prop.invariant
            assert inv is not None
            return reach(enc, lambda u, k: z3.Not(as_bool(inv(u.states[k]))), bound,
                         name=name, kind="invariant", summary=prop.formula, rlimit=rl)
        if prop.kind == "step":
            step = prop.step
            assert step is not None

            def bad(u: Unrolling, k: int) -> z3.BoolRef:
                s, s2 = u.states[k], u.states[k + 1]
                return z3.Or(*(z3.And(u.sel[k] == n, z3.Not(as_bool(step(s, t, s2))))
                               for n, t in enumerate(enc.relation)))

            return reach(enc, bad, bound, name=name, kind="step", summary=prop.formula,
                         bad_step=True, rlimit=rl)
        if prop.kind == "deadlock":
            terminal = self.spec.terminal
            return reach(enc, lambda u, k: z3.And(z3.Not(as_bool(terminal(u.states[k]))),
                                                  z3.Not(enc.progress_enabled(u.states[k]))),
                         bound, name=name, kind="deadlock", summary=prop.formula, rlimit=rl)
        return None, 0
