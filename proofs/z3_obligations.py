"""Discharging one proof obligation with Z3, soundly, over an unbounded channel.

An obligation is ``hypotheses => goal``. Z3 refutes ``hypotheses /\\ ~goal``; ``unsat`` means
the obligation holds for every value of every variable (every percent, channel length and
content, call count). Hypotheses are ground formulas (the transition relation, quantifier-free
lemmas, ranking conditions) plus *element lemmas* ``forall i < Len(chan): body(i)`` over a
state's channel.

Z3's sequence theory does not do quantifier instantiation through ``SubSeq``/``Concat`` well
(measured: every pop/push step of "every queued element is valid" returns ``unknown`` after
5 s), so element lemmas are instantiated explicitly: a negated element goal introduces a
fresh index ``k``; every element hypothesis is instantiated at ``k-1, k, k+1``, ``0``, ``1``,
``Len-1`` and ``Len-2``. Instances of a universally quantified hypothesis are consequences of
it, so ``unsat`` is a proof. On ``sat`` the model is checked against the *full* element
lemmas on the concrete channel it assigns; an index where a hypothesis fails is added as one
more instance and Z3 runs again (model-based instantiation by hand). A model that satisfies
every hypothesis in full is a genuine counterexample to the obligation (a CTI); running out
of resources or of rounds is reported as ``unknown`` - never as proved.

Determinism: no check has a wall-clock timeout. Every solver gets a Z3 *resource limit*
(``rlimit``: Z3's count of its own elementary operations, independent of load and machine
speed) and fixed random seeds (:func:`limited`), and every obligation is a fresh solver, so
a verdict depends only on the query, never on how busy the machine is or which queries ran
before it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.spec import State, Transition

from .encoding import Encoding, fmt_state, state_dict
from .z3_lemmas import Lemma

RLIMIT = 10_000_000
"""Z3 resource limit of one check of an obligation (per instantiation round). The hardest
obligation of the shipped spec and the bug zoo needs about 0.5 M; this leaves 20x headroom
(about 3 s of work), so no verdict sits near the limit."""
SEED = 0
"""The random seed of every Z3 solver the proofs create (:func:`limited`)."""
MAX_ROUNDS = 8

PROVED = "proved"
FAILED = "failed"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ObligationResult:
    """The verdict on one obligation, as reported (:meth:`Outcome.result`)."""

    name: str
    formula: str
    verdict: str
    """``proved``, ``failed`` (with a counterexample to the obligation) or ``unknown``."""
    time_s: float
    detail: str = ""
    cti: dict[str, Any] | None = None
    """A counterexample to induction (a model of the hypotheses and the negated goal)."""

    @property
    def holds(self) -> bool:
        return self.verdict == PROVED

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name, "formula": self.formula, "holds": self.holds,
            "verdict": self.verdict, "time_s": self.time_s, "detail": self.detail,
        }
        if self.cti is not None:
            d["cti"] = self.cti
        return d


@dataclass
class Outcome:
    """The verdict on one obligation, with the query behind it (the prover's working copy:
    :meth:`result` is what is reported)."""

    name: str
    formula: str
    verdict: str
    time_s: float
    detail: str = ""
    cti: dict[str, Any] | None = None
    query: Query | None = field(default=None, repr=False)
    """The Z3 query (kept for the vacuity check of its hypotheses)."""
    enc: Encoding | None = field(default=None, repr=False)
    parts: list[Outcome] = field(default_factory=list, repr=False)
    """Per-transition sub-obligations of a combined obligation."""
    may_be_vacuous: bool = False
    """Unsatisfiable hypotheses are expected (e.g. a step that cannot occur while H)."""
    hypotheses_sat: dict[int, bool | None] = field(default_factory=dict, repr=False)
    """Whether the query's hypotheses are satisfiable, by rlimit (:func:`satisfiable`),
    once checked: a memoized outcome is shared by every spec and property that asks the
    same query, and so is this answer (the vacuity check asks it of every leaf)."""
    detached: bool = False
    """A leaf decided in another process (:func:`detach`): no query, its answers carried."""

    @property
    def holds(self) -> bool:
        return self.verdict == PROVED

    def leaves(self) -> list[Outcome]:
        """This obligation's individual Z3 queries."""
        if self.parts:
            return [x for p in self.parts for x in p.leaves()]
        return [self] if self.query is not None or self.detached else []

    def result(self) -> ObligationResult:
        """The verdict as a record (the time rounded to 0.1 ms)."""
        return ObligationResult(self.name, self.formula, self.verdict, round(self.time_s, 4),
                                self.detail, self.cti)


def detach(o: Outcome) -> Outcome:
    """``o`` without its Z3 terms (picklable: for another process), its verdicts and the
    answers about its leaves' hypotheses kept (fill them first, :func:`fill_satisfiable`)."""
    return Outcome(o.name, o.formula, o.verdict, o.time_s, o.detail, o.cti,
                   parts=[detach(p) for p in o.parts], may_be_vacuous=o.may_be_vacuous,
                   hypotheses_sat=dict(o.hypotheses_sat),
                   detached=not o.parts and (o.query is not None or o.detached))


def fill_satisfiable(leaves: list[Outcome], rlimit: int,
                     context: Sequence[tuple[Lemma, State]] = ()) -> None:
    """Whether each leaf's hypotheses are satisfiable (:func:`hypotheses_satisfiable`,
    with ``context``), for those not answered yet at ``rlimit``."""
    for leaf in leaves:
        if rlimit not in leaf.hypotheses_sat:
            assert leaf.query is not None and leaf.enc is not None, \
                "a detached leaf carries its answers"
            leaf.hypotheses_sat[rlimit] = hypotheses_satisfiable(leaf.enc, leaf.query, rlimit,
                                                                 context)


_SATISFIED: dict[tuple[int, tuple[int, ...]], list[tuple[Encoding, Query, frozenset[Any]]]] = {}
"""Hypotheses found satisfiable (a model checked against every element lemma in full), by
(encoding, ground formulas): a query with the same ground formulas and a subset of those
facts is satisfiable by the same model. Each entry keeps its query, so the ids stay its."""
_ASKED: dict[tuple[Any, ...], tuple[bool | None, Query]] = {}
"""Every wider query asked (:func:`hypotheses_satisfiable`), with its answer."""


def _ground_key(enc: Encoding, q: Query) -> tuple[int, tuple[int, ...]]:
    return id(enc), tuple(sorted(g.get_id() for g in q.ground))


def _facts_key(facts: Sequence[tuple[Lemma, State]]) -> frozenset[tuple[int, int]]:
    return frozenset((id(lem), id(s)) for lem, s in facts)


def hypotheses_satisfiable(enc: Encoding, q: Query, rlimit: int = RLIMIT,
                           context: Sequence[tuple[Lemma, State]] = ()) -> bool | None:
    """Are the hypotheses of ``q`` satisfiable (its goal ignored)? As :func:`satisfiable`,
    asked fewer times: hypotheses are satisfiable when a wider set is - the same ground
    formulas with more facts -, since a model of the wider set is one of them. So first a
    set already found satisfiable answers (the same ground formulas, a superset of the
    facts); else, with ``context`` (facts that may be added: a prover's lemmas on its
    pre-state), the widest set - ``q``'s facts and ``context`` - is asked once, and if it is
    satisfiable it answers for every query with these ground formulas; else ``q`` is asked
    on its own. Only a model found makes an answer True; False and None (unknown) come
    from ``q``'s own check, as before."""
    gk = _ground_key(enc, q)
    fk = _facts_key(q.facts)
    if any(fk <= known for _, _, known in _SATISFIED.get(gk, ())):
        return True
    if context:
        facts = [*q.facts, *(f for f in context if (id(f[0]), id(f[1])) not in fk)]
        wide_key = _facts_key(facts)
        asked = (gk, wide_key, rlimit)
        if wide_key != fk and asked not in _ASKED:
            wide = Query(ground=q.ground, facts=facts, step=q.step, states=q.states)
            verdict = satisfiable(enc, wide, rlimit, witness=False)[0]
            _ASKED[asked] = (verdict, wide)
            if verdict:
                _SATISFIED.setdefault(gk, []).append((enc, wide, wide_key))
                return True
    verdict = satisfiable(enc, q, rlimit, witness=False)[0]
    if verdict:
        _SATISFIED.setdefault(gk, []).append((enc, q, fk))
    return verdict


@dataclass
class Step:
    """A step ``pre -> post`` in a query (to name the transition of a counterexample)."""

    pre: State
    post: State
    params: dict[str, z3.ArithRef]
    transitions: tuple[Transition, ...] | None = None


@dataclass
class Query:
    """``ground /\\ facts => goal`` (``goal`` None: just check the hypotheses)."""

    ground: list[z3.BoolRef] = field(default_factory=list)
    facts: list[tuple[Lemma, State]] = field(default_factory=list)
    goal: z3.BoolRef | tuple[Lemma, State] | None = None
    step: Step | None = None
    states: dict[str, State] = field(default_factory=dict)


class _Instantiator:
    """Adds instances of element-lemma hypotheses to a solver."""

    def __init__(self, solver: z3.Solver, facts: list[tuple[Lemma, State]]) -> None:
        self.solver = solver
        self.facts = [(lem, s) for lem, s in facts if lem.quantified]
        self.done: set[tuple[str, int, int]] = set()
        self._keep: list[z3.ExprRef] = []  # the simplified indices: their ids stay theirs

    def add(self, lem: Lemma, s: State, i: z3.ArithRef) -> bool:
        index = z3.simplify(i)
        key = (lem.name, s.chan.get_id(), index.get_id())  # Z3 terms are hash-consed
        if key in self.done:
            return False
        self.done.add(key)
        self._keep.append(index)
        self.solver.add(lem.instance(s, i))
        return True

    def seed(self, skolems: list[z3.ArithRef]) -> None:
        """Instances at a negated element goal's index and its neighbours (a pop shifts the
        channel by one), else at both ends of each channel; refinement adds the rest."""
        for lem, s in self.facts:
            if skolems:
                for k in skolems:
                    for d in (-1, 0, 1):
                        self.add(lem, s, k + d)
            else:
                n = z3.Length(s.chan)
                for i in (z3.IntVal(0), z3.IntVal(1), n - 1, n - 2):
                    self.add(lem, s, i)

    def refine(self, enc: Encoding, model: z3.ModelRef) -> bool:
        """Instantiate where the model breaks a hypothesis; False if it breaks none."""
        added = False
        for lem, s in self.facts:
            cs = enc.concrete(model, s)
            for j in lem.violations(cs)[:4]:
                added = self.add(lem, s, z3.IntVal(j)) or added
        return added


def limited(solver: z3.Solver, rlimit: int) -> z3.Solver:
    """``solver`` with a resource limit per check and fixed seeds: deterministic verdicts.

    ``rlimit`` bounds each ``check()`` (Z3 counts it from the current total, so every check of
    the solver gets the same allowance). The seeds are set per solver: ``random_seed`` is read
    by both the SMT core and the SAT core (z3 rejects ``sat.random_seed`` as a solver
    parameter; its global default is 0), ``smt.random_seed`` names the SMT one.
    """
    solver.set("rlimit", rlimit)
    solver.set("random_seed", SEED)
    solver.set("smt.random_seed", SEED)
    return solver


def _setup(enc: Encoding, q: Query, rlimit: int) -> tuple[z3.Solver, _Instantiator]:
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    for g in q.ground:
        solver.add(g)
    for lem, s in q.facts:
        if not lem.quantified:
            solver.add(lem.z3(s))
    skolems: list[z3.ArithRef] = []
    if isinstance(q.goal, tuple):
        lem, s = q.goal
        if lem.quantified:
            assert lem.each is not None
            # one skolem per goal lemma (not a fresh one per query): each query is a solver
            # of its own, and the same constant lets the instances be built once
            k = z3.Int(f"goal_index@{lem.name}", enc.ctx)
            skolems.append(k)
            solver.add(k >= 0, k < z3.Length(s.chan),
                       z3.Not(lem.instance(s, k)))
        else:
            solver.add(z3.Not(lem.z3(s)))
    elif q.goal is not None:
        solver.add(z3.Not(q.goal))
    inst = _Instantiator(solver, q.facts)
    inst.seed(skolems)
    return solver, inst


def _solve(enc: Encoding, q: Query, rlimit: int) -> tuple[str, z3.ModelRef | None, str]:
    solver, inst = _setup(enc, q, rlimit)
    for rnd in range(MAX_ROUNDS):
        r = solver.check()
        if r == z3.unsat:
            return "unsat", None, ""
        if r == z3.unknown:
            return "unknown", None, (f"z3: {solver.reason_unknown()} (round {rnd + 1}, "
                                     f"rlimit {rlimit})")
        model = solver.model()
        try:
            refined = inst.refine(enc, model)
        except (ValueError, AttributeError) as exc:  # a model value we cannot read back
            return "unknown", None, f"unreadable model: {exc}"
        if not refined:
            return "sat", model, ""
    return "unknown", None, f"no verdict after {MAX_ROUNDS} instantiation rounds"


def describe_model(enc: Encoding, q: Query, model: z3.ModelRef) -> dict[str, Any]:
    """A counterexample to an obligation as JSON-ready data plus a readable line."""
    out: dict[str, Any] = {}
    names = enc.spec.schema.value_names  # integer codes printed by name
    if q.step is not None:
        pre = enc.concrete(model, q.step.pre)
        post = enc.concrete(model, q.step.post)
        t = enc.which(model, q.step.pre, q.step.post, q.step.params, q.step.transitions)
        out["pre"] = state_dict(pre)
        out["post"] = state_dict(post)
        if t is not None:
            out["transition"] = t.label
            out["actor"] = t.actor
            out["params"] = enc.param_values(model, t, q.step.params)
        label = out.get("transition", "?")
        params = ", ".join(f"{k}={v}" for k, v in out.get("params", {}).items())
        out["text"] = (f"pre:  {fmt_state(pre, None, names)}\n  step: {label}({params})\n"
                       f"  post: {fmt_state(post, pre, names)}")
    else:
        states = q.states or {}
        lines: list[str] = []
        for name, s in states.items():
            cs = enc.concrete(model, s)
            out[name] = state_dict(cs)
            lines.append(f"{name}: {fmt_state(cs, None, names)}")
        out["text"] = "\n  ".join(lines)
    return out


class Checker:
    """Queries that share hypotheses: one solver, the shared ones asserted once, each query
    in a ``push``/``pop`` (Z3 preprocesses the certificate once, not once per transition).
    Deterministic: the same assertions and checks in the same order, a resource limit per
    check and fixed seeds (:func:`.z3_obligations.limited`)."""

    def __init__(self, enc: Encoding, base: list[z3.BoolRef], rlimit: int) -> None:
        self.enc = enc
        self.base = base
        self.rlimit = rlimit
        self.solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
        self.solver.add(*base)

    def check(self, name: str, formula: str, extra: list[z3.BoolRef], goal: z3.BoolRef | None,
              *, step: Step | None = None, states: dict[str, Any] | None = None) -> Outcome:
        """``base /\\ extra => goal`` (``goal`` None: are ``base /\\ extra`` satisfiable?)."""
        t0 = time.perf_counter()
        self.solver.push()
        try:
            self.solver.add(*extra)
            if goal is not None:
                self.solver.add(z3.Not(goal))
            r = self.solver.check()
            model = self.solver.model() if r == z3.sat else None
            why = self.solver.reason_unknown() if r == z3.unknown else ""
            q = Query(ground=[*self.base, *extra], goal=goal, step=step, states=states or {})
            cti = describe_model(self.enc, q, model) if model is not None else None
        finally:
            self.solver.pop()
        dt = time.perf_counter() - t0
        if r == z3.unsat:
            return Outcome(name, formula, PROVED, dt, "z3: unsat (no counterexample exists)",
                           query=q, enc=self.enc)
        if r == z3.unknown:
            return Outcome(name, formula, UNKNOWN, dt,
                           f"not proved: z3: {why} (rlimit {self.rlimit})", query=q,
                           enc=self.enc)
        assert cti is not None
        return Outcome(name, formula, FAILED, dt,
                       "counterexample to the obligation:\n  " + cti["text"], cti, query=q,
                       enc=self.enc)

    def satisfiable(self, extra: list[z3.BoolRef]) -> bool | None:
        self.solver.push()
        try:
            self.solver.add(*extra)
            r = self.solver.check()
        finally:
            self.solver.pop()
        return True if r == z3.sat else False if r == z3.unsat else None


def discharge(enc: Encoding, name: str, formula: str, q: Query,
              rlimit: int = RLIMIT) -> Outcome:
    """Prove ``hypotheses => goal`` or report why not (CTI or unknown)."""
    t0 = time.perf_counter()
    verdict, model, why = _solve(enc, q, rlimit)
    dt = time.perf_counter() - t0
    if verdict == "unsat":
        return Outcome(name, formula, PROVED, dt, "z3: unsat (no counterexample exists)",
                       query=q, enc=enc)
    if verdict == "unknown":
        return Outcome(name, formula, UNKNOWN, dt, f"not proved: {why}", query=q, enc=enc)
    assert model is not None
    cti = describe_model(enc, q, model)
    return Outcome(name, formula, FAILED, dt,
                   "counterexample to the obligation:\n  " + cti["text"], cti, query=q, enc=enc)


def satisfiable(enc: Encoding, q: Query, rlimit: int = RLIMIT, *,
                witness: bool = True) -> tuple[bool | None, dict[str, Any] | None]:
    """Are the hypotheses of ``q`` (its goal ignored) satisfiable? With a witness if so
    (``witness=False``: the verdict only, which saves reading the model back)."""
    hyp = Query(ground=q.ground, facts=q.facts, goal=None, step=q.step, states=q.states)
    verdict, model, _ = _solve(enc, hyp, rlimit)
    if verdict == "sat":
        assert model is not None
        return True, describe_model(enc, hyp, model) if witness else None
    if verdict == "unsat":
        return False, None
    return None, None
