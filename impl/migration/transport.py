"""Clock and socket plumbing for migration: cancellable, bounded socket I/O; listen/connect.

:class:`CancellableSocket` is the byte stream under the :class:`~.framing.FrameChannel`. Every
blocking call waits in short slices (``poll_s``) so that a ``cancel()`` from another thread
takes effect within one slice (until the source's commit point: ``ignore_cancel()``), and an
I/O deadline (``io_timeout_s`` without any progress) turns a dead or stalled peer into a
:class:`TransportError` instead of a hang.

:class:`Clock` is what the pre-copy loop measures time with and sleeps on (bandwidth cap);
tests inject a virtual clock so no unit test sleeps on the wall clock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import sys
import termios
import threading
import time
from typing import Protocol

from .addresses import UNIX_PREFIX
from .errors import HandshakeTimeout, MigrationCancelled, TransportError

_IOV_MAX = 512
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0
"""The source gives up connecting after this long (``migrate --connect-timeout``)."""
LISTEN_BACKLOG = 128
"""Connections the kernel queues for the receiver (it accepts them at once, see .accept)."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s`` unless ``event`` is set; returns ``event.is_set()``."""
        ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        if timeout_s <= 0:
            return event.is_set()
        return event.wait(timeout_s)


def tune_socket(sock: socket.socket, timeout_s: float | None) -> None:
    """A migration connection's socket options: timeout, large Unix buffers, TCP_NODELAY."""
    sock.settimeout(timeout_s)
    if sock.family == socket.AF_UNIX:  # (for TCP: no gain measured, keeps autotuning)
        # the default (~200 KiB) is far below a frame: sender and receiver would take turns
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class CancellableSocket:
    """A connected socket whose sendall/recv_into honour a cancel event and an I/O deadline."""

    def __init__(self, sock: socket.socket, cancel: threading.Event,
                 io_timeout_s: float = 30.0, poll_s: float = 0.1) -> None:
        if io_timeout_s <= 0 or poll_s <= 0:
            raise ValueError("timeouts must be positive")
        self.sock = sock
        self.cancel = cancel
        self.io_timeout_s = io_timeout_s
        self.poll_s = poll_s
        self.cancel_reason = "migration cancelled"
        self.deadline: float | None = None
        """An absolute ``time.monotonic()`` by which the current exchange (the handshake)
        must be over, however the peer paces its bytes; None: only the I/O timeout."""
        self.cancellable = True
        """False once the migration passed its commit point (:meth:`ignore_cancel`)."""
        tune_socket(sock, poll_s)

    def ignore_cancel(self) -> None:
        """From now on the cancel event no longer interrupts I/O (only the I/O deadline
        does): the source passed its commit point, and a cancel (Ctrl-C) must not turn the
        wait for the destination's answer into "cancelled"."""
        self.cancellable = False

    def _check(self) -> None:
        if self.cancellable and self.cancel.is_set():
            raise MigrationCancelled(self.cancel_reason)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise HandshakeTimeout("the peer did not complete the handshake in time")

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None:
        view = memoryview(data).cast("B")
        off, n = 0, len(view)
        deadline = time.monotonic() + self.io_timeout_s
        while off < n:
            self._check()
            try:
                off += self.sock.send(view[off:])
                deadline = time.monotonic() + self.io_timeout_s
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TransportError(f"the peer stopped reading for {self.io_timeout_s:g} s"
                                         ) from None
            except OSError as exc:
                raise TransportError(f"connection to the peer broke while sending: {exc}"
                                     ) from exc

    def sendmsg_all(self, parts: list[bytes | bytearray | memoryview]) -> None:
        """Send all ``parts`` by scatter-gather (``sendmsg``): no part is copied (a frame
        built zero-copy goes from guest memory to the kernel)."""
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        first = 0  # views before this index are sent
        deadline = time.monotonic() + self.io_timeout_s
        while first < len(views):
            self._check()
            try:
                n = self.sock.sendmsg(views[first:first + _IOV_MAX])
                deadline = time.monotonic() + self.io_timeout_s
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TransportError(f"the peer stopped reading for {self.io_timeout_s:g} s"
                                         ) from None
                continue
            except OSError as exc:
                raise TransportError(f"connection to the peer broke while sending: {exc}"
                                     ) from exc
            while n and first < len(views):
                head = views[first]
                if n >= len(head):
                    n -= len(head)
                    first += 1
                else:
                    views[first] = head[n:]
                    n = 0

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        deadline = time.monotonic() + self.io_timeout_s
        while True:
            self._check()
            try:
                return self.sock.recv_into(buffer, nbytes)
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise TransportError(f"no data from the peer for {self.io_timeout_s:g} s"
                                         ) from None
            except OSError as exc:
                raise TransportError(f"connection to the peer broke: {exc}") from exc

    def readable(self) -> bool:
        """True if data (or EOF) is waiting, without blocking."""
        import select

        try:
            r, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(r)

    def unsent_bytes(self) -> int:
        """Bytes in the send queue not yet acknowledged by the peer (Linux SIOCOUTQ)."""
        try:
            buf = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except (OSError, ValueError):
            return 0
        return max(int.from_bytes(buf, sys.byteorder, signed=True), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def connect(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> socket.socket:
    """TCP to ``host:port``, or a Unix-domain stream socket if ``host`` is ``unix:PATH``."""
    if host.startswith(UNIX_PREFIX):
        path = host[len(UNIX_PREFIX):]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise TransportError(f"connecting to {host} timed out") from exc
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot connect to {host}: {exc.strerror or exc}") from exc
        return sock
    where = host_port(host, port)
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError as exc:
        raise TransportError(f"connecting to {where} timed out after {timeout_s:g} s") from exc
    except (OSError, UnicodeError) as exc:
        raise TransportError(f"cannot connect to {where}: "
                             f"{getattr(exc, 'strerror', None) or exc}") from exc
    return sock


def listen(host: str, port: int) -> socket.socket:
    """Listen on TCP ``host:port``, or on a Unix-domain socket if ``host`` is ``unix:PATH``.

    A Unix socket file is created with mode 0600; a stale socket file at PATH is replaced,
    any other existing file is refused. The caller removes it (:func:`unlink_unix`).
    """
    if host.startswith(UNIX_PREFIX):
        path = host[len(UNIX_PREFIX):]
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise TransportError(f"cannot listen on {host}: the path exists and is not a "
                                     f"socket")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot listen on {host}: {exc.strerror or exc}") from exc
        finally:
            os.umask(old)
        sock.listen(LISTEN_BACKLOG)
        return sock
    where = host_port(host, port)
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (OSError, UnicodeError) as exc:
        raise TransportError(f"cannot listen on {where}: {getattr(exc, 'strerror', None) or exc}"
                             ) from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise TransportError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    sock.listen(LISTEN_BACKLOG)
    return sock


def unlink_unix(host: str) -> None:
    """Remove the socket file of a ``unix:PATH`` listener (no-op for TCP)."""
    if host.startswith(UNIX_PREFIX):
        with contextlib.suppress(OSError):
            os.unlink(host[len(UNIX_PREFIX):])


def peer_name(addr: object) -> str:
    """``host:port`` (``[v6]:port``) of a TCP peer, ``unix socket peer`` for a Unix one."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return host_port(str(addr[0]), int(addr[1]))
    return "unix socket peer"


def host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:4444``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
