"""A migration over several connections: opening and accepting the data connections, and
spreading each pass's PAGES frames over them.

One job: the layer under the migration's page stream that ``--connections N`` (1..128, as
Cloud Hypervisor's) switches on. The first connection carries every control message
(LAYOUT ... REPORT) and a share of the PAGES frames; connections 2..N carry only PAGES
frames and PASS_END.

- Authentication: each connection runs the whole handshake (:mod:`.handshake`): its own
  nonces and session keys, so no GMAC nonce repeats across connections, and a frame replayed
  on another connection fails that connection's MAC. A data connection then sends JOIN
  (the first connection's session token, its index, the count) and waits for JOINED. A peer
  without the key fails its handshake; a JOIN with a wrong token, index or count ends the
  migration before the first page.
- Validation: every frame is authenticated and decoded on its own connection, exactly as on
  one connection, before its pages are applied.
- Passes: the frames of a pass go out round-robin. Within a pass no page is sent twice, so
  the order in which connections apply their frames does not matter; across passes it
  does (a page resent in pass k+1 must land after its pass-k copy). Every connection ends
  each pass with PASS_END(k), and the receiver's connections meet at a barrier there: none
  applies a frame of pass k+1 before all of pass k is applied, and all must agree on
  whether the pass was the last (its PASS_END comes before VCPU_STATE; data connections are
  not read after it). A data connection that fails (EOF mid-pass, a bad MAC, a wrong pass
  number) breaks the barrier and ends the migration.

Connections are below the migration spec's abstraction: the spec's messages (LAYOUT, a
pass, DONE, COMMIT, ...) are the first connection's; data connections only carry a share of
a pass, which the barrier completes before the first connection's next message is acted on.
With one connection nothing of this is on the wire (no JOIN, no PASS_END).
"""

from __future__ import annotations

import contextlib
import hmac
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from .accept import accept_source
from .errors import MigrationError, ProtocolError, ReceiverBusy, TransportError
from .framing import FrameChannel, MsgType
from .handshake import client_handshake
from .messages import (
    MAX_CONNECTIONS,
    Join,
    decode_join,
    decode_pass_end,
    encode_join,
    encode_pass_end,
    expect_empty,
)
from .pages import FrameBuilder
from .transport import CancellableSocket, connect

DEFAULT_MAX_CONNECTIONS = 16
"""The most connections a receiver takes for one migration unless told otherwise (each holds
a frame buffer of up to the PAGES limit, 16 MiB)."""
_QUEUE_FRAMES = 2
"""Frames queued per data connection ahead of its sender (back-pressure)."""
_POLL_S = 0.1
_JOIN_WAIT_S = 5.0
"""How long a thread waits for a stopped data connection's thread to end."""


def check_connections(n: int) -> int:
    if not 1 <= n <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be in 1..{MAX_CONNECTIONS}, got {n}")
    return n


# ------------------------------------------------------------------------------ set-up
def open_data_connections(host: str, port: int, key: bytes, primary: FrameChannel,
                          count: int, *, mac: str, io_timeout_s: float,
                          connect_timeout_s: float, handshake_timeout_s: float
                          ) -> list[FrameChannel]:
    """The source's connections 2..``count`` to the receiver, each authenticated and joined.

    Each stream has a cancel event of its own (set by :meth:`PageStreams.close`); its
    bytes count in ``primary``'s counter. Raises MigrationError (all opened ones closed).
    """
    opened: list[FrameChannel] = []
    try:
        for index in range(1, check_connections(count)):
            sock = connect(host, port, timeout_s=min(io_timeout_s, connect_timeout_s))
            stream = CancellableSocket(sock, threading.Event(), io_timeout_s=io_timeout_s)
            try:
                stream.deadline = time.monotonic() + handshake_timeout_s
                channel = client_handshake(stream, key, mac=mac, data=True)
                channel.send(MsgType.JOIN, encode_join(Join(primary.session_token, index,
                                                             count)))
                expect_empty(channel.expect(MsgType.JOINED))
                stream.deadline = None
            except BaseException:
                stream.close()
                raise
            channel.count_sent_in(primary)
            opened.append(channel)
    except MigrationError as exc:
        close_streams(opened)
        _name_connection(exc, len(opened) + 1)
        raise
    except BaseException:
        close_streams(opened)
        raise
    return opened


def accept_data_connections(listener: socket.socket, key: bytes, primary: FrameChannel,
                            count: int, *, timeout_s: float, handshake_timeout_s: float,
                            io_timeout_s: float, log: Callable[[str], None],
                            cancel_event: threading.Event) -> list[FrameChannel]:
    """The receiver's side of :func:`open_data_connections`: connections 2..``count``.

    Each must authenticate (concurrent handshakes under deadlines, :mod:`.accept`), say
    it is a data connection, and JOIN with ``primary``'s session token and the next index;
    anything else is refused. Raises MigrationError (all accepted ones closed).
    """
    accepted: list[FrameChannel] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(accepted) < count - 1:
            left = deadline - time.monotonic()
            won = accept_source(listener, key, accept_timeout_s=max(left, 0.001),
                                handshake_timeout_s=handshake_timeout_s, log=log,
                                cancel_event=cancel_event) if left > 0 else None
            if won is None:
                raise TransportError(f"only {len(accepted) + 1} of the {count} connections "
                                     f"the source announced joined within {timeout_s:g} s")
            stream = CancellableSocket(won.sock, threading.Event(), io_timeout_s=io_timeout_s)
            channel = won.handshake.finish(stream)
            try:
                if not won.handshake.data_connection:
                    raise ReceiverBusy("a migration is in progress here (this connection did "
                                       "not say it joins it)")
                stream.deadline = time.monotonic() + handshake_timeout_s
                join = decode_join(channel.expect(MsgType.JOIN).payload)
                if not hmac.compare_digest(join.token, primary.session_token):
                    raise ProtocolError("JOIN names another session")
                want = len(accepted) + 1
                if join.index != want or join.connections != count:
                    raise ProtocolError(f"JOIN says connection {join.index} of "
                                        f"{join.connections}, expected {want} of {count}")
                channel.send(MsgType.JOINED)
                stream.deadline = None
            except MigrationError as exc:
                log(f"refused data connection from {won.peer}: {exc}")
                channel.send_error(exc.code or ReceiverBusy.code, str(exc))
                stream.close()
                if isinstance(exc, ReceiverBusy):
                    continue  # not one of ours: the source's connections may still come
                raise
            accepted.append(channel)
    except BaseException:
        close_streams(accepted)
        raise
    log(f"{count} connections joined")
    return accepted


def _name_connection(exc: BaseException, index: int) -> None:
    """Prefix a MigrationError's text with its connection (``index`` 0: the first one)."""
    if isinstance(exc, MigrationError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"connection {index + 1}: {exc.args[0]}", *exc.args[1:])


def close_streams(channels: Sequence[FrameChannel]) -> None:
    for channel in channels:
        close = getattr(channel.stream, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def _stop_stream(channel: FrameChannel) -> None:
    """Make blocked I/O on a data connection's stream end within a poll slice."""
    event = getattr(channel.stream, "cancel", None)
    if isinstance(event, threading.Event):
        event.set()


# ------------------------------------------------------------------------------ source
class PageStreams:
    """The source's page stream: a pass's PAGES frames, round-robin over the connections.

    The caller's thread builds and sends the first connection's frames; each data
    connection has a sender thread fed by a short queue, which builds (gathers, or takes
    zero-copy views), MACs and sends its frames. ``send`` raises the first failure of any
    connection. While frames are built zero-copy from a guest that writes its memory inside
    VM calls (the simulated one), call :meth:`before_vm_call` before any VM call: it waits
    until no frame is in flight. With one connection everything runs in the caller's
    thread and nothing is waited for.
    """

    def __init__(self, primary: FrameChannel, data: Sequence[FrameChannel],
                 make_builder: Callable[[], FrameBuilder]) -> None:
        self._channels = [primary, *data]
        self._builders = [make_builder() for _ in self._channels]
        self.frame_pages = self._builders[0].frame_pages
        self.pages_sent = 0
        """Pages handed to a connection (sent, or queued to be sent)."""
        self._zero_pages = [0] * len(self._channels)
        self._next = 0
        self._pass = 0
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._queues: list[queue.Queue[tuple[str, object] | None]] = [
            queue.Queue(maxsize=_QUEUE_FRAMES) for _ in data]
        self._threads = [threading.Thread(target=self._sender, args=(i,), daemon=True,
                                          name=f"migration-conn-{i}")
                         for i in range(1, len(self._channels))]
        for thread in self._threads:
            thread.start()

    @property
    def connections(self) -> int:
        return len(self._channels)

    @property
    def zero_pages_sent(self) -> int:
        return sum(self._zero_pages)

    @property
    def zero_copy(self) -> bool:
        return self._builders[0].zero_copy

    @zero_copy.setter
    def zero_copy(self, on: bool) -> None:
        """Build frames zero-copy from now on (set between passes, nothing in flight)."""
        self._wait_idle()
        for builder in self._builders:
            builder.zero_copy = on

    def send(self, chunk: np.ndarray) -> None:
        """Send the pages ``chunk`` (distinct page numbers, ascending) as one PAGES frame."""
        i = self._next
        self._next = (i + 1) % len(self._channels)
        self._raise_failure()
        if i == 0:
            self._send_frame(0, chunk)
        else:
            self._put(i, ("pages", chunk))
        self.pages_sent += len(chunk)

    def end_pass(self, final: bool) -> None:
        """Every connection sends PASS_END (after its frames of the pass); waits until all
        did (multi-connection only). ``final``: the last pass (VCPU_STATE follows)."""
        if len(self._channels) == 1:
            return
        payload = encode_pass_end(self._pass, final)
        for i in range(1, len(self._channels)):
            self._put(i, ("end", payload))
        self._channels[0].send(MsgType.PASS_END, payload)
        self._pass += 1
        self._next = 0
        self._wait_idle()

    def before_vm_call(self) -> None:
        """Wait until no zero-copy frame is in flight (see the class docstring)."""
        if self.zero_copy and len(self._channels) > 1:
            self._wait_idle()

    def close(self) -> None:
        """Stop the sender threads (blocked I/O ends within a poll slice); idempotent."""
        for channel in self._channels[1:]:
            _stop_stream(channel)
        for q in self._queues:
            with contextlib.suppress(queue.Full):
                q.put_nowait(None)
        for thread in self._threads:
            thread.join(_JOIN_WAIT_S)

    # -- internals
    def _send_frame(self, i: int, chunk: np.ndarray) -> None:
        frame = self._builders[i].build(chunk)
        self._channels[i].send(MsgType.PAGES, frame.head, *frame.parts)
        self._zero_pages[i] += frame.zero_pages

    def _put(self, i: int, item: tuple[str, object]) -> None:
        q = self._queues[i - 1]
        while True:
            self._raise_failure()
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def _wait_idle(self) -> None:
        for q in self._queues:
            with q.all_tasks_done:
                while q.unfinished_tasks and self._error is None:
                    q.all_tasks_done.wait(_POLL_S)
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _sender(self, i: int) -> None:
        q = self._queues[i - 1]
        while True:
            item = q.get()
            try:
                if item is None:
                    return
                if self._error is not None:
                    continue  # drain: the migration is failing
                kind, arg = item
                if kind == "pages":
                    assert isinstance(arg, np.ndarray)
                    self._send_frame(i, arg)
                else:
                    assert isinstance(arg, bytes)
                    self._channels[i].send(MsgType.PASS_END, arg)
            except BaseException as exc:
                with self._lock:
                    if self._error is None:
                        _name_connection(exc, i)
                        self._error = exc
            finally:
                q.task_done()


# ------------------------------------------------------------------------------ destination
class DataReceivers:
    """The destination's data connections: a thread each, applying its validated PAGES
    frames (``apply`` gets the payload, authenticated; it decodes and validates it), and
    meeting the first connection at every PASS_END (:meth:`pass_end`).

    A failure on a data connection is kept (:attr:`failure`), breaks the barrier and calls
    ``on_failure`` (which interrupts the first connection's read). :meth:`close` stops and
    joins the threads: call it before the VM's memory goes away.
    """

    def __init__(self, channels: Sequence[FrameChannel],
                 apply: Callable[[memoryview], None],
                 on_failure: Callable[[BaseException], None]) -> None:
        self._channels = list(channels)
        self._apply = apply
        self._on_failure = on_failure
        self._finals: list[bool] = [False] * (len(self._channels) + 1)
        self._barrier = threading.Barrier(len(self._channels) + 1, action=self._agree)
        self._lock = threading.Lock()
        self.failure: BaseException | None = None
        self._expected = 0
        self.finished = False
        """The first connection passed the final PASS_END (every data connection is done)."""
        self._closing = False
        self._threads = [threading.Thread(target=self._receiver, args=(i + 1, ch),
                                          daemon=True, name=f"migration-recv-{i + 1}")
                         for i, ch in enumerate(self._channels)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def pass_end(self, payload: memoryview) -> None:
        """The first connection's PASS_END: wait until every connection applied the pass."""
        number, final = decode_pass_end(payload)
        if self.finished:
            raise ProtocolError("PASS_END after the final pass")
        if number != self._expected:
            raise ProtocolError(f"PASS_END for pass {number}, expected {self._expected}")
        self._meet(0, final)
        self._expected += 1
        self.finished = final

    def close(self) -> None:
        self._closing = True
        self._barrier.abort()
        for channel in self._channels:
            _stop_stream(channel)
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(_JOIN_WAIT_S)

    # -- internals
    def _agree(self) -> None:
        """Barrier action: all connections ended the same pass the same way (final or not).
        (Raising breaks the barrier for every party; it must not call abort() itself.)"""
        if len(set(self._finals)) != 1:
            exc = ProtocolError("the connections disagree on whether the pass was the last")
            with self._lock:
                first = self.failure is None
                if first:
                    self.failure = exc
            if first:
                self._on_failure(exc)
            raise exc

    def _meet(self, i: int, final: bool) -> None:
        self._finals[i] = final
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            failure = self.failure
            if failure is not None:
                raise failure from None
            raise ProtocolError("a data connection was closed mid-migration") from None

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = exc
        if first:
            self._barrier.abort()
            self._on_failure(exc)

    def _receiver(self, i: int, channel: FrameChannel) -> None:
        expected = 0
        try:
            while True:
                frame = channel.expect(MsgType.PAGES, MsgType.PASS_END)
                if frame.type is MsgType.PAGES:
                    self._apply(frame.payload)
                    continue
                number, final = decode_pass_end(frame.payload)
                if number != expected:
                    raise ProtocolError(f"PASS_END for pass {number}, expected {expected}")
                self._meet(i, final)
                expected += 1
                if final:
                    return
        except threading.BrokenBarrierError:
            return  # another connection failed (kept there), or close()
        except BaseException as exc:
            if self._closing or (self._barrier.broken and self.failure is not None):
                return  # a consequence of close() or of an earlier failure
            _name_connection(exc, i)
            self._fail(exc)
