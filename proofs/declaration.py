"""Checks of the declaration itself (not of its behaviour's properties), at the explorer's bound.

Generic over the lifecycle: the machines, their states and their final states are the
spec's :class:`~autoconverge.spec.core.MachineDecl` s.

- every state of every machine is reachable (at the configured bound): one check per machine,
  ``Every<Machine>StateReachable`` (the throttle's ``EveryWorkerStateReachable`` and
  ``EveryControllerStateReachable``);
- every declared transition is enabled in some reachable state (faults only when faults
  are explored; without them, a transition only a fault makes reachable is reported as not
  explored, not as dead); an environment step declared as a self-loop on every state of the
  machine it steps (an actor that is not that machine: the migration's throttler, guest and
  network) must be enabled in some state of the machine, not in each;
- no two transitions of one trigger and source have overlapping guards: ``transitions``
  silently fires the first whose guard passes, so an overlap would hide a transition. Checked
  with Z3 over *all* states (the guards are evaluated on the proofs' Z3 encoding of the state
  record, :func:`.encoding.state_vars`: enumeration sorts for the machine states, ``Seq(Int)``
  for the channel), and confirmed exhaustively on the reachable states (the explorer's graph,
  :func:`autoconverge.model.graph.build_graph`);
- ``OnlyFinalStatesWithoutWayOut``: a machine's final states (:attr:`MachineDecl.final`: the
  throttle worker's ``exit``, its controller's ``done``) are exactly its states without a
  transition to another state other than a failure (self-loops aside: a vCPU call the exiting
  worker started ending, a call refused once the throttler is closed; a failure may still
  leave a final state: the migration's destination dying after its REPORT); every other state
  has such a way out.

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
from autoconverge.spec import Spec, Transition
from autoconverge.spec.core import param_combinations

from .encoding import context_of, state_vars


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
    ctx = context_of(spec.schema)
    params = {name: z3.Int(name, ctx) for name in (*t1.params, *t2.params)}
    solver = z3.Solver(ctx=ctx)
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
    # edges cut by the bound still count as enabled: look at the records themselves, for
    # the transitions no edge shows enabled (each until a record enables it)
    domain = spec.param_domains(config.percents)
    pending = [t for t in spec.relation() if (config.faults or not t.is_fault)
               and (t.trigger, t.source) not in fired]
    combos = {t: list(param_combinations(t.params, domain)) for t in pending}
    for s in g.reached_records():
        if not pending:
            break
        still: list[Transition] = []
        for t in pending:
            if (t.trigger, t.source) in fired:
                continue
            if any(t.enabled(s, **ps) for ps in combos[t]):
                fired.add((t.trigger, t.source))
            else:
                still.append(t)
        pending = still
    return fired


def _environment_loop(t: Transition) -> bool:
    """A self-loop of an actor that is not the machine it steps (its environment)."""
    return bool(t.source == t.dest and t.actor != t.machine)


def check_declaration(spec: Spec, config: ExplorerConfig) -> list[DeclarationCheck]:
    """Run the declaration checks at ``config``'s bound."""
    g = build_graph(spec, config, {}, {})
    relation = spec.relation()
    checks: list[DeclarationCheck] = []

    reached = g.reached_records()
    machines = spec.schema.machines
    for m in machines:
        seen = {getattr(s, m.var) for s in reached}
        miss = [st for st in m.states if st not in seen]
        checks.append(DeclarationCheck(
            f"Every{m.name.capitalize()}StateReachable", not miss,
            f"unreachable: {miss}" if miss else f"all {len(m.states)} reached",
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
    # an environment actor's self-loop (an actor stepping a machine it is not, declared on
    # every state of that machine: the migration's throttler, guest, network) needs to be
    # enabled in some state of the machine, not in each
    env = {t.label: (t.actor, t.trigger) for t in relation if _environment_loop(t)}
    fired_env = {env[t.label] for t in relation
                 if t.label in env and (t.trigger, t.source) in fired}
    some_states = sorted({f"{a}: {tr}" for lab, (a, tr) in env.items()
                          if lab in never and (a, tr) in fired_env})
    never = [lab for lab in never if not (lab in env and env[lab] in fired_env)]
    enabled = sum(1 for t in relation if (t.trigger, t.source) in fired)
    if never:
        detail = f"never enabled: {never}"
    elif some_states:
        detail = (f"{enabled} of {len(relation)} enabled somewhere; the others are environment "
                  "steps declared on every state of the machine they step and enabled in "
                  "some of them: " + ", ".join(some_states))
    else:
        detail = f"all {len(relation)} enabled somewhere"
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
    domain = spec.param_domains(config.percents)
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
    by_failure: list[str] = []
    for m in machines:
        for st in m.states:
            leaves = [t for t in relation
                      if t.machine == m.name and t.source == st and t.dest != st]
            ways = [t for t in leaves if not t.is_fault]
            if st in m.final and ways:
                # a final state keeps only self-loops (a vCPU call that the exiting worker
                # started ending, a call refused once the throttler is closed) and failures
                problems.append(f"{m.name} {st} has transitions out of it "
                                f"{[t.label for t in ways]}")
            elif st in m.final and leaves:
                by_failure.append(f"{m.name} {st}: {[t.label for t in leaves]}")
            if st not in m.final and not ways:
                problems.append(f"{m.name} {st} has no way out"
                                + (" but a failure" if leaves else ""))
    finals = "; ".join(f"{m.name} {', '.join(repr(x) for x in m.final)}" for m in machines)
    detail = (f"only the final states are without a way out ({finals}): nothing but a failure "
              "leaves them")
    if by_failure:
        detail += " (left only by a failure: " + "; ".join(by_failure) + ")"
    checks.append(DeclarationCheck(
        "OnlyFinalStatesWithoutWayOut", not problems,
        "; ".join(problems) if problems else detail,
    ))
    return checks
