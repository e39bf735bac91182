"""A migration over several connections (``--connections N``): intact memory, the same
authentication and validation per connection, hostile input on the data connections.

The data plane runs over socket pairs with the clock-driven fake guest in virtual time;
the set-up (JOIN, a connection without the key) over a real Unix listener.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from autoconverge.impl.migration import connections, handshake, messages, runner
from autoconverge.impl.migration.destination import DestinationResult, MigrationDestination
from autoconverge.impl.migration.errors import AuthenticationError, MigrationError
from autoconverge.impl.migration.fakes import (
    TEST_KEY,
    FakeClock,
    FakeThrottle,
    FakeVm,
    VirtualLink,
    fake_vm_factory,
)
from autoconverge.impl.migration.framing import FrameChannel, MsgType
from autoconverge.impl.migration.messages import Limits
from autoconverge.impl.migration.pages import FrameBuilder
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult, MigrationSource
from autoconverge.impl.migration.transport import CancellableSocket, listen
from autoconverge.model.migration_tracecheck import check_side, check_traces

BUSY = {"rate_pps": 20_000.0, "working_set": (64, 1024)}


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> object:
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left behind: {left}"


class Wired:
    """``n`` authenticated connections over socket pairs: (source channels, receiver channels)."""

    def __init__(self, n: int, io_timeout_s: float = 10.0) -> None:
        self.source: list[FrameChannel] = []
        self.dest: list[FrameChannel] = []
        self.sockets: list[socket.socket] = []
        self.src_cancel, self.dest_cancel = threading.Event(), threading.Event()
        for i in range(n):
            a, b = socket.socketpair()
            self.sockets += [a, b]
            sa = CancellableSocket(a, self.src_cancel if i == 0 else threading.Event(),
                                   io_timeout_s=io_timeout_s)
            sb = CancellableSocket(b, self.dest_cancel if i == 0 else threading.Event(),
                                   io_timeout_s=io_timeout_s)
            box: dict[str, Any] = {}
            th = threading.Thread(target=lambda sb=sb, box=box: box.setdefault(
                "ch", handshake.server_handshake(sb, TEST_KEY)))
            th.start()
            ch = handshake.client_handshake(sa, TEST_KEY, connections=n, data=i > 0)
            th.join(10)
            if i:
                ch.count_sent_in(self.source[0])
            self.source.append(ch)
            self.dest.append(box["ch"])

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def run_multi(n: int, *, pages: int = 2048, rate_pps: float = 20_000.0,
              working_set: tuple[int, int] = (64, 1024),
              config: MigrationConfig | None = None
              ) -> tuple[MigrationResult, DestinationResult | None, BaseException | None,
                         list[FakeVm], Wired]:
    """A whole migration over ``n`` connections: source here, destination in a thread."""
    wired = Wired(n)
    src_clock, dst_clock = FakeClock(), FakeClock()
    vm = FakeVm(src_clock, pages=pages, vcpus=2, dirty_rate_pps=rate_pps,
                working_set=working_set)
    created: list[FakeVm] = []
    box: dict[str, Any] = {}

    def dest() -> None:
        try:
            d = MigrationDestination(wired.dest[0], fake_vm_factory(dst_clock, rate_pps,
                                                                    working_set, created),
                                     Limits(guest_kinds=("fake",)), clock=dst_clock,
                                     run_after_s=0.5, cancel_event=wired.dest_cancel,
                                     data_channels=wired.dest[1:])
            box["res"] = d.run()
        except BaseException as exc:
            box["err"] = exc

    th = threading.Thread(target=dest, name="fake-destination")
    th.start()
    try:
        src = MigrationSource(vm, wired.source[0], make_policy("predictive"),
                              lambda v: FakeThrottle(v),  # type: ignore[arg-type]
                              config or MigrationConfig(max_bandwidth_bps=10e6, timeout_s=120),
                              clock=src_clock,
                              link=VirtualLink(wired.source[0].stream),  # type: ignore[arg-type]
                              cancel_event=wired.src_cancel, data_channels=wired.source[1:])
        result = src.run()
    finally:
        wired.close()
        th.join(30)
    return result, box.get("res"), box.get("err"), created, wired


@pytest.mark.parametrize("n", [2, 4])
def test_a_busy_guest_moves_intact_over_several_connections(n: int) -> None:
    # small frames: many per pass on every connection, and the bandwidth cap (counted as
    # frames are sealed) lags little behind the frames queued to data connections
    cfg = MigrationConfig(max_bandwidth_bps=10e6, timeout_s=120, frame_bytes=64 * 1024)
    r, dest, err, created, wired = run_multi(n, config=cfg, **BUSY)  # type: ignore[arg-type]
    assert err is None and r.status == "completed", r.error
    assert r.memory_hash_match is True and r.iterations >= 1  # delta passes: order matters
    assert dest is not None and dest.status == "completed"
    assert dest.pages_received == r.pages_sent
    for ch in wired.dest[1:]:  # every data connection carried pages of the passes
        assert ch.bytes_received > 1 << 20
    # one shared count: every connection's bytes (all but the control frames after the
    # last pass, and the handshakes)
    assert 0 < sum(ch.bytes_received for ch in wired.dest) - r.bytes_sent < 4096
    assert created[0].started
    # connections are below the spec's abstraction: the same traces as over one connection
    both = check_traces(r.trace, dest.trace)
    assert both.ok, both.explain()


def test_zero_copy_frames_from_the_sim_guest_move_intact_over_several_connections() -> None:
    """The sim guest writes only inside VM calls: frames go out zero-copy, and the source
    waits for in-flight frames before each VM call (else the MAC would not match)."""
    cfg = MigrationConfig(max_bandwidth_bps=None, timeout_s=120)
    r, dest, err, _, _ = run_multi(2, pages=8192, config=cfg, **BUSY)  # type: ignore[arg-type]
    assert err is None and r.status == "completed", r.error
    assert r.memory_hash_match is True


def _layout_ready(src: FrameChannel, lay: messages.Layout) -> None:
    src.send(MsgType.LAYOUT, messages.encode_layout(lay))
    src.expect(MsgType.READY)


def _hostile(n: int, attack: Any) -> tuple[DestinationResult, list[FakeVm]]:
    """Run a destination over ``n`` connections against a scripted source ``attack``."""
    wired = Wired(n, io_timeout_s=5.0)
    created: list[FakeVm] = []
    box: dict[str, Any] = {}

    def dest() -> None:
        d = MigrationDestination(wired.dest[0], fake_vm_factory(FakeClock(), 0.0, None,
                                                                created),
                                 Limits(guest_kinds=("fake",)), clock=FakeClock(),
                                 run_after_s=0.0, cancel_event=wired.dest_cancel,
                                 data_channels=wired.dest[1:])
        box["res"] = d.run()

    th = threading.Thread(target=dest)
    th.start()
    lay = messages.Layout(256 * 4096, 4096, 1, FakeVm.vcpu_state_size, "fake")
    mem = np.random.default_rng(1).integers(1, 255, 256 * 4096, dtype=np.uint8)
    builder = FrameBuilder(memoryview(mem), 4096, 16)
    try:
        _layout_ready(wired.source[0], lay)
        attack(wired, builder)
    finally:
        th.join(30)
        wired.close()
    return box["res"], created


def _pages(builder: FrameBuilder, first: int) -> list[Any]:
    frame = builder.build(np.arange(first, first + 16, dtype=np.int64))
    return [frame.head, *frame.parts]


def test_a_frame_replayed_on_another_connection_fails_its_mac() -> None:
    def attack(wired: Wired, builder: FrameBuilder) -> None:
        one, two = wired.source[1], wired.source[2]
        sealed = b"".join(bytes(p) for p in one.seal(MsgType.PAGES, *_pages(builder, 0)))
        one.stream.sendall(sealed)
        two.stream.sendall(sealed)  # same bytes on the other connection: another key

    res, created = _hostile(3, attack)
    assert res.status == "failed" and res.error_type == "AuthenticationError", res.error
    assert "connection 3" in (res.error or "")
    assert created[0].closed and not created[0].started
    assert res.pages_received <= 16  # connection 2's own frame at most: never the replay
    assert check_side("destination", res.trace).ok  # a discard the spec allows


def test_a_frame_replayed_on_its_own_connection_fails_the_sequence_check() -> None:
    def attack(wired: Wired, builder: FrameBuilder) -> None:
        one = wired.source[1]
        sealed = b"".join(bytes(p) for p in one.seal(MsgType.PAGES, *_pages(builder, 0)))
        one.stream.sendall(sealed + sealed)

    res, created = _hostile(2, attack)
    assert res.status == "failed" and res.error_type == "ProtocolError", res.error
    assert "sequence number" in (res.error or "")
    assert created[0].closed and not created[0].started


def test_a_connection_dropped_mid_pass_fails_the_migration() -> None:
    def attack(wired: Wired, builder: FrameBuilder) -> None:
        wired.source[1].send(MsgType.PAGES, *_pages(builder, 16))
        wired.source[0].send(MsgType.PAGES, *_pages(builder, 0))
        wired.source[0].send(MsgType.PASS_END, messages.encode_pass_end(0, False))
        wired.sockets[2].close()  # connection 2's source end: EOF before its PASS_END

    res, created = _hostile(2, attack)
    assert res.status == "failed" and res.error_type == "TransportError", res.error
    assert "connection 2" in (res.error or "") and "closed" in (res.error or "")
    assert created[0].closed and not created[0].started


def test_the_last_pass_must_end_on_every_connection_before_the_vcpu_state() -> None:
    def attack(wired: Wired, builder: FrameBuilder) -> None:
        wired.source[0].send(MsgType.PASS_END, messages.encode_pass_end(0, True))
        wired.source[1].send(MsgType.PASS_END, messages.encode_pass_end(0, False))

    res, created = _hostile(2, attack)
    assert res.status == "failed" and res.error_type == "ProtocolError", res.error
    assert "disagree" in (res.error or "")
    assert created[0].closed and not created[0].started


def test_vcpu_state_before_the_final_pass_end_is_refused() -> None:
    def attack(wired: Wired, builder: FrameBuilder) -> None:
        wired.source[0].send(MsgType.VCPU_STATE, *messages.encode_vcpu_state(
            [bytes(FakeVm.vcpu_state_size)]))

    res, created = _hostile(2, attack)
    assert res.status == "failed" and "before the final pass" in (res.error or "")
    assert created[0].closed and not created[0].started


# ------------------------------------------------------------------------------ set-up
def _serve(path: Path, log: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    listener = listen(f"unix:{path}", 0)
    box: dict[str, Any] = {}

    def serve() -> None:
        box["res"] = runner.serve_one(
            listener, TEST_KEY, fake_vm_factory(FakeClock()), Limits(guest_kinds=("fake",)),
            run_after_s=0.0, io_timeout_s=2.0, accept_timeout_s=10.0,
            handshake_timeout_s=2.0, log=log.append)

    th = threading.Thread(target=serve)
    th.start()
    return th, box


def _primary(path: Path, n: int) -> FrameChannel:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    return handshake.client_handshake(CancellableSocket(sock, threading.Event()), TEST_KEY,
                                      connections=n)


def test_a_data_connection_without_the_key_is_refused_and_the_real_one_joins(
        tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    log: list[str] = []
    th, box = _serve(path, log)
    primary = _primary(path, 2)
    intruder = socket.socket(socket.AF_UNIX)
    intruder.connect(str(path))
    with pytest.raises(AuthenticationError):
        handshake.client_handshake(CancellableSocket(intruder, threading.Event()),
                                   b"not-the-key-but-long-enough-0000", data=True)
    intruder.close()
    data = connections.open_data_connections(
        f"unix:{path}", 0, TEST_KEY, primary, 2, mac="gmac", io_timeout_s=2.0,
        connect_timeout_s=2.0, handshake_timeout_s=2.0)
    assert len(data) == 1  # JOINED came back
    connections.close_streams([*data, primary])
    th.join(30)
    assert any("refused" in line for line in log)
    assert any("2 connections joined" in line for line in log)
    assert box["res"].status == "failed"  # the source went away after joining


def test_a_join_naming_another_session_ends_the_migration_before_any_vm(
        tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    log: list[str] = []
    th, box = _serve(path, log)
    primary = _primary(path, 2)
    other = FrameChannel(primary.stream, b"k" * 32, b"k" * 32)
    other.session_token = b"x" * 32  # a key holder's other session
    with pytest.raises(MigrationError, match="another session"):
        connections.open_data_connections(
            f"unix:{path}", 0, TEST_KEY, other, 2, mac="gmac", io_timeout_s=2.0,
            connect_timeout_s=2.0, handshake_timeout_s=2.0)
    th.join(30)
    connections.close_streams([primary])
    res = box["res"]
    assert res.status == "failed" and "another session" in res.error
    assert res.layout is None  # refused before LAYOUT: no VM


def test_connection_counts_outside_1_to_128_are_refused() -> None:
    with pytest.raises(ValueError):
        connections.check_connections(0)
    with pytest.raises(ValueError):
        handshake.hello_flags("gmac", 129)
    assert handshake.hello_flags("gmac", 128) >> handshake.HELLO_CONNECTIONS_SHIFT == 127


@pytest.mark.parametrize("barrier", [True, False])
def test_the_pass_barrier_keeps_a_resent_page_from_being_overwritten_by_its_stale_copy(
        barrier: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Page 5 goes out in pass 0 on connection 2 (content A, written late) and again in
    pass 1 on connection 1 (content B). With the barrier the destination ends with B; the
    broken variant without it (connections never wait at PASS_END) ends with the stale A."""
    from autoconverge.impl.migration import destination as dest_mod

    primary_waiting, applied_a, applied_b = threading.Event(), threading.Event(), threading.Event()
    meet = connections.DataReceivers._meet

    def observed_meet(self: connections.DataReceivers, i: int, final: bool) -> None:
        if i == 0:
            primary_waiting.set()
        if barrier:
            meet(self, i, final)

    apply = dest_mod.apply_pages

    def observed_apply(memory: memoryview, batch: messages.PageBatch, page_size: int,
                       touched: np.ndarray | None = None) -> None:
        apply(memory, batch, page_size, touched)
        if len(batch.data):
            {0xAA: applied_a, 0xBB: applied_b}[batch.data[0]].set()

    monkeypatch.setattr(connections.DataReceivers, "_meet", observed_meet)
    monkeypatch.setattr(dest_mod, "apply_pages", observed_apply)
    wired = Wired(2, io_timeout_s=5.0)
    created: list[FakeVm] = []
    box: dict[str, Any] = {}

    def dest() -> None:
        d = MigrationDestination(wired.dest[0], fake_vm_factory(FakeClock(), 0.0, None,
                                                                created),
                                 Limits(guest_kinds=("fake",)), clock=FakeClock(),
                                 run_after_s=0.0, cancel_event=wired.dest_cancel,
                                 data_channels=wired.dest[1:], verify=False)
        box["res"] = d.run()

    th = threading.Thread(target=dest)
    th.start()
    ps, page = 4096, np.array([5], dtype=np.int64)
    content_a = np.full(256 * ps, 0xAA, dtype=np.uint8)
    content_b = np.full(256 * ps, 0xBB, dtype=np.uint8)
    one, two = wired.source
    try:
        _layout_ready(one, messages.Layout(256 * ps, ps, 1, FakeVm.vcpu_state_size, "fake"))
        one.send(MsgType.PASS_END, messages.encode_pass_end(0, False))
        frame_b = FrameBuilder(memoryview(content_b), ps, 1).build(page)
        one.send(MsgType.PAGES, frame_b.head, *frame_b.parts)  # pass 1
        # the first connection is at the barrier (or, without it, has applied B already)
        assert (primary_waiting if barrier else applied_b).wait(10)
        frame_a = FrameBuilder(memoryview(content_a), ps, 1).build(page)
        two.send(MsgType.PAGES, frame_a.head, *frame_a.parts)  # pass 0, late
        assert applied_a.wait(10)
        two.send(MsgType.PASS_END, messages.encode_pass_end(0, False))
        for ch in (two, one):
            ch.send(MsgType.PASS_END, messages.encode_pass_end(1, True))
        one.send(MsgType.VCPU_STATE, *messages.encode_vcpu_state(
            [b"FVCP".ljust(FakeVm.vcpu_state_size, b"\0")]))  # a fake vCPU's state
        one.send(MsgType.DONE, messages.encode_done(2, 1))
        one.expect(MsgType.PREPARED)
        one.send(MsgType.COMMIT)
        one.expect(MsgType.RESUMED)
        one.expect(MsgType.REPORT)
    finally:
        th.join(30)
        wired.close()
    assert box["res"].status == "completed", box["res"].error
    vm = created[0]
    got = bytes(vm.memory()[5 * ps:6 * ps])
    vm.close()
    assert got == bytes([0xBB if barrier else 0xAA]) * ps
