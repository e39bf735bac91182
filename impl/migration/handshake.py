"""The migration handshake: pre-shared-key authentication and the session keys it installs.

One job: turn a fresh :class:`~.framing.FrameChannel` into an authenticated one, on the
client (the source) or the server (the destination). Replay-safe through fresh nonces on
both sides:

1. client -> server ``HELLO(client_nonce, flags)``, MAC'd with a key derived from the PSK
   alone (a peer without the key is rejected here, before anything else happens);
2. server -> client ``CHALLENGE(server_nonce, server_proof)``;
3. client -> server ``AUTH(client_proof)``.

From step 2 on each direction uses its own session key
``HMAC(PSK, "c2s"/"s2c" | client_nonce | server_nonce)`` (after AUTH: the GMAC keys
``HMAC(PSK, "gmac c2s"/"gmac s2c" | nonces)``, unless HELLO carried ``HELLO_FLAG_HMAC``);
the proofs are ``HMAC(PSK, "server"/"client" | nonces)``. A recorded session replayed later
fails, because the other side's nonce differs.

A migration over several connections (:mod:`.connections`) runs this handshake on each of
them, so each has its own nonces and session keys (a GMAC nonce, the frame's sequence
number, never repeats under one key, and a frame moved to another connection fails its
MAC). HELLO's flags say how many connections the source will open (on the first one) or
that the connection is a data connection joining a migration; the session token
``HMAC(PSK, "join" | nonces)`` of the first connection is what a data connection's JOIN
must carry.

The server side is a machine fed with bytes (:class:`ServerHandshake`), so that the receiver
can serve many connections' handshakes at once from one thread; it reads exactly the two
handshake frames (92 + 88 bytes) and refuses any other frame on its 24-byte header, before
a byte of its payload is read. :func:`server_handshake` drives it on one blocking stream.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import struct
from collections.abc import Callable

from .errors import AuthenticationError, MigrationError, PeerError, ProtocolError, TransportError
from .framing import (
    DEFAULT_MAX_PAGES_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    VERSION,
    ByteStream,
    FrameChannel,
    MsgType,
    decode_error,
    parse_header,
)
from .macs import MAC_NAMES, TAG_SIZE
from .messages import MAX_CONNECTIONS

NONCE_SIZE = 32
MIN_KEY_BYTES = 16
HELLO_FLAG_HMAC = 1
"""HELLO flag: keep HMAC-SHA256 for the whole session (slower; the benchmark's baseline)."""
HELLO_FLAG_DATA = 2
"""HELLO flag: a data connection, joining the migration of an earlier connection."""
HELLO_CONNECTIONS_SHIFT = 16
"""HELLO flags bits 16..23 on the first connection: how many connections, minus one."""
_HELLO_CONNECTIONS_MASK = 0xFF << HELLO_CONNECTIONS_SHIFT
_HELLO_KNOWN_FLAGS = HELLO_FLAG_HMAC | HELLO_FLAG_DATA | _HELLO_CONNECTIONS_MASK

HELLO = struct.Struct(f"<{NONCE_SIZE}sI")
"""HELLO payload: client nonce, flags."""
CHALLENGE = struct.Struct(f"<{NONCE_SIZE}s32s")
"""CHALLENGE payload: server nonce, server proof."""
PROOF_SIZE = 32
"""AUTH payload: the client proof (HMAC-SHA256)."""
HELLO_FRAME_BYTES = HEADER_SIZE + HELLO.size + TAG_SIZE
"""92: the whole HELLO frame, the most a receiver reads from a peer before its CHALLENGE."""
AUTH_FRAME_BYTES = HEADER_SIZE + PROOF_SIZE + TAG_SIZE
"""88: the whole AUTH frame; a receiver reads at most 180 bytes from an unauthenticated peer."""


def _derive(psk: bytes, label: bytes, *parts: bytes) -> bytes:
    mac = hmac.new(psk, label, hashlib.sha256)
    for p in parts:
        mac.update(p)
    return mac.digest()


def hello_key(psk: bytes) -> bytes:
    return _derive(psk, b"autoconverge/v1 hello")


def check_key(psk: bytes) -> bytes:
    if len(psk) < MIN_KEY_BYTES:
        raise ValueError(f"the pre-shared key must have at least {MIN_KEY_BYTES} bytes, "
                         f"got {len(psk)}")
    return psk


def session_keys(psk: bytes, cn: bytes, sn: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) HMAC-SHA256 keys of one session."""
    return _derive(psk, b"autoconverge/v1 c2s", cn, sn), _derive(psk, b"autoconverge/v1 s2c",
                                                                  cn, sn)


def gmac_keys(psk: bytes, cn: bytes, sn: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) AES-256-GMAC keys of one session."""
    return (_derive(psk, b"autoconverge/v2 gmac c2s", cn, sn),
            _derive(psk, b"autoconverge/v2 gmac s2c", cn, sn))


def server_proof(psk: bytes, cn: bytes, sn: bytes) -> bytes:
    """What the server sends in CHALLENGE to prove it holds the key."""
    return _derive(psk, b"autoconverge/v1 server", cn, sn)


def client_proof(psk: bytes, cn: bytes, sn: bytes) -> bytes:
    """What the client sends in AUTH to prove it holds the key."""
    return _derive(psk, b"autoconverge/v1 client", cn, sn)


def session_token(psk: bytes, cn: bytes, sn: bytes) -> bytes:
    """What a data connection's JOIN carries to name this session."""
    return _derive(psk, b"autoconverge/v2 join", cn, sn)


def hello_flags(mac: str, connections: int = 1, data: bool = False) -> int:
    """HELLO's flags: the MAC, and the connection count (first connection) or the data flag."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ValueError(f"connections must be in 1..{MAX_CONNECTIONS}, got {connections}")
    flags = HELLO_FLAG_HMAC if mac == "hmac" else 0
    if data:
        return flags | HELLO_FLAG_DATA
    return flags | (connections - 1) << HELLO_CONNECTIONS_SHIFT


def client_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD,
                     mac: str = "gmac", connections: int = 1,
                     data: bool = False) -> FrameChannel:
    """Authenticate to the receiver; returns the channel with session keys installed.

    ``mac``: ``gmac`` (default) or ``hmac`` (HMAC-SHA256 for the whole session).
    ``connections``: how many the migration uses (said on the first one); ``data``: this
    is a data connection joining one (:mod:`.connections`).
    """
    check_key(psk)
    if mac not in MAC_NAMES:
        raise ValueError(f"mac must be one of {', '.join(MAC_NAMES)}, got {mac!r}")
    flags = hello_flags(mac, connections, data)
    hk = hello_key(psk)
    channel = FrameChannel(stream, hk, hk, max_pages_payload)
    cn = rng(NONCE_SIZE)
    channel.send(MsgType.HELLO, HELLO.pack(cn, flags))
    try:
        frame = _recv_challenge(channel, psk, cn)
    except AuthenticationError as exc:
        raise AuthenticationError(
            f"authentication with the receiver failed: {exc} (are both sides using the same "
            f"key?)") from exc
    sn, proof = CHALLENGE.unpack(frame)
    c2s, s2c = session_keys(psk, cn, sn)
    if not hmac.compare_digest(proof, server_proof(psk, cn, sn)):
        raise AuthenticationError("the receiver failed to prove it holds the key")
    channel.send_key, channel.recv_key = c2s, s2c
    channel.send(MsgType.AUTH, client_proof(psk, cn, sn))
    if mac == "gmac":
        channel.use_gmac(*gmac_keys(psk, cn, sn))
    channel.session_token = session_token(psk, cn, sn)
    return channel


def _recv_challenge(channel: FrameChannel, psk: bytes, cn: bytes) -> bytes:
    """Receive CHALLENGE: its MAC key depends on the server nonce inside it."""
    header = bytearray(HEADER_SIZE)
    channel.read_exact(memoryview(header), "frame header")
    magic, version, mtype, flags, seq, length, reserved = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic from the receiver: not an autoconverge receiver")
    if version != VERSION:
        raise ProtocolError(f"the receiver speaks protocol version {version}, we speak "
                            f"{VERSION}")
    if mtype == MsgType.ERROR and length <= MAX_CONTROL_PAYLOAD:
        body = memoryview(bytearray(length + TAG_SIZE))
        channel.read_exact(body, "ERROR frame")
        mac = hmac.new(hello_key(psk), header, hashlib.sha256)
        mac.update(body[:length])
        if hmac.compare_digest(mac.digest(), body[length:]):
            code, text = decode_error(body[:length])
            raise PeerError(code, text)
        raise AuthenticationError("the receiver refused the connection (its error message "
                                  "does not carry a valid MAC: different keys?)")
    if mtype != MsgType.CHALLENGE or flags or reserved or seq != 0:
        raise ProtocolError(f"expected CHALLENGE from the receiver, got message type {mtype}")
    if length != CHALLENGE.size:
        raise ProtocolError(f"CHALLENGE has {length} bytes, expected {CHALLENGE.size}")
    body = memoryview(bytearray(length + TAG_SIZE))
    channel.read_exact(body, "CHALLENGE frame")
    sn = bytes(body[:NONCE_SIZE])
    _, s2c = session_keys(psk, cn, sn)
    mac = hmac.new(s2c, header, hashlib.sha256)
    mac.update(body[:length])
    if not hmac.compare_digest(mac.digest(), body[length:]):
        raise AuthenticationError("CHALLENGE failed authentication (bad MAC)")
    channel.recv_seq = 1
    return bytes(body[:length])


class _Mailbox:
    """The byte stream under the :class:`ServerHandshake`'s channel: bytes fed in, bytes out."""

    def __init__(self) -> None:
        self.inbox = bytearray()
        self.outbox = bytearray()

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int:
        n = min(nbytes or len(buffer), len(self.inbox))
        buffer[:n] = self.inbox[:n]
        del self.inbox[:n]
        return n

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None:
        self.outbox += data

    def take(self) -> bytes:
        out = bytes(self.outbox)
        self.outbox.clear()
        return out


class ServerHandshake:
    """The receiver's half of the handshake as a machine fed with bytes; it does no I/O.

    Whoever drives it (:func:`server_handshake` on a blocking stream, or the receiver's
    accept loop on many non-blocking sockets at once, :mod:`.accept`) reads at most
    :meth:`want` bytes, passes them to :meth:`feed` and sends what ``feed`` returns. Before
    the peer is authenticated it never needs more than the two handshake frames
    (:data:`HELLO_FRAME_BYTES` + :data:`AUTH_FRAME_BYTES` bytes): a frame header that
    announces any other type or length is refused as soon as its 24 bytes are in, and no
    byte past AUTH is consumed (what follows belongs to the session). A refused peer raises
    a :class:`MigrationError` subclass from ``feed``; :attr:`farewell` then holds the ERROR
    frame to send it (best effort). :meth:`refuse` makes that frame for a reason found
    outside (the handshake deadline, another source won).
    """

    def __init__(self, psk: bytes, rng: Callable[[int], bytes] = os.urandom,
                 max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> None:
        check_key(psk)
        self._psk = psk
        self._rng = rng
        self._box = _Mailbox()
        hk = hello_key(psk)
        self._channel = FrameChannel(self._box, hk, hk, max_pages_payload)
        self._expect: MsgType | None = MsgType.HELLO
        self._header_checked = False
        self._cn = b""
        self._sn = b""
        self._flags = 0
        self.farewell = b""
        """After ``feed`` raised: the ERROR frame to send the refused peer (may be empty)."""
        self.received = 0
        """Bytes received from the peer so far."""

    @property
    def done(self) -> bool:
        """True once the peer proved it holds the key (:meth:`finish` then gives the channel)."""
        return self._expect is None

    @property
    def data_connection(self) -> bool:
        """The peer's HELLO says it is a data connection joining an earlier migration."""
        return bool(self._flags & HELLO_FLAG_DATA)

    @property
    def connections(self) -> int:
        """How many connections the peer's HELLO announced (1 for a data connection)."""
        if self.data_connection:
            return 1
        return ((self._flags & _HELLO_CONNECTIONS_MASK) >> HELLO_CONNECTIONS_SHIFT) + 1

    def _frame_size(self) -> int:
        return HELLO_FRAME_BYTES if self._expect is MsgType.HELLO else AUTH_FRAME_BYTES

    def want(self) -> int:
        """How many more bytes the current handshake frame needs (0 once done)."""
        if self._expect is None:
            return 0
        return self._frame_size() - len(self._box.inbox)

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Take up to :meth:`want` bytes; returns the bytes to send the peer now (or b"")."""
        if len(data) > self.want():
            raise ValueError(f"fed {len(data)} bytes, the handshake wants {self.want()}")
        self._box.inbox += data
        self.received += len(data)
        try:
            return self._advance()
        except MigrationError as exc:
            self.farewell = self.refuse(exc)
            raise

    def refuse(self, exc: MigrationError) -> bytes:
        """The ERROR frame that tells this peer why it is refused (b"" if nothing to say)."""
        if exc.code is None:
            return b""
        if self._expect is MsgType.AUTH and not self._flags & HELLO_FLAG_HMAC:
            # a client sends AUTH right after CHALLENGE and then expects GMAC frames
            g_c2s, g_s2c = gmac_keys(self._psk, self._cn, self._sn)
            self._channel.use_gmac(g_s2c, g_c2s)
        self._box.take()
        self._channel.send_error(exc.code, f"the receiver refused the connection: {exc}")
        return self._box.take()

    def finish(self, stream: ByteStream) -> FrameChannel:
        """The authenticated channel, now on ``stream`` (the connection the bytes came from)."""
        if not self.done:
            raise ValueError("the handshake is not finished")
        self._channel.stream = stream
        return self._channel

    def _advance(self) -> bytes:
        inbox, expect = self._box.inbox, self._expect
        assert expect is not None
        if not self._header_checked and len(inbox) >= HEADER_SIZE:
            kind, _, length = parse_header(bytes(inbox[:HEADER_SIZE]))
            size = HELLO.size if expect is MsgType.HELLO else PROOF_SIZE
            if kind is not expect or length != size:
                raise ProtocolError(
                    f"expected {expect.name} ({size} bytes) from the peer, its frame header "
                    f"announces {kind.name} with {length} bytes")
            self._header_checked = True
        if len(inbox) < self._frame_size():
            return b""
        self._header_checked = False
        if expect is MsgType.HELLO:
            return self._on_hello()
        self._on_auth()
        return b""

    def _on_hello(self) -> bytes:
        try:
            frame = self._channel.recv()
        except AuthenticationError as exc:
            raise AuthenticationError(
                "rejected an unauthenticated peer: its HELLO does not carry a valid MAC for "
                "our key") from exc
        cn, flags = HELLO.unpack(frame.payload)
        if flags & ~_HELLO_KNOWN_FLAGS:
            raise ProtocolError("HELLO has unknown flags set")
        if flags & HELLO_FLAG_DATA and flags & _HELLO_CONNECTIONS_MASK:
            raise ProtocolError("HELLO of a data connection announces a connection count")
        if (flags & _HELLO_CONNECTIONS_MASK) >> HELLO_CONNECTIONS_SHIFT >= MAX_CONNECTIONS:
            raise ProtocolError(f"HELLO announces more than {MAX_CONNECTIONS} connections")
        psk = self._psk
        sn = self._rng(NONCE_SIZE)
        c2s, s2c = session_keys(psk, cn, sn)
        self._cn, self._sn, self._flags = cn, sn, flags
        self._channel.send_key = s2c
        self._channel.send(MsgType.CHALLENGE, CHALLENGE.pack(sn, server_proof(psk, cn, sn)))
        self._channel.recv_key = c2s
        self._expect = MsgType.AUTH
        return self._box.take()

    def _on_auth(self) -> None:
        psk, cn, sn = self._psk, self._cn, self._sn
        try:
            auth = self._channel.recv()
        except AuthenticationError as exc:
            raise AuthenticationError("rejected the peer: its AUTH message failed "
                                      "authentication (replayed session or wrong key)") from exc
        if not hmac.compare_digest(bytes(auth.payload), client_proof(psk, cn, sn)):
            raise AuthenticationError("rejected the peer: wrong proof of key")
        if not self._flags & HELLO_FLAG_HMAC:
            g_c2s, g_s2c = gmac_keys(psk, cn, sn)
            self._channel.use_gmac(g_s2c, g_c2s)
        self._channel.session_token = session_token(psk, cn, sn)
        self._expect = None


def server_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> FrameChannel:
    """Authenticate the connecting peer on a blocking stream (drives :class:`ServerHandshake`).

    Raises AuthenticationError if it lacks the key, ProtocolError for anything but the
    handshake's two frames, TransportError if the stream fails; a refused peer is sent an
    ERROR frame first (best effort).
    """
    hs = ServerHandshake(psk, rng, max_pages_payload)
    buf = memoryview(bytearray(max(HELLO_FRAME_BYTES, AUTH_FRAME_BYTES)))
    while not hs.done:
        n = hs.want()
        try:
            got = stream.recv_into(buf[:n], n)
        except TimeoutError as exc:
            raise TransportError("timed out waiting for the peer's handshake") from exc
        except OSError as exc:
            raise TransportError(f"connection to the peer broke during the handshake: "
                                 f"{exc}") from exc
        if got == 0:
            raise TransportError(f"the peer closed the connection during the handshake "
                                 f"(after {hs.received} bytes)")
        try:
            out = hs.feed(buf[:got])
        except MigrationError:
            if hs.farewell:
                with contextlib.suppress(Exception):
                    stream.sendall(hs.farewell)
            raise
        if out:
            try:
                stream.sendall(out)
            except OSError as exc:
                raise TransportError(f"connection to the peer broke during the handshake: "
                                     f"{exc}") from exc
    return hs.finish(stream)
