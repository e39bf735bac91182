"""The explicit-state explorer: shipped spec holds, every bug-zoo variant is caught."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoconverge.model.config import ExplorerConfig, load_config
from autoconverge.model.explorer import ExplorationResult, PropertyResult, explore
from autoconverge.model.fairness import tarjan_scc
from autoconverge.model.trace import replay
from autoconverge.spec import SPEC, THROTTLE_SCHEMA, Spec, State, Transition
from autoconverge.spec.expr import Not, is_state
from autoconverge.spec.lifecycle import param_domains
from autoconverge.spec.properties import Property
from autoconverge.spec.variants import VARIANTS, Variant

CFG = load_config()


@pytest.fixture(scope="module")
def shipped() -> ExplorationResult:
    return explore(SPEC, CFG)


@pytest.mark.covers("*")
def test_shipped_spec_all_properties_hold(shipped: ExplorationResult) -> None:
    assert shipped.ok, shipped.format_text()
    names = {p.name for p in shipped.properties}
    assert names == {p.name for p in SPEC.properties}
    for p in shipped.properties:
        assert p.holds and p.counterexample is None
        assert p.distinct_states == shipped.stats.distinct_states


def test_shipped_state_count_is_regression_data(shipped: ExplorationResult) -> None:
    st = shipped.stats
    assert (st.distinct_states, st.depth) == (CFG.expected_states, CFG.expected_depth)
    assert shipped.regression_ok is True
    assert st.deadlocks == 0 and st.terminal_states > 0 and st.bounded_ends > 0
    assert st.transitions > st.distinct_states


def test_json_form(shipped: ExplorationResult) -> None:
    """``as_dict()`` is what ``autoconverge verify --json`` prints: keys in this order."""
    d = json.loads(shipped.to_json())
    assert list(d) == ["spec", "ok", "properties", "stats"]
    assert list(d["properties"][0]) == [
        "name", "kind", "statement", "holds", "distinct_states", "depth", "counterexample",
        "counterexample_text", "details"]
    assert list(d["stats"]) == [
        "spec", "distinct_states", "distinct_records", "transitions", "depth",
        "terminal_states", "bounded_ends", "deadlocks", "seconds_explore", "seconds_total",
        "states_per_second", "truncated", "config", "expected_states", "expected_depth",
        "regression_ok"]
    assert d["stats"]["config"] == shipped.stats.config.as_dict()
    deadlock = next(p for p in shipped.properties if p.kind == "deadlock")
    assert deadlock.as_dict()["details"] == {"deadlocked_states": 0}


def test_regression_mismatch_is_reported() -> None:
    wrong = ExplorerConfig(**{**CFG.as_dict(), "percents": CFG.percents,
                              "properties": (), "expected_states": 1})
    r = explore(SPEC, wrong)
    assert r.ok and r.regression_ok is False
    assert "REGRESSION MISMATCH" in r.format_text()


def _domain(v: Variant | None) -> dict[str, tuple[int, ...]]:
    extra = v.probe_percents if v else ()
    return param_domains(CFG.with_percents(extra).percents)


def _check_replay(spec: Spec, prop: PropertyResult, v: Variant | None) -> None:
    cex = prop.counterexample
    assert cex is not None
    states = replay(spec, cex, _domain(v))
    assert len(states) == cex["length"] + 1
    p = spec.property(prop.name)
    if p.kind == "invariant":
        assert not p.invariant(states[-1])
    elif p.kind == "step":
        last = cex["steps"][-1]
        t = spec.find(last["trigger"], last["source"])
        assert not p.step(states[-2], t, states[-1])
    elif p.kind == "deadlock":
        assert not any(not t.is_fault for t, _, _ in spec.successors(states[-1], _domain(v)))
    else:
        start = cex["cycle_start"]
        assert p.leads_from(states[cex["p_index"]])
        assert cex["p_index"] <= start
        assert all(not p.leads_to(s) for s in states[cex["p_index"]:])


@pytest.mark.parametrize("v", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.covers("*")
def test_every_variant_is_caught_with_short_replayable_trace(v: Variant) -> None:
    spec = v.build(SPEC)
    r = explore(spec, CFG)
    assert not r.ok
    violated = [p for p in r.properties if not p.holds]
    expected = [p for p in violated if p.name in v.violates]
    assert expected, f"{v.name}: violated {[p.name for p in violated]}, want {v.violates}"
    shortest = min(p.counterexample["length"] for p in expected if p.counterexample)
    assert shortest <= v.max_trace, f"{v.name}: shortest trace {shortest} > {v.max_trace}"
    for p in violated:
        _check_replay(spec, p, v)
        assert p.counterexample_text is not None and p.counterexample_text.startswith(p.name)
    json.loads(r.to_json())


def test_liveness_variant_counterexample_is_a_lasso() -> None:
    v = next(v for v in VARIANTS if v.name == "sleeps_with_shutdown_queued")
    r = explore(v.build(SPEC), CFG)
    prop = next(p for p in r.properties if p.name == "ShutdownCompletes")
    cex = prop.counterexample
    assert cex is not None
    assert cex["kind"] == "liveness" and cex["cycle_start"] < cex["length"]
    cycle = cex["steps"][cex["cycle_start"]:]
    # the cycle is fair: the worker and the clock both move in it
    assert {s["actor"] for s in cycle} >= {"worker", "clock"}
    assert prop.counterexample_text is not None and "cycle" in prop.counterexample_text


# --- fairness semantics on toy specs -------------------------------------------------------

_QUITS = Property("Quits", "the worker leaves waiting", "leadsto", "waiting ~> exit",
                  leads_from=lambda s: is_state(s.w, "waiting"),
                  leads_to=lambda s: is_state(s.w, "exit"))


def _toy_clock(quit_guard: Any = None) -> Spec:
    """The worker spins (flipping a flag); the clock can end it by moving it to exit."""
    spin = Transition("spin", "waiting", "waiting", "worker",
                      effect=lambda s: {"polled": Not(s.polled)})
    quit_ = Transition("quit", "waiting", "exit", "clock",
                       guard=quit_guard or (lambda s: True))
    return Spec("toy", (spin, quit_), schema=THROTTLE_SCHEMA, properties=(_QUITS,))


def _toy_user() -> Spec:
    """The worker leaves only after a user call."""
    call = Transition("call_quit", "idle", "done", "controller",
                      effect=lambda s: {"resp": True})
    leave = Transition("leave", "waiting", "exit", "worker", guard=lambda s: s.resp)
    return Spec("toy", (call, leave), schema=THROTTLE_SCHEMA, properties=(_QUITS,))


def _toy_cfg() -> ExplorerConfig:
    return ExplorerConfig(percents=(1,), max_calls=2, channel_capacity=1)


def test_weak_fairness_of_the_clock_rules_out_an_endless_spin() -> None:
    r = explore(_toy_clock(), _toy_cfg())
    assert r.ok, r.format_text()


def test_weak_fairness_does_not_force_an_intermittently_enabled_group() -> None:
    # quit is enabled only every other spin: weak (not strong) fairness lets it be skipped
    r = explore(_toy_clock(lambda s: s.polled), _toy_cfg())
    prop = r.properties[0]
    assert not prop.holds and prop.counterexample is not None
    assert prop.counterexample["cycle_start"] < prop.counterexample["length"]


def test_user_calls_are_not_fair() -> None:
    # the worker can only leave after a user call: the user may never make it
    r = explore(_toy_user(), _toy_cfg())
    cex = r.properties[0].counterexample
    assert cex is not None and cex["length"] == 0 and cex["cycle_start"] == 0  # stutter


def test_tarjan_iterative_handles_deep_graphs() -> None:
    n = 200_000  # a chain far deeper than Python's recursion limit, closed into one cycle
    comps = tarjan_scc(list(range(n)), lambda v: [(v + 1) % n])
    assert len(comps) == 1 and len(comps[0]) == n
    comps = tarjan_scc([0, 1, 2, 3], lambda v: {0: [1], 1: [0, 2], 2: [3], 3: []}[v])
    assert sorted(sorted(c) for c in comps) == [[0, 1], [2], [3]]


def test_config_loading() -> None:
    assert CFG.section == "ci" and 100 in CFG.percents
    large = load_config(section="large")
    assert large.max_calls > CFG.max_calls
    assert load_config(probe_percents=(7,)).percents[-1] == 7
    with pytest.raises(KeyError):
        load_config(section="nope")


def test_faults_can_be_switched_off() -> None:
    cfg = ExplorerConfig(**{**CFG.as_dict(), "percents": CFG.percents, "properties": (),
                            "faults": False, "expected_states": None})
    r = explore(SPEC, cfg)
    assert r.ok
    assert CFG.expected_states is not None and r.graph is not None
    assert r.stats.distinct_states < CFG.expected_states
    assert not any(s.failed for s in r.graph.reached_records())


def test_initial_state_is_the_specs() -> None:
    r = explore(SPEC, CFG)
    assert r.graph is not None and r.graph.state(0) == SPEC.initial
    assert isinstance(r.graph.state(0), State)
