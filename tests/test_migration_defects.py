"""Issue 16's six migration defects, each pinned by a regression test that failed before its fix.

1. the guest is lost when the destination dies around the commit (and ``migrate`` destroys
   the paused source even when the receiver provably never ran the guest);
2. a cancel (Ctrl-C) just before COMMIT loses the guest: the source counted itself
   committed, COMMIT never left;
3. a cancel (Ctrl-C/SIGTERM) after COMMIT reports "cancelled" for a migration that completed;
4. a slow pause() at switch-over leaves the source guest paused while the result says
   ``source_running: true``;
5. a receiver dying after RESUMED but before REPORT gives "completed" (exit 0) although
   verification was asked for and nothing was verified;
6. the test guests stopped writing at the last sync, so a source without the final dirty
   sync passed every hash check; here a deliberately broken source must be caught.

The in-doubt rule these tests hold the source to (README, "Commit and the in-doubt window"):
the commit point is the moment the whole COMMIT frame has been handed to the kernel. Before
it, any failure or cancel aborts: the source resumes its guest, ``dest_running`` is False.
After it, the source never resumes on its own: RESUMED makes it ``completed``; an ERROR
answer (the destination discarded its VM without running it) aborts and resumes; anything
else (EOF, reset, silence, garbage) is ``in_doubt``: the source guest stays paused and is
kept, ``dest_running`` is None, ``migrate`` exits 3.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from autoconverge.cli.main import main
from autoconverge.cli.migration import KEY_ENV
from autoconverge.impl.migration import fakes, messages, runner
from autoconverge.impl.migration.destination import DestinationResult, MigrationDestination
from autoconverge.impl.migration.fakes import (
    TEST_KEY,
    FakeClock,
    FakeThrottle,
    FakeVm,
    VirtualLink,
    fake_vm_factory,
    run_fake_migration,
)
from autoconverge.impl.migration.framing import FrameChannel, MsgType
from autoconverge.impl.migration.handshake import client_handshake, server_handshake
from autoconverge.impl.migration.messages import Layout, Limits
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult, MigrationSource
from autoconverge.impl.migration.throttling import ThrottleControl
from autoconverge.impl.migration.transport import CancellableSocket, connect

Behaviour = Callable[[FrameChannel, socket.socket], None]
SIM = ["--backend", "sim", "--memory", "8M", "--working-set", "1M", "--warmup", "0",
       "--io-timeout", "5"]


@pytest.fixture(autouse=True)
def no_thread_left_behind() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert not left, f"threads left behind: {left}"


# --------------------------------------------------------------------------- the harness
@dataclass
class Run:
    result: MigrationResult
    vm: FakeVm
    throttles: list[Any]
    dest: DestinationResult | None = None
    dest_vms: list[FakeVm] = field(default_factory=list)
    dest_error: BaseException | None = None


def migrate(dest: Behaviour | None = None, *, vm: FakeVm | None = None, rate: float = 0.0,
            policy: str = "none", config: MigrationConfig | None = None,
            throttle_factory: Callable[[Any], ThrottleControl] | None = None,
            dest_factory: Callable[[Layout], FakeVm] | None = None,
            on_source: Callable[[MigrationSource], None] | None = None,
            link_gate: threading.Event | None = None) -> Run:
    """One migration over TCP loopback: this thread runs the source, a thread the receiver,
    either the real destination (``dest`` None; fake VMs) or a scripted one."""
    clock = FakeClock()
    vm = vm if vm is not None else FakeVm(clock, pages=256, vcpus=1, dirty_rate_pps=rate,
                                          working_set=(8, 64))
    dest_vms: list[FakeVm] = []
    factory = dest_factory or fake_vm_factory(FakeClock(), 0.0, None, dest_vms)
    box: dict[str, Any] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        listener.settimeout(10)
        conn, _ = listener.accept()
        ev = threading.Event()
        stream = CancellableSocket(conn, ev, io_timeout_s=5.0)
        try:
            channel = server_handshake(stream, TEST_KEY)
            if dest is None:
                box["dest"] = MigrationDestination(
                    channel, factory, Limits(guest_kinds=("fake",)), clock=FakeClock(),
                    run_after_s=0.0, cancel_event=ev).run()
            else:
                dest(channel, conn)
        except BaseException as exc:
            box["error"] = exc
        finally:
            stream.close()

    th = threading.Thread(target=serve, name="test-receiver")
    th.start()
    throttles: list[Any] = []

    def fake_throttle(v: Any) -> ThrottleControl:
        t = (throttle_factory or FakeThrottle)(v)
        throttles.append(t)
        return t

    ev = threading.Event()
    stream = CancellableSocket(connect("127.0.0.1", port), ev, io_timeout_s=2.0)
    try:
        channel = client_handshake(stream, TEST_KEY)
        link: Any = VirtualLink(stream)
        if link_gate is not None:
            link = GatedLink(link, link_gate)
        src = MigrationSource(vm, channel, make_policy(policy), fake_throttle,
                              config or MigrationConfig(), clock=clock, link=link,
                              cancel_event=ev)
        if on_source is not None:
            on_source(src)
        result = src.run()
    finally:
        stream.close()
        th.join(10)
        listener.close()
    if dest_factory is not None and not dest_vms:
        dest_vms = list(getattr(dest_factory, "created", []))
    return Run(result, vm, throttles, box.get("dest"), dest_vms, box.get("error"))


class GatedLink:
    """The source's link probe, answering only once ``gate`` is set (the peer is gone)."""

    def __init__(self, inner: VirtualLink, gate: threading.Event) -> None:
        self.inner, self.gate = inner, gate

    def readable(self) -> bool:
        self.gate.wait(5)
        deadline = time.monotonic() + 1.0  # the peer's FIN is on its way (loopback)
        while not self.inner.readable() and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.inner.readable()

    def unsent_bytes(self) -> int:
        return 0


def until_done(channel: FrameChannel) -> None:
    """A receiver's part up to DONE: LAYOUT -> READY, then read everything up to DONE."""
    channel.expect(MsgType.LAYOUT)
    channel.send(MsgType.READY, messages.encode_ready(channel.max_pages_payload))
    while channel.recv().type is not MsgType.DONE:
        pass


def close_hard(sock: socket.socket) -> None:
    """What the kernel does for a SIGKILLed receiver: both directions closed, at once."""
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def dies_after_commit(channel: FrameChannel, sock: socket.socket) -> None:
    until_done(channel)
    channel.send(MsgType.PREPARED)
    channel.expect(MsgType.COMMIT)
    close_hard(sock)


def dies_after_resumed(channel: FrameChannel, sock: socket.socket) -> None:
    until_done(channel)
    channel.send(MsgType.PREPARED)
    channel.expect(MsgType.COMMIT)
    channel.send(MsgType.RESUMED)
    close_hard(sock)


def assert_aborted_cleanly(run: Run) -> None:
    """Before the commit point: the source guest runs here, unthrottled, logging off."""
    r, vm = run.result, run.vm
    assert not vm.paused and r.source_running is True, r
    assert not vm.closed and not vm.logging and r.dirty_log_stopped
    assert r.outcome == "aborted" and r.dest_running is False
    assert r.status in ("failed", "cancelled", "timeout")


def assert_in_doubt(run: Run) -> None:
    """After the commit point, without RESUMED: kept paused, never resumed, never closed."""
    r, vm = run.result, run.vm
    assert r.status == "in_doubt", (r.status, r.error)
    assert vm.paused and not vm.closed and r.source_running is False
    assert r.outcome == "in_doubt" and r.dest_running is None and not r.converged
    assert "in doubt" in (r.error or "") and "kept paused" in (r.error or "")


# ------------------------------------------------------------------ 1: death around the commit
def test_d1_receiver_gone_before_commit_resumes_the_source() -> None:
    """The receiver answered PREPARED and died before COMMIT was sent (its EOF is there when
    the source looks): it provably never got COMMIT, so the source guest runs on here."""
    gone = threading.Event()

    def dies_after_prepared(channel: FrameChannel, sock: socket.socket) -> None:
        until_done(channel)
        channel.send(MsgType.PREPARED)
        close_hard(sock)
        gone.set()

    run = migrate(dies_after_prepared, link_gate=gone)
    assert not run.vm.paused, f"guest lost: source paused, receiver gone ({run.result.error})"
    assert_aborted_cleanly(run)
    assert "never got COMMIT" in (run.result.error or "")


def test_d1_receiver_dead_after_commit_is_in_doubt_and_the_source_kept_paused() -> None:
    run = migrate(dies_after_commit)
    assert_in_doubt(run)
    assert run.vm.resume_calls == 0 and run.throttles[0].handed
    assert not run.vm.logging and run.result.dirty_log_stopped


def test_d1_a_destination_refusing_commit_gives_the_guest_back_to_the_source() -> None:
    """The destination's VM cannot start: it answers COMMIT with ERROR after discarding the
    VM, so the guest runs nowhere unless the source resumes it."""
    created: list[FakeVm] = []

    def factory(lay: Layout) -> FakeVm:
        vm = FakeVm(FakeClock(), pages=lay.page_count, page_size=lay.page_size,
                    vcpus=lay.vcpu_count, running=False, fill=0.0)

        def start() -> None:
            raise RuntimeError("no vCPU threads left")

        vm.start = start  # type: ignore[method-assign]
        created.append(vm)
        return vm

    run = migrate(dest_factory=factory)
    assert not run.vm.paused, f"guest lost: {run.result.error}"
    assert_aborted_cleanly(run)
    assert run.dest is not None and run.dest.error_type == "VmStateError"
    assert created and created[0].closed
    assert "no vCPU threads left" in (run.result.error or "")


class ScriptedReceiver:
    """A receiver speaking the protocol over TCP from a thread of the test (the source is
    another process: ``migrate``)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.behaviour = behaviour
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="scripted-receiver")
        self.thread.start()

    def _run(self) -> None:
        self.listener.settimeout(0.1)
        deadline = time.monotonic() + 30
        try:
            while True:
                try:
                    conn, _ = self.listener.accept()
                    break
                except TimeoutError:
                    if self.stop.is_set() or time.monotonic() > deadline:
                        return
            conn.settimeout(None)
            stream = CancellableSocket(conn, threading.Event(), io_timeout_s=10.0)
            try:
                self.behaviour(server_handshake(stream, TEST_KEY), conn)
            finally:
                stream.close()
        except BaseException as exc:
            self.error = exc
        finally:
            self.listener.close()

    def join(self) -> None:
        """Wait for the receiver's script; stop waiting for a connection that never came."""
        self.stop.set()
        self.thread.join(30)


def _lines(pipe: Any, q: queue.Queue[str | None]) -> None:
    for line in pipe:
        q.put(line)
    q.put(None)


def _wait_for(q: queue.Queue[str | None], pred: Callable[[str], bool], timeout_s: float,
              seen: list[str]) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            line = q.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise AssertionError(f"nothing matching within {timeout_s} s; saw {seen}") from None
        if line is None:
            raise AssertionError(f"stream ended; saw {seen}")
        seen.append(line)
        if pred(line):
            return line


def _migrate_process(port: int, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env[KEY_ENV] = TEST_KEY.decode()
    return subprocess.Popen(
        [sys.executable, "-m", "autoconverge", "migrate", "--to", f"127.0.0.1:{port}", *SIM,
         "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env, stdin=subprocess.DEVNULL)


def test_d1_migrate_keeps_the_in_doubt_source_paused_until_the_operator_decides() -> None:
    """``migrate`` (its own process) whose receiver dies after COMMIT: it prints the in-doubt
    result, keeps the paused guest, resumes it on SIGUSR1, ends on SIGTERM, exit 3."""
    rx = ScriptedReceiver(dies_after_commit)
    proc = _migrate_process(rx.port)
    out: queue.Queue[str | None] = queue.Queue()
    err: queue.Queue[str | None] = queue.Queue()
    readers = [threading.Thread(target=_lines, args=(proc.stdout, out)),
               threading.Thread(target=_lines, args=(proc.stderr, err))]
    for t in readers:
        t.start()
    seen_out: list[str] = []
    seen_err: list[str] = []
    try:
        line = _wait_for(out, lambda s: s.startswith("{"), 20, seen_out)
        d = json.loads(line)
        time.sleep(0.3)
        assert proc.poll() is None, \
            f"migrate exited ({proc.returncode}), the paused source guest with it: {d['error']}"
        assert d["outcome"] == "in_doubt" and d["status"] == "in_doubt", d
        assert d["source_running"] is False and d["dest_running"] is None
        _wait_for(err, lambda s: "kill -USR1" in s, 5, seen_err)
        time.sleep(0.2)
        assert proc.poll() is None, "migrate exited: the paused source guest is gone"
        proc.send_signal(signal.SIGUSR1)
        _wait_for(err, lambda s: "resumed the source guest" in s, 5, seen_err)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in readers:
            t.join(10)
        rx.join()


def test_d1_migrate_in_doubt_discard_is_explicit_and_exits_3(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, TEST_KEY.decode())
    rx = ScriptedReceiver(dies_after_commit)
    try:
        code = main(["migrate", "--to", f"127.0.0.1:{rx.port}", *SIM, "--json",
                     "--in-doubt", "discard"])
    finally:
        rx.join()
    out, err = capsys.readouterr()
    assert code == 3, err
    d = json.loads(out)
    assert d["outcome"] == "in_doubt" and d["source_running"] is False
    assert "discarding the paused source guest (--in-doubt discard)" in err


# ---------------------------------------------------------- 2 and 3: cancel around the commit
def cancel_when(src_box: dict[str, MigrationSource], *, sending: MsgType | None = None,
                received: MsgType | None = None) -> Callable[[MigrationSource], None]:
    """on_source hook: set the shared cancel event (what the CLI's signal handler does) just
    before the source sends ``sending``, or just after it received ``received``."""

    def hook(src: MigrationSource) -> None:
        src_box["src"] = src
        ch = src.channel
        send, recv = ch.send, ch.recv

        def send_and_cancel(mtype: MsgType, *parts: Any) -> None:
            if mtype is sending:
                src.cancel_event.set()
            send(mtype, *parts)

        def recv_and_cancel() -> Any:
            frame = recv()
            if frame.type is received:
                src.cancel_event.set()
            return frame

        ch.send = send_and_cancel  # type: ignore[method-assign]
        ch.recv = recv_and_cancel  # type: ignore[method-assign]

    return hook


def test_d2_cancel_just_before_commit_never_loses_the_guest() -> None:
    """The cancel lands after the source's last cancel check but before COMMIT left (the
    issue's SIGINT 0-0.5 ms after PREPARED): COMMIT never leaves, the source runs on."""
    box: dict[str, MigrationSource] = {}
    run = migrate(on_source=cancel_when(box, sending=MsgType.COMMIT))
    dest_runs = any(v.started and not v.closed for v in run.dest_vms)
    assert not run.vm.paused or dest_runs, \
        f"guest lost: source paused, destination discarded ({run.result.error})"
    assert_aborted_cleanly(run)
    assert run.result.status == "cancelled"
    assert run.dest is not None and run.dest.status == "failed" and not dest_runs


@pytest.mark.parametrize(("sending", "received", "expect"), [
    pytest.param(MsgType.LAYOUT, None, "cancelled", id="sending-LAYOUT"),
    pytest.param(MsgType.ITERATION_END, None, "cancelled", id="sending-ITERATION_END"),
    pytest.param(MsgType.VCPU_STATE, None, "cancelled", id="sending-VCPU_STATE"),
    pytest.param(MsgType.DONE, None, "cancelled", id="sending-DONE"),
    pytest.param(None, MsgType.PREPARED, "cancelled", id="received-PREPARED"),
    pytest.param(MsgType.COMMIT, None, "cancelled", id="sending-COMMIT"),
    pytest.param(None, MsgType.RESUMED, "completed", id="received-RESUMED"),
    pytest.param(None, MsgType.REPORT, "completed", id="received-REPORT"),
])
def test_d2_d3_a_cancel_at_any_step_leaves_the_guest_on_exactly_one_host(
        sending: MsgType | None, received: MsgType | None, expect: str) -> None:
    box: dict[str, MigrationSource] = {}
    run = migrate(on_source=cancel_when(box, sending=sending, received=received))
    r = run.result
    dest_runs = any(v.started and not v.closed for v in run.dest_vms)
    source_runs = not run.vm.paused
    assert source_runs != dest_runs, (source_runs, dest_runs, r.status, r.error)
    assert r.status == expect, r.error
    assert r.source_running is source_runs and r.dest_running is dest_runs


def test_d3_cancel_after_commit_reports_the_completed_migration() -> None:
    """The cancel event is set once COMMIT reached the destination (before it answers): the
    socket layer must not turn it into "cancelled" - the guest runs at the destination."""
    src_box: dict[str, MigrationSource] = {}
    created: list[FakeVm] = []

    def factory(lay: Layout) -> FakeVm:
        vm = fake_vm_factory(FakeClock(), 0.0, None, created)(lay)
        start = vm.start

        def start_after_ctrl_c() -> None:
            src_box["src"].cancel_event.set()  # Ctrl-C at the source, COMMIT already here
            time.sleep(0.25)  # longer than the socket layer's 0.1 s poll slice
            start()

        vm.start = start_after_ctrl_c  # type: ignore[method-assign]
        return vm

    run = migrate(dest_factory=factory, on_source=lambda s: src_box.__setitem__("src", s))
    r = run.result
    assert r.status == "completed", f"reported {r.status!r} for a completed migration: {r.error}"
    assert created[0].started and not created[0].closed
    assert run.vm.paused and r.source_running is False and r.dest_running is True
    assert r.outcome == "completed" and r.memory_hash_match is True


def test_d3_ctrl_c_after_commit_at_the_migrate_process_exits_0() -> None:
    """The issue's reproduction: SIGINT to ``migrate`` after COMMIT reached the receiver."""
    from autoconverge.impl.migration.backends import dest_factory
    from autoconverge.impl.migration.runner import serve_one

    base, kinds = dest_factory("sim")
    pid: dict[str, int] = {}

    def factory(lay: Layout) -> Any:
        vm = base(lay)
        start = vm.start

        def start_after_sigint() -> None:
            time.sleep(0.1)  # the source is waiting for RESUMED by now (for the log line)
            os.kill(pid["pid"], signal.SIGINT)
            time.sleep(0.3)  # longer than the socket layer's 0.1 s poll slice
            start()

        vm.start = start_after_sigint  # type: ignore[method-assign]
        return vm

    listener = socket.create_server(("127.0.0.1", 0))
    box: dict[str, DestinationResult] = {}
    th = threading.Thread(target=lambda: box.__setitem__("res", serve_one(
        listener, TEST_KEY, factory, Limits(guest_kinds=kinds), run_after_s=0.05,
        accept_timeout_s=30)))
    th.start()
    proc = _migrate_process(listener.getsockname()[1])
    pid["pid"] = proc.pid
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        th.join(30)
        listener.close()
    d = json.loads(out.strip().splitlines()[-1])
    assert proc.returncode == 0, (d["status"], d["error"], err[-500:])
    assert d["status"] == "completed" and d["outcome"] == "completed"
    assert d["memory_hash_match"] is True
    assert "interrupted (SIGINT): ignored, COMMIT was sent" in err
    assert box["res"].status == "completed"


# ----------------------------------------------------------- 4: a slow pause at switch-over
class SlowPauseVm(FakeVm):
    """A FakeVm whose pause() takes ``pause_s`` (or waits for ``release``) before it pauses."""

    def __init__(self, *, pause_s: float = 0.0, release: threading.Event | None = None) -> None:
        super().__init__(FakeClock(), pages=256, vcpus=1, dirty_rate_pps=0.0,
                         working_set=(8, 64))
        self.pause_s = pause_s
        self.release = release
        self.pause_returned = threading.Event()

    def pause(self) -> None:
        if self.release is not None:
            self.release.wait(10)
        else:
            time.sleep(self.pause_s)
        super().pause()
        self.pause_returned.set()


def short_timeout_throttle(monkeypatch: pytest.MonkeyPatch, call_timeout_s: float
                           ) -> Callable[[Any], ThrottleControl]:
    """The production throttle (the real threaded Throttler) with a short call timeout."""
    from autoconverge.impl import throttler
    from autoconverge.impl.migration.throttling import RealThrottle

    monkeypatch.setattr(throttler, "Throttler", functools.partial(
        throttler.Throttler, call_timeout_ns=int(call_timeout_s * 1e9)))
    return RealThrottle


def test_d4_slow_pause_at_handover_leaves_the_source_running(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pause() takes 0.6 s, the throttler's call timeout is 0.1 s: the handover times out;
    the late pause must not leave the guest paused behind a result saying it runs."""
    vm = SlowPauseVm(pause_s=0.6)
    run = migrate(vm=vm, throttle_factory=short_timeout_throttle(monkeypatch, 0.1))
    r = run.result
    assert r.status == "failed" and "did not answer handover" in (r.error or ""), r.error
    assert vm.pause_returned.wait(5)
    time.sleep(0.05)
    assert not vm.paused, f"source guest left paused; the result says source_running=" \
                          f"{r.source_running}"
    assert r.source_running is True and r.outcome == "aborted"
    assert run.dest is not None and run.dest.status == "failed" and run.dest_vms[0].closed


def test_d4_a_pause_stuck_past_the_cleanup_deadline_is_reported_as_unknown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    vm = SlowPauseVm(release=release)
    try:
        run = migrate(vm=vm, throttle_factory=short_timeout_throttle(monkeypatch, 0.1),
                      config=MigrationConfig(cleanup_timeout_s=0.4))
        r = run.result
        assert r.source_running is None, "claims to know the state of a guest whose pause() " \
                                         "is still in progress"
        assert "stuck" in (r.error or "") and r.outcome == "aborted"
    finally:
        release.set()
    assert vm.pause_returned.wait(5)
    run.throttles[0].shutdown()  # the pause returned: the throttler resumes the guest
    assert not vm.paused


# ------------------------------------------------------------ 5: RESUMED, then no REPORT
def test_d5_no_report_after_resumed_is_unverified() -> None:
    run = migrate(dies_after_resumed)
    r = run.result
    assert r.status == "completed" and r.memory_hash_match is None
    assert r.outcome == "unverified", r.outcome
    assert r.dest_running is True and r.source_running is False and run.vm.paused


def test_d5_without_verification_no_report_is_still_completed() -> None:
    run = migrate(dies_after_resumed, config=MigrationConfig(verify=False))
    assert run.result.outcome == "completed" and run.result.status == "completed"


def test_d5_migrate_exits_4_when_verification_was_asked_but_not_done(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, TEST_KEY.decode())
    rx = ScriptedReceiver(dies_after_resumed)
    try:
        code = main(["migrate", "--to", f"127.0.0.1:{rx.port}", *SIM, "--json"])
    finally:
        rx.join()
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert code == 4, (code, d["status"], d.get("outcome"), err)
    assert d["outcome"] == "unverified" and d["memory_hash_match"] is None
    assert "UNVERIFIED" in err


def test_migrate_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["migrate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for needle in ("0 completed", "1 failed", "3 in doubt", "4 unverified", "--in-doubt"):
        assert needle in text, needle


# ------------------------------------------------------------ 6: the missing final dirty sync
class NoFinalSyncSource(MigrationSource):
    """Deliberately broken: no dirty-log sync after the vCPUs stopped, so a page written
    after the last pass's sync is never re-sent. The memory hash must catch it."""

    def _final_sync(self) -> None:
        pass


@pytest.mark.parametrize("policy", ["ch", "qemu", "predictive"])
def test_d6_e2e_hash_check_catches_a_source_without_the_final_sync(
        policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    busy: dict[str, Any] = {"rate_pps": 20_000.0, "working_set": (64, 1024)}
    cfg = MigrationConfig(max_bandwidth_bps=10e6, timeout_s=120.0)
    good = run_fake_migration(make_policy(policy), config=cfg, **busy).result
    assert good.converged and good.memory_hash_match is True, good.error
    monkeypatch.setattr(fakes, "MigrationSource", NoFinalSyncSource)
    bad = run_fake_migration(make_policy(policy), config=cfg, **busy).result
    assert bad.status == "completed"
    assert bad.memory_hash_match is False, "a missing final dirty sync went unnoticed"
    assert bad.outcome == "mismatch"


@pytest.mark.kvm
def test_d6_kvm_hash_check_catches_a_source_without_the_final_sync(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from autoconverge.cli.demo import collect_receiver, spawn_receiver
    from autoconverge.impl.migration.backends import make_source_guest
    from autoconverge.impl.migration.fakes import writes_until_stop
    from autoconverge.impl.migration.guest_config import GuestConfig

    # 3071 pages: not a multiple of 256, so a page written again changes (test_migration_kvm)
    spec = GuestConfig(64 << 20, 1, "worst", 3071 * 4096)
    monkeypatch.setattr(runner, "MigrationSource", NoFinalSyncSource)
    key = b"kvm-migration-test-key-012345678"
    proc, port, _ = spawn_receiver("kvm", key)
    guest = make_source_guest("kvm", spec)
    try:
        time.sleep(0.2)
        r = runner.migrate_to("127.0.0.1", port, key, guest.vm, make_policy("predictive"),
                              writes_until_stop(guest.throttle_factory, 3071),
                              MigrationConfig(max_bandwidth_bps=32 << 20, timeout_s=60.0))
        assert r.status == "completed", r.error
        assert r.memory_hash_match is False, "a missing final dirty sync went unnoticed"
    finally:
        guest.close()
    collect_receiver(proc, 30)
