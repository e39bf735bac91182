"""The Hypothesis machine over the abstract model: passes on the spec, fails on every variant."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

from autoconverge.model.config import default_section, load_config
from autoconverge.model.explorer import explore
from autoconverge.model.hypothesis_model import (
    PropertyViolation,
    fair_bound,
    make_abstract_machine,
)
from autoconverge.model.hypothesis_profiles import PROFILES, register_profiles
from autoconverge.spec import CMD_EXIT, CMD_HANDOVER, SPEC, Spec
from autoconverge.spec.variants import VARIANTS, Variant

ShippedMachine = make_abstract_machine(SPEC)

# long runs: the explorer stops at 4 user calls and depth 15; these go to 100 steps
TestShippedAbstractModel = ShippedMachine.TestCase
TestShippedAbstractModel.settings = settings(stateful_step_count=100)

FIND = settings(
    max_examples=1000, stateful_step_count=40, derandomize=True, database=None, deadline=None,
    report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
"""Deterministic regardless of the profile: a variant must be found on every run. No
shrinking (it costs seconds per variant; the explorer gives the shortest traces anyway).
40 steps, up to 1000 runs: a vCPU call is two steps (its start and its end), so reaching a
run phase and handing over or setting a percent there (``paused_without_pause_call``,
``set_cuts_run_phase``) takes 8 steps of the right kind among some 20 enabled rules; at 300
runs whether a run found them depended on incidental settings (the loaded profile). A run
stops at its first failure, so only a missed variant pays for the budget."""


@pytest.mark.parametrize("v", VARIANTS, ids=[v.name for v in VARIANTS])
@pytest.mark.covers("*")
def test_machine_fails_on_every_variant(v: Variant) -> None:
    machine = make_abstract_machine(v.build(SPEC))
    with pytest.raises(PropertyViolation) as info:
        run_state_machine_as_test(machine, settings=FIND)
    names = set(info.value.prop.split(", "))
    # what it names is violated (the explorer agrees), and one of them is the variant's
    explored = explore(v.build(SPEC), load_config(section=default_section(SPEC)))
    assert names <= {p.name for p in explored.properties if not p.holds}, names
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
        expired=expired, chan=(*queued, last), requested=50, holder=1)
    m.fair_schedule(data)  # raises PropertyViolation if the call does not return in time
    assert m.state.c == "done" and m.state.w == "exit"
    assert m.steps <= fair_bound(SPEC, SPEC.initial.replace(chan=(*queued, last)))


def _sleep_bug_caught_by(spec: Spec) -> PropertyViolation:
    machine = make_abstract_machine(spec)

    @settings(max_examples=30, derandomize=True, database=None, deadline=None)
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        m = machine()
        m.state = SPEC.initial.replace(w="throttling_pause", c="awaiting_exit", percent=50,
                                       applied=50, paused=True, chan=(CMD_EXIT,),
                                       requested=50, holder=1)
        m.fair_schedule(data)

    with pytest.raises(PropertyViolation) as info:
        run()
    return info.value


@pytest.mark.covers("ShutdownCompletes", "QueueReadEveryPhase")
def test_fair_schedule_catches_the_sleep_bug_on_the_clock_first_rotation() -> None:
    buggy = next(v for v in VARIANTS if v.name == "sleeps_with_shutdown_queued").build(SPEC)
    # the step property names the bad sleep at once: the clock expired an unread queue
    assert "QueueReadEveryPhase" in _sleep_bug_caught_by(buggy).prop.split(", ")
    # without it, the bounded liveness check alone still catches the bug: the shutdown does
    # not return within the fair bound
    liveness_only = dataclasses.replace(buggy, properties=tuple(
        p for p in buggy.properties if p.name != "QueueReadEveryPhase"))
    assert "ShutdownCompletes" in _sleep_bug_caught_by(liveness_only).prop.split(", ")


def test_profiles_registered() -> None:
    assert register_profiles(load=False) in PROFILES
    for name in PROFILES:
        settings.get_profile(name)
    assert settings.get_profile("ci").derandomize
    assert settings.get_profile("ci").database is None
