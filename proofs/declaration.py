"""Checks of the declaration itself (not of its behaviour's properties), at the explorer's bound.

- every worker and every controller state is reachable (at the configured bound);
- every declared transition is enabled in some reachable state (faults only when faults
  are explored; without them, a transition only a fault makes reachable is reported as not
  explored, not as dead);
- no two transitions of one trigger and source have overlapping guards: ``transitions``
  silently fires the first whose guard passes, so an overlap would hide a transition. Checked
  with Z3 over *all* states (the guards are evaluated on the proofs' Z3 encoding of the state
  record, :func:`.encoding.state_vars`: enumeration sorts for the machine states, ``Seq(Int)``
  for the channel), and confirmed exhaustively on the reachable states (the explorer's graph,
  :func:`autoconverge.model.graph.build_graph`);
- ``exit`` is the only worker state, and ``done`` the only controller state, without a
  transition to another state (self-loops aside: a vCPU call the exiting worker started
  ending, a call refused once the throttler is closed).

Each check is a :class:`DeclarationCheck` (``as_dict()``: ``{"name", "holds", "detail"}``).
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass
from typing import Any

import z3

from autoconverge.model.config import ExplorerConfig
from autoconverge.model.graph import build_graph
from autoconverge.spec import CONTROLLER_STATES, WORKER_STATES, Spec, Transition
from autoconverge.spec import lifecycle as L

from .encoding import state_vars

WORKER_FINAL = L.EXIT
CONTROLLER_FINAL = L.DONE


@dataclass(frozen=True)
class DeclarationCheck:
    """One check of the declaration: its name, whether it holds, and what was found."""

    name: str
    holds: bool
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _z3_overlap(spec: Spec, t1: Transition, t2: Transition) -> str | None:
    """A model of a state enabling both (as text), or None if the guards are disjoint."""
    s = state_vars(spec, "")
    params = {name: z3.Int(name) for name in (*t1.params, *t2.params)}
    solver = z3.Solver()
    solver.add(t1.enabled(s, **{k: params[k] for k in t1.params}))
    solver.add(t2.enabled(s, **{k: params[k] for k in t2.params}))
    if solver.check() == z3.sat:
        return str(solver.model())
    return None


def _enabled_somewhere(spec: Spec, config: ExplorerConfig, g: Any) -> set[tuple[str, str]]:
    """(trigger, source) of every transition enabled in a state of ``g`` (faults only when
    ``config`` explores them)."""
    fired = {(g.labels[li].transition.trigger, g.labels[li].transition.source)
             for edges in g.succ for _, li in edges}
    # edges cut by the bound still count as enabled: look at the records themselves
    domain = L.param_domains(config.percents)
    for s in g.reached_records():
        for t, _params, _nxt in spec.successors(s, domain):
            if config.faults or not t.is_fault:
                fired.add((t.trigger, t.source))
    return fired


def check_declaration(spec: Spec, config: ExplorerConfig) -> list[DeclarationCheck]:
    """Run the declaration checks at ``config``'s bound."""
    g = build_graph(spec, config, {}, {})
    relation = spec.relation()
    checks: list[DeclarationCheck] = []

    reached = g.reached_records()
    seen_w = {s.w for s in reached}
    seen_c = {s.c for s in reached}
    miss_w = [w for w in WORKER_STATES if w not in seen_w]
    miss_c = [c for c in CONTROLLER_STATES if c not in seen_c]
    checks.append(DeclarationCheck(
        "EveryWorkerStateReachable", not miss_w,
        f"unreachable: {miss_w}" if miss_w else f"all {len(WORKER_STATES)} reached",
    ))
    checks.append(DeclarationCheck(
        "EveryControllerStateReachable", not miss_c,
        f"unreachable: {miss_c}" if miss_c else f"all {len(CONTROLLER_STATES)} reached",
    ))

    fired = _enabled_somewhere(spec, config, g)
    skipped = [t.label for t in relation if t.is_fault and not config.faults]
    never = [t.label for t in relation
             if (t.trigger, t.source) not in fired and t.label not in skipped]
    after_fault: list[str] = []
    if never and not config.faults:
        # a transition that only a fault makes reachable (e.g. shutdown()'s own resume
        # failing) is not explored either: enabled somewhere once faults are explored
        with_faults = dataclasses.replace(config, faults=True, expected_states=None,
                                          expected_depth=None)
        fired_f = _enabled_somewhere(spec, with_faults, build_graph(spec, with_faults, {}, {}))
        after_fault = [lab for lab in never
                       if tuple(lab.split("@", 1)) in fired_f]
        never = [lab for lab in never if lab not in after_fault]
    detail = f"never enabled: {never}" if never else f"all {len(relation)} enabled somewhere"
    if skipped:
        detail += f" (not explored: {skipped}"
        if after_fault:
            detail += f"; reachable only after a fault: {after_fault}"
        detail += ")"
    checks.append(DeclarationCheck("EveryTransitionEnabled", not never, detail))

    groups: dict[tuple[str, str, str], list[Transition]] = {}
    for t in relation:
        groups.setdefault((t.machine, t.trigger, t.source), []).append(t)
    overlaps: list[str] = []
    pairs = 0
    for (_m, trigger, source), ts in groups.items():
        for t1, t2 in itertools.combinations(ts, 2):
            pairs += 1
            model = _z3_overlap(spec, t1, t2)
            if model is not None:
                overlaps.append(f"{trigger}@{source} -> {t1.dest} / {t2.dest}: z3 {model}")
    # exhaustive confirmation on the reachable records (every parameter over its domain)
    domain = L.param_domains(config.percents)
    reach_overlaps: set[str] = set()
    for s in reached:
        for (_m, trigger, source), ts in groups.items():
            if len(ts) < 2:
                continue
            for combo in itertools.product(*(domain[name] for name in ts[0].params)):
                params = dict(zip(ts[0].params, combo, strict=True))
                if sum(1 for t in ts if t.enabled(s, **params)) > 1:
                    reach_overlaps.add(f"{trigger}@{source}")
    overlaps = [o + (" (also in a reachable state)"
                     if o.split(" ", 1)[0] in reach_overlaps else " (no reachable state)")
                for o in overlaps]
    for label in sorted(reach_overlaps):
        if not any(o.startswith(label + " ") for o in overlaps):  # pragma: no cover
            overlaps.append(f"{label}: overlap in a reachable state")
    checks.append(DeclarationCheck(
        "GuardsDisjoint", not overlaps,
        "; ".join(overlaps) if overlaps else
        f"{pairs} pair(s) of one trigger and source, all disjoint (z3, all states);"
        f" {len(reach_overlaps)} overlap(s) in reachable states",
    ))

    problems: list[str] = []
    for states, final, which in ((WORKER_STATES, WORKER_FINAL, "worker"),
                                 (CONTROLLER_STATES, CONTROLLER_FINAL, "controller")):
        for st in states:
            leaves = [t for t in relation
                      if t.machine == which and t.source == st and t.dest != st]
            if st == final and leaves:
                # a final state keeps only self-loops: a vCPU call that the exiting worker
                # started ending, a call refused once the throttler is closed
                problems.append(f"{which} {st} has transitions out of it "
                                f"{[t.label for t in leaves]}")
            if st != final and not leaves:
                problems.append(f"{which} {st} has no way out")
    checks.append(DeclarationCheck(
        "ExitOnlyStateWithoutWayOut", not problems,
        "; ".join(problems) if problems else
        f"only worker '{WORKER_FINAL}' and controller '{CONTROLLER_FINAL}' are final "
        "(nothing leaves them)",
    ))
    return checks
