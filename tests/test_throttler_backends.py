"""One lifecycle suite, two backends: fake vCPUs and real KVM vCPUs, on real threads.

The virtual-time suite (test_throttler_lifecycle.py) pins down timing exactly with fake
vCPUs; this suite runs the same lifecycle scenarios, and the Hypothesis impl-vs-spec
machine, against whatever pauses the vCPUs: the recording fake and a real KVM guest. Every
run's event log is replayed through the spec (trace validation).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.throttler import Throttler, ThrottlerClosed
from autoconverge.impl.vcpus import Vcpus
from autoconverge.model.hypothesis_impl import RealSession, Session, ThrottlerVsSpec
from autoconverge.model.tracecheck import SpecFollower
from autoconverge.spec import SPEC
from autoconverge.spec import lifecycle as L

pytestmark = pytest.mark.realtime
MS = 1_000_000
SLICE = 20 * MS


@dataclass
class Backend:
    name: str
    vcpus: Vcpus
    paused: Callable[[], bool]
    progress: Callable[[], int | None]
    close: Callable[[], None]


def _fake() -> Backend:
    v = RecordingVcpus(RealRuntime())
    return Backend("fake", v, lambda: v.paused, lambda: None, lambda: None)


def _kvm() -> Backend:
    from autoconverge.impl.kvm import guest
    from autoconverge.impl.kvm.guest_vm import GuestVm

    vm = GuestVm(16 << 20, 2, workload=guest.preset("moderate", 64))
    return Backend("kvm", vm, vm.is_paused, lambda: sum(vm.progress()), vm.close)


MAKERS = {"fake": _fake, "kvm": _kvm}
BACKENDS = ["fake", pytest.param("kvm", marks=pytest.mark.kvm)]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    b = MAKERS[request.param]()
    try:
        yield b
    finally:
        b.close()


def _follows_spec(t: Throttler) -> L.State:
    return SpecFollower(SPEC).follow(t.events)


def _advances(b: Backend) -> bool | None:
    """Does the guest make progress now? None for the fake (no guest)."""
    before = b.progress()
    if before is None:
        return None
    time.sleep(0.01)
    after = b.progress()
    assert after is not None
    return after > before


@pytest.mark.covers("PauseResumeAlternate", "AbortReturnsWithVcpusRunning",
                    "ReturnsOnlyAfterJoin", "PausedOnlyInPausePhase", "safety")
def test_seed_scenario(backend: Backend) -> None:
    with Throttler(backend.vcpus, runtime=RealRuntime(), timeslice_ns=SLICE, trace=True) as t:
        t.set_throttle_percent(5)
        time.sleep(0.03)
        t.set_throttle_percent(10)
        time.sleep(0.03)
        t.set_throttle_percent(0)
        assert t.worker_state == L.WAITING and not backend.paused()  # abort is synchronous
        assert _advances(backend) in (True, None)
        t.set_throttle_percent(50)
        time.sleep(0.05)
        for _ in range(3):
            t.shutdown()
    assert t.worker_state == L.EXIT and not backend.paused()
    assert _advances(backend) in (True, None)  # the guest runs on after shutdown
    end = _follows_spec(t)
    assert end.c == L.DONE and not end.paused


@pytest.mark.covers("HandoverKeepsVcpusPaused", "HandoverCompletes", "HandoverMeansOwnedPause")
def test_handover_leaves_vcpus_paused_for_the_caller(backend: Backend) -> None:
    t = Throttler(backend.vcpus, runtime=RealRuntime(), timeslice_ns=SLICE, trace=True)
    t.set_throttle_percent(60)
    time.sleep(0.025)
    t.handover()
    assert backend.paused() and t.worker_state == L.EXIT and t.owned
    assert _advances(backend) in (False, None)  # the guest is stopped, owned by the caller
    t.shutdown()  # a no-op: the vCPUs stay paused
    assert backend.paused() and t.owned
    end = _follows_spec(t)
    assert end.handed and end.owner != 0
    backend.vcpus.resume()  # the caller restarts them (e.g. a cancelled switch-over)
    assert not backend.paused()
    assert _advances(backend) in (True, None)


@pytest.mark.covers("PercentInRange", "WorkerAcceptsEveryCommand", "ExitIsAbsorbing")
def test_bad_input_and_calls_after_shutdown(backend: Backend) -> None:
    t = Throttler(backend.vcpus, runtime=RealRuntime(), timeslice_ns=SLICE, trace=True)
    t.set_throttle_percent(30)
    for bad, error in ((100, ValueError), (-1, ValueError), (50.0, TypeError),
                       (True, TypeError), (None, TypeError), ("50", TypeError)):
        with pytest.raises(error):
            t.set_throttle_percent(bad)  # type: ignore[arg-type]
        assert t.percent == 30
    t.shutdown()
    with pytest.raises(ThrottlerClosed):
        t.set_throttle_percent(10)
    with pytest.raises(ThrottlerClosed):
        t.handover()
    assert not backend.paused()
    _follows_spec(t)


def _session_factory(backend: Backend) -> Callable[[int], Session]:
    def factory(seed: int) -> Session:
        if backend.paused():
            backend.vcpus.resume()  # a previous example ended in a handover
        return RealSession(backend.vcpus, paused=backend.paused, timeslice_ns=SLICE)

    return factory


@pytest.mark.covers("safety", "AbortCompletes", "ShutdownCompletes", "HandoverCompletes")
def test_hypothesis_machine(backend: Backend) -> None:
    """The Hypothesis impl-vs-spec machine, on this backend's vCPUs and real threads."""

    class OnBackend(ThrottlerVsSpec):
        session_factory = staticmethod(_session_factory(backend))

    run_state_machine_as_test(
        OnBackend,
        settings=settings(settings(), max_examples=8, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )


@pytest.mark.kvm
@pytest.mark.covers("ShutdownCompletes", "HandoverCompletes", "ReturnsOnlyAfterJoin")
def test_two_hundred_lifetimes_on_one_guest() -> None:
    """The reference hung after 174 migrations: 200 throttler lifetimes on one KVM guest,
    ending alternately in shutdown and in handover (the caller resumes), each validated."""
    import threading

    b = _kvm()
    try:
        threads_before = threading.active_count()
        for i in range(200):
            t = Throttler(b.vcpus, runtime=RealRuntime(), timeslice_ns=SLICE, trace=True,
                          name=f"throttle-{i}")
            t.set_throttle_percent(10 + (i * 7) % 89)
            time.sleep(0.001 * (i % 5))
            if i % 2:
                t.handover()
                assert b.paused() and t.owned
                b.vcpus.resume()
            else:
                t.shutdown()
            assert not b.paused()
            _follows_spec(t)
        assert threading.active_count() == threads_before
        assert _advances(b)
    finally:
        b.close()
