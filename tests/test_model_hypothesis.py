"""The Hypothesis machine over the abstract model: passes on the spec, fails on every variant."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from autoconverge.model.hypothesis_model import (
    PropertyViolation,
    fair_bound,
    make_abstract_machine,
)
from autoconverge.model.hypothesis_profiles import PROFILES, register_profiles
from autoconverge.spec import CMD_EXIT, CMD_HANDOVER, SPEC
from autoconverge.spec.variants import VARIANTS, Variant

ShippedMachine = make_abstract_machine(SPEC)

# long runs: the explorer stops at 4 user calls and depth 11; these go to 100 steps
TestShippedAbstractModel = ShippedMachine.TestCase
TestShippedAbstractModel.settings = settings(stateful_step_count=100)

FIND = settings(
    max_examples=300, stateful_step_count=20, derandomize=True, database=None, deadline=None,
    report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
"""Deterministic regardless of the profile: a variant must be found on every run. No
shrinking (it costs seconds per variant; the explorer gives the shortest traces anyway)."""


@pytest.mark.parametrize("v", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.covers("*")
def test_machine_fails_on_every_variant(v: Variant) -> None:
    machine = make_abstract_machine(v.build(SPEC))
    with pytest.raises(PropertyViolation) as info:
        run_state_machine_as_test(machine, settings=FIND)
    names = set(info.value.prop.split(", "))
    assert names & set(v.violates), f"{v.name}: got {names}, want one of {v.violates}"
    assert len(info.value.trace) > 1  # the run that failed, step by step


def test_variant_probe_percents_are_offered() -> None:
    v = next(v for v in VARIANTS if v.probe_percents)
    machine = make_abstract_machine(v.build(SPEC))
    assert set(v.probe_percents) <= set(machine.percents)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), queued=st.lists(st.sampled_from([1, 50, 99]), max_size=8),
       last=st.sampled_from([CMD_EXIT, CMD_HANDOVER]), phase=st.sampled_from(
           ["throttling_pause", "throttling_run"]), expired=st.booleans())
def test_fair_schedule_returns_within_bound_on_the_spec(
        data: st.DataObject, queued: list[int], last: int, phase: str, expired: bool) -> None:
    m = ShippedMachine()
    c = "awaiting_exit" if last == CMD_EXIT else "awaiting_handover"
    m.state = SPEC.initial.replace(
        w=phase, c=c, percent=50, applied=50, paused=phase == "throttling_pause",
        expired=expired, chan=(*queued, last), requested=50)
    m.fair_schedule(data)  # raises PropertyViolation if the call does not return in time
    assert m.state.c == "done" and m.state.w == "exit"
    assert m.steps <= fair_bound(SPEC.initial.replace(chan=(*queued, last)))


def test_fair_schedule_catches_the_sleep_bug_on_the_clock_first_rotation() -> None:
    v = next(v for v in VARIANTS if v.name == "sleeps_with_shutdown_queued")
    machine = make_abstract_machine(v.build(SPEC))

    @settings(max_examples=30, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m = machine()
        m.state = SPEC.initial.replace(w="throttling_pause", c="awaiting_exit", percent=50,
                                       applied=50, paused=True, chan=(CMD_EXIT,),
                                       requested=50)
        m.fair_schedule(data)

    with pytest.raises(PropertyViolation) as info:
        run()
    assert "ShutdownCompletes" in info.value.prop


def test_profiles_registered() -> None:
    assert register_profiles(load=False) in PROFILES
    for name in PROFILES:
        settings.get_profile(name)
    assert settings.get_profile("ci").derandomize
    assert settings.get_profile("ci").database is None
