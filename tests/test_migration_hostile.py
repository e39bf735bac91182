"""Hostile peers against a real ``autoconverge receive`` process, and what a peer can cause.

Every attack runs against a receiver child process on loopback with short deadlines
(``--handshake-timeout``, ``--accept-timeout``): a slow-loris peer, a flood of idle
connections, garbage before HELLO, an oversized frame header before authentication, a wrong
key, a replayed session. Each must be refused with one log line naming the peer and the
reason, be told why (an ERROR frame with the documented code) where the protocol allows,
and leave the receiver usable: a real migration follows and completes. Neither a slow-loris
peer nor a flood can delay the real source by more than the handshake deadline, nor keep a
receiver alive past its accept deadline. Failures the peer causes further on (a vCPU state
the VM cannot load, a guest the host has no memory for) end as MigrationError subclasses
whose code is sent back.

Times are bounded generously (twice a deadline plus a margin); nothing here sleeps to
measure.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from autoconverge.cli import demo
from autoconverge.impl.migration import errors, handshake, host_memory, messages
from autoconverge.impl.migration.backends import Backend, make_source_guest
from autoconverge.impl.migration.destination import DestinationResult, MigrationDestination
from autoconverge.impl.migration.errors import (
    AuthenticationError,
    ErrorCode,
    PeerError,
    VmSetupError,
)
from autoconverge.impl.migration.fakes import STATE_SIZE, FakeClock, FakeVm, fake_vm_factory
from autoconverge.impl.migration.framing import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    VERSION,
    FrameChannel,
    MsgType,
    decode_error,
)
from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.runner import migrate_to
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult
from autoconverge.impl.migration.transport import CancellableSocket

KEY = b"hostile-peer-test-key-0123456789"
HANDSHAKE_S = 1.0
SIM_GUEST = GuestConfig(8 << 20, 1, "moderate", 1 << 20)


# ------------------------------------------------------------------------------ receiver
@dataclass
class Receiver:
    """A ``receive`` child process; its stderr lines are collected with arrival times."""

    proc: subprocess.Popen[str]
    port: int
    started: float
    lines: list[tuple[float, str]] = field(default_factory=list)
    out: list[str] = field(default_factory=list)

    def wait_for(self, pattern: str, timeout_s: float = 10.0, count: int = 1
                 ) -> list[tuple[float, str]]:
        """The first ``count`` stderr lines matching ``pattern`` (regex), waiting for them."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [(t, ln) for t, ln in list(self.lines) if re.search(pattern, ln)]
            if len(hits) >= count:
                return hits[:count]
            if time.monotonic() > deadline or self.proc.poll() is not None:
                time.sleep(0.1)  # the reader threads catch up
                hits = [(t, ln) for t, ln in list(self.lines) if re.search(pattern, ln)]
                assert len(hits) >= count, f"no {count} x {pattern!r} in:\n{self.stderr()}"
                return hits[:count]
            time.sleep(0.02)

    def stderr(self) -> str:
        return "\n".join(ln for _, ln in self.lines)

    def finish(self, timeout_s: float = 30.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"receiver still running after {timeout_s} s:\n"
                                 f"{self.stderr()}") from None
        time.sleep(0.05)
        return self.proc.returncode, "".join(self.out)


def spawn_receiver(*extra: str, backend: str = "sim", accept_timeout: float = 30.0,
                   handshake_timeout: float = HANDSHAKE_S) -> Receiver:
    """Start ``autoconverge receive`` on 127.0.0.1:0 with short deadlines."""
    proc, port, _ = demo.spawn_receiver(
        backend, KEY, run_after=0.05, accept_timeout=accept_timeout,
        extra=("--handshake-timeout", str(handshake_timeout), *extra))
    rec = Receiver(proc, port, time.monotonic())

    def read_err() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            rec.lines.append((time.monotonic(), line.rstrip("\n")))

    def read_out() -> None:
        assert proc.stdout is not None
        rec.out.append(proc.stdout.read())

    for target in (read_err, read_out):
        threading.Thread(target=target, daemon=True).start()
    return rec


def real_migration(port: int, *, backend: Backend = "sim",
                   guest: GuestConfig = SIM_GUEST) -> MigrationResult:
    g = make_source_guest(backend, guest)
    try:
        return migrate_to("127.0.0.1", port, KEY, g.vm, make_policy("ch"), g.throttle_factory,
                          MigrationConfig(timeout_s=60), io_timeout_s=10)
    finally:
        g.close()


def assert_completed(rec: Receiver, result: MigrationResult) -> dict[str, object]:
    import json

    assert result.converged and result.memory_hash_match, result.error
    code, out = rec.finish()
    d = json.loads(out)
    assert code == 0 and d["status"] == "completed", rec.stderr()
    assert isinstance(d, dict)
    return d


# ------------------------------------------------------------------------------ peers
def header(mtype: int = MsgType.HELLO, length: int = handshake.HELLO.size, seq: int = 0) -> bytes:
    return HEADER.pack(MAGIC, VERSION, mtype, 0, seq, length, 0)


def read_error_code(sock: socket.socket, timeout_s: float = 5.0) -> int | None:
    """Read until EOF; the code of the ERROR frame the receiver sent, if any."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except OSError:
        pass
    while len(data) >= HEADER_SIZE:
        _, _, mtype, _, _, length, _ = HEADER.unpack(data[:HEADER_SIZE])
        if mtype == MsgType.ERROR:
            return decode_error(data[HEADER_SIZE:HEADER_SIZE + length])[0]
        data = data[HEADER_SIZE + length + 32:]
    return None


def slow_loris(port: int, stop: threading.Event, interval_s: float = 0.5,
               reconnect: bool = False, codes: list[int | None] | None = None) -> None:
    """Trickle a plausible HELLO one byte every ``interval_s``; optionally reconnect."""
    data = header() + bytes(handshake.HELLO.size + 32)
    while not stop.is_set():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            return
        with s:
            for b in data:
                if stop.wait(interval_s) or select.select([s], [], [], 0)[0]:
                    break  # stopped, or the receiver answered (ERROR) / closed
                try:
                    s.send(bytes([b]))
                except OSError:
                    break
            if codes is not None:
                codes.append(read_error_code(s, 2.0))
        if not reconnect:
            return


def recorded_handshake() -> tuple[bytes, bytes]:
    """A real client's HELLO and AUTH frames, recorded from a handshake with a local server."""
    a, b = socket.socketpair()
    sent: list[bytes] = []

    class Recorder:
        def recv_into(self, buf: memoryview, n: int = 0, /) -> int:
            return a.recv_into(buf, n)

        def sendall(self, data: bytes | bytearray | memoryview, /) -> None:
            sent.append(bytes(data))
            a.sendall(data)

    server = threading.Thread(target=lambda: handshake.server_handshake(b, KEY))
    server.start()
    handshake.client_handshake(Recorder(), KEY)
    server.join(10)
    a.close()
    b.close()
    assert len(sent) == 2
    return sent[0], sent[1]


@dataclass
class Attack:
    name: str
    run: Callable[[int], None]
    """Attack the receiver at this port; returns once the attack is under way or over."""
    refusal: str
    """What the receiver's ``refused HOST:PORT: ...`` line must say."""
    code: int | None = None
    """The ERROR code the peer must have been sent (None: not checked)."""
    count: int = 1
    codes: list[int | None] = field(default_factory=list)
    rss_checked: bool = True
    """Check that the receiver's RSS did not grow (not for a peer that gets past HELLO: its
    ERROR frame, under the session's GMAC key, loads the AES library once)."""


def _loris(a: Attack) -> Callable[[int], None]:
    def run(port: int) -> None:
        stop = threading.Event()
        threading.Thread(target=slow_loris, args=(port, stop), kwargs={"codes": a.codes},
                         daemon=True).start()

    return run


def _idle_flood(a: Attack) -> Callable[[int], None]:
    def run(port: int) -> None:
        socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]

        def collect() -> None:
            for s in socks:
                with s:
                    a.codes.append(read_error_code(s, HANDSHAKE_S * 4))

        threading.Thread(target=collect, daemon=True).start()

    return run


def _send_then_read(a: Attack, data: bytes) -> Callable[[int], None]:
    def run(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(data)
            a.codes.append(read_error_code(s))

    return run


def _wrong_key(a: Attack) -> Callable[[int], None]:
    def run(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            stream = CancellableSocket(s, threading.Event(), io_timeout_s=5)
            with pytest.raises(AuthenticationError, match="same key"):
                handshake.client_handshake(stream, b"not-the-key-" + b"x" * 20)

    return run


def _replay(a: Attack) -> Callable[[int], None]:
    hello, auth = recorded_handshake()

    def run(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(hello)
            s.settimeout(5)
            challenge = s.recv(4096)  # the recorded HELLO is authentic: a CHALLENGE comes back
            assert challenge[5] == MsgType.CHALLENGE
            s.sendall(auth)  # ... but the recorded AUTH answers another server nonce
            a.codes.append(read_error_code(s))

    return run


def attacks() -> list[Attack]:
    out = [
        Attack("slow-loris", lambda p: None, r"no complete handshake within 1 s",
               ErrorCode.TIMEOUT),
        Attack("8 idle connections", lambda p: None, r"no complete handshake within 1 s "
               r"of connecting \(0 of 180", ErrorCode.TIMEOUT, count=8),
        Attack("garbage before HELLO", lambda p: None, r"bad frame magic",
               ErrorCode.PROTOCOL),
        Attack("oversized pre-auth frame header", lambda p: None,
               r"announces PAGES with 16777216 bytes", ErrorCode.PROTOCOL),
        Attack("wrong key", lambda p: None, r"HELLO does not carry a valid MAC"),
        Attack("replayed session", lambda p: None,
               r"AUTH message failed authentication \(replayed session", ErrorCode.AUTHENTICATION,
               rss_checked=False),
    ]
    out[0].run = _loris(out[0])
    out[1].run = _idle_flood(out[1])
    out[2].run = _send_then_read(out[2], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(100))
    out[3].run = _send_then_read(out[3], header(MsgType.PAGES, 16 << 20))
    out[4].run = _wrong_key(out[4])
    out[5].run = _replay(out[5])
    return out


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("attack", attacks(), ids=lambda a: a.name)
def test_hostile_peer_is_refused_logged_and_the_receiver_stays_usable(attack: Attack) -> None:
    rec = spawn_receiver()
    rss_before = rss_kib(rec.proc.pid)
    t0 = time.monotonic()
    attack.run(rec.port)
    hits = rec.wait_for(rf"refused 127\.0\.0\.1:\d+: .*{attack.refusal}", count=attack.count,
                        timeout_s=HANDSHAKE_S * 2 + 5)
    for t, _ in hits:  # within the handshake deadline (plus a margin), however it trickles
        assert t - t0 <= HANDSHAKE_S * 2 + 1.5, rec.stderr()
    if attack.rss_checked:
        grew = rss_kib(rec.proc.pid) - rss_before
        assert grew < 4096, f"a pre-auth peer made the receiver allocate {grew} KiB"
    d = assert_completed(rec, real_migration(rec.port))
    assert isinstance(d["refused_peers"], int) and d["refused_peers"] >= attack.count
    if attack.code is not None:
        deadline = time.monotonic() + 5
        while len(attack.codes) < attack.count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert attack.codes == [attack.code] * attack.count, attack.codes


def test_a_slow_loris_and_8_idle_connections_do_not_delay_the_real_source() -> None:
    """They hold connections open while the source connects: it authenticates at once."""
    handshake_s = 2.0
    rec = spawn_receiver(handshake_timeout=handshake_s)
    stop = threading.Event()
    threading.Thread(target=slow_loris, args=(rec.port, stop), daemon=True).start()
    idle = [socket.create_connection(("127.0.0.1", rec.port)) for _ in range(8)]
    try:
        rec.wait_for(r"listening on")
        result = real_migration(rec.port)
        d = assert_completed(rec, result)
    finally:
        stop.set()
    # connect -> authenticated, as the source measured it and as the receiver did
    assert result.handshake_s is not None and result.handshake_s <= handshake_s * 2
    assert isinstance(d["handshake_s"], float) and d["handshake_s"] <= handshake_s * 2
    # the others were pending when it won: told BUSY and closed
    assert d["refused_peers"] == 9, rec.stderr()
    assert len(rec.wait_for(r"refused .*another source authenticated first", count=9)) == 9
    assert read_error_code(idle[0]) == ErrorCode.BUSY
    for s in idle:
        s.close()


@pytest.mark.kvm
def test_kvm_source_is_not_delayed_by_a_flood() -> None:
    handshake_s = 2.0
    rec = spawn_receiver(backend="kvm", handshake_timeout=handshake_s)
    stop = threading.Event()
    threading.Thread(target=slow_loris, args=(rec.port, stop), daemon=True).start()
    idle = [socket.create_connection(("127.0.0.1", rec.port)) for _ in range(8)]
    try:
        result = real_migration(rec.port, backend="kvm",
                                guest=GuestConfig(16 << 20, 1, "moderate", 1 << 20))
        d = assert_completed(rec, result)
    finally:
        stop.set()
        for s in idle:
            s.close()
    assert result.handshake_s is not None and result.handshake_s <= handshake_s * 2
    assert d["refused_peers"] == 9


def test_a_slow_loris_cannot_keep_the_receiver_past_its_accept_deadline() -> None:
    """``--accept-timeout 2`` with a peer that trickles and reconnects whenever refused."""
    accept_s, handshake_s = 2.0, 1.0
    rec = spawn_receiver(accept_timeout=accept_s, handshake_timeout=handshake_s)
    stop = threading.Event()
    threading.Thread(target=slow_loris, args=(rec.port, stop),
                     kwargs={"interval_s": 0.3, "reconnect": True}, daemon=True).start()
    try:
        code, _ = rec.finish(timeout_s=accept_s + handshake_s + 10)
        lived = time.monotonic() - rec.started
    finally:
        stop.set()
    assert code == 1
    assert lived <= accept_s + handshake_s + 2.0, (lived, rec.stderr())
    assert "no authenticated source connected within 2 s" in rec.stderr()
    assert re.search(r"refused 127\.0\.0\.1:\d+: ", rec.stderr())


# ------------------------------------------------------------------------------ item 2
def _pair_with_destination(factory: Callable[[messages.Layout], FakeVm],
                           limits: messages.Limits) -> tuple[FrameChannel, threading.Thread,
                                                             list[DestinationResult]]:
    a, b = socket.socketpair()
    out: list[DestinationResult] = []

    def dest() -> None:
        stream = CancellableSocket(b, threading.Event(), io_timeout_s=10)
        try:
            channel = handshake.server_handshake(stream, KEY)
            out.append(MigrationDestination(channel, factory, limits, clock=FakeClock(),
                                            run_after_s=0).run())
        finally:
            stream.close()

    th = threading.Thread(target=dest)
    th.start()
    client = handshake.client_handshake(CancellableSocket(a, threading.Event(), 10), KEY)
    return client, th, out


def test_a_vcpu_state_the_vm_cannot_load_is_a_vm_state_error_sent_back() -> None:
    created: list[FakeVm] = []
    lay = messages.Layout(64 * 4096, 4096, 1, STATE_SIZE, "fake")
    client, th, out = _pair_with_destination(fake_vm_factory(FakeClock(), 0.0, None, created),
                                             messages.Limits(guest_kinds=("fake",)))
    client.send(MsgType.LAYOUT, messages.encode_layout(lay))
    client.expect(MsgType.READY)
    client.send(MsgType.VCPU_STATE, *messages.encode_vcpu_state([b"\xff" * STATE_SIZE]))
    client.send(MsgType.DONE, messages.encode_done(0, 0))
    with pytest.raises(PeerError) as info:
        client.expect(MsgType.PREPARED)
    th.join(10)
    assert info.value.peer_code == ErrorCode.VM_STATE
    assert "cannot load the vCPU state" in info.value.text
    assert out[0].status == "failed" and out[0].error_type == "VmStateError"
    assert created[0].closed and not created[0].started


def test_a_guest_the_host_has_no_memory_for_is_refused_before_any_vm(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_memory, "mem_available", lambda path="": 24 << 30)
    created: list[FakeVm] = []
    big = messages.Layout(16 << 30, 4096, 1, STATE_SIZE, "fake")  # x2 with the hash mirror
    client, th, out = _pair_with_destination(fake_vm_factory(FakeClock(), 0.0, None, created),
                                             messages.Limits(max_memory_size=64 << 30,
                                                             guest_kinds=("fake",)))
    client.send(MsgType.LAYOUT, messages.encode_layout(big))
    with pytest.raises(PeerError) as info:
        client.expect(MsgType.READY)
    th.join(10)
    assert info.value.peer_code == ErrorCode.VM_SETUP and "only 24576 MiB" in info.value.text
    assert out[0].error_type == "VmSetupError" and created == []


def test_host_memory_sizing() -> None:
    gib = 1 << 30
    assert host_memory.default_max_memory(True, available=22 * gib) == 11 * gib // 2
    assert host_memory.default_max_memory(False, available=22 * gib) == 11 * gib
    assert host_memory.default_max_memory(True, available=1) == 4 << 20
    with pytest.raises(VmSetupError, match="needs 32768 MiB"):
        host_memory.check_fits(16 * gib, True, available=24 * gib)
    host_memory.check_fits(16 * gib, False, available=24 * gib)
    avail = host_memory.mem_available()
    assert avail is None or avail > 0


def test_every_peer_caused_error_has_a_documented_code() -> None:
    doc = errors.__doc__ or ""
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.MigrationError):
            assert cls.__name__ in doc, cls
            if cls.code is not None:
                assert f"{int(cls.code)} {cls.code.name}" in doc, cls


@pytest.mark.kvm
def test_kvm_receiver_turns_a_bad_vcpu_state_into_vm_state_error() -> None:
    """KVM_SET_SREGS refuses all-ones registers (KvmError): the source gets code VM_STATE."""
    import json

    from autoconverge.impl.kvm.guest_vm import GUEST_KIND, VCPU_STATE_SIZE

    rec = spawn_receiver(backend="kvm")
    with socket.create_connection(("127.0.0.1", rec.port)) as s:
        client = handshake.client_handshake(CancellableSocket(s, threading.Event(), 10), KEY)
        client.send(MsgType.LAYOUT, messages.encode_layout(
            messages.Layout(4 << 20, 4096, 1, VCPU_STATE_SIZE, GUEST_KIND)))
        client.expect(MsgType.READY)
        client.send(MsgType.VCPU_STATE, *messages.encode_vcpu_state([b"\xff" * VCPU_STATE_SIZE]))
        client.send(MsgType.DONE, messages.encode_done(0, 0))
        with pytest.raises(PeerError) as info:
            client.expect(MsgType.PREPARED)
    assert info.value.peer_code == ErrorCode.VM_STATE and "KvmError" in info.value.text
    code, out = rec.finish()
    d = json.loads(out)
    assert code == 1 and d["error_type"] == "VmStateError", rec.stderr()


def test_a_layout_over_the_default_max_memory_is_refused() -> None:
    """No --max-memory: the default follows MemAvailable; twice MemAvailable is refused."""
    avail = host_memory.mem_available()
    if avail is None:
        pytest.skip("no /proc/meminfo")
    rec = spawn_receiver()
    rec.wait_for(r"guests up to \d+ MiB by default")
    huge = (2 * avail) // 4096 * 4096
    with socket.create_connection(("127.0.0.1", rec.port)) as s:
        client = handshake.client_handshake(CancellableSocket(s, threading.Event(), 10), KEY)
        client.send(MsgType.LAYOUT, messages.encode_layout(
            messages.Layout(huge, 4096, 1, STATE_SIZE, FakeVm.guest_kind)))
        with pytest.raises(PeerError) as info:
            client.expect(MsgType.READY)
    assert info.value.peer_code == ErrorCode.PROTOCOL
    assert "exceeds this receiver's limit" in info.value.text
    code, _ = rec.finish()
    assert code == 1


def test_ipv6_loopback_listen_and_migrate() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    tmpdir = tempfile.mkdtemp(prefix="autoconverge-v6-")
    port_file = os.path.join(tmpdir, "port")
    env = dict(os.environ, AUTOCONVERGE_KEY=KEY.decode())
    proc = subprocess.Popen([sys.executable, "-m", "autoconverge", "receive", "--listen",
                             "[::1]:0", "--port-file", port_file, "--backend", "sim",
                             "--run-after", "0.05", "--accept-timeout", "30"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        time.sleep(0.05)
        with open(port_file) as f:
            port = int(f.read())
        r = subprocess.run([sys.executable, "-m", "autoconverge", "migrate", "--to",
                            f"[::1]:{port}", "--backend", "sim", "--memory", "8M",
                            "--working-set", "1M", "--warmup", "0"], capture_output=True,
                           text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"listening on [::1]:{port}" in err and "authenticated source [::1]:" in err


def test_pending_handshakes_are_bounded_the_oldest_is_evicted() -> None:
    """In-process: 3 pending at most; a 4th connection evicts the first (told BUSY)."""
    from autoconverge.impl.migration.accept import accept_source

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    port = ls.getsockname()[1]
    logs: list[str] = []
    socks = []
    for _ in range(4):  # accepted in this order (the kernel's queue is FIFO)
        socks.append(socket.create_connection(("127.0.0.1", port)))
    got = accept_source(ls, KEY, accept_timeout_s=0.5, handshake_timeout_s=5,
                        max_pending=3, log=logs.append)
    ls.close()
    assert got is None
    assert read_error_code(socks[0]) == ErrorCode.BUSY
    assert sum("3 handshakes in progress; dropped the oldest" in ln for ln in logs) == 1
    assert sum("accept timeout of 0.5 s" in ln for ln in logs) == 3
    for s in socks:
        s.close()


@pytest.mark.parametrize("mac", ["gmac", "hmac"])
def test_a_source_dropped_after_its_challenge_reads_why(mac: str) -> None:
    """Refused between CHALLENGE and AUTH (another source won): its ERROR verifies."""
    a, b = socket.socketpair()
    got: list[FrameChannel] = []
    th = threading.Thread(target=lambda: got.append(handshake.client_handshake(a, KEY, mac=mac)))
    th.start()
    hs = handshake.ServerHandshake(KEY)
    b.settimeout(5)
    hello = b""
    while len(hello) < handshake.HELLO_FRAME_BYTES:
        hello += b.recv(handshake.HELLO_FRAME_BYTES - len(hello))
    b.sendall(hs.feed(hello))
    th.join(10)
    b.sendall(hs.refuse(errors.ReceiverBusy("another source authenticated first")))
    with pytest.raises(PeerError, match="another source authenticated first") as info:
        got[0].expect(MsgType.READY)
    assert info.value.peer_code == ErrorCode.BUSY
    a.close()
    b.close()


def test_a_slow_loris_receiver_cannot_hold_the_source() -> None:
    """A 'receiver' that accepts and then trickles one byte every 0.2 s: the source gives up
    at its handshake deadline (not after minutes of per-byte I/O timeouts) and its guest
    keeps running here."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(b"\x00")
                except OSError:
                    return
                stop.wait(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    g = make_source_guest("sim", SIM_GUEST)
    try:
        t0 = time.monotonic()
        result = migrate_to("127.0.0.1", listener.getsockname()[1], KEY, g.vm,
                            make_policy("ch"), g.throttle_factory, MigrationConfig(timeout_s=60),
                            io_timeout_s=10, handshake_timeout_s=HANDSHAKE_S)
        took = time.monotonic() - t0
        assert result.status == "failed" and "handshake" in (result.error or "")
        assert result.source_running
        assert took <= 2 * HANDSHAKE_S + 1.0, took
    finally:
        stop.set()
        g.close()
        listener.close()
