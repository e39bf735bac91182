"""Bounded model checking from the initial state: reachability and fair lassos.

Used for two things the unbounded proofs cannot give by themselves:

- counterexamples: when an obligation fails, a *real* behaviour from ``Init`` that violates
  the property (a safety trace, or a lasso - prefix plus a cycle that is fair to every
  weakly-fair group - for ``p ~> q``), printed readably and replayable through
  :meth:`Spec.successors`;
- vacuity: every property's antecedent is reachable from ``Init`` in a few steps.

Each step picks one declared transition (an ``Int`` selector over :meth:`Spec.relation`) or,
for lassos, a stuttering step. Everything is unbounded but the number of steps: any percent,
any channel content.

How deep, and how long. The searches go as deep as the longest counterexample the bug zoo
of the spec's lifecycle needs: :func:`bmc_depth` is read from the zoo's declaration (the
largest ``max_trace`` of :data:`autoconverge.spec.specs.ZOOS` for the spec's
:attr:`~autoconverge.spec.core.Spec.family`, the longest shortest counterexample the explorer
needs), never written here as a number (:data:`BMC_DEPTH`: the throttle's). Nothing is
bounded by the wall clock: each depth is one Z3 check under a resource limit
(:data:`SEARCH_RLIMIT`) with fixed seeds, so how deep a search got and what it found depend
only on the spec and the bound. Searches are
incremental - one solver per search, the unrolling extended step by step and each depth's
target checked inside ``push``/``pop`` - which is deterministic too: the same assertions and
checks in the same order every time. A counterexample deeper than the bound is still
confirmed when the explorer has one: :func:`confirm` replays a concrete trace through this
encoding (:mod:`.prove` upgrades ``not proved`` to ``violated`` with it). A finite lifecycle's
certificate proofs (:mod:`.z3_certificate`) search differently: :class:`OneShot`, one check
of every behaviour up to the variant's declared ``max_trace``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.model.trace import format_counterexample, state_from_dict
from autoconverge.spec import FairnessGroup, Spec, Transition
from autoconverge.spec.specs import ZOOS

from .encoding import Encoding, as_bool, lifted_state, state_dict, states_equal
from .z3_obligations import RLIMIT, limited


def zoo_depth(family: str = "throttle") -> int:
    """The longest shortest counterexample of a lifecycle's bug zoo, in steps: the largest
    ``max_trace`` declared in its zoo (:data:`autoconverge.spec.specs.ZOOS`; prefix + cycle
    for a lasso)."""
    return int(max(v.max_trace for v in ZOOS[family]))


BMC_DEPTH = zoo_depth()
"""Steps from Init searched for a safety counterexample of the throttle (the bad step of a
step property included): as deep as the longest counterexample of its bug zoo."""
LASSO_DEPTH = BMC_DEPTH + 1
"""Steps (prefix + cycle, stuttering steps included) searched for a fair lasso: one more than
:data:`BMC_DEPTH`, because a lasso that ends stuttering forever closes with one stuttering
step, which the explorer's lasso length does not count."""


def bmc_depth(spec: Spec) -> int:
    """:data:`BMC_DEPTH` for ``spec``'s lifecycle: its zoo's longest counterexample (a
    lifecycle without a zoo: the throttle's depth)."""
    return zoo_depth(spec.family) if ZOOS.get(spec.family) else BMC_DEPTH


def lasso_depth(spec: Spec) -> int:
    """:data:`LASSO_DEPTH` for ``spec``'s lifecycle (one more than :func:`bmc_depth`)."""
    return bmc_depth(spec) + 1
SEARCH_RLIMIT = 100_000_000
"""Z3 resource limit of one depth of a search (one check). The deepest checks the bug zoo
needs use about 15 M (a deadlock at depth 8); a check that runs out ends the search there,
reported as the depth reached - never as proved."""
COUNTEREXAMPLE_SOURCES = ("z3-bmc", "z3-lasso", "explorer-replay")
"""Which method produced a ``violated`` verdict's counterexample: Z3's safety search, Z3's
lasso search, or the explorer's shortest counterexample replayed through the Z3 encoding."""

STUTTER = -1


@dataclass
class Unrolling:
    """``s_0 .. s_k`` with ``Init(s_0)`` and one transition (or a stutter) per step."""

    enc: Encoding
    solver: z3.Solver
    tag: str
    stutter: bool = False
    states: list[Any] = field(default_factory=list)
    params: list[dict[str, z3.ArithRef]] = field(default_factory=list)
    sel: list[z3.ArithRef] = field(default_factory=list)

    def __post_init__(self) -> None:
        s0 = self.enc.state(f"{self.tag}0")
        self.states.append(s0)
        self.solver.add(self.enc.init(s0))

    @property
    def k(self) -> int:
        return len(self.states) - 1

    def extend(self) -> None:
        i = self.k
        s, s2 = self.states[i], self.enc.state(f"{self.tag}{i + 1}")
        ps = self.enc.params(f"{self.tag}{i}")
        sel = z3.Int(f"sel@{self.tag}{i}", self.enc.ctx)
        alts = [z3.And(sel == n, self.enc.step(t, s, s2, ps))
                for n, t in enumerate(self.enc.relation)]
        if self.stutter:
            alts.append(z3.And(sel == STUTTER, states_equal(s, s2)))
        self.solver.add(z3.Or(*alts))
        self.states.append(s2)
        self.params.append(ps)
        self.sel.append(sel)

    def taken(self, i: int, group: str) -> z3.BoolRef:
        """Step ``i`` is a state-changing step of ``group``."""
        idx = [n for n, t in enumerate(self.enc.relation) if t.fairness_group.name == group]
        if not idx:
            return z3.BoolVal(False, self.enc.ctx)
        return z3.And(z3.Or(*(self.sel[i] == n for n in idx)),
                      z3.Not(states_equal(self.states[i], self.states[i + 1])))

    def trace(self, model: z3.ModelRef, upto: int) -> tuple[Any, list[dict[str, Any]]]:
        """The concrete initial state and the non-stuttering steps ``0 .. upto-1``."""
        init = self.enc.concrete(model, self.states[0])
        steps: list[dict[str, Any]] = []
        for i in range(upto):
            n = model.eval(self.sel[i], model_completion=True).as_long()
            if n == STUTTER:
                continue
            t = self.enc.relation[n]
            steps.append(_step_dict(self.enc, model, t, self.params[i],
                                    self.enc.concrete(model, self.states[i + 1])))
        return init, steps


def _step_dict(enc: Encoding, model: z3.ModelRef, t: Transition,
               params: dict[str, z3.ArithRef], post: Any) -> dict[str, Any]:
    return {
        "actor": t.actor, "trigger": t.trigger, "source": t.source, "dest": t.dest,
        "params": enc.param_values(model, t, params), "calls": list(t.calls),
        "state": state_dict(post),
    }


def format_trace(cex: dict[str, Any], spec: Spec | None = None) -> str:
    """A counterexample as numbered lines: the explorer's format, shared by every checker
    (``spec``: its schema names the integer codes)."""
    return str(format_counterexample(cex, spec.schema.value_names if spec is not None
                                     else None))


def reach(enc: Encoding, target: Callable[[Unrolling, int], z3.BoolRef], max_depth: int,
          *, name: str, kind: str, summary: str = "", bad_step: bool = False,
          rlimit: int = SEARCH_RLIMIT) -> tuple[dict[str, Any] | None, int]:
    """Shortest path of at most ``max_depth`` steps from Init to a state where
    ``target(unrolling, k)`` holds.

    With ``bad_step`` the target constrains step ``k`` (``s_k -> s_{k+1}``), which is
    included in the trace as its last step (and counted in ``max_depth``). Returns the
    counterexample (None: none) and the depth: the trace's length, or how many steps were
    searched exhaustively (``max_depth`` unless a check ran out of ``rlimit``).
    """
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    u = Unrolling(enc, solver, enc.fresh("r"))
    for n in range(1 if bad_step else 0, max_depth + 1):
        while u.k < n:
            u.extend()
        solver.push()
        solver.add(target(u, n - 1 if bad_step else n))
        r = solver.check()
        if r == z3.sat:
            init, steps = u.trace(solver.model(), n)
            solver.pop()
            cex = {"property": name, "kind": kind, "summary": summary,
                   "initial": state_dict(init), "steps": steps, "length": len(steps)}
            cex["text"] = format_trace(cex, enc.spec)
            return cex, n
        solver.pop()
        if r == z3.unknown:
            return None, n - 1
    return None, max_depth


def lasso(enc: Encoding, leads_from: Callable[[Any], Any], leads_to: Callable[[Any], Any],
          max_depth: int, *, name: str, rlimit: int = SEARCH_RLIMIT,
          fair_groups: tuple[FairnessGroup, ...] | None = None
          ) -> tuple[dict[str, Any] | None, int]:
    """A fair lasso from Init on which ``leads_from`` holds once and ``leads_to`` never after.

    Fairness on the cycle ``s_l .. s_k = s_l``: every weakly-fair group either takes a
    state-changing step in it or is disabled in one of its states (so it is not continuously
    enabled). User calls carry no fairness. Stuttering steps are allowed (a behaviour may stop
    where no fair group can move).

    The lasso has the fewest steps ``k`` (stuttering included, at most ``max_depth``); among
    those, one that ends stuttering forever is preferred, so its printed length (``k`` less
    the stuttering step) does not depend on which model Z3 returns. Returns the lasso (None:
    none) and the depth: ``k``, or the steps searched exhaustively. ``fair_groups``: the
    spec's weakly fair groups unless given.
    """
    if fair_groups is None:
        fair_groups = enc.spec.weak_fairness
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    u = Unrolling(enc, solver, enc.fresh("l"), stutter=True)
    enabled_cache: dict[tuple[int, str], z3.BoolRef] = {}
    for k in range(1, max_depth + 1):
        u.extend()
        j, lo = z3.Int(f"j@{u.tag}{k}", enc.ctx), z3.Int(f"loop@{u.tag}{k}", enc.ctx)
        cons = _lasso_shape(u.states, k, j, lo, leads_from, leads_to, enc.ctx)
        for g in (group.name for group in fair_groups):
            escapes: list[z3.BoolRef] = []
            for i in range(k):
                key = (i, g)
                if key not in enabled_cache:
                    enabled_cache[key] = enc.group_enabled(g, u.states[i])
                escapes.append(z3.And(lo <= i, z3.Or(u.taken(i, g),
                                                     z3.Not(enabled_cache[key]))))
            cons.append(z3.Or(*escapes))
        solver.push()
        solver.add(*cons)
        r = solver.check()
        if r == z3.sat:
            model = solver.model()
            if not _stutters(u, model, k):
                solver.push()
                solver.add(z3.Or(*(sel == STUTTER for sel in u.sel)))
                if solver.check() == z3.sat:
                    model = solver.model()
                solver.pop()
            init, steps = u.trace(model, k)
            loop_at = model.eval(lo, model_completion=True).as_long()
            stutters_before = _stutters(u, model, loop_at)
            cex = {"property": name, "kind": "leadsto",
                   "summary": "a fair behaviour on which the antecedent never leads to the "
                              "consequent",
                   "initial": state_dict(init), "steps": steps, "length": len(steps),
                   "cycle_start": loop_at - stutters_before,
                   "fairness": {g.name: g.statement for g in fair_groups}}
            cex["text"] = format_trace(cex, enc.spec)
            solver.pop()
            return cex, k
        solver.pop()
        if r == z3.unknown:
            return None, k - 1
    return None, max_depth


def _stutters(u: Unrolling, model: z3.ModelRef, upto: int) -> int:
    """Stuttering steps among steps ``0 .. upto-1`` of a model."""
    return sum(1 for i in range(upto)
               if model.eval(u.sel[i], model_completion=True).as_long() == STUTTER)


class _Templates:
    """Each transition's step formula and each group's enabledness, built once over template
    states and substituted at every depth (the same formulas as :meth:`Encoding.step` and
    :meth:`Encoding.group_enabled` there; building them anew for every depth is most of a
    deep search's Python time)."""

    def __init__(self, enc: Encoding) -> None:
        self.enc = enc
        tag = "tpl"
        self.s, self.s2 = enc.state(tag), enc.state(f"{tag}'")
        self.ps = enc.params(tag)
        self.steps = [enc.step(t, self.s, self.s2, self.ps) for t in enc.relation]
        self._enabled: dict[str, z3.BoolRef] = {}

    def _pairs(self, tpl: Any, s: Any) -> list[tuple[z3.ExprRef, z3.ExprRef]]:
        return [(getattr(tpl, f), getattr(s, f)) for f in self.enc.spec.variables]

    def steps_at(self, s: Any, s2: Any, ps: dict[str, z3.ArithRef]) -> list[z3.BoolRef]:
        """Every transition's step formula from ``s`` to ``s2`` with the parameters ``ps``."""
        pairs = [*self._pairs(self.s, s), *self._pairs(self.s2, s2),
                 *((self.ps[k], ps[k]) for k in self.ps)]
        return substitute_all(self.steps, pairs)

    def group_enabled(self, group: str, s: Any) -> z3.BoolRef:
        if group not in self._enabled:
            self._enabled[group] = self.enc.group_enabled(group, self.s)
        return substitute_all([self._enabled[group]], self._pairs(self.s, s))[0]


def substitute_all(formulas: list[z3.BoolRef],
                    pairs: list[tuple[z3.ExprRef, z3.ExprRef]]) -> list[z3.BoolRef]:
    """``z3.substitute`` of the same pairs in each formula, through Z3's C API once the pairs'
    arrays are built (the Python wrapper re-checks every pair's sorts on each call)."""
    if not formulas:
        return []
    ctx = formulas[0].ctx
    n = len(pairs)
    frm = (z3.Ast * n)()
    to = (z3.Ast * n)()
    for i, (a, b) in enumerate(pairs):
        assert a.sort().eq(b.sort()), (a, b)
        frm[i], to[i] = a.as_ast(), b.as_ast()
    return [z3.BoolRef(z3.Z3_substitute(ctx.ref(), f.as_ast(), n, frm, to), ctx)
            for f in formulas]


@dataclass
class _TemplateUnrolling(Unrolling):
    """An :class:`Unrolling` whose steps are substituted templates (:class:`_Templates`)."""

    templates: _Templates | None = None

    def extend(self) -> None:
        assert self.templates is not None
        i = self.k
        s, s2 = self.states[i], self.enc.state(f"{self.tag}{i + 1}")
        ps = self.enc.params(f"{self.tag}{i}")
        sel = z3.Int(f"sel@{self.tag}{i}", self.enc.ctx)
        alts = [z3.And(sel == n, f)
                for n, f in enumerate(self.templates.steps_at(s, s2, ps))]
        if self.stutter:
            alts.append(z3.And(sel == STUTTER, states_equal(s, s2)))
        self.solver.add(z3.Or(*alts))
        self.states.append(s2)
        self.params.append(ps)
        self.sel.append(sel)


class _Assertions:
    """Collects what an :class:`Unrolling` asserts (a solver stand-in): the unrolling is
    built once, then copied into a fresh solver per search."""

    def __init__(self) -> None:
        self.formulas: list[z3.BoolRef] = []

    def add(self, *fs: z3.BoolRef) -> None:
        self.formulas.extend(fs)


class _InContext:
    """A model of a solver in another Z3 context, evaluating main-context terms."""

    def __init__(self, model: z3.ModelRef, ctx: z3.Context) -> None:
        self.model = model
        self.ctx = ctx

    def eval(self, e: z3.ExprRef, model_completion: bool = False) -> z3.ExprRef:
        return self.model.eval(e.translate(self.ctx), model_completion=model_completion)


class OneShot:
    """Counterexample searches of a finite lifecycle: one Z3 check per property, at full depth.

    The hand-written proofs' searches (:func:`reach`, :func:`lasso`) check depth after depth
    for the shortest counterexample; on the migration's interleavings (a dozen independent
    actors) the unsatisfiable shallow depths are what costs, and the deep ones approach the
    search's resource limit. Here one unrolling of ``depth`` steps (and one more for a lasso)
    with a stuttering step allowed everywhere is built once for the spec, and each property's
    search is one satisfiability check of it: stuttering steps pad any shorter behaviour, so
    the check covers every counterexample of at most ``depth`` steps (a lasso: ``depth + 1``,
    prefix and cycle). A counterexample found is real (a behaviour from Init, stuttering steps
    left out) but not necessarily the shortest; ``unsat`` means none within the depth;
    ``unknown`` (the resource limit) is reported as the depth before, never as proved.

    Deterministic, and the same whatever was searched or built before: each check is a fresh
    solver in a Z3 context of its own, into which the unrolling and the target are copied
    (as Spacer's queries are), under :data:`SEARCH_RLIMIT` with fixed seeds.
    """

    def __init__(self, enc: Encoding, depth: int, rlimit: int = SEARCH_RLIMIT) -> None:
        self.enc = enc
        self.depth = depth
        """Steps of a safety counterexample (a lasso: one more)."""
        self.rlimit = rlimit
        self._u: _TemplateUnrolling | None = None
        self._recorded: _Assertions | None = None

    @property
    def unrolling(self) -> _TemplateUnrolling:
        if self._u is None:
            self._recorded = _Assertions()
            recorder: Any = self._recorded
            self._u = _TemplateUnrolling(self.enc, recorder, "o", stutter=True,
                                         templates=_Templates(self.enc))
            while self._u.k < self.depth + 1:
                self._u.extend()
        return self._u

    def _check(self, extra: list[z3.BoolRef]) -> tuple[z3.CheckSatResult, Any]:
        """The unrolling and ``extra`` in a fresh solver of a fresh context: the verdict and
        its model (evaluating main-context terms), if sat."""
        assert self._u is not None and self._recorded is not None
        ctx = z3.Context()
        solver = limited(z3.Solver(ctx=ctx), self.rlimit)
        for f in (*self._recorded.formulas, *extra):
            solver.add(f.translate(ctx))
        r = solver.check()
        return r, _InContext(solver.model(), ctx) if r == z3.sat else None

    def safety(self, target: Callable[[Unrolling, int], z3.BoolRef], *, name: str, kind: str,
               summary: str = "", bad_step: bool = False) -> tuple[dict[str, Any] | None, int]:
        """A behaviour of at most :attr:`depth` steps from Init to a state where
        ``target(unrolling, k)`` holds (``bad_step``: whose last step is the bad one, which
        ``target`` must not let be a stutter). Returns the counterexample (None: none) and
        the depth searched (``depth``, or ``depth - 1`` when the check ran out of its
        resource limit)."""
        u = self.unrolling
        k = self.depth - 1 if bad_step else self.depth
        r, model = self._check([target(u, k)])
        if r != z3.sat:
            return None, self.depth if r == z3.unsat else self.depth - 1
        init, steps = u.trace(model, self.depth)
        cex = {"property": name, "kind": kind, "summary": summary,
               "initial": state_dict(init), "steps": steps, "length": len(steps)}
        cex["text"] = format_trace(cex, self.enc.spec)
        return cex, self.depth

    def lasso(self, leads_from: Callable[[Any], Any], leads_to: Callable[[Any], Any], *,
              name: str, returns_to: Callable[[Any], z3.BoolRef] | None = None
              ) -> tuple[dict[str, Any] | None, int]:
        """A fair lasso of at most ``depth + 1`` steps (prefix and cycle) from Init on which
        ``leads_from`` holds once and ``leads_to`` never after: the constraints of
        :func:`lasso` at that one depth (``returns_to``: a constraint on the state the cycle
        returns to). Returns the lasso (None: none) and the depth searched."""
        u = self.unrolling
        enc, k = self.enc, self.depth + 1
        j, lo = z3.Int(f"j@{u.tag}", enc.ctx), z3.Int(f"loop@{u.tag}", enc.ctx)
        cons = _lasso_shape(u.states, k, j, lo, leads_from, leads_to, enc.ctx)
        if returns_to is not None:
            cons.append(returns_to(u.states[k]))
        fair_groups = enc.spec.weak_fairness
        assert u.templates is not None
        for g in fair_groups:
            cons.append(z3.Or(*(z3.And(lo <= i, z3.Or(
                u.taken(i, g.name), z3.Not(u.templates.group_enabled(g.name, u.states[i]))))
                for i in range(k))))
        r, model = self._check(cons)
        if r != z3.sat:
            return None, k if r == z3.unsat else k - 1
        init, steps = u.trace(model, k)
        loop_at = model.eval(lo, model_completion=True).as_long()
        p_at = model.eval(j, model_completion=True).as_long()
        cycle_start = loop_at - _stutters(u, model, loop_at)
        p_index = p_at - _stutters(u, model, p_at)
        cex = {"property": name, "kind": "leadsto",
               "summary": "a fair behaviour on which the antecedent never leads to the "
                          "consequent",
               "initial": state_dict(init), "steps": steps, "length": len(steps),
               "cycle_start": cycle_start, "p_index": p_index,
               "fairness": {g.name: g.statement for g in fair_groups}}
        cex["text"] = format_trace(cex, enc.spec)
        return cex, k


def reach_many(enc: Encoding, targets: dict[str, Callable[[Unrolling, int], z3.BoolRef]],
               max_depth: int, rlimit: int = SEARCH_RLIMIT, *, traces: bool = True
               ) -> dict[str, dict[str, Any]]:
    """For each named target, the fewest steps from Init to a state where it holds.

    One unrolling is shared by all targets. At each depth the targets not reached yet are
    asked together (one check of their disjunction, in a push/pop): ``unsat`` settles all of
    them at that depth in one check; ``sat`` reaches every target the model satisfies (the
    disjunction is asked again for the others). Only if that check runs out of ``rlimit``
    is each target asked on its own, as it always was. The depths are the same as one
    check per target gives (a target is reached at the first depth where it is satisfiable);
    the traces may be other paths of that length. A target is ``target(unrolling, k)`` on
    state ``k`` (it may use step ``k``, which is unrolled before the check). Returns
    ``{name: {"reached", "depth", "initial"?, "steps"?}}`` (the path only with ``traces``);
    a target whose own check runs out of ``rlimit`` is not reached, searched up to the depth
    before.
    """
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    # stuttering steps let the unrolling continue past states without successors (step k
    # is unrolled before state k is checked); they add no reachable state
    u = Unrolling(enc, solver, enc.fresh("m"), stutter=True)
    out: dict[str, dict[str, Any]] = {}
    todo = dict(targets)

    def reached(name: str, k: int, model: z3.ModelRef) -> None:
        out[name] = {"reached": True, "depth": k}
        if traces:
            init, steps = u.trace(model, k)
            out[name].update(initial=state_dict(init), steps=steps)
        del todo[name]

    for k in range(max_depth + 1):
        u.extend()
        formulas = {name: as_bool(todo[name](u, k), enc.ctx) for name in todo}
        alone: list[str] = []
        while formulas:
            solver.push()
            solver.add(z3.Or(*formulas.values()))
            r = solver.check()
            if r == z3.sat:
                model = solver.model()
                hit = [n for n, f in formulas.items()
                       if z3.is_true(model.eval(f, model_completion=True))]
                assert hit, "a model of the disjunction satisfies one of its targets"
                for name in hit:
                    reached(name, k, model)
                    del formulas[name]
            elif r == z3.unknown:
                alone = list(formulas)
                formulas = {}
            else:
                formulas = {}
            solver.pop()
        for name in alone:  # the disjunction ran out of its rlimit: one check each
            solver.push()
            solver.add(todo[name](u, k))
            r = solver.check()
            if r == z3.sat:
                reached(name, k, solver.model())
            elif r == z3.unknown:
                out[name] = {"reached": False, "depth": None,
                             "searched": f"up to {k - 1} steps from Init (depth {k}: "
                                         f"rlimit {rlimit} reached)"}
                del todo[name]
            solver.pop()
        if not todo:
            break
    for name in todo:
        out[name] = {"reached": False, "depth": None,
                     "searched": f"up to {max_depth} steps from Init"}
    return out


# --- the explorer's counterexamples, replayed through this encoding --------------------------


def _taken_by(enc: Encoding, step: Mapping[str, Any]) -> list[Transition]:
    """The declared transitions a recorded step may be (same trigger, source, dest, actor)."""
    return [t for t in enc.relation
            if (t.trigger, t.source, t.dest, t.actor)
            == (step["trigger"], step["source"], step["dest"], step["actor"])]


def confirm(enc: Encoding, prop: Any, cex: Mapping[str, Any], rlimit: int = RLIMIT) -> bool:
    """Is the concrete trace ``cex`` (the explorer's format, :mod:`autoconverge.model.trace`)
    a behaviour of this encoding from Init that violates ``prop``?

    Every state is pinned to the recorded one and every step must satisfy the Z3 step
    formula of a declared transition with the recorded parameters; then the violation is
    checked in Z3 terms: the invariant false in the last state, the step property false on
    the last step, no way on but a fault in a non-terminal last state, or - a lasso - ``p``
    at ``p_index``, ``~q`` from there on, the cycle closing, and every weakly fair group
    taken (changing the state) or disabled somewhere on the cycle (stuttering forever: each
    disabled in the last state). One check, ``sat`` or not.
    """
    steps = list(cex["steps"])
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    tag = enc.fresh("x")
    states = [enc.state(f"{tag}{i}") for i in range(len(steps) + 1)]
    solver.add(enc.init(states[0]))
    record = enc.spec.schema.record
    solver.add(states_equal(states[0], lifted_state(state_from_dict(cex["initial"], record))))
    groups: list[str | None] = []
    for i, st in enumerate(steps):
        ts = _taken_by(enc, st)
        params = {k: z3.IntVal(v, enc.ctx) for k, v in st["params"].items()}
        if not ts or any(set(t.params) - set(params) for t in ts):
            return False
        pre, post = states[i], states[i + 1]
        solver.add(states_equal(post, lifted_state(state_from_dict(st["state"], record))))
        last = i == len(steps) - 1
        if last and prop.kind == "step":
            solver.add(z3.Or(*(z3.And(enc.step(t, pre, post, params),
                                      z3.Not(as_bool(prop.step(pre, t, post), enc.ctx)))
                               for t in ts)))
        else:
            solver.add(z3.Or(*(enc.step(t, pre, post, params) for t in ts)))
        groups.append(ts[0].fairness)
    end = states[-1]
    if prop.kind == "invariant":
        solver.add(z3.Not(as_bool(prop.invariant(end), enc.ctx)))
    elif prop.kind == "step":
        if not steps:
            return False
    elif prop.kind == "deadlock":
        solver.add(z3.Not(as_bool(enc.spec.terminal(end), enc.ctx)),
                   z3.Not(enc.progress_enabled(end)))
    elif prop.kind == "leadsto":
        solver.add(*_lasso_violation(enc, prop, cex, states, groups))
    else:
        return False
    return bool(solver.check() == z3.sat)


def confirm_path(enc: Encoding, cex: Mapping[str, Any], rlimit: int = RLIMIT) -> bool:
    """Is the concrete trace ``cex`` (the explorer's format) a behaviour of this encoding from
    Init? Every state pinned to the recorded one, every step the Z3 step formula of a declared
    transition with the recorded parameters: one check, ``sat`` or not."""
    steps = list(cex["steps"])
    solver = limited(z3.Solver(ctx=enc.ctx), rlimit)
    tag = enc.fresh("y")
    record = enc.spec.schema.record
    states = [enc.state(f"{tag}{i}") for i in range(len(steps) + 1)]
    solver.add(enc.init(states[0]))
    solver.add(states_equal(states[0], lifted_state(state_from_dict(cex["initial"], record))))
    for i, st in enumerate(steps):
        ts = _taken_by(enc, st)
        params = {k: z3.IntVal(v, enc.ctx) for k, v in st["params"].items()}
        if not ts or any(set(t.params) - set(params) for t in ts):
            return False
        post = states[i + 1]
        solver.add(states_equal(post, lifted_state(state_from_dict(st["state"], record))))
        solver.add(z3.Or(*(enc.step(t, states[i], post, params) for t in ts)))
    return bool(solver.check() == z3.sat)


def _lasso_violation(enc: Encoding, prop: Any, cex: Mapping[str, Any], states: list[Any],
                     groups: list[str | None]) -> list[z3.BoolRef]:
    n = len(states) - 1
    start = int(cex.get("cycle_start", n))
    p_index = int(cex.get("p_index", 0))
    out = [as_bool(prop.leads_from(states[p_index]), enc.ctx)]
    out += [z3.Not(as_bool(prop.leads_to(s), enc.ctx)) for s in states[p_index:]]
    if start >= n:  # stutters forever: no weakly fair group can move in the last state
        out += [z3.Not(enc.group_enabled(g.name, states[n])) for g in enc.spec.weak_fairness]
        return out
    out.append(states_equal(states[n], states[start]))
    for g in enc.spec.weak_fairness:
        out.append(z3.Or(*(
            z3.Or(z3.And(z3.BoolVal(groups[i] == g.name, enc.ctx),
                         z3.Not(states_equal(states[i], states[i + 1]))),
                  z3.Not(enc.group_enabled(g.name, states[i])))
            for i in range(start, n))))
    return out


def _lasso_shape(states: Any, k: int, j: Any, lo: Any, leads_from: Any, leads_to: Any,
                 ctx: Any) -> list[z3.BoolRef]:
    """A lasso over ``states[0..k]``: state ``k`` equals state ``lo`` (the cycle's start),
    ``p`` holds at step ``j``, and ``q`` holds nowhere from ``j`` on or on the cycle."""
    cons: list[z3.BoolRef] = [z3.And(lo >= 0, lo < k, j >= 0, j <= k)]
    cons.append(z3.Or(*(z3.And(lo == i, states_equal(states[k], states[i]))
                        for i in range(k))))
    cons.append(z3.Or(*(z3.And(j == i, as_bool(leads_from(states[i]), ctx))
                        for i in range(k + 1))))
    for i in range(k + 1):
        cons.append(z3.Implies(z3.Or(i >= j, i >= lo),
                               z3.Not(as_bool(leads_to(states[i]), ctx))))
    return cons
