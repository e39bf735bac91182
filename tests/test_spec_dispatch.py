"""The compiled dispatch tables equal the spec's ``transitions`` machines, and broken ones don't.

Structure: for every (state, trigger) pair of both machines the table lists the machine's
transitions in the machine's order (dest and declaration). Behaviour: in every state the
explorer reaches (small bound) and for every trigger and parameter value, a step through the
table gives what firing the machine itself gives (refused, guard false, or dest and updates).
Deliberately wrong tables (a wrong dest, a dropped row, an invented row, a swapped guard, a
stale memo) must each be reported by the same comparison.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest
from transitions import Machine, MachineError

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.spec_dispatch import (
    CompiledMachine,
    CompiledTransition,
    NotDeclared,
    UncompilableMachine,
    compile_machine,
    compiled,
)
from autoconverge.impl.throttler import Throttler
from autoconverge.impl.virtualtime import VirtualRuntime
from autoconverge.model.config import ExplorerConfig
from autoconverge.model.graph import build_graph
from autoconverge.spec import SPEC, State
from autoconverge.spec import lifecycle as L
from autoconverge.spec.core import param_combinations

MACHINES = ("worker", "controller")
NOT_DECLARED = "not declared"
"""The outcome of a trigger the machine has no transition for (MachineError / NotDeclared)."""
PERCENTS = (0, 1, 50, 99, 100)


@pytest.fixture(scope="module")
def reachable() -> list[State]:
    cfg = ExplorerConfig(percents=PERCENTS, max_calls=3, channel_capacity=2)
    graph = build_graph(SPEC, cfg, {}, {})
    return list(dict.fromkeys(graph.state(n) for n in range(len(graph.nodes))))


class _Probe:
    """A model of one spec machine whose view is a given state record."""

    state: str
    trigger: Any

    def __init__(self) -> None:
        self.view: State = L.INITIAL
        self.updates: dict[str, Any] = {}

    def spec_view(self) -> State:
        return self.view

    def apply_updates(self, updates: Mapping[str, Any]) -> None:
        self.updates = dict(updates)


def _fire_machine(machine: Machine, probe: _Probe, source: str, trigger: str,
                  params: Mapping[str, int]) -> Any:
    """What the machine itself does: NOT_DECLARED, None (guard false) or (dest, updates)."""
    machine.set_state(source, model=probe)
    probe.updates = {}
    try:
        ok = probe.trigger(trigger, **params)
    except MachineError:
        return NOT_DECLARED
    return (probe.state, probe.updates) if ok else None


def _fire_table(table: CompiledMachine, source: str, trigger: str, key: tuple[Any, ...],
                params: Mapping[str, int]) -> Any:
    try:
        taken = table.step(source, trigger, key, params)
    except NotDeclared:
        return NOT_DECLARED
    if taken is None:
        return None
    ct, updates = taken
    return ct.dest, dict(updates)


def structure_mismatches(table: CompiledMachine, machine: Machine) -> list[str]:
    """Every (state, trigger) pair: the table's row is the machine's transitions, in order."""
    found = []
    for state in machine.states:
        for trigger, event in machine.events.items():
            want = [(tr.dest, tr.conditions[0].func.transition)
                    for tr in event.transitions.get(state, [])]
            got = [(ct.dest, ct.transition) for ct in table.candidates(state, trigger)]
            if want != got:
                found.append(f"{trigger}@{state}: table {got} != machine {want}")
            if bool(want) != ((state, trigger) in table.table):
                found.append(f"{trigger}@{state}: declared in one only")
    extra = set(table.table) - {(s, t) for s in machine.states for t in machine.events}
    found += [f"row {pair} is not in the machine" for pair in sorted(extra)]
    return found


def behaviour_mismatches(table: CompiledMachine, machine: Machine, name: str,
                         states: list[State]) -> list[str]:
    """In every given state, every trigger and parameter value: the same outcome."""
    var = SPEC.schema.machine(name).var
    domains = SPEC.param_domains(PERCENTS)
    params_of = {t.trigger: t.params for t in SPEC.relation() if t.machine == name}
    probe = _Probe()
    machine.add_model(probe)
    found = []
    try:
        for s in states:
            probe.view = s
            key = tuple(getattr(s, f.name) for f in dataclasses.fields(State))
            source = getattr(s, var)
            for trigger in machine.events:
                for params in param_combinations(params_of[trigger], domains):
                    want = _fire_machine(machine, probe, source, trigger, params)
                    got = _fire_table(table, source, trigger, key, params)
                    if want != got:
                        found.append(f"{trigger}@{source} {params} in {s}: table {got} != "
                                     f"machine {want}")
    finally:
        machine.remove_model(probe)
    return found


@pytest.mark.parametrize("name", MACHINES)
def test_the_table_is_the_machines_relation(name: str, reachable: list[State]) -> None:
    machine = SPEC.machine(name)
    table = compiled(machine, name, State)
    assert structure_mismatches(table, machine) == []
    pairs = {(ct.trigger, ct.source, ct.dest) for row in table.table.values() for ct in row}
    assert pairs == {(t.trigger, t.source, t.dest) for t in SPEC.relation()
                     if t.machine == name}
    assert behaviour_mismatches(table, machine, name, reachable) == []


def _broken_tables(table: CompiledMachine, name: str) -> dict[str, CompiledMachine]:
    rows = dict(table.table)
    broken: dict[str, dict[tuple[str, str], tuple[CompiledTransition, ...]]] = {}

    def retarget(ct: CompiledTransition, dest: str) -> CompiledTransition:
        return CompiledTransition(ct.trigger, ct.source, dest, ct.transition, State)

    if name == "worker":
        pair, wrong_dest = (L.PAUSE, L.RECV_ABORT), L.RUN
        guard_pair, other = (L.RUN, L.RUN_ELAPSED), (L.RUN, L.EXPIRE)
        missing = (L.WAITING, L.RECV_ABORT)
    else:
        pair, wrong_dest = (L.IDLE, L.CALL_ABORT), L.IDLE
        guard_pair, other = (L.IDLE, L.CALL_ABORT), (L.IDLE, L.CALL_SHUTDOWN)
        missing = (L.AWAITING_ABORT, L.CALL_ABORT)
    assert missing not in rows and pair in rows and guard_pair in rows and other in rows
    broken["wrong dest"] = {**rows, pair: tuple(retarget(ct, wrong_dest) for ct in rows[pair])}
    broken["dropped row"] = {k: v for k, v in rows.items() if k != pair}
    invented = CompiledTransition(missing[1], missing[0], missing[0],
                                  rows[pair][0].transition, State)
    broken["invented row"] = {**rows, missing: (invented,)}
    swapped = tuple(CompiledTransition(ct.trigger, ct.source, ct.dest,
                                       rows[other][0].transition, State)
                    for ct in rows[guard_pair])
    broken["swapped guard"] = {**rows, guard_pair: swapped}
    return {why: CompiledMachine(name, table.states, table.triggers, r)
            for why, r in broken.items()}


@pytest.mark.parametrize("name", MACHINES)
def test_every_broken_table_is_caught(name: str, reachable: list[State]) -> None:
    machine = SPEC.machine(name)
    table = compile_machine(machine, name, State)
    for why, bad in _broken_tables(table, name).items():
        assert structure_mismatches(bad, machine), why
        assert behaviour_mismatches(bad, machine, name, reachable), why


def test_a_stale_memo_is_caught(reachable: list[State]) -> None:
    """Memoizing a wrong outcome (an impure guard would do that) shows as behaviour."""
    machine = SPEC.machine("worker")
    table = compile_machine(machine, "worker", State)
    (ct,) = table.candidates(L.RUN, L.EXPIRE)
    for s in reachable:
        if s.w == L.RUN:
            key = tuple(getattr(s, f.name) for f in dataclasses.fields(State))
            ok, _ = ct.outcome(key, {})
            ct._memo[(key, ())] = (not ok, {})
    assert behaviour_mismatches(table, machine, "worker", reachable)


def test_a_machine_with_callbacks_is_not_compiled() -> None:
    machine = SPEC.machine("worker", after_state_change=[lambda event: None])
    with pytest.raises(UncompilableMachine, match="after_state_change"):
        compile_machine(machine, "worker", State)


def test_the_throttlers_view_keys_are_the_state_record() -> None:
    """view_key() lists the record's fields in declaration order (State(*key) is the view)."""
    rt = VirtualRuntime(seed=1)

    def main() -> None:
        t = Throttler(RecordingVcpus(rt), runtime=rt)
        w, c = t._worker, t._controller
        saved = w.percent, w.applied, w.paused, w._message, c.requested, c.holder
        w.percent, w.applied, w.paused, w._message = 7, 5, True, 3
        c.requested, c.holder = 9, 2
        assert w.spec_view() == State(
            w=w.state, c=c.state, percent=7, applied=5, paused=True, call=w.call,
            handed=False, failed=False, expired=False, polled=False, requested=0, holder=0,
            owner=0, chan=(3,), resp=False)
        assert c.spec_view() == State(
            w=w.state, c=c.state, percent=0, applied=0, paused=True, call=w.call,
            handed=False, failed=False, expired=False, polled=False, requested=9, holder=2,
            owner=0, chan=(), resp=False)
        w.percent, w.applied, w.paused, w._message, c.requested, c.holder = saved
        t.shutdown()

    rt.run(main)
