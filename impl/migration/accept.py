"""Accepting the source: concurrent handshakes under deadlines; the first authenticated peer wins.

One job: turn a listening socket into one authenticated connection, or say that none came
in time. One thread serves every connection at once on non-blocking sockets
(``selectors``), each through its own :class:`~.handshake.ServerHandshake`, so a peer that
is slow, idle or hostile cannot hold up another one:

- each connection must complete the handshake within ``handshake_timeout_s`` of being
  accepted: a deadline fixed when it is accepted, not restarted by each byte that arrives;
- the accept deadline holds while handshakes are in progress: when it passes, they are
  dropped and the call returns;
- before a peer is authenticated the receiver reads at most the two handshake frames from it
  (180 bytes), and nothing is allocated for more: a frame header that announces anything
  else is refused as soon as its 24 bytes are in;
- at most ``max_pending`` handshakes are in progress; a connection beyond that evicts the
  oldest one;
- the first peer to authenticate wins; the others are told so (ERROR ``BUSY``) and closed.

Each refused connection is logged in one line, ``refused HOST:PORT: reason``, and is sent an
ERROR frame with the reason's code where the protocol has one (best effort, never blocking);
the winner is logged as ``authenticated source HOST:PORT (N ms after it connected, ...)``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import HandshakeTimeout, MigrationCancelled, MigrationError, ReceiverBusy
from .handshake import AUTH_FRAME_BYTES, HELLO_FRAME_BYTES, ServerHandshake
from .transport import peer_name

DEFAULT_HANDSHAKE_TIMEOUT_S = 5.0
"""How long a connection may take to authenticate, from accept to its AUTH frame."""
MAX_PENDING_HANDSHAKES = 64
"""Handshakes in progress at once; one more connection evicts the oldest."""
HANDSHAKE_BYTES = HELLO_FRAME_BYTES + AUTH_FRAME_BYTES
"""180: all a receiver ever reads from a peer before it is authenticated."""
_POLL_S = 0.1  # how soon a cancel is seen
_ACCEPT_BURST = 64  # connections accepted per wake-up, so that handshakes are served too
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass
class AcceptedSource:
    """The connection that authenticated first (blocking mode again; the caller owns it)."""

    sock: socket.socket
    peer: str
    handshake: ServerHandshake
    """Finished: ``handshake.finish(stream)`` gives the authenticated channel."""
    handshake_s: float
    """Seconds from accepting the connection to its authentication."""
    waited_s: float
    """Seconds from the start of :func:`accept_source` to the authentication."""
    refused: int
    """Connections refused before (and because of) it."""


@dataclass
class _Pending:
    sock: socket.socket
    peer: str
    handshake: ServerHandshake
    accepted_at: float
    deadline: float


def accept_source(listener: socket.socket, key: bytes, *, accept_timeout_s: float,
                  handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
                  max_pending: int = MAX_PENDING_HANDSHAKES,
                  log: Callable[[str], None] = lambda s: None,
                  cancel_event: threading.Event | None = None,
                  rng: Callable[[int], bytes] = os.urandom) -> AcceptedSource | None:
    """Serve handshakes on ``listener`` until one peer authenticates; return it.

    Returns None when none did within ``accept_timeout_s``; raises MigrationCancelled when
    ``cancel_event`` is set. Either way no other connection is left open.
    """
    if not accept_timeout_s > 0 or not handshake_timeout_s > 0 or max_pending < 1:
        raise ValueError("accept and handshake timeouts must be positive, max_pending >= 1")
    acceptor = _Acceptor(listener, key, handshake_timeout_s, max_pending, log, rng)
    return acceptor.run(accept_timeout_s, cancel_event or threading.Event())


class _Acceptor:
    def __init__(self, listener: socket.socket, key: bytes, handshake_timeout_s: float,
                 max_pending: int, log: Callable[[str], None],
                 rng: Callable[[int], bytes]) -> None:
        self.listener = listener
        self.key = key
        self.handshake_timeout_s = handshake_timeout_s
        self.max_pending = max_pending
        self.log = log
        self.rng = rng
        self.pending: dict[int, _Pending] = {}  # by fd, in accept order
        self.sel = selectors.DefaultSelector()
        self.refused = 0
        self.serial = 0

    def run(self, accept_timeout_s: float, cancel: threading.Event) -> AcceptedSource | None:
        start = time.monotonic()
        accept_deadline = start + accept_timeout_s
        old_timeout = self.listener.gettimeout()
        self.listener.setblocking(False)
        self.sel.register(self.listener, selectors.EVENT_READ)
        try:
            while True:
                if cancel.is_set():
                    self._refuse_all(MigrationCancelled("the receiver was cancelled"))
                    raise MigrationCancelled("receiver cancelled")
                now = time.monotonic()
                if now >= accept_deadline:
                    self._refuse_all(HandshakeTimeout(
                        f"no source authenticated within the receiver's accept timeout of "
                        f"{accept_timeout_s:g} s"))
                    return None
                for p in [p for p in self.pending.values() if p.deadline <= now]:
                    self._refuse(p, HandshakeTimeout(
                        f"no complete handshake within {self.handshake_timeout_s:g} s of "
                        f"connecting ({p.handshake.received} of {HANDSHAKE_BYTES} bytes "
                        f"received)"))
                wake = min([accept_deadline, now + _POLL_S,
                            *(p.deadline for p in self.pending.values())])
                for sk, _ in self.sel.select(max(wake - now, 0.0)):
                    if sk.fileobj is self.listener:
                        self._accept_burst(cancel)
                        continue
                    conn = self.pending.get(sk.fd)
                    if conn is not None and self._serve(conn):
                        return self._won(conn, start)
        finally:
            for p in list(self.pending.values()):
                self._close(p)
            self.sel.close()
            with contextlib.suppress(OSError):
                self.listener.settimeout(old_timeout)

    # ------------------------------------------------------------------------------ accept
    def _accept_burst(self, cancel: threading.Event) -> None:
        for _ in range(_ACCEPT_BURST):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    continue  # e.g. ECONNABORTED: that peer is gone already
                self.log(f"cannot accept a connection: {exc.strerror or exc}")
                if self.pending:
                    self._refuse(next(iter(self.pending.values())), ReceiverBusy(
                        "the receiver ran out of resources; dropped the oldest handshake"))
                else:
                    cancel.wait(_POLL_S)  # nothing of ours to free: do not spin
                return
            now = time.monotonic()
            self.serial += 1
            sock.setblocking(False)
            name = peer_name(addr) if isinstance(addr, tuple) else f"unix peer #{self.serial}"
            if len(self.pending) >= self.max_pending:
                self._refuse(next(iter(self.pending.values())), ReceiverBusy(
                    f"{self.max_pending} handshakes in progress; dropped the oldest"))
            p = _Pending(sock, name, ServerHandshake(self.key, self.rng), now,
                         now + self.handshake_timeout_s)
            self.pending[sock.fileno()] = p
            self.sel.register(sock, selectors.EVENT_READ)

    # ------------------------------------------------------------------------------ serve
    def _serve(self, p: _Pending) -> bool:
        """Read what the handshake wants; True once this peer is authenticated."""
        try:
            data = p.sock.recv(p.handshake.want())
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self._drop(p, f"the connection broke during the handshake: {exc.strerror or exc}")
            return False
        if not data:
            self._drop(p, f"closed the connection during the handshake ({p.handshake.received}"
                          f" bytes received)")
            return False
        try:
            out = p.handshake.feed(data)
        except MigrationError as exc:
            self._refuse(p, exc, p.handshake.farewell)
            return False
        if out and not _send_now(p.sock, out):
            self._drop(p, "does not read the receiver's CHALLENGE")
            return False
        return p.handshake.done

    def _won(self, p: _Pending, start: float) -> AcceptedSource:
        now = time.monotonic()
        self.sel.unregister(p.sock)
        del self.pending[p.sock.fileno()]
        self.log(f"authenticated source {p.peer} ({(now - p.accepted_at) * 1e3:.0f} ms after "
                 f"it connected, {now - start:.2f} s after listening)")
        self._refuse_all(ReceiverBusy("another source authenticated first"))
        p.sock.setblocking(True)
        return AcceptedSource(p.sock, p.peer, p.handshake, now - p.accepted_at, now - start,
                              self.refused)

    # ------------------------------------------------------------------------------ refuse
    def _refuse_all(self, exc: MigrationError) -> None:
        for p in list(self.pending.values()):
            self._refuse(p, exc)

    def _refuse(self, p: _Pending, exc: MigrationError, farewell: bytes | None = None) -> None:
        """Tell the peer why (ERROR frame with the code of ``exc``), close it, log one line."""
        _send_now(p.sock, p.handshake.refuse(exc) if farewell is None else farewell)
        self._drop(p, str(exc))

    def _drop(self, p: _Pending, reason: str) -> None:
        self._close(p)
        self.refused += 1
        self.log(f"refused {p.peer}: {reason}")

    def _close(self, p: _Pending) -> None:
        self.pending.pop(p.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(p.sock)
        _close_gently(p.sock)


def _send_now(sock: socket.socket, data: bytes) -> bool:
    """Send ``data`` without blocking; True if all of it went into the socket buffer."""
    if not data:
        return True
    try:
        return sock.send(data) == len(data)
    except OSError:
        return False


def _close_gently(sock: socket.socket) -> None:
    """Close so that an ERROR frame just sent still arrives: FIN, not RST.

    (Linux resets a connection closed with unread data; the little a handshake peer can
    have sent beyond what was read - the socket buffer, bounded - is drained first.)
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    with contextlib.suppress(OSError):
        for _ in range(64):
            if not sock.recv(4096):
                break
    with contextlib.suppress(OSError):
        sock.close()
