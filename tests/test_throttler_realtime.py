"""A few short runs of the throttler on real threads and the wall clock."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.realtime import RealRuntime
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
