"""Issue #15: the throttler's five defects, each a regression test with its replay.

Each defect of the reliability campaign is one deterministic virtual-time program (a seeded
:class:`VirtualRuntime`, or a schedule found by :func:`explore_schedules` and its list of
choices) asserting the *correct* behaviour. Until the fix they were strict xfails (commit
1b75e6a, where CI showed each failing by its assertion); each docstring quotes that failure.
The same mistakes are kept as bug-zoo variants of the spec (``timeout_leaves_call_pending``,
``handover_after_shutdown_returns``, ``shutdown_ignores_paused_vcpus``,
``worker_dies_silently``), which every checker must catch.

The last section checks the oracle the defect tests share: "the worker thread is gone when
shutdown()/handover() returned" (``Throttler._thread``), including that it catches a
throttler that returns without joining (the spec's completion guard - the worker gone:
``exit`` with no vCPU call in progress - now refuses such a step even before the check).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from autoconverge.impl import throttler as throttler_module
from autoconverge.impl.fakes import Action, PartialVcpus, RecordingVcpus
from autoconverge.impl.schedules import explore_schedules
from autoconverge.impl.throttler import (
    SpecViolation,
    Throttler,
    ThrottlerClosed,
    ThrottlerError,
    ThrottlerTimeout,
    ThrottleWorkerError,
)
from autoconverge.impl.virtualtime import VirtualRuntime, VirtualThread
from autoconverge.spec import lifecycle as L

MS = 1_000_000
T = 100 * MS
CALL_TIMEOUT = 50 * MS
VCPU_COST = 50_000
"""Per-vCPU cost of PartialVcpus: a pause or resume of 4 vCPUs takes 200 us."""

V = TypeVar("V", PartialVcpus, RecordingVcpus)


def partial(rt: VirtualRuntime, **kw: Any) -> PartialVcpus:
    return PartialVcpus(rt, 4, vcpu_cost_ns=VCPU_COST, **kw)


def run(
    scenario: Callable[[VirtualRuntime, Throttler, V], Any],
    make_vcpus: Callable[[VirtualRuntime], V],
    *,
    seed: int = 0,
    call_timeout_ns: int = CALL_TIMEOUT,
    kill_leftover: bool = False,
    fail_fast: bool = True,
) -> tuple[VirtualRuntime, Throttler, V]:
    """Run ``scenario`` as the main thread of ``VirtualRuntime(seed)`` on a fresh throttler.

    A ``KeyboardInterrupt`` left uncaught in a virtual thread after the scenario completed is
    tolerated (a worker may re-raise it once it cleaned up); one that ended the scenario is a
    failure, never a pytest session interrupt.
    """
    rt = VirtualRuntime(seed=seed)
    vcpus = make_vcpus(rt)
    box: dict[str, Any] = {}

    def main() -> None:
        t = Throttler(vcpus, runtime=rt, timeslice_ns=T, call_timeout_ns=call_timeout_ns,
                      trace=True)
        box["t"] = t
        scenario(rt, t, vcpus)
        box["done"] = True

    try:
        rt.run(main, kill_leftover=kill_leftover, fail_fast=fail_fast, max_steps=2_000_000)
    except KeyboardInterrupt as exc:
        if not box.get("done"):
            raise AssertionError(f"KeyboardInterrupt ended the program: {exc!r}") from exc
    return rt, box["t"], vcpus


def assert_worker_gone(t: Throttler, after: str) -> None:
    """The oracle: once shutdown()/handover() returned, the worker thread has exited."""
    assert not t._thread.is_alive(), f"{after} returned while the worker thread is alive"


def assert_running(v: PartialVcpus | RecordingVcpus, after: str) -> None:
    assert not v.is_paused(), f"{after}: vCPUs still paused ({v!r})"


def shutdown_must_succeed(t: Throttler, v: PartialVcpus, after: str) -> None:
    """The expected end of every defect-1/4 program: shutdown() works, vCPUs run, worker gone."""
    try:
        t.shutdown()
    except ThrottleWorkerError:
        pass  # a failure to report is fine; the handle must still shut down
    except ThrottlerError as exc:
        raise AssertionError(f"shutdown() {after} raised {exc!r}") from exc
    assert t.closed, f"shutdown() {after} returned but the throttler is not closed"
    assert_running(v, f"shutdown() {after}")
    assert_worker_gone(t, f"shutdown() {after}")


# --- defect 1: a timed-out call leaves the throttler unusable ------------------------------------


HANGS: list[tuple[Action, int]] = [("pause", 2), ("resume", 1)]
"""pause #2: at t=100 ms (run phase ends); resume #1: at t=50 ms (first pause phase ends)."""


def _timed_out_call(t: Throttler, call: str) -> None:
    with pytest.raises(ThrottlerTimeout, match="did not answer"):
        if call == "abort":
            t.set_throttle_percent(0)
        elif call == "shutdown":
            t.shutdown()
        else:
            t.handover()


@pytest.mark.parametrize("hang", HANGS, ids=lambda h: f"{h[0]}{h[1]}")
@pytest.mark.parametrize("call", ["abort", "shutdown", "handover"])
def test_d1_shutdown_works_after_a_timed_out_call_once_the_hang_resolves(
    call: str, hang: tuple[Action, int]
) -> None:
    """Seed 0, 4 vCPUs (50 us each), call timeout 50 ms, timeslice 100 ms; ``hang`` blocks
    until released. Program: set 50 %; sleep to 10 ms into the hang; ``call`` -> ThrottlerTimeout
    (correct); release the hang; sleep 10 ms; shutdown() must return (or report a worker
    error), the vCPUs running and the worker thread gone.

    Before the fix: "shutdown() after the hang resolved raised ThrottlerError('vcpu-throttle: a
    previous call did not complete (controller state awaiting_*)')"."""
    at_ns = (hang[1] - 1) * T + (50 * MS if hang[0] == "resume" else 0)

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(at_ns + 10 * MS)
        assert v.hanging is not None and (v.hanging.action, v.hanging.number) == hang
        _timed_out_call(t, call)
        v.release()
        rt.sleep_ns(10 * MS)
        assert v.hanging is None
        shutdown_must_succeed(t, v, "after the hang resolved")

    run(scenario, lambda rt: partial(rt, hang_on=[hang]))


def test_d1_late_handover_leaves_the_vcpus_to_a_later_shutdown() -> None:
    """Seed 0, hang on pause #2 (released), call timeout 50 ms. Program: set 50 %; sleep
    110 ms; handover() -> ThrottlerTimeout: its caller was told it failed, so it does not own
    the vCPUs; release the hang; sleep 10 ms; shutdown() (any ThrottlerError suppressed, so
    that this test is about the vCPUs alone): the vCPUs must run.

    Before the fix the worker receives the handover late, pauses and exits, and nobody resumes:
    "the late handover left vCPUs [0, 1, 2, 3] paused"."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 10 * MS)
        _timed_out_call(t, "handover")
        v.release()
        rt.sleep_ns(10 * MS)
        with contextlib.suppress(ThrottlerError):
            t.shutdown()
        assert not v.is_paused(), f"the late handover left vCPUs {v.paused_vcpus} paused"

    run(scenario, lambda rt: partial(rt, hang_on=[("pause", 2)]))


def test_d1_no_worker_left_after_a_timed_out_abort() -> None:
    """Seed 0, hang on pause #2 (released), call timeout 50 ms. Program: set 50 %; sleep
    110 ms; abort -> ThrottlerTimeout; release; sleep 10 ms; shutdown() (any ThrottlerError
    suppressed): the worker thread must be gone.

    Before the fix: "shutdown() after a timed-out abort returned while the worker thread is
    alive"."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 10 * MS)
        _timed_out_call(t, "abort")
        v.release()
        rt.sleep_ns(10 * MS)
        assert t.worker_state == L.WAITING  # the late abort completed in the worker
        with contextlib.suppress(ThrottlerError):
            t.shutdown()
        assert_worker_gone(t, "shutdown() after a timed-out abort")

    run(scenario, lambda rt: partial(rt, hang_on=[("pause", 2)]))


# --- defect 2: handover() racing shutdown() ------------------------------------------------------


def test_d2_handover_after_a_concurrent_shutdown_raises_closed() -> None:
    """Seed 0, 4 vCPUs (50 us each). Program: set 50 %; sleep 10 ms (pause phase); thread
    "shut" calls shutdown() at once (its resume takes 200 us); thread "hand" sleeps 50 us
    and calls handover() (closed is still False; it then waits for the API lock). handover
    started after shutdown, so it must raise ThrottlerClosed.

    Before the fix: "handover() returned normally with the vCPUs running ([] paused)"."""
    out: dict[str, object] = {}

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(10 * MS)

        def shut() -> None:
            t.shutdown()

        def hand() -> None:
            rt.sleep_ns(VCPU_COST)
            try:
                t.handover()
            except ThrottlerClosed:
                out["hand"] = "closed"
            else:
                out["hand"] = v.paused_vcpus

        a, b = rt.spawn("shut", shut), rt.spawn("hand", hand)
        assert a.join() and b.join()

    run(scenario, partial)
    assert out["hand"] == "closed", (
        f"handover() returned normally with the vCPUs running ({out['hand']} paused)"
    )


def _race_program(rt: VirtualRuntime) -> None:
    """Two threads started together: "shut" calls shutdown(), "hand" calls handover(). A
    handover that returns must leave every vCPU paused (it owns them now)."""
    v = PartialVcpus(rt, 2)
    bad: list[str] = []

    def main() -> None:
        t = Throttler(v, runtime=rt, timeslice_ns=T, call_timeout_ns=CALL_TIMEOUT)
        t.set_throttle_percent(50)

        def shut() -> None:
            t.shutdown()

        def hand() -> None:
            with contextlib.suppress(ThrottlerClosed):
                t.handover()
                if not v.all_paused():
                    bad.append(f"handover() returned with vCPUs {v.paused_vcpus} paused of 2")

        a, b = rt.spawn("shut", shut), rt.spawn("hand", hand)
        assert a.join() and b.join()

    rt.run(main, fail_fast=True)
    assert not bad, bad[0]


def test_d2_no_schedule_lets_a_handover_return_with_running_vcpus() -> None:
    """Every schedule of :func:`_race_program` with at most 1 preemption (CHESS-style; 494
    schedules, under a second).

    The assertion message carries the failing schedule's choices; replay it with
    ``_race_program(VirtualRuntime(replay=choices))``. Before the fix the 6th
    schedule failed:
    "handover() returned with vCPUs [] paused of 2", replay ``[0] * 25 + [1, 1, 1] + [0] * 11
    + [1, 0]`` (the handover thread checks ``closed`` before the shutdown thread takes the
    API lock, and returns once it gets the lock after the shutdown)."""
    result = explore_schedules(_race_program, preemption_bound=1, max_schedules=5_000)
    assert result.ok, (
        f"{result.failure} (after {result.schedules} schedules; replay: "
        f"_race_program(VirtualRuntime(replay={result.failing_choices})))"
    )


def test_d2_the_found_schedule_replays() -> None:
    """The exploration's failing schedule (if any) replays to the same failure: the replay the
    defect test prints is usable. Passes trivially once the
    defect is fixed."""
    result = explore_schedules(_race_program, preemption_bound=1, max_schedules=5_000)
    if result.ok:
        return
    assert result.failing_choices is not None
    with pytest.raises(type(result.failure), match="handover"):
        _race_program(VirtualRuntime(replay=result.failing_choices))


# --- defect 3: shutdown() after a fault ---------------------------------------------------------


def test_d3_shutdown_after_a_reported_fault_is_prompt() -> None:
    """Seed 0, RecordingVcpus (pause 200 us, resume 100 us) whose resume #1 fails, call
    timeout 1 s. Program: set 50 %; sleep 10 ms; abort -> ThrottleWorkerError (the fault
    answered it); shutdown() (ThrottleWorkerError suppressed) must return within 10 ms: the
    worker already exited.

    Fixed (issue #15 defect 3, first half): before, "shutdown() after the fault took
    1000000000 ns (call timeout 1000000000 ns)"."""
    took: dict[str, int] = {}

    def scenario(rt: VirtualRuntime, t: Throttler, v: RecordingVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(10 * MS)
        with pytest.raises(ThrottleWorkerError):
            t.set_throttle_percent(0)
        assert t.worker_state == L.EXIT
        start = rt.now_ns()
        with contextlib.suppress(ThrottleWorkerError):
            t.shutdown()
        took["ns"] = rt.now_ns() - start

    run(scenario, lambda rt: RecordingVcpus(rt, pause_cost_ns=200_000, resume_cost_ns=100_000,
                                            fail_on=[("resume", 1)]),
        call_timeout_ns=1_000 * MS)
    assert took["ns"] <= 10 * MS, (
        f"shutdown() after the fault took {took['ns']} ns (call timeout {1_000 * MS} ns)"
    )


def test_d3_a_shutdown_that_returns_leaves_the_vcpus_running() -> None:
    """Seed 0, 4 vCPUs: resume #1 fails after resuming 2 of 4, the worker's best-effort
    resume #2 fails at once, a later resume would succeed. Program: set 50 %; sleep 300 ms
    (the worker faulted at t=50 ms and exited); shutdown() until one returns normally (at
    most 3 tries; ThrottleWorkerError is the reported fault): the vCPUs must then run.

    Before the fix: "shutdown() returned normally on try 2 with vCPUs [2, 3] paused"."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(3 * T)
        assert t.worker_state == L.EXIT
        for attempt in (1, 2, 3):
            try:
                t.shutdown()
            except ThrottleWorkerError:
                continue
            assert not v.is_paused(), (
                f"shutdown() returned normally on try {attempt} with vCPUs "
                f"{v.paused_vcpus} paused"
            )
            return
        raise AssertionError("shutdown() never returned normally")

    run(scenario, lambda rt: partial(rt, fail_on={("resume", 1): 2, ("resume", 2): 0}))


# --- defect 4: a BaseException in pause()/resume() kills the worker silently ----------------------


@pytest.mark.parametrize("where", [("pause", 2), ("resume", 1)], ids=lambda w: f"{w[0]}{w[1]}")
def test_d4_keyboard_interrupt_in_a_vcpu_call_is_a_fault(where: tuple[Action, int]) -> None:
    """Seed 0, 4 vCPUs; ``where`` raises KeyboardInterrupt after 2 of 4 vCPUs. Program: set
    50 %; sleep 300 ms; shutdown() must return or raise ThrottleWorkerError (the fault),
    then the vCPUs run and the worker thread is gone. (A worker that re-raises the interrupt
    after cleaning up is accepted.)

    Before the fix: "shutdown() after the interrupt raised ThrottlerTimeout('vcpu-throttle: worker
    did not answer shutdown within 50.0 ms (stuck in a vCPU call?)')"."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(3 * T)
        shutdown_must_succeed(t, v, "after the interrupt")

    run(scenario, lambda rt: partial(rt, fail_on={where: 2}, errors={where: KeyboardInterrupt()}),
        fail_fast=False)


# --- defect 5: the error after a failed shutdown -------------------------------------------------


def test_d5_calls_after_a_timed_out_shutdown_raise_closed() -> None:
    """Seed 0, 4 vCPUs, pause #2 hangs (never released), call timeout 50 ms. Program: set
    50 %; sleep 110 ms; shutdown() -> ThrottlerTimeout; set_throttle_percent(10) and (0) must
    raise ThrottlerClosed (README: after shutdown() "later calls raise ThrottlerClosed").

    Before the fix: "set_throttle_percent(10) after a failed shutdown raised ThrottlerError('vcpu-
    throttle: a previous call did not complete (controller state awaiting_exit)')"."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(T + 10 * MS)
        _timed_out_call(t, "shutdown")
        for p in (10, 0):
            try:
                t.set_throttle_percent(p)
            except ThrottlerClosed:
                continue
            except ThrottlerError as exc:
                raise AssertionError(
                    f"set_throttle_percent({p}) after a failed shutdown raised {exc!r}"
                ) from exc
            raise AssertionError(f"set_throttle_percent({p}) after a failed shutdown returned")

    run(scenario, lambda rt: partial(rt, hang_on=[("pause", 2)]), kill_leftover=True)


def test_d5_calls_after_a_shutdown_that_reported_a_fault_raise_closed() -> None:
    """Not a defect today (regression guard): a shutdown() that raised ThrottleWorkerError
    closes the handle, later calls raise ThrottlerClosed. Seed 0, pause #2 fails after 2 of
    4 vCPUs; set 50 %; sleep 300 ms; shutdown() -> ThrottleWorkerError; then every call."""

    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        t.set_throttle_percent(50)
        rt.sleep_ns(3 * T)
        with pytest.raises(ThrottleWorkerError):
            t.shutdown()
        for p in (10, 0):
            with pytest.raises(ThrottlerClosed):
                t.set_throttle_percent(p)
        with pytest.raises(ThrottlerClosed):
            t.handover()
        t.shutdown()
        assert_running(v, "shutdown() after a fault")
        assert_worker_gone(t, "shutdown() after a fault")

    run(scenario, lambda rt: partial(rt, fail_on={("pause", 2): 2}))


# --- the oracle: the worker thread is gone when shutdown()/handover() returned ------------------


def _slow_exit(monkeypatch: pytest.MonkeyPatch, delay_ns: int = 1 * MS) -> None:
    """Give the worker thread some exit work after its run loop (as a real thread has):
    otherwise, in virtual time, the worker always exits before the caller wakes up, and a
    missing join could not be seen."""
    original = throttler_module._Worker.run

    def run_then_linger(self: throttler_module._Worker) -> None:
        original(self)
        self._runtime.sleep_ns(delay_ns)

    monkeypatch.setattr(throttler_module._Worker, "run", run_then_linger)


def _end_program(how: str, where_ms: int | None) -> Callable[[VirtualRuntime, Throttler,
                                                               PartialVcpus], None]:
    def scenario(rt: VirtualRuntime, t: Throttler, v: PartialVcpus) -> None:
        if where_ms is not None:
            t.set_throttle_percent(50)
            rt.sleep_ns(where_ms * MS)
        if how == "shutdown":
            t.shutdown()
        else:
            t.handover()
        assert_worker_gone(t, f"{how}()")
        assert v.is_paused() == (how == "handover")

    return scenario


ENDS = [(how, where) for how in ("shutdown", "handover") for where in (None, 20, 75)]


@pytest.mark.parametrize(("how", "where_ms"), ENDS)
@pytest.mark.covers("ReturnsOnlyAfterJoin")
def test_worker_thread_is_gone_when_the_call_returns(
    how: str, where_ms: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 0: waiting / pause phase / run phase; shutdown() or handover(); the worker thread
    (``Throttler._thread``) is no longer alive when the call returns, though it lingers 1 ms
    after its run loop."""
    _slow_exit(monkeypatch)
    run(_end_program(how, where_ms), partial)


@pytest.mark.parametrize(("how", "where_ms"), ENDS)
def test_the_worker_gone_check_catches_a_missing_join(
    how: str, where_ms: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutant: the throttler's join of its worker made a no-op that reports success. The
    check of the test above must then fail."""
    _slow_exit(monkeypatch)
    monkeypatch.setattr(VirtualThread, "join", lambda self, timeout_ns=None: True)
    with pytest.raises((AssertionError, SpecViolation),
                       match=r"worker thread is alive|guard of '(shutdown_done|handover_\w+)'"):
        run(_end_program(how, where_ms), partial)
