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
needs: :data:`BMC_DEPTH` is read from the zoo's declaration (the largest ``max_trace`` of
:data:`autoconverge.spec.variants.VARIANTS`, the longest shortest counterexample the explorer
needs), never written here as a number. Nothing is bounded by the wall clock: each depth is
one Z3 check under a resource limit (:data:`SEARCH_RLIMIT`) with fixed seeds, so how deep a
search got and what it found depend only on the spec and the bound. Searches are
incremental - one solver per search, the unrolling extended step by step and each depth's
target checked inside ``push``/``pop`` - which is deterministic too: the same assertions and
checks in the same order every time. A counterexample deeper than the bound is still
confirmed when the explorer has one: :func:`confirm` replays a concrete trace through this
encoding (:mod:`.prove` upgrades ``not proved`` to ``violated`` with it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.model.trace import format_counterexample, state_from_dict
from autoconverge.spec import WEAK_FAIRNESS, FairnessGroup, State, Transition, terminal
from autoconverge.spec.variants import VARIANTS

from .encoding import Encoding, as_bool, lifted_state, state_dict, states_equal
from .z3_obligations import RLIMIT, limited


def zoo_depth() -> int:
    """The longest shortest counterexample of the bug zoo, in steps: the largest ``max_trace``
    declared in :mod:`autoconverge.spec.variants` (prefix + cycle for a lasso)."""
    return max(v.max_trace for v in VARIANTS)


BMC_DEPTH = zoo_depth()
"""Steps from Init searched for a safety counterexample (the bad step of a step property
included): as deep as the longest counterexample of the bug zoo."""
LASSO_DEPTH = BMC_DEPTH + 1
"""Steps (prefix + cycle, stuttering steps included) searched for a fair lasso: one more than
:data:`BMC_DEPTH`, because a lasso that ends stuttering forever closes with one stuttering
step, which the explorer's lasso length does not count."""
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
    states: list[State] = field(default_factory=list)
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
        sel = z3.Int(f"sel@{self.tag}{i}")
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
            return z3.BoolVal(False)
        return z3.And(z3.Or(*(self.sel[i] == n for n in idx)),
                      z3.Not(states_equal(self.states[i], self.states[i + 1])))

    def trace(self, model: z3.ModelRef, upto: int) -> tuple[State, list[dict[str, Any]]]:
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
               params: dict[str, z3.ArithRef], post: State) -> dict[str, Any]:
    return {
        "actor": t.actor, "trigger": t.trigger, "source": t.source, "dest": t.dest,
        "params": enc.param_values(model, t, params), "calls": list(t.calls),
        "state": state_dict(post),
    }


def format_trace(cex: dict[str, Any]) -> str:
    """A counterexample as numbered lines: the explorer's format, shared by every checker."""
    return format_counterexample(cex)


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
    solver = limited(z3.Solver(), rlimit)
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
            cex["text"] = format_trace(cex)
            return cex, n
        solver.pop()
        if r == z3.unknown:
            return None, n - 1
    return None, max_depth


def lasso(enc: Encoding, leads_from: Callable[[State], Any], leads_to: Callable[[State], Any],
          max_depth: int, *, name: str, rlimit: int = SEARCH_RLIMIT,
          fair_groups: tuple[FairnessGroup, ...] = WEAK_FAIRNESS
          ) -> tuple[dict[str, Any] | None, int]:
    """A fair lasso from Init on which ``leads_from`` holds once and ``leads_to`` never after.

    Fairness on the cycle ``s_l .. s_k = s_l``: every weakly-fair group either takes a
    state-changing step in it or is disabled in one of its states (so it is not continuously
    enabled). User calls carry no fairness. Stuttering steps are allowed (a behaviour may stop
    where no fair group can move).

    The lasso has the fewest steps ``k`` (stuttering included, at most ``max_depth``); among
    those, one that ends stuttering forever is preferred, so its printed length (``k`` less
    the stuttering step) does not depend on which model Z3 returns. Returns the lasso (None:
    none) and the depth: ``k``, or the steps searched exhaustively.
    """
    solver = limited(z3.Solver(), rlimit)
    u = Unrolling(enc, solver, enc.fresh("l"), stutter=True)
    enabled_cache: dict[tuple[int, str], z3.BoolRef] = {}
    for k in range(1, max_depth + 1):
        u.extend()
        j, lo = z3.Int(f"j@{u.tag}{k}"), z3.Int(f"loop@{u.tag}{k}")
        cons: list[z3.BoolRef] = [z3.And(lo >= 0, lo < k, j >= 0, j <= k)]
        cons.append(z3.Or(*(z3.And(lo == i, states_equal(u.states[k], u.states[i]))
                            for i in range(k))))
        cons.append(z3.Or(*(z3.And(j == i, as_bool(leads_from(u.states[i])))
                            for i in range(k + 1))))
        for i in range(k + 1):
            cons.append(z3.Implies(z3.Or(i >= j, i >= lo),
                                   z3.Not(as_bool(leads_to(u.states[i])))))
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
            cex["text"] = format_trace(cex)
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


def reach_many(enc: Encoding, targets: dict[str, Callable[[Unrolling, int], z3.BoolRef]],
               max_depth: int, rlimit: int = SEARCH_RLIMIT) -> dict[str, dict[str, Any]]:
    """For each named target, the fewest steps from Init to a state where it holds.

    One unrolling is shared by all targets (each checked in a push/pop at every depth until
    found). A target is ``target(unrolling, k)`` on state ``k`` (it may use step ``k``, which
    is unrolled before the check). Returns ``{name: {"reached", "depth", "trace"?}}``; a
    target whose check runs out of ``rlimit`` is not reached, searched up to the depth before.
    """
    solver = limited(z3.Solver(), rlimit)
    # stuttering steps let the unrolling continue past states without successors (step k
    # is unrolled before state k is checked); they add no reachable state
    u = Unrolling(enc, solver, enc.fresh("m"), stutter=True)
    out: dict[str, dict[str, Any]] = {}
    todo = dict(targets)
    for k in range(max_depth + 1):
        u.extend()
        for name in list(todo):
            solver.push()
            solver.add(todo[name](u, k))
            r = solver.check()
            if r == z3.sat:
                model = solver.model()
                init, steps = u.trace(model, k)
                out[name] = {"reached": True, "depth": k, "initial": state_dict(init),
                             "steps": steps}
                del todo[name]
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
    solver = limited(z3.Solver(), rlimit)
    tag = enc.fresh("x")
    states = [enc.state(f"{tag}{i}") for i in range(len(steps) + 1)]
    solver.add(enc.init(states[0]))
    solver.add(states_equal(states[0], lifted_state(state_from_dict(cex["initial"]))))
    groups: list[str | None] = []
    for i, st in enumerate(steps):
        ts = _taken_by(enc, st)
        params = {k: z3.IntVal(v) for k, v in st["params"].items()}
        if not ts or any(set(t.params) - set(params) for t in ts):
            return False
        pre, post = states[i], states[i + 1]
        solver.add(states_equal(post, lifted_state(state_from_dict(st["state"]))))
        last = i == len(steps) - 1
        if last and prop.kind == "step":
            solver.add(z3.Or(*(z3.And(enc.step(t, pre, post, params),
                                      z3.Not(as_bool(prop.step(pre, t, post)))) for t in ts)))
        else:
            solver.add(z3.Or(*(enc.step(t, pre, post, params) for t in ts)))
        groups.append(ts[0].fairness)
    end = states[-1]
    if prop.kind == "invariant":
        solver.add(z3.Not(as_bool(prop.invariant(end))))
    elif prop.kind == "step":
        if not steps:
            return False
    elif prop.kind == "deadlock":
        solver.add(z3.Not(as_bool(terminal(end))), z3.Not(enc.progress_enabled(end)))
    elif prop.kind == "leadsto":
        solver.add(*_lasso_violation(enc, prop, cex, states, groups))
    else:
        return False
    return bool(solver.check() == z3.sat)


def _lasso_violation(enc: Encoding, prop: Any, cex: Mapping[str, Any], states: list[State],
                     groups: list[str | None]) -> list[z3.BoolRef]:
    n = len(states) - 1
    start = int(cex.get("cycle_start", n))
    p_index = int(cex.get("p_index", 0))
    out = [as_bool(prop.leads_from(states[p_index]))]
    out += [z3.Not(as_bool(prop.leads_to(s))) for s in states[p_index:]]
    if start >= n:  # stutters forever: no weakly fair group can move in the last state
        out += [z3.Not(enc.group_enabled(g.name, states[n])) for g in WEAK_FAIRNESS]
        return out
    out.append(states_equal(states[n], states[start]))
    for g in WEAK_FAIRNESS:
        out.append(z3.Or(*(
            z3.Or(z3.And(z3.BoolVal(groups[i] == g.name),
                         z3.Not(states_equal(states[i], states[i + 1]))),
                  z3.Not(enc.group_enabled(g.name, states[i])))
            for i in range(start, n))))
    return out
