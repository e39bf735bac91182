"""A few short runs of the throttler on real threads and the wall clock; its realtime
priorities (worker, blocking callers) and their fallback."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable

import pytest

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.policy_restorer import RESTORER
from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.sched import policy_of, realtime_permitted
from autoconverge.impl.throttler import Throttler, ThrottlerClosed
from autoconverge.model.tracecheck import SpecFollower
from autoconverge.spec import SPEC
from autoconverge.spec import lifecycle as L

pytestmark = pytest.mark.realtime
MS = 1_000_000


@pytest.mark.covers("safety", "AbortReturnsWithVcpusRunning")
def test_seed_scenario_on_real_threads() -> None:
    rt = RealRuntime()
    v = RecordingVcpus(rt)
    slice_ns = 20 * MS
    with Throttler(v, runtime=rt, timeslice_ns=slice_ns, trace=True) as t:
        t.set_throttle_percent(5)
        time.sleep(0.03)
        t.set_throttle_percent(10)
        time.sleep(0.03)
        t.set_throttle_percent(0)
        assert not v.paused and t.worker_state == L.WAITING  # abort is synchronous
        t.set_throttle_percent(50)
        time.sleep(0.05)
        for _ in range(5):
            t.shutdown()
    assert t.worker_state == L.EXIT and not v.paused
    assert v.alternation_error() is None and v.pause_count >= 3
    assert not any(th.name == "vcpu-throttle" for th in threading.enumerate())
    with pytest.raises(ThrottlerClosed):
        t.set_throttle_percent(10)
    # trace validation: the real threads' log is a behaviour of the spec
    end = SpecFollower(SPEC).follow(t.events)
    assert end.w == L.EXIT and end.c == L.DONE and not end.paused


@pytest.mark.covers("HandoverMeansOwnedPause")
def test_handover_on_real_threads() -> None:
    rt = RealRuntime()
    v = RecordingVcpus(rt)
    t = Throttler(v, runtime=rt, timeslice_ns=20 * MS, trace=True)
    t.set_throttle_percent(60)
    time.sleep(0.025)
    t.handover()
    assert v.paused and t.worker_state == L.EXIT and t.closed and t.owned
    assert v.alternation_error() is None
    end = SpecFollower(SPEC).follow(t.events)
    assert end.handed and end.paused and end.owner == 1  # the creating thread is caller 1


def test_dropped_handle_stops_its_worker() -> None:
    rt = RealRuntime()
    v = RecordingVcpus(rt)
    t = Throttler(v, runtime=rt, timeslice_ns=20 * MS, name="forgotten-throttle")
    t.set_throttle_percent(50)
    time.sleep(0.01)
    del t
    gc.collect()
    deadline = time.monotonic() + 2
    while any(th.name == "forgotten-throttle" for th in threading.enumerate()):
        assert time.monotonic() < deadline, "worker of a dropped handle still running"
        time.sleep(0.005)
    assert not v.paused  # it resumed the vCPUs on its way out


@pytest.mark.covers("safety", "ShutdownCompletes")
def test_many_short_lives_follow_the_spec() -> None:
    """Repeated create/throttle/abort/shutdown cycles (the 174-migrations lesson)."""
    rt = RealRuntime()
    for i in range(40):
        v = RecordingVcpus(rt)
        with Throttler(v, runtime=rt, timeslice_ns=20 * MS, trace=True) as t:
            t.set_throttle_percent(10 + i % 80)
            time.sleep(0.001 * (i % 4))
            if i % 3 == 0:
                t.set_throttle_percent(0)
        SpecFollower(SPEC).follow(t.events)
        assert not v.paused and v.alternation_error() is None
    assert not any(th.name == "vcpu-throttle" for th in threading.enumerate())


def _worker_policy(name: str) -> int:
    (worker,) = [th for th in threading.enumerate() if th.name == name]
    assert worker.native_id is not None
    return policy_of(worker.native_id)


def test_worker_and_blocking_callers_run_realtime_where_permitted() -> None:
    if not realtime_permitted():
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE here")
    rt = RealRuntime()
    v = RecordingVcpus(rt)

    def body() -> None:
        with Throttler(v, runtime=rt, timeslice_ns=20 * MS, name="rt-throttle") as t:
            assert t.realtime and t.stats.caller_realtime is None  # no call yet
            t.set_throttle_percent(50)  # async: boosted too (the worker it wakes is realtime)
            RESTORER.flush()
            assert policy_of(0) == os.SCHED_OTHER
            t.set_throttle_percent(0)  # abort: boosted for the call, restored 1 ms after
            RESTORER.flush()  # (by the restorer's thread; here at once)
            assert policy_of(0) == os.SCHED_OTHER
            stats = t.stats
            assert stats.worker_realtime and stats.caller_realtime
            assert _worker_policy("rt-throttle") == os.SCHED_FIFO
            assert not v.paused
        RESTORER.flush()
        assert policy_of(0) == os.SCHED_OTHER  # shutdown restored it too

    _run_in_thread(body)


def test_realtime_off_keeps_every_thread_normal() -> None:
    rt = RealRuntime()
    v = RecordingVcpus(rt)
    with Throttler(v, runtime=rt, timeslice_ns=20 * MS, name="plain-throttle",
                   realtime=False) as t:
        t.set_throttle_percent(50)
        t.set_throttle_percent(0)
        assert _worker_policy("plain-throttle") == os.SCHED_OTHER
        assert t.stats.worker_realtime is False and t.stats.caller_realtime is None


@pytest.mark.usefixtures("realtime_refused")
def test_realtime_refused_falls_back_to_normal_priority() -> None:
    rt = RealRuntime()
    v = RecordingVcpus(rt)
    with Throttler(v, runtime=rt, timeslice_ns=20 * MS, name="refused-throttle",
                   trace=True) as t:
        t.set_throttle_percent(50)
        t.set_throttle_percent(0)
        assert not v.paused and t.worker_state == L.WAITING
        assert t.stats.worker_realtime is False and t.stats.caller_realtime is False
        assert _worker_policy("refused-throttle") == os.SCHED_OTHER
    SpecFollower(SPEC).follow(t.events)


def test_step_costs_are_recorded_only_with_a_step_clock() -> None:
    rt = RealRuntime()
    ticks = iter(range(0, 10**9, 3))  # every step "costs" 3 ticks of this clock
    with Throttler(RecordingVcpus(rt), runtime=rt, timeslice_ns=20 * MS,
                   step_clock=lambda: next(ticks)) as t:
        t.set_throttle_percent(50)
        t.set_throttle_percent(0)
        costs = t.step_costs_ns()
    assert costs and set(costs) == {3}
    with Throttler(RecordingVcpus(rt), runtime=rt, timeslice_ns=20 * MS) as plain:
        plain.set_throttle_percent(0)
        assert plain.step_costs_ns() == []


def _run_in_thread(body: Callable[[], None]) -> None:
    """``body`` on a fresh thread (its policy changes stay off the test runner's thread)."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            body()
        except BaseException as exc:
            errors.append(exc)

    th = threading.Thread(target=guarded)
    th.start()
    th.join(10)
    assert not th.is_alive()
    if errors:
        raise errors[0]
