"""End-to-end migrations with fakes: clock-driven guest, virtual time, real sockets and threads.

Covers convergence per policy with memory integrity and guest progress, timeout strategies,
cancel (own thread and another thread, during pre-copy and during switch-over), dead and
misbehaving peers, layouts the receiver refuses, wrong keys, and clean-up: the source guest
runs on unthrottled with dirty logging stopped, the destination discards its VM, no thread
is left behind.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Callable

import pytest

from autoconverge.impl.migration import framing, handshake, messages
from autoconverge.impl.migration.fakes import (
    TEST_KEY,
    FakeClock,
    FakeRun,
    FakeThrottle,
    FakeVm,
    VirtualLink,
    run_fake_migration,
)
from autoconverge.impl.migration.framing import MsgType
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationSource, Sample
from autoconverge.impl.migration.transport import CancellableSocket

CAP = 10e6  # bytes/s of virtual link
# 20k pages/s over a 1024-page working set, a 10 MB/s link: 1024 pages need 0.42 s per pass
# but only 732 fit the 300 ms downtime, so without throttling it never converges
BUSY = {"rate_pps": 20_000.0, "working_set": (64, 1024)}


def cfg(**kw: object) -> MigrationConfig:
    base: dict[str, object] = {"max_bandwidth_bps": CAP, "timeout_s": 120.0}
    base.update(kw)
    return MigrationConfig(**base)


def assert_source_left_running(run: FakeRun) -> None:
    r, vm = run.result, run.src_vm
    assert not vm.paused and r.source_running is True
    assert vm.throttle == 0.0, "source guest left throttled"
    assert not vm.logging and vm.log_stops >= 1 and r.dirty_log_stopped
    for t in run.throttles:
        assert (t.shut and not t.handed) or (t.handed and t.shut)


def assert_destination_discarded(run: FakeRun) -> None:
    assert run.dest_error is None
    assert run.dest is not None and run.dest.status in ("failed", "cancelled")
    for vm in run.dest_vms:
        assert vm.closed and not vm.started


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> object:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left behind: {left}"


@pytest.mark.parametrize("policy", ["ch", "qemu", "predictive"])
def test_busy_guest_converges_intact(policy: str) -> None:
    run = run_fake_migration(make_policy(policy), config=cfg(), **BUSY)
    r = run.result
    assert r.status == "completed", r.error
    assert r.memory_hash_match is True and r.source_hash == r.dest_hash
    assert r.guest_continued is True
    assert r.dest_counters_at_resume == r.counters_at_stop
    assert sum(r.dest_counters_after) > sum(r.counters_at_stop)
    assert r.max_throttle_percent > 0 and r.guest_cpu_stolen_s > 0
    assert r.downtime_ms is not None and r.downtime_ms <= 300 * 1.2
    assert r.source_running is False and run.src_vm.paused  # the guest moved
    assert run.throttles[0].handed and not run.src_vm.logging
    assert run.dest is not None and run.dest.status == "completed"
    assert run.dest_vms[0].started and not run.dest_vms[0].closed
    assert r.zero_pages_sent > 0  # the untouched upper half travels as zero runs


def test_predictive_is_faster_and_steals_less_than_ch() -> None:
    ch = run_fake_migration(make_policy("ch"), config=cfg(), **BUSY).result
    pr = run_fake_migration(make_policy("predictive"), config=cfg(),
                            **BUSY).result
    assert ch.converged and pr.converged
    assert pr.total_time_s <= 0.5 * ch.total_time_s
    assert pr.guest_cpu_stolen_s <= ch.guest_cpu_stolen_s


def test_idle_guest_converges_without_throttling() -> None:
    run = run_fake_migration(make_policy("ch"), config=cfg(), rate_pps=0.0)
    r = run.result
    assert r.converged and r.iterations == 0 and r.max_throttle_percent == 0
    assert r.memory_hash_match is True


def test_bandwidth_cap_is_respected() -> None:
    run = run_fake_migration(make_policy("none"), config=cfg(), rate_pps=0.0)
    r = run.result
    first = next(s for s in r.timeline if s.kind == "iteration")
    assert first.bytes_sent / first.time_s <= CAP * 1.02
    assert r.bandwidth_bps == pytest.approx(CAP, rel=0.05)


def test_none_with_timeout_cancels_cleanly() -> None:
    run = run_fake_migration(make_policy("none"), config=cfg(timeout_s=5.0), **BUSY)
    r = run.result
    assert r.status == "timeout" and not r.converged
    assert "timeout of 5 s" in (r.error or "")
    assert r.total_time_s >= 5.0 and r.iterations >= 5
    assert r.max_throttle_percent == 0
    assert_source_left_running(run)
    assert_destination_discarded(run)
    assert run.dest is not None and "timeout" in (run.dest.error or "")


def test_timeout_strategy_ignore_goes_on_to_converge() -> None:
    run = run_fake_migration(make_policy("ch"), config=cfg(timeout_s=2.0,
                                                           timeout_strategy="ignore"),
                             **BUSY)
    r = run.result
    assert r.converged and r.timeout_exceeded and r.total_time_s > 2.0


def test_ticks_readjust_predictive_within_long_passes() -> None:
    # a large working set at a slow link: each pass takes several (virtual) seconds
    run = run_fake_migration(make_policy("predictive"), pages=8192,
                             config=cfg(max_bandwidth_bps=4e6), rate_pps=8_000.0,
                             working_set=(64, 4000))
    r = run.result
    assert r.converged, r.error
    ticks = [s for s in r.timeline if s.kind == "tick"]
    assert ticks
    times = [s.time_s for s in r.timeline]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 1.0
    changes = [(a.throttle_percent, b.throttle_percent, b.kind)
               for a, b in zip(r.timeline, r.timeline[1:], strict=False)
               if a.throttle_percent != b.throttle_percent]
    assert any(kind == "tick" for _, _, kind in changes)


# ------------------------------------------------------------------------------- cancel
def test_cancel_from_the_progress_callback() -> None:
    box: dict[str, MigrationSource] = {}

    def on_progress(s: Sample) -> None:
        if s.iteration >= 3 and s.throttle_percent > 0:
            box["src"].cancel("operator cancelled")

    run = run_fake_migration(make_policy("ch"), config=cfg(), on_progress=on_progress,
                             on_source=lambda s: box.__setitem__("src", s),
                             **BUSY)
    r = run.result
    assert r.status == "cancelled" and r.error == "operator cancelled"
    assert r.max_throttle_percent > 0  # it was throttled when cancelled ...
    assert_source_left_running(run)  # ... and runs unthrottled now
    assert_destination_discarded(run)
    assert run.dest is not None and "operator cancelled" in (run.dest.error or "")


def test_cancel_from_another_thread() -> None:
    started = threading.Event()
    box: dict[str, MigrationSource] = {}

    def on_progress(s: Sample) -> None:
        if s.iteration >= 2:
            started.set()

    def canceller() -> None:
        started.wait(30)
        box["src"].cancel()

    th = threading.Thread(target=canceller)
    th.start()
    run = run_fake_migration(make_policy("none"), config=cfg(timeout_s=1e6),
                             on_progress=on_progress,
                             on_source=lambda s: box.__setitem__("src", s),
                             **BUSY)
    th.join(10)
    assert run.result.status == "cancelled"
    assert_source_left_running(run)
    assert_destination_discarded(run)


# ----------------------------------------------------------------- scripted destinations
def scripted(behaviour: Callable[[framing.FrameChannel, socket.socket], None],
             policy: str = "ch", config: MigrationConfig | None = None, rate: float = 20_000.0
             ) -> tuple[MigrationSource, FakeVm, list[FakeThrottle]]:
    a, b = socket.socketpair()
    clock = FakeClock()
    vm = FakeVm(clock, pages=2048, vcpus=2, dirty_rate_pps=rate, working_set=(64, 1024))

    def dest() -> None:
        try:
            channel = handshake.server_handshake(CancellableSocket(b, threading.Event(), 10.0),
                                                 TEST_KEY)
            behaviour(channel, b)
        except Exception:
            pass
        finally:
            b.close()

    th = threading.Thread(target=dest)
    th.start()
    ev = threading.Event()
    stream = CancellableSocket(a, ev, io_timeout_s=5.0)
    throttles: list[FakeThrottle] = []

    def mk(v: object) -> FakeThrottle:
        assert isinstance(v, FakeVm)
        throttles.append(FakeThrottle(v))
        return throttles[-1]

    src = MigrationSource(vm, handshake.client_handshake(stream, TEST_KEY), make_policy(policy),
                          mk, config or cfg(), clock=clock, link=VirtualLink(stream),
                          cancel_event=ev)
    src.run()
    stream.close()
    th.join(10)
    return src, vm, throttles


def _ready(channel: framing.FrameChannel) -> None:
    channel.expect(MsgType.LAYOUT)
    channel.send(MsgType.READY, messages.encode_ready(framing.DEFAULT_MAX_PAGES_PAYLOAD))


def check_clean_abort(src: MigrationSource, vm: FakeVm, throttles: list[FakeThrottle]) -> None:
    r = src.result
    assert r.status == "failed" and r.error
    assert not vm.paused and not vm.logging and vm.throttle == 0.0
    assert r.source_running is True and r.dirty_log_stopped
    assert all(t.shut for t in throttles)


def test_dead_peer_during_precopy() -> None:
    def die_after_some_pages(channel: framing.FrameChannel, sock: socket.socket) -> None:
        _ready(channel)
        for _ in range(20):
            channel.recv()
        sock.shutdown(socket.SHUT_RDWR)

    src, vm, th = scripted(die_after_some_pages)
    check_clean_abort(src, vm, th)
    assert "connection" in (src.result.error or "") or "closed" in (src.result.error or "")


def test_peer_reporting_an_error_during_precopy() -> None:
    def complain(channel: framing.FrameChannel, sock: socket.socket) -> None:
        _ready(channel)
        for _ in range(10):
            channel.recv()
        channel.send_error(framing.ErrorCode.VM_SETUP, "out of guest memory")
        while True:
            channel.recv()

    src, vm, th = scripted(complain)
    check_clean_abort(src, vm, th)
    assert "out of guest memory" in (src.result.error or "")


def test_peer_sending_garbage() -> None:
    def garbage(channel: framing.FrameChannel, sock: socket.socket) -> None:
        _ready(channel)
        channel.recv()
        sock.sendall(b"\x00garbage" * 100)
        while True:
            channel.recv()

    src, vm, th = scripted(garbage)
    check_clean_abort(src, vm, th)
    assert "magic" in (src.result.error or "")


def test_peer_vanishing_at_switch_over_resumes_the_source() -> None:
    """Handover paused the guest; no PREPARED comes: the source must resume it."""
    def vanish_at_done(channel: framing.FrameChannel, sock: socket.socket) -> None:
        _ready(channel)
        while channel.recv().type is not MsgType.DONE:
            pass
        sock.shutdown(socket.SHUT_RDWR)

    src, vm, th = scripted(vanish_at_done, rate=0.0)
    check_clean_abort(src, vm, th)
    assert th[0].handed and vm.pause_calls >= 1 and vm.resume_calls >= 1


def test_refused_layout_is_reported_and_nothing_created() -> None:
    run = run_fake_migration(make_policy("ch"), config=cfg(),
                             limits=messages.Limits(max_memory_size=1 << 20,
                                                    guest_kinds=("fake",)))
    r = run.result
    assert r.status == "failed" and "exceeds this receiver's limit" in (r.error or "")
    assert run.dest_vms == [] and run.src_vm.log_starts == 0
    assert run.dest is not None and run.dest.error_type == "ProtocolError"


def test_wrong_key_end_to_end() -> None:
    run = run_fake_migration(make_policy("ch"), config=cfg(),
                             dest_key=b"a-different-key-0123456789abcdef")
    assert run.result.status == "failed"
    assert "same key" in (run.result.error or "")
    assert run.dest_vms == [] and run.src_vm.log_starts == 0 and not run.src_vm.paused
    assert run.dest_error is not None and "unauthenticated" in str(run.dest_error)


def test_source_dying_mid_stream_discards_the_destination_vm() -> None:
    from autoconverge.impl.migration.scripted import client_frames, run_destination

    frames, _ = __import__("autoconverge.impl.migration.scripted",
                           fromlist=["x"]).valid_migration_frames()
    stream = client_frames(frames[:3])  # LAYOUT, PAGES, ITERATION_END, then EOF
    res, err, created, _ = run_destination(stream)
    assert err is None and res is not None
    assert res.status == "failed" and res.error_type == "TransportError"
    assert "closed the connection" in (res.error or "")
    assert created and created[0].closed and not created[0].started


def test_peer_vanishing_after_commit_leaves_the_source_paused() -> None:
    """After COMMIT the guest may run at the destination: never resume it here too (in doubt,
    see tests/test_migration_defects.py)."""
    def vanish_after_commit(channel: framing.FrameChannel, sock: socket.socket) -> None:
        _ready(channel)
        while channel.recv().type is not MsgType.DONE:
            pass
        channel.send(MsgType.PREPARED)
        channel.expect(MsgType.COMMIT)
        sock.shutdown(socket.SHUT_RDWR)

    src, vm, th = scripted(vanish_after_commit, rate=0.0)
    r = src.result
    assert r.status == "in_doubt" and r.outcome == "in_doubt" and "in doubt" in (r.error or "")
    assert vm.paused and r.source_running is False and r.dest_running is None
    assert not vm.logging and th[0].handed
