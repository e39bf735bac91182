"""Systematic exploration of the real throttler's thread interleavings (like loom/CHESS).

The throttler gets every thread, channel and clock operation from its injected runtime, so
the deterministic :class:`~autoconverge.impl.virtualtime.VirtualRuntime` decides which
thread moves at each operation. :func:`explore_scenario` runs one scenario (a few API
callers in their own threads, plus the worker) under **every** schedule with at most
``preemption_bound`` preemptions (``explore_schedules``: depth-first, CHESS-style context
bounding) and, after each schedule, checks:

- trace validation: the event log replays through the spec (every step a spec transition
  with its guard true, every invariant and step property holding) - :mod:`.tracecheck`;
- the end state: controller done, worker exited, vCPUs running unless handed over, pause and
  resume strictly alternating (the fake vCPUs' own record);
- shutdown completes within the number of worker steps the model allows: at most
  ``3 * (commands queued ahead of the exit + 1)`` worker/clock steps between
  ``call_shutdown`` (or ``call_handover``) and the call's completion (each queued command
  costs at most a receive, an expiry and a phase change before the next receive), and at
  most 3 more vCPU call endings (actor ``vcpu``: ``call_return``, ``fault``,
  ``resume_failed``) than worker/clock steps: each worker step starts at most one call, plus
  the call in progress when shutdown() was called, a fault's best-effort resume and
  shutdown()'s own resume of vCPUs the worker left paused.

Why our own runtime rather than bytecode-level exploration (frontrun): interleaving only at
runtime operations keeps the schedule space small enough to enumerate exhaustively at a
bound, replays from a list of choices, and matches the abstraction the spec makes (each
transition is atomic because each thread's code between runtime operations touches only
its own model). What it does not explore: preemptions *between* two runtime operations of
one thread (pure-Python code there touches only that thread's state, except the
cross-thread reads of the other model's ``state``, which are atomic in CPython).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.schedules import explore_schedules
from autoconverge.impl.throttler import (
    Throttler,
    ThrottlerClosed,
    ThrottlerTimeout,
    ThrottleWorkerError,
)
from autoconverge.impl.virtualtime import VirtualRuntime
from autoconverge.spec import SPEC
from autoconverge.spec import lifecycle as L

from .tracecheck import SpecFollower

MS = 1_000_000

Scenario = Callable[[VirtualRuntime, Throttler, RecordingVcpus], None]


def _tolerate(fn: Callable[[], Any], *errors: type[BaseException]) -> None:
    try:
        fn()
    except errors:
        pass


def abort_races_set(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """A migration thread raises the percent while a cancel thread aborts, then shuts down."""
    t.set_throttle_percent(50)

    def cancel() -> None:
        t.set_throttle_percent(0)
        t.shutdown()

    c = rt.spawn("cancel", cancel)
    _tolerate(lambda: t.set_throttle_percent(60), ThrottlerClosed)
    _tolerate(lambda: t.set_throttle_percent(70), ThrottlerClosed)
    c.join()


def shutdown_races_handover(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """Switch-over (handover) and a cancel (shutdown) at the same time: one of them wins."""
    t.set_throttle_percent(30)
    c = rt.spawn("cancel", t.shutdown)
    _tolerate(t.handover, ThrottlerClosed)
    c.join()


def burst_then_shutdown(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """A burst of percents queued while another thread shuts down."""

    def burst() -> None:
        for p in (10, 20, 30, 40):
            try:
                t.set_throttle_percent(p)
            except ThrottlerClosed:
                pass

    b = rt.spawn("burst", burst)
    t.shutdown()
    b.join()


def fault_during_abort(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """resume() fails while an abort and a shutdown race: both return, vCPUs resumed."""
    t.set_throttle_percent(50)
    def cancel() -> None:
        _tolerate(t.shutdown, ThrottleWorkerError)

    c = rt.spawn("cancel", cancel)
    _tolerate(lambda: t.set_throttle_percent(0), ThrottleWorkerError, ThrottlerClosed)
    c.join()
    _tolerate(t.shutdown, ThrottleWorkerError)


def handover_times_out(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """handover() times out on a hanging pause() (30 ms, call timeout 10 ms) while a cancel
    thread calls shutdown(): after the hang the late handover's worker exits leaving the
    vCPUs paused for nobody, and the final shutdown() resumes them."""
    t.set_throttle_percent(50)
    rt.sleep_ns(15 * MS)  # in the run phase: the handover's pause() is pause #2

    def cancel() -> None:
        rt.sleep_ns(5 * MS)
        _tolerate(t.shutdown, ThrottlerTimeout)

    c = rt.spawn("cancel", cancel)
    _tolerate(t.handover, ThrottlerTimeout, ThrottlerClosed)
    c.join()
    rt.sleep_ns(40 * MS)  # the hang is over
    t.shutdown()
    if t.owned or not t.closed:
        raise ScheduleCheckFailed(f"shutdown() after the hang: closed={t.closed}, "
                                  f"owned={t.owned}")


def change_at_phase_boundary(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """Commands issued exactly when a phase deadline passes (found a race, now fixed)."""
    t.set_throttle_percent(50)
    rt.sleep_ns(50 * MS)  # a phase boundary at 20 ms timeslices
    t.set_throttle_percent(20)
    t.set_throttle_percent(0)
    t.set_throttle_percent(99)
    t.handover()


def pause_fails(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
    """The second pause() fails while a caller keeps changing the percent."""
    t.set_throttle_percent(50)
    rt.sleep_ns(25 * MS)
    _tolerate(lambda: t.set_throttle_percent(70), ThrottleWorkerError)
    _tolerate(t.shutdown, ThrottleWorkerError)


SCENARIOS: dict[str, tuple[Scenario, dict[str, Any]]] = {
    "change_at_phase_boundary": (change_at_phase_boundary, {}),
    "pause_fails": (pause_fails, {"fail_on": [("pause", 2)]}),
    "abort_races_set": (abort_races_set, {}),
    "shutdown_races_handover": (shutdown_races_handover, {}),
    "burst_then_shutdown": (burst_then_shutdown, {}),
    "fault_during_abort": (fault_during_abort, {"fail_on": [("resume", 1)]}),
    "handover_times_out": (handover_times_out, {
        "hang_on": [("pause", 2)], "hang_ns": 30 * MS, "throttler": {"call_timeout_ns": 10 * MS},
    }),
}
"""name -> (scenario, the fake vCPUs' keyword arguments; ``throttler``: the throttler's)."""


class ScheduleCheckFailed(AssertionError):
    """A schedule broke the spec or an end-state check."""


def check_run(t: Throttler, v: RecordingVcpus) -> dict[str, int]:
    """The checks made after every schedule; returns measurements."""
    follower = SpecFollower(SPEC)
    events = list(t.events)
    follower.follow(events)  # raises TraceMismatch
    end = follower.state
    if not (end.w == L.EXIT and t.worker_state == L.EXIT):
        raise ScheduleCheckFailed(f"worker did not exit: spec {end.w}, impl {t.worker_state}")
    if end.owner == 0 and v.paused:
        raise ScheduleCheckFailed("vCPUs left paused without a handover that returned")
    if end.owner != 0 and not v.paused:
        raise ScheduleCheckFailed("handover returned but did not leave the vCPUs paused")
    if not end.failed and v.alternation_error() is not None:
        raise ScheduleCheckFailed(f"pause/resume: {v.alternation_error()}")
    # shutdown completes within the worker steps the model allows
    worst = 0
    replay = SpecFollower(SPEC)
    start: int | None = None
    allowed = 0
    for i, e in enumerate(events):
        pre = replay.state
        replay.step(e)
        if e.trigger in (L.CALL_SHUTDOWN, L.CALL_HANDOVER) and e.dest in L.AWAITING:
            start, allowed = i, 3 * (len(pre.chan) + 1)
        if e.trigger in _COMPLETIONS and start is not None:
            actors = [SPEC.find(x.trigger, x.source).actor
                      for x in events[start:i] if x.machine == "worker"]
            steps = sum(1 for a in actors if a != "vcpu")
            call_ends = len(actors) - steps
            if steps > allowed:
                raise ScheduleCheckFailed(
                    f"shutdown took {steps} worker steps; the model allows {allowed}"
                )
            if call_ends > steps + 3:
                raise ScheduleCheckFailed(
                    f"shutdown took {call_ends} vCPU call endings for {steps} worker steps; "
                    f"the model allows {steps + 3}"
                )
            worst = max(worst, steps)
            start = None
    return {"events": len(events), "worst_shutdown_steps": worst}


_COMPLETIONS = (L.SHUTDOWN_DONE, L.HANDOVER_DONE, L.HANDOVER_FAILED, L.RESUMED,
                L.RESUME_LEFT_PAUSED, L.TIMEOUT)
"""How a shutdown()/handover() ends: returned, raised after a failure, or timed out."""


@dataclass
class ScenarioResult:
    name: str
    preemption_bound: int
    schedules: int
    complete: bool
    ok: bool
    wall_s: float
    failure: str | None = None
    failing_choices: list[int] | None = None
    max_choice_points: int = 0
    worst_shutdown_steps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def explore_scenario(name: str, *, preemption_bound: int = 2,
                     max_schedules: int = 5_000) -> ScenarioResult:
    scenario, kw = SCENARIOS[name]
    vcpu_kw = {k: v for k, v in kw.items() if k != "throttler"}
    throttler_kw: dict[str, Any] = kw.get("throttler", {})
    worst = [0]

    def make_and_run(rt: VirtualRuntime) -> None:
        v = RecordingVcpus(rt, pause_cost_ns=100_000, resume_cost_ns=50_000, **vcpu_kw)
        box: list[Throttler] = []

        def main() -> None:
            t = Throttler(v, runtime=rt, timeslice_ns=20 * MS, trace=True, **throttler_kw)
            box.append(t)
            scenario(rt, t, v)
            if not t.closed:
                _tolerate(t.shutdown, ThrottleWorkerError)

        rt.run(main, max_steps=200_000, fail_fast=True)
        worst[0] = max(worst[0], check_run(box[0], v)["worst_shutdown_steps"])

    t0 = time.perf_counter()
    res = explore_schedules(make_and_run, preemption_bound=preemption_bound,
                            max_schedules=max_schedules)
    return ScenarioResult(
        name, preemption_bound, res.schedules, res.complete, res.ok,
        round(time.perf_counter() - t0, 3),
        None if res.failure is None else f"{type(res.failure).__name__}: {res.failure}",
        res.failing_choices, res.max_depth, worst[0],
    )
