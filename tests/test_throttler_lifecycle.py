"""The throttler's lifecycle in virtual time: scenarios, timing, errors, faults.

The scenarios are those of Cloud Hypervisor's throttle-thread tests (the pull request this
project starts from).

Every test runs the real Throttler on a seeded VirtualRuntime with RecordingVcpus, so no
test sleeps on the wall clock and each run replays from its seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.throttler import (
    SpecViolation,
    Throttler,
    ThrottlerClosed,
    ThrottlerTimeout,
    ThrottleWorkerError,
    TraceEvent,
)
from autoconverge.impl.virtualtime import VirtualRuntime
from autoconverge.spec import lifecycle as L

MS = 1_000_000
T = 100 * MS
PAUSE_COST = 200_000
RESUME_COST = 100_000
SEEDS = (0, 1, 2, 3, 7)


def run(
    scenario: Callable[[VirtualRuntime, Throttler, RecordingVcpus], Any],
    *,
    seed: int = 0,
    timeslice_ns: int = T,
    kill_leftover: bool = False,
    throttler_kw: dict[str, Any] | None = None,
    **vcpu_kw: Any,
) -> tuple[VirtualRuntime, Throttler, RecordingVcpus, Any]:
    rt = VirtualRuntime(seed=seed)
    vcpu_kw.setdefault("pause_cost_ns", PAUSE_COST)
    vcpu_kw.setdefault("resume_cost_ns", RESUME_COST)
    vcpus = RecordingVcpus(rt, **vcpu_kw)
    box: dict[str, Throttler] = {}

    def main() -> Any:
        t = Throttler(vcpus, runtime=rt, timeslice_ns=timeslice_ns, trace=True,
                      **(throttler_kw or {}))
        box["t"] = t
        return scenario(rt, t, vcpus)

    result = rt.run(main, kill_leftover=kill_leftover, fail_fast=True, max_steps=2_000_000)
    return rt, box["t"], vcpus, result


def triggers(t: Throttler, machine: str | None = None) -> list[str]:
    return [e.trigger for e in t.events if machine is None or e.machine == machine]


def first_event(t: Throttler, pred: Callable[[TraceEvent], bool]) -> TraceEvent:
    return next(e for e in t.events if pred(e))


# --- Cloud Hypervisor's throttle-thread test scenarios --------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.covers("ShutdownCompletes", "ReturnsOnlyAfterJoin", "NoBusyWaiting")
def test_waiting_to_exit(seed: int) -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.shutdown()
        t.shutdown()  # idempotent

    _, t, v, _ = run(scenario, seed=seed)
    assert v.calls == []  # nothing to pause or resume
    assert t.worker_state == L.EXIT and t.closed
    # the second shutdown() is the spec's idempotent self-loop call_shutdown@done
    assert triggers(t) == [L.CALL_SHUTDOWN, L.RECV_EXIT, L.SHUTDOWN_DONE, L.CALL_SHUTDOWN]
    assert [(e.source, e.dest) for e in t.events if e.trigger == L.CALL_SHUTDOWN] == [
        (L.IDLE, L.AWAITING_EXIT), (L.DONE, L.DONE),
    ]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.covers(
    "PauseResumeAlternate", "AbortReturnsWithVcpusRunning", "AbortCompletes",
    "ShutdownCompletes", "ReturnsOnlyAfterJoin", "VcpusResumed", "PausedOnlyInPausePhase",
)
def test_seed_lifecycle_scenario(seed: int) -> None:
    """Waiting -> 5 -> 10 -> Waiting -> 5 -> 10 -> repeated shutdown (Cloud Hypervisor's test)."""
    marks: dict[str, int] = {}

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(5)
        rt.sleep_ns(T)
        t.set_throttle_percent(10)
        rt.sleep_ns(T)
        marks["abort_call"] = rt.now_ns()
        t.set_throttle_percent(0)
        marks["abort_return"] = rt.now_ns()
        # abort is synchronous: the vCPUs run and the worker waits when it returns
        assert not v.paused and t.worker_state == L.WAITING
        t.set_throttle_percent(5)
        rt.sleep_ns(T)
        t.set_throttle_percent(10)
        rt.sleep_ns(T)
        marks["shutdown_call"] = rt.now_ns()
        for _ in range(10):
            t.shutdown()
            rt.sleep_ns(1 * MS)
        assert not v.paused and t.worker_state == L.EXIT

    _, t, v, _ = run(scenario, seed=seed)
    assert v.alternation_error() is None
    assert v.pause_count == v.resume_count >= 4
    assert not v.paused
    # abort and shutdown return after at most one resume() (plus scheduling, no sleeping)
    assert marks["abort_return"] - marks["abort_call"] <= RESUME_COST + 1 * MS
    shutdown_done = first_event(t, lambda e: e.trigger == L.SHUTDOWN_DONE)
    assert shutdown_done.time_ns - marks["shutdown_call"] <= RESUME_COST + 1 * MS
    # the controller's triggers, in order: the 9 later shutdown() calls are the spec's
    # idempotent self-loop call_shutdown@done
    assert triggers(t, "controller") == [
        L.CALL_SET, L.CALL_SET, L.CALL_ABORT, L.ABORT_DONE, L.CALL_SET, L.CALL_SET,
        L.CALL_SHUTDOWN, L.SHUTDOWN_DONE, *[L.CALL_SHUTDOWN] * 9,
    ]
    assert {e.source for e in t.events if e.trigger == L.CALL_SHUTDOWN} == {L.IDLE, L.DONE}
    # every phase lasts its setpoint's share of the timeslice (a change of percent applies
    # at the next phase boundary, so a cycle may pair a 5 % pause with a 10 % run)
    tolerance = PAUSE_COST + RESUME_COST  # only before the first costs are measured
    cut = (marks["abort_call"], marks["shutdown_call"])  # these end a pause early, rightly
    for start, end in v.pause_intervals():
        if any(0 <= end - c <= RESUME_COST + 1 * MS for c in cut):
            continue
        assert min(abs(end - start - 5 * T // 100), abs(end - start - 10 * T // 100)) <= tolerance
    runs = v.run_intervals()
    assert len(runs) >= 3
    for start, end in runs:
        if end - start < 90 * T // 100 - tolerance:
            continue  # the run interrupted by the abort
        assert min(abs(end - start - 95 * T // 100), abs(end - start - 90 * T // 100)) <= tolerance


def _applied_latencies(t: Throttler) -> list[int]:
    """For each call_set: time until a worker event applies that percent to a phase."""
    out = []
    for i, e in enumerate(t.events):
        if e.trigger != L.CALL_SET:
            continue
        p = e.params["p"]
        applied = next(
            w for w in t.events[i:]
            if w.machine == "worker" and w.updates.get("applied") == p
        )
        out.append(applied.time_ns - e.time_ns)
    return out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.covers("PercentApplied")
def test_new_percent_applied_within_one_timeslice(seed: int) -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        for p, wait in ((20, 37), (60, 113), (35, 71), (90, 5), (10, 250)):
            t.set_throttle_percent(p)
            rt.sleep_ns(wait * MS)
        t.shutdown()

    _, t, v, _ = run(scenario, seed=seed)
    lat = _applied_latencies(t)
    assert len(lat) == 5
    assert all(0 <= x <= T for x in lat), lat


@pytest.mark.parametrize("percent", [1, 10, 50, 90, 99])
@pytest.mark.parametrize("timeslice_ms", [20, 100, 1000])
@pytest.mark.covers("PercentApplied", "VcpusResumed")
def test_duty_cycle_matches_setpoint(percent: int, timeslice_ms: int) -> None:
    ts = timeslice_ms * MS

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(percent)
        rt.sleep_ns(6 * ts)
        t.shutdown()

    _, t, v, _ = run(scenario, timeslice_ns=ts, pause_cost_ns=20_000, resume_cost_ns=10_000)
    steady = v.cycles()[1:]  # the first cycle has no measured costs yet
    assert len(steady) >= 4
    for c in steady:
        assert c.period_ns == ts
        assert abs(c.paused_ns - percent * ts // 100) <= 1  # to the clock's granularity


@pytest.mark.covers("PauseServedInFull")
def test_burst_of_commands_does_not_shorten_pauses() -> None:
    share = 50 * T // 100

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 10 * MS)  # inside the second pause phase
        for i in range(40):
            t.set_throttle_percent(50 + (i % 2))
            rt.sleep_ns(1 * MS)
        rt.sleep_ns(2 * T)
        t.shutdown()

    _, t, v, _ = run(scenario)
    pauses = v.pause_intervals()
    assert len(pauses) >= 3
    for start, end in pauses:
        assert end - start >= share - PAUSE_COST - RESUME_COST
    assert v.pause_count <= 6  # a burst adds no cycles


# --- handover, shutdown and calls after it ------------------------------------------------------


@pytest.mark.parametrize("where_ms", [None, 20, 75])  # waiting / pause phase / run phase
@pytest.mark.covers(
    "HandoverKeepsVcpusPaused", "HandoverCompletes", "ExitIsAbsorbing", "HandoverMeansOwnedPause",
)
def test_handover_leaves_vcpus_paused(where_ms: int | None) -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        if where_ms is not None:
            t.set_throttle_percent(50)
            rt.sleep_ns(where_ms * MS)
        t.handover()
        # a handover that returned: paused, the worker joined, the caller owns the vCPUs
        assert v.paused and t.worker_state == L.EXIT and t.closed and t.owned
        t.shutdown()  # no-op after handover: the vCPUs stay paused
        assert v.paused and t.owned
        with pytest.raises(ThrottlerClosed):
            t.set_throttle_percent(10)
        with pytest.raises(ThrottlerClosed):
            t.handover()
        assert v.paused and t.owned

    _, t, v, _ = run(scenario)
    assert v.alternation_error() is None
    assert v.calls[-1].action == "pause"
    # then shutdown() and handover() after it: the spec's self-loops call_shutdown@done and
    # the refusing call_handover@done (set_throttle_percent records nothing: the API refuses)
    assert triggers(t, "controller")[-4:] == [
        L.CALL_HANDOVER, L.HANDOVER_DONE, L.CALL_SHUTDOWN, L.CALL_HANDOVER,
    ]
    assert [(e.source, e.dest) for e in t.events[-2:]] == [(L.DONE, L.DONE)] * 2
    assert t.events[-3].updates["owner"] == 1  # the creating thread is caller 1


@pytest.mark.covers("ExitIsAbsorbing", "ReturnsOnlyAfterJoin")
def test_calls_after_shutdown_raise() -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(40)
        rt.sleep_ns(30 * MS)
        t.shutdown()
        n = len(v.calls)
        for p in (0, 10, 99):
            with pytest.raises(ThrottlerClosed, match="shut down"):
                t.set_throttle_percent(p)
        with pytest.raises(ThrottlerClosed):
            t.handover()
        t.shutdown()
        assert len(v.calls) == n

    run(scenario)


def test_context_manager_shuts_down() -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> Throttler:
        with t:
            t.set_throttle_percent(70)
            rt.sleep_ns(30 * MS)
        return t

    _, t, v, _ = run(scenario)
    assert t.closed and not v.paused and t.worker_state == L.EXIT


# --- bad input ----------------------------------------------------------------------------------

BAD_PERCENTS = [
    (100, ValueError), (-1, ValueError), (1000, ValueError), (50.0, TypeError),
    (True, TypeError), (False, TypeError), (None, TypeError), ("50", TypeError),
]


@pytest.mark.parametrize(("bad", "error"), BAD_PERCENTS)
@pytest.mark.parametrize("phase_ms", [None, 10, 60])
@pytest.mark.covers("PercentInRange", "WorkerAcceptsEveryCommand")
def test_bad_percent_rejected_worker_untouched(bad: Any, error: type, phase_ms: int | None) -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        if phase_ms is not None:
            t.set_throttle_percent(30)
            rt.sleep_ns(phase_ms * MS)
        before = (t.worker_state, t.percent, len(t.events), v.paused)
        with pytest.raises(error, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
            t.set_throttle_percent(bad)
        assert (t.worker_state, t.percent, len(t.events), v.paused) == before
        t.shutdown()

    _, t, v, _ = run(scenario)
    assert v.alternation_error() is None and not v.paused


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"timeslice_ns": 0}, ValueError),
        ({"timeslice_ns": 19 * MS}, ValueError),
        ({"timeslice_ns": 10**12}, ValueError),
        ({"timeslice_ns": 100.0}, TypeError),
        ({"timeslice_ns": True}, TypeError),
        ({"call_timeout_ns": 0}, ValueError),
        ({"call_timeout_ns": -5}, ValueError),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], error: type) -> None:
    rt = VirtualRuntime(seed=0)
    v = RecordingVcpus(rt)

    def main() -> None:
        with pytest.raises(error):
            Throttler(v, runtime=rt, **kwargs)
        assert [th.name for th in rt.threads] == ["main"]  # no worker was started

    rt.run(main)


def test_vcpus_without_protocol_rejected() -> None:
    rt = VirtualRuntime(seed=0)

    def main() -> None:
        with pytest.raises(TypeError, match="pause"):
            Throttler(object(), runtime=rt)  # type: ignore[arg-type]

    rt.run(main)


# --- failures of pause()/resume() ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fail_on",
    [("pause", 1), ("pause", 2), ("resume", 1), ("resume", 3)],
)
@pytest.mark.covers("VcpusResumed", "ReturnsOnlyAfterJoin")
def test_vcpu_call_failure_is_reported_and_vcpus_resumed(fail_on: tuple[str, int]) -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(3 * T)
        assert t.worker_state == L.EXIT  # the worker stopped throttling
        with pytest.raises(ThrottleWorkerError, match="injected failure"):
            t.set_throttle_percent(20)
        with pytest.raises(ThrottleWorkerError):
            t.shutdown()
        t.shutdown()  # reported once, then idempotent

    _, t, v, _ = run(scenario, fail_on=[fail_on])
    assert not v.paused  # best-effort resume
    assert L.FAULT in triggers(t, "worker")


@pytest.mark.covers("AbortCompletes")
def test_failure_during_abort_wakes_the_caller() -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(10 * MS)  # in the first pause phase: abort must resume (resume #1 fails)
        start = rt.now_ns()
        with pytest.raises(ThrottleWorkerError):
            t.set_throttle_percent(0)
        assert rt.now_ns() - start < 10 * MS  # woken by the fault, not by the call timeout
        with pytest.raises(ThrottleWorkerError):
            t.shutdown()

    _, t, v, _ = run(scenario, fail_on=[("resume", 1)])
    assert not v.paused


@pytest.mark.covers("ShutdownCompletes", "ShutdownAlwaysCallable")
def test_hanging_pause_does_not_hang_the_caller() -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 60 * MS)  # the second pause() hangs
        start = rt.now_ns()
        with pytest.raises(ThrottlerTimeout, match="vcpu-throttle"):
            t.shutdown()
        assert rt.now_ns() - start <= 50 * MS + 1 * MS  # the call timeout, not the hang
        # after the timeout only shutdown() is possible (the spec's closing state)
        with pytest.raises(ThrottlerClosed, match="timed out or failed"):
            t.set_throttle_percent(0)
        with pytest.raises(ThrottlerClosed, match="only shutdown"):
            t.handover()
        # shutdown() stays callable; the pause() still hangs, so it times out again
        start = rt.now_ns()
        with pytest.raises(ThrottlerTimeout, match="did not answer shutdown"):
            t.shutdown()
        assert rt.now_ns() - start <= 50 * MS + 1 * MS
        assert not t.closed

    _, t, _, _ = run(scenario, hang_on=[("pause", 2)], hang_ns=None, kill_leftover=True,
                     throttler_kw={"call_timeout_ns": 50 * MS})
    controller = [(e.trigger, e.source, e.dest) for e in t.events if e.machine == "controller"]
    assert controller[-5:] == [
        (L.CALL_SHUTDOWN, L.IDLE, L.AWAITING_EXIT), (L.TIMEOUT, L.AWAITING_EXIT, L.CLOSING),
        (L.CALL_HANDOVER, L.CLOSING, L.CLOSING),
        (L.CALL_SHUTDOWN, L.CLOSING, L.AWAITING_EXIT), (L.TIMEOUT, L.AWAITING_EXIT, L.CLOSING),
    ]


@pytest.mark.covers("ShutdownCompletes", "ShutdownAlwaysCallable", "ReturnsOnlyAfterJoin")
def test_shutdown_after_a_timed_out_shutdown_succeeds_once_the_pause_returns() -> None:
    """The hanging pause() of the test above returns after 200 ms: the shutdown() that timed
    out left its exit queued, and the next shutdown() returns with the vCPUs running."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 60 * MS)  # the second pause() hangs for 200 ms
        with pytest.raises(ThrottlerTimeout):
            t.shutdown()
        assert v.paused or v.in_progress is not None
        rt.sleep_ns(200 * MS)  # the pause returns; the worker takes its queued exit
        t.shutdown()
        assert t.closed and not t.owned and not v.paused and t.worker_state == L.EXIT

    _, t, v, _ = run(scenario, hang_on=[("pause", 2)], hang_ns=200 * MS,
                     throttler_kw={"call_timeout_ns": 50 * MS})
    assert v.alternation_error() is None and not v.paused
    assert triggers(t, "controller")[-3:] == [L.TIMEOUT, L.CALL_SHUTDOWN, L.SHUTDOWN_DONE]


# --- internal errors (a bug in the worker loop, not a vCPU call) --------------------------------


class _BuggyCommands:
    """The worker's end of the commands channel, with one read made to raise."""

    def __init__(self, channel: Any, broken: str) -> None:
        self._channel = channel
        self._broken = broken

    def put(self, item: int) -> None:
        self._channel.put(item)

    def empty(self) -> bool:
        return bool(self._channel.empty())

    def get_nowait(self) -> int:
        if self._broken == "get_nowait":
            raise RuntimeError("injected bug")
        return int(self._channel.get_nowait())

    def get(self, timeout_ns: int | None = None) -> int:
        if self._broken == "get" and timeout_ns is None:
            raise RuntimeError("injected bug")
        return int(self._channel.get(timeout_ns))


@pytest.mark.parametrize(
    ("phase_ms", "call", "dest"), [(10, "resume", L.RUN), (60, "pause", L.PAUSE)],
)
@pytest.mark.covers("VcpusResumed", "PausedFollowsCalls")
def test_internal_error_in_a_vcpu_call_exits_through_the_spec_fault(
    phase_ms: int, call: str, dest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the worker's own code around a vCPU call (here: right after the backend's
    pause()/resume() returned, before the worker records it) is the spec's ``fault`` like a
    failing backend: best-effort resume, error reported, the log still a behaviour of the
    spec. (The next phase boundary from ``phase_ms`` is the call that breaks: pause phase ->
    pause_elapsed resumes, run phase -> run_elapsed pauses.)"""
    from autoconverge.model.tracecheck import SpecFollower
    from autoconverge.spec import SPEC

    code = L.CALL_CODES[call]

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(phase_ms * MS)
        worker = t._worker_model
        real_do_call = worker._do_call
        armed = [True]

        def buggy_do_call(which: int) -> None:
            real_do_call(which)
            if armed[0] and which == code:
                armed[0] = False
                raise RuntimeError("injected bug")

        monkeypatch.setattr(worker, "_do_call", buggy_do_call)
        rt.sleep_ns(T)
        assert t.worker_state == L.EXIT and not armed[0]
        with pytest.raises(ThrottleWorkerError, match="injected bug"):
            t.shutdown()
        t.shutdown()  # reported once, then idempotent

    _, t, v, _ = run(scenario)
    assert not v.paused and v.calls[-1].action == "resume"
    fault = [e for e in t.events if e.trigger == L.FAULT]
    assert [(e.source, e.dest, e.view_before.call) for e in fault] == [(dest, L.EXIT, code)]
    end = SpecFollower(SPEC).follow(t.events)
    assert end.failed and not end.paused and end.w == L.EXIT and end.c == L.DONE


@pytest.mark.parametrize(("phase_ms", "phase"), [(10, L.PAUSE), (60, L.RUN)])
def test_internal_error_while_throttling_still_exits_and_reports(
    phase_ms: int, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the worker loop outside a vCPU call (the last look at the queue before the
    deadline raises): the spec's ``fault`` is a failing vCPU call only, so, as while waiting
    (below), the worker exits without a spec transition, after a best-effort resume of the
    vCPUs it had paused, and reports the error; shutdown() still closes with the vCPUs
    running. The log up to the crash is a behaviour of the spec."""
    from autoconverge.model.tracecheck import SpecFollower
    from autoconverge.spec import SPEC

    crash: dict[str, int] = {}

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(phase_ms * MS)
        assert t.worker_state == phase
        crash["events"] = len(t.events)
        # the queue was empty at the phase's start: the last look before expire raises
        monkeypatch.setattr(t._worker_model, "_commands", _BuggyCommands(t._worker_model._commands,
                                                                  "get_nowait"))
        rt.sleep_ns(T)
        assert t.worker_state == L.EXIT and not v.paused
        assert len(t.events) == crash["events"]  # the exit is not a recorded transition
        with pytest.raises(ThrottleWorkerError, match="injected bug"):
            t.shutdown()
        t.shutdown()  # reported once, then idempotent

    _, t, v, _ = run(scenario)
    assert not v.paused and t.closed and not t.owned
    assert L.FAULT not in triggers(t)
    assert triggers(t)[crash["events"]:] == [L.CALL_SHUTDOWN, L.SHUTDOWN_DONE, L.CALL_SHUTDOWN]
    end = SpecFollower(SPEC).follow(t.events[:crash["events"]])
    assert end.w == phase and not end.failed


def test_internal_error_while_waiting_still_exits_and_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Blocked on an empty queue the spec has no fault step (fault@waiting needs a queued
    command); the worker still exits, resumes nothing it had not paused, and reports."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        rt.sleep_ns(MS)  # the worker blocks in the original channel's receive
        worker = t._worker_model
        monkeypatch.setattr(worker, "_commands", _BuggyCommands(worker._commands, "get"))
        t.set_throttle_percent(50)
        rt.sleep_ns(T)
        # back to waiting, where the blocking receive raises (maybe before abort returns)
        with contextlib.suppress(ThrottleWorkerError):
            t.set_throttle_percent(0)
        rt.sleep_ns(MS)
        assert t.worker_state == L.EXIT
        with pytest.raises(ThrottleWorkerError, match="injected bug"):
            t.shutdown()

    _, t, v, _ = run(scenario)
    assert not v.paused and t.closed
    assert L.FAULT not in triggers(t)
    assert triggers(t)[-3:] == [L.ABORT_DONE, L.CALL_SHUTDOWN, L.SHUTDOWN_DONE]


# --- concurrency, determinism, spec conformance -------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.covers("PauseResumeAlternate", "ReturnsOnlyAfterJoin", "NoDeadlock")
def test_concurrent_callers(seed: int) -> None:
    """A migration thread sets percents while a cancel thread aborts and shuts down."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        def migration() -> None:
            for p in (10, 20, 30, 40, 50, 60):
                try:
                    t.set_throttle_percent(p)
                except ThrottlerClosed:
                    return
                rt.sleep_ns(17 * MS)

        def cancel() -> None:
            rt.sleep_ns(45 * MS)
            t.set_throttle_percent(0)
            rt.sleep_ns(20 * MS)
            t.shutdown()

        a = rt.spawn("migration", migration)
        b = rt.spawn("cancel", cancel)
        assert a.join() and b.join()

    _, t, v, _ = run(scenario, seed=seed)
    assert t.closed and not v.paused and v.alternation_error() is None


def test_same_seed_same_run() -> None:
    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(33)
        rt.sleep_ns(250 * MS)
        t.set_throttle_percent(0)
        t.set_throttle_percent(66)
        rt.sleep_ns(150 * MS)
        t.shutdown()

    def summary(seed: int) -> list[tuple[int, str, str]]:
        _, t, _, _ = run(scenario, seed=seed)
        return [(e.time_ns, e.machine, e.trigger) for e in t.events]

    assert summary(5) == summary(5)


@pytest.mark.covers("safety")
def test_every_recorded_step_is_a_spec_transition() -> None:
    """Each event names a (trigger, source, dest) of the spec relation, guard true before it."""
    from autoconverge.spec import SPEC

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(25)
        rt.sleep_ns(230 * MS)
        t.set_throttle_percent(75)
        rt.sleep_ns(130 * MS)
        t.set_throttle_percent(0)
        t.set_throttle_percent(5)
        rt.sleep_ns(50 * MS)
        t.handover()

    _, t, _, _ = run(scenario)
    relation = {(x.trigger, x.source, x.dest): x for x in SPEC.relation()}
    for e in t.events:
        spec_t = relation[(e.trigger, e.source, e.dest)]
        assert spec_t.guard(e.view_before, **e.params), e


@pytest.mark.covers("WorkerAcceptsEveryCommand")
def test_illegal_command_gets_an_answer() -> None:
    """A command the spec does not allow in the worker's state is answered, not ignored."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        # bypass the API: an abort while the worker waits is not a spec transition
        t._controller._commands.put(L.CMD_ABORT)
        answer = t._responses.get(100 * MS)
        assert isinstance(answer, SpecViolation) and "not allowed" in str(answer)
        assert t.worker_state == L.WAITING
        t.shutdown()

    run(scenario)


def test_models_leave_the_shared_machine() -> None:
    """Many throttlers over time do not accumulate models on the spec's machines."""
    from autoconverge.spec import SPEC

    before = (len(SPEC.machine("worker").models), len(SPEC.machine("controller").models))

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(10)
        rt.sleep_ns(10 * MS)
        t.shutdown()

    for seed in range(20):
        run(scenario, seed=seed)
    after = (len(SPEC.machine("worker").models), len(SPEC.machine("controller").models))
    assert after == before
