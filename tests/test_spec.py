"""The spec itself: one declaration, introspected; expressions in three modes; timing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import z3

from autoconverge.spec import PROPERTIES, SPEC, declared_transitions, timing
from autoconverge.spec import lifecycle as L
from autoconverge.spec.expr import And, If, Or, Term, chan_head, chan_push, chan_tail, is_state, var
from autoconverge.spec.variants import VARIANTS, probe_percents, variant, variant_of

ROOT = Path(__file__).resolve().parent.parent


def test_relation_is_introspected_from_the_machines() -> None:
    relation = SPEC.relation()
    events = {
        (name, src, tr.dest)
        for which in ("worker", "controller")
        for name, ev in SPEC.machine(which).events.items()
        for src, trs in ev.transitions.items()
        for tr in trs
    }
    assert {(t.trigger, t.source, t.dest) for t in relation} == events
    assert set(relation) == set(SPEC.transitions)
    assert len(declared_transitions()) == len(SPEC.transitions)
    assert len(relation) == len(events)  # one spec transition per machine transition


def test_machines_have_no_auto_transitions_and_name_every_trigger() -> None:
    for which in ("worker", "controller"):
        m = SPEC.machine(which)
        assert not m.auto_transitions
        assert set(m.events) <= set(L.TRIGGERS)
    assert set(SPEC.triggers()) == set(L.TRIGGERS)


def test_implementation_uses_the_spec_relation() -> None:
    from autoconverge.impl.fakes import RecordingVcpus
    from autoconverge.impl.throttler import Throttler
    from autoconverge.impl.virtualtime import VirtualRuntime

    rt = VirtualRuntime(seed=0)

    def main() -> None:
        t = Throttler(RecordingVcpus(rt), runtime=rt)
        relation = set(SPEC.relation())
        table = t._worker_model._compiled.table
        used = {ct.transition for cts in table.values() for ct in cts}
        assert used <= relation
        assert used == {tr for tr in relation if tr.machine == "worker"}
        t.shutdown()

    rt.run(main)


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_states_and_triggers_appear_only_in_spec() -> None:
    """grep-level: no string literal in impl/ names a throttle state or trigger, or one of
    the migration's compound trigger names (``send_commit``...; its one-word triggers and end
    states - abort, cancel, timeout, completed - are also result statuses and plain words)."""
    from autoconverge.spec.specs import MIGRATION_SPEC

    throttle = set(L.WORKER_STATES) | set(L.CONTROLLER_STATES) | set(L.TRIGGERS)
    migration = {t for t in MIGRATION_SPEC.triggers() if "_" in t}
    offenders = {}
    for path in sorted((ROOT / "impl").rglob("*.py")):
        if "lifecycle" not in path.read_text():
            continue  # not lifecycle code: "idle" workloads and KVM "exit"s are other words
        names = migration if "migration" in path.parts else throttle
        found = _string_constants(path) & names
        if found:
            offenders[str(path.relative_to(ROOT))] = sorted(found)
    assert offenders == {}


def test_guards_and_effects_evaluate_in_three_modes() -> None:
    # concrete
    s = L.INITIAL.replace(chan=(42,))
    t = SPEC.find(L.RECV_SET, L.WAITING)
    assert t.enabled(s) is True
    nxt = t.apply(s)
    # the transition only starts pause(): paused changes when the call returns
    assert (nxt.w, nxt.percent, nxt.paused, nxt.call, nxt.chan) == (
        L.PAUSE, 42, False, L.PAUSE_CALL, ())
    ret = SPEC.find(L.CALL_RETURN, L.PAUSE)
    assert not t.enabled(nxt) and ret.enabled(nxt) is True
    done = ret.apply(nxt)
    assert (done.w, done.paused, done.call) == (L.PAUSE, True, L.NO_CALL)
    # z3
    W = z3.EnumSort("W_test", list(L.WORKER_STATES))[0]
    w = z3.Const("w", W)
    chan = z3.Const("chan", z3.SeqSort(z3.IntSort()))
    zs = L.INITIAL.replace(w=w, chan=chan)
    g = t.enabled(zs)
    assert isinstance(g, z3.BoolRef)
    solver = z3.Solver()
    solver.add(g, chan_head(chan) == 100)
    assert solver.check() == z3.unsat  # 100 is never accepted by the worker
    # syntax trees
    ts = L.State(**{f: var(f) for f in L.VARIABLES})
    tree = t.enabled(ts)
    assert isinstance(tree, Term) and tree.op == "and"
    with pytest.raises(TypeError, match="And/Or/Not"):
        bool(tree)


def test_expression_helpers_concrete() -> None:
    assert And(True, 1 < 2) is True and Or(False, False) is False
    assert If(True, 1, 2) == 1
    assert chan_push((1,), 2) == (1, 2) and chan_tail((1, 2)) == (2,)
    assert is_state("waiting", "waiting") is True


def test_every_property_is_named_stated_and_typed() -> None:
    names = [p.name for p in PROPERTIES]
    assert len(names) == len(set(names))
    for p in PROPERTIES:
        assert p.statement and "\n" not in p.statement and p.formula
        assert p.kind in ("invariant", "step", "deadlock", "leadsto")
        if p.kind == "invariant":
            assert p.invariant is not None
            assert p.invariant(L.INITIAL) is True
        if p.kind == "step":
            assert p.step is not None
        if p.kind == "leadsto":
            assert p.leads_from and p.leads_to and "WF(worker)" in p.fairness


def test_variants_name_real_properties_and_change_the_spec() -> None:
    names = {p.name for p in PROPERTIES}
    assert len({v.name for v in VARIANTS}) == len(VARIANTS) >= 8
    for v in VARIANTS:
        assert set(v.violates) <= names
        built = v.build(SPEC)
        assert built.name == v.name
        assert {(t.trigger, t.source, t.dest, t.guard, t.effect, t.calls)
                for t in built.relation()} != {
            (t.trigger, t.source, t.dest, t.guard, t.effect, t.calls) for t in SPEC.relation()
        }


def test_fairness_is_declared_once_as_data() -> None:
    """The prose every leads-to property carries is printed from the groups; each transition
    reads its group from them (a variant's added transition too); faults are one trigger."""
    from autoconverge.spec.properties import FAIRNESS

    assert FAIRNESS == ("WF(worker) /\\ WF(clock) /\\ WF(vcpu) /\\ WF(controller inside "
                        "abort/shutdown/handover); no fairness on user calls; "
                        "no fairness on timeouts")
    assert [g.name for g in L.WEAK_FAIRNESS] == ["worker", "clock", "vcpu", "completion"]
    assert [g.name for g in L.FAIRNESS_GROUPS] == [
        "worker", "clock", "vcpu", "completion", "user", "timeout"]
    for t in SPEC.relation():
        unfair = t.user_call or t.trigger == L.TIMEOUT
        assert t.user_call == (t.trigger in L.USER_CALL_TRIGGERS)
        assert t.fairness == (None if unfair else
                              {"worker": "worker", "clock": "clock", "vcpu": "vcpu"}.get(
                                  t.actor, "completion"))
        assert t.fairness_group.name == (
            "user" if t.user_call else "timeout" if t.trigger == L.TIMEOUT
            else t.fairness)
        assert t.is_fault == (t.trigger in (L.FAULT, L.RESUME_FAILED))
        # a user call names its caller; nothing else takes parameters but set's percent
        assert ("k" in t.params) == t.user_call
        assert set(t.params) <= set(L.param_domains((1,)))
    spinning = variant("spinning_handshake").build(SPEC)
    assert variant_of(spinning) is variant("spinning_handshake")
    added = spinning.find("poll", L.WAITING)
    assert added.fairness == "worker" and not added.user_call
    assert variant_of(SPEC) is None and probe_percents(SPEC) == ()
    assert probe_percents(variant("api_accepts_100").build(SPEC)) == (100,)


@pytest.mark.covers("ShutdownAlwaysCallable")
def test_shutdown_callable_in_matches_the_relation() -> None:
    """The constant ShutdownAlwaysCallable reads is the set of call_shutdown's sources, and
    every one of them is also declared for each caller with the lock free."""
    sources = {t.source for t in SPEC.relation() if t.trigger == L.CALL_SHUTDOWN}
    assert sources == set(L.SHUTDOWN_CALLABLE_IN)
    assert len(L.SHUTDOWN_CALLABLE_IN) == len(sources)
    for src in L.SHUTDOWN_CALLABLE_IN:
        t = SPEC.find(L.CALL_SHUTDOWN, src)
        assert t.params == ("k",)
        for k in L.CALLERS:
            assert t.enabled(L.INITIAL.replace(c=src), k=k) is True
            assert t.enabled(L.INITIAL.replace(c=src, holder=k), k=k) is False
    # the lock is held exactly in the other states, so shutdown() is always callable
    assert set(L.CONTROLLER_STATES) == set(L.SHUTDOWN_CALLABLE_IN) | set(L.IN_CALL)
    assert not set(L.SHUTDOWN_CALLABLE_IN) & set(L.IN_CALL)


def test_param_domains_are_declared_once() -> None:
    assert L.param_domains((0, 50)) == {"p": (0, 50), "k": L.CALLERS}
    used = {name for t in SPEC.relation() for name in t.params}
    assert used == set(L.param_domains(()))


@pytest.mark.parametrize("percent", [1, 2, 33, 50, 98, 99])
@pytest.mark.parametrize("timeslice", [timing.MIN_TIMESLICE_NS, timing.DEFAULT_TIMESLICE_NS,
                                       timing.MAX_TIMESLICE_NS])
def test_timing_concrete(percent: int, timeslice: int) -> None:
    share = timing.pause_share_ns(percent, timeslice)
    for cp, cr in ((0, 0), (share // 3, share // 3), (10**9, 10**9)):
        ps = timing.pause_sleep_ns(percent, timeslice, cp, cr)
        rs = timing.run_sleep_ns(percent, timeslice)
        assert ps >= 0 and rs > 0
        if timing.compensable(percent, timeslice, cp, cr):
            assert cp + ps + cr + rs == timeslice
            assert cp + ps + cr == share
