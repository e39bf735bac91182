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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.model.trace import format_counterexample
from autoconverge.spec import WEAK_FAIRNESS, FairnessGroup, State, Transition

from .encoding import Encoding, as_bool, state_dict, states_equal

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
          timeout_ms: int = 10_000) -> dict[str, Any] | None:
    """Shortest path from Init to a state where ``target(unrolling, k)`` holds.

    With ``bad_step`` the target constrains step ``k`` (``s_k -> s_{k+1}``), which is
    included in the trace as its last step.
    """
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    u = Unrolling(enc, solver, enc.fresh("r"))
    deadline = time.perf_counter() + timeout_ms / 1000
    for k in range(max_depth + 1):
        if bad_step:
            u.extend()
        solver.push()
        solver.add(target(u, k))
        r = solver.check()
        if r == z3.sat:
            model = solver.model()
            init, steps = u.trace(model, k + 1 if bad_step else k)
            solver.pop()
            cex = {"property": name, "kind": kind, "summary": summary,
                   "initial": state_dict(init), "steps": steps, "length": len(steps)}
            cex["text"] = format_trace(cex)
            return cex
        solver.pop()
        if r == z3.unknown or time.perf_counter() > deadline:
            return None
        if not bad_step:
            u.extend()
    return None


def lasso(enc: Encoding, leads_from: Callable[[State], Any], leads_to: Callable[[State], Any],
          max_depth: int, *, name: str, timeout_ms: int = 20_000,
          fair_groups: tuple[FairnessGroup, ...] = WEAK_FAIRNESS
          ) -> tuple[dict[str, Any] | None, int]:
    """A fair lasso from Init on which ``leads_from`` holds once and ``leads_to`` never after.

    Fairness on the cycle ``s_l .. s_k = s_l``: every weakly-fair group either takes a
    state-changing step in it or is disabled in one of its states (so it is not continuously
    enabled). User calls carry no fairness. Stuttering steps are allowed (a behaviour may stop
    where no fair group can move).
    """
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    u = Unrolling(enc, solver, enc.fresh("l"), stutter=True)
    deadline = time.perf_counter() + timeout_ms / 1000
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
        solver.set("timeout", max(1, int((deadline - time.perf_counter()) * 1000)))
        r = solver.check()
        if r == z3.sat:
            model = solver.model()
            init, steps = u.trace(model, k)
            loop_at = model.eval(lo, model_completion=True).as_long()
            stutters_before = sum(
                1 for i in range(loop_at)
                if model.eval(u.sel[i], model_completion=True).as_long() == STUTTER
            )
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
        if time.perf_counter() > deadline:
            return None, k
    return None, max_depth


def reach_many(enc: Encoding, targets: dict[str, Callable[[Unrolling, int], z3.BoolRef]],
               max_depth: int, timeout_ms: int = 30_000) -> dict[str, dict[str, Any]]:
    """For each named target, the fewest steps from Init to a state where it holds.

    One unrolling is shared by all targets (each checked in a push/pop at every depth until
    found). A target is ``target(unrolling, k)`` on state ``k`` (it may use step ``k``, which
    is unrolled before the check). Returns ``{name: {"reached", "depth", "trace"?}}``.
    """
    solver = z3.Solver()
    # stuttering steps let the unrolling continue past states without successors (step k
    # is unrolled before state k is checked); they add no reachable state
    u = Unrolling(enc, solver, enc.fresh("m"), stutter=True)
    deadline = time.perf_counter() + timeout_ms / 1000
    out: dict[str, dict[str, Any]] = {}
    todo = dict(targets)
    for k in range(max_depth + 1):
        u.extend()
        for name in list(todo):
            remaining = int((deadline - time.perf_counter()) * 1000)
            if remaining <= 0:
                break
            solver.set("timeout", remaining)
            solver.push()
            solver.add(todo[name](u, k))
            r = solver.check()
            if r == z3.sat:
                model = solver.model()
                init, steps = u.trace(model, k)
                out[name] = {"reached": True, "depth": k, "initial": state_dict(init),
                             "steps": steps}
                del todo[name]
            solver.pop()
        if not todo:
            break
    for name in todo:
        out[name] = {"reached": False, "depth": None,
                     "searched": f"up to {max_depth} steps from Init"}
    return out
