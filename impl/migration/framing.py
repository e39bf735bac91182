"""The migration wire protocol's frames and the authenticated channel that carries them.

One job: turn typed payloads into authenticated, numbered frames on a byte stream and back.
Every frame is ``header (24 bytes) | payload | tag``:

- header ``<4sBBHQII``: magic ``b"ACMG"``, protocol version, message type, flags (0),
  sequence number (per direction, from 0, no gaps), payload length, reserved (0);
- tag over header and payload under the sending direction's key (:mod:`.macs`): HMAC-SHA256
  (32 bytes) during the handshake, then AES-256-GMAC (16 bytes, nonce = the frame's sequence
  number) for the session, unless the client asked for HMAC-SHA256 throughout.

:class:`FrameChannel` checks the header (magic, version, type, flags, length bound for the
type) *before* it reads the payload, then the MAC, then the sequence number: a frame
replayed, dropped or reordered within a session fails the sequence check (the sequence
number is inside the MAC). The keys are installed by :mod:`.handshake`; the payloads are
encoded and validated by :mod:`.messages`, except the ERROR payload, which the channel
itself sends (:meth:`FrameChannel.send_error`) and turns into :class:`PeerError`
(:meth:`FrameChannel.expect`).
"""

from __future__ import annotations

import contextlib
import enum
import struct
import threading
from dataclasses import dataclass
from typing import Protocol

from .errors import AuthenticationError, PeerError, ProtocolError, TransportError
from .errors import ErrorCode as ErrorCode  # the ERROR payload's code, declared with the errors
from .macs import Buffer, Gmac, HmacSha256

MAGIC = b"ACMG"
VERSION = 2
HEADER = struct.Struct("<4sBBHQII")
HEADER_SIZE = HEADER.size  # 24

MAX_CONTROL_PAYLOAD = 64 * 1024
MAX_VCPU_STATE_PAYLOAD = 4 * 1024 * 1024
DEFAULT_MAX_PAGES_PAYLOAD = 16 * 1024 * 1024 + 64 * 1024
HARD_MAX_PAGES_PAYLOAD = 256 * 1024 * 1024
MAX_ERROR_TEXT = 1024


class MsgType(enum.IntEnum):
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    LAYOUT = 4
    READY = 5
    PAGES = 6
    ITERATION_END = 7
    VCPU_STATE = 8
    DONE = 9
    PREPARED = 10
    COMMIT = 11
    RESUMED = 12
    REPORT = 13
    ERROR = 14
    JOIN = 15
    """A data connection names the migration it belongs to (first frame after its handshake)."""
    JOINED = 16
    """The receiver took the data connection into the migration."""
    PASS_END = 17
    """Multi-connection only: this connection sent every frame it carries of a pass."""


_MSG_VALUES = frozenset(int(m) for m in MsgType)


class ByteStream(Protocol):
    """What the channel needs from a connection (a connected ``socket.socket`` fits)."""

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None: ...


@dataclass(frozen=True)
class Frame:
    """A received, authenticated frame. ``payload`` is valid until the next ``recv``."""

    type: MsgType
    payload: memoryview


class SentBytes:
    """Bytes sent, counted by one channel or shared by a migration's connections (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n


class FrameChannel:
    """One side of an authenticated frame stream: MAC and sequence number on every frame."""

    def __init__(self, stream: ByteStream, send_key: bytes, recv_key: bytes,
                 max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> None:
        if not 0 < max_pages_payload <= HARD_MAX_PAGES_PAYLOAD:
            raise ValueError(f"max_pages_payload out of range: {max_pages_payload}")
        self.stream = stream
        self._send_mac: HmacSha256 = HmacSha256(send_key)
        self._recv_mac: HmacSha256 = HmacSha256(recv_key)
        self.send_seq = 0
        self.recv_seq = 0
        self.max_pages_payload = max_pages_payload
        self._hdr = bytearray(HEADER_SIZE)
        self._buf = bytearray(0)  # sized by the frames received (a handshake: 68 bytes)
        self.sent = SentBytes()
        """What :attr:`bytes_sent` reads: a migration's data connections share the first
        connection's (:meth:`count_sent_in`), so that one counts the bytes of all of them."""
        self.bytes_received = 0
        self.mac_name = "hmac"
        self.session_token = b""
        """Set by the handshake: what names this session to the data connections that join it
        (:mod:`.connections`)."""
        self.broken = False
        """True while (or if interrupted while) a frame is partly written."""

    @property
    def bytes_sent(self) -> int:
        return self.sent.total

    def count_sent_in(self, other: FrameChannel) -> None:
        """Count the bytes this channel sends in ``other``'s counter (a data connection's)."""
        self.sent = other.sent

    # -- keys
    @property
    def send_key(self) -> bytes:
        return self._send_mac.key

    @send_key.setter
    def send_key(self, key: bytes) -> None:
        self._send_mac = HmacSha256(key)

    @property
    def recv_key(self) -> bytes:
        return self._recv_mac.key

    @recv_key.setter
    def recv_key(self, key: bytes) -> None:
        self._recv_mac = HmacSha256(key)

    def use_gmac(self, send_key: bytes, recv_key: bytes) -> None:
        """Switch both directions to AES-GMAC with fresh per-session keys."""
        self._send_mac, self._recv_mac = Gmac(send_key), Gmac(recv_key)
        self.mac_name = "gmac"

    # -- limits
    def payload_limit(self, mtype: MsgType) -> int:
        if mtype is MsgType.PAGES:
            return self.max_pages_payload
        if mtype is MsgType.VCPU_STATE:
            return MAX_VCPU_STATE_PAYLOAD
        return MAX_CONTROL_PAYLOAD

    # -- sending
    def send(self, mtype: MsgType, *parts: Buffer) -> None:
        """MAC and send one frame; large parts go out by scatter-gather, not copied."""
        self.write(self.seal(mtype, *parts))

    def seal(self, mtype: MsgType, *parts: Buffer) -> list[Buffer]:
        """Number and MAC one frame; returns its pieces for :meth:`write` (in this order).

        ``broken`` is True until written. (A writer thread sending frame N while frame N+1
        is gathered and sealed was measured: no gain on 2 cores, so the source does not.)
        """
        length = sum(len(p) for p in parts)
        if length > self.payload_limit(mtype):
            raise ProtocolError(f"refusing to send a {mtype.name} frame of {length} bytes "
                                f"(limit {self.payload_limit(mtype)})")
        header = HEADER.pack(MAGIC, VERSION, int(mtype), 0, self.send_seq, length, 0)
        tag = self._send_mac.tag(header, self.send_seq, parts)
        self.broken = True
        self.send_seq += 1
        self.sent.add(HEADER_SIZE + length + len(tag))
        return [header, *parts, tag]

    def write(self, pieces: list[Buffer]) -> None:
        """Write one sealed frame (small ones joined, large ones by scatter-gather)."""
        try:
            sendmsg_all = getattr(self.stream, "sendmsg_all", None)
            if sum(len(p) for p in pieces) <= 64 * 1024:
                self.stream.sendall(b"".join(pieces))
            elif sendmsg_all is not None:
                sendmsg_all(pieces)
            else:
                for piece in pieces:
                    self.stream.sendall(piece)
        except TimeoutError as exc:
            raise TransportError("timed out sending to the peer (it stopped reading)") from exc
        except OSError as exc:
            raise TransportError(f"connection to the peer broke while sending: {exc}") from exc
        self.broken = False

    # -- receiving
    def read_exact(self, view: memoryview, what: str) -> None:
        """Fill ``view`` from the stream; ``what`` names the piece in errors."""
        got = 0
        n = len(view)
        while got < n:
            try:
                r = self.stream.recv_into(view[got:], n - got)
            except TimeoutError as exc:
                raise TransportError(f"timed out waiting for the peer ({what})") from exc
            except OSError as exc:
                raise TransportError(f"connection to the peer broke ({what}): {exc}") from exc
            if r == 0:
                if got == 0 and what == "frame header":
                    raise TransportError("the peer closed the connection")
                raise TransportError(f"the peer closed the connection in the middle of a "
                                     f"{what} ({got} of {n} bytes)")
            got += r
        self.bytes_received += n

    def recv(self) -> Frame:
        """Read, check and authenticate one frame (raises a MigrationError subclass)."""
        hview = memoryview(self._hdr)
        self.read_exact(hview, "frame header")
        kind, seq, length = parse_header(self._hdr)
        limit = self.payload_limit(kind)
        if length > limit:
            raise ProtocolError(f"{kind.name} frame announces {length} payload bytes, more "
                                f"than the limit of {limit}")
        need = length + self._recv_mac.size
        if len(self._buf) < need:
            self._buf = bytearray(need)  # grows only: a few times per session at most
        body = memoryview(self._buf)[:need]
        self.read_exact(body, f"{kind.name} frame")
        if not self._recv_mac.verify(self._hdr, seq, body[:length], body[length:need]):
            raise AuthenticationError(
                f"{kind.name} frame failed authentication (bad MAC): the peer does not hold "
                f"the same key, or the stream was corrupted or tampered with")
        if seq != self.recv_seq:
            raise ProtocolError(f"{kind.name} frame has sequence number {seq}, expected "
                                f"{self.recv_seq} (replayed, dropped or reordered frame)")
        self.recv_seq += 1
        return Frame(kind, body[:length])

    def expect(self, *types: MsgType) -> Frame:
        """Receive one frame of one of ``types``; an ERROR frame raises PeerError."""
        frame = self.recv()
        if frame.type is MsgType.ERROR and MsgType.ERROR not in types:
            code, text = decode_error(frame.payload)
            raise PeerError(code, text)
        if frame.type not in types:
            names = " or ".join(t.name for t in types)
            raise ProtocolError(f"unexpected {frame.type.name} message (expected {names})")
        return frame

    def send_error(self, code: ErrorCode, text: str) -> None:
        """Best effort: tell the peer why we stop; never raises."""
        with contextlib.suppress(Exception):
            self.send(MsgType.ERROR, encode_error(code, text))


def parse_header(header: bytes | bytearray) -> tuple[MsgType, int, int]:
    """Check a frame header's fixed fields; returns (type, sequence number, payload length).

    Raises ProtocolError for a wrong magic or version, an unknown type or nonzero reserved
    fields. (The length bound depends on the reader: the channel's per-type limits, or the
    exact sizes of the handshake frames.)
    """
    magic, version, mtype, flags, seq, length, reserved = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {bytes(magic)!r}: not an autoconverge "
                            f"migration stream, or the stream is corrupt")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this side speaks "
                            f"version {VERSION})")
    if mtype not in _MSG_VALUES:
        raise ProtocolError(f"unknown message type {mtype}")
    kind = MsgType(mtype)
    if flags != 0 or reserved != 0:
        raise ProtocolError(f"{kind.name} frame has nonzero reserved header fields")
    return kind, int(seq), int(length)


# ERROR payload: u16 code | u16 text length | UTF-8 text

_ERROR = struct.Struct("<HH")


def encode_error(code: ErrorCode, text: str) -> bytes:
    raw = text.encode("utf-8", "replace")[:MAX_ERROR_TEXT]
    return _ERROR.pack(int(code), len(raw)) + raw


def decode_error(payload: memoryview | bytes) -> tuple[int, str]:
    if len(payload) < _ERROR.size:
        return 0, "(malformed error message)"
    code, n = _ERROR.unpack_from(payload)
    raw = bytes(payload[_ERROR.size:_ERROR.size + min(n, MAX_ERROR_TEXT)])
    text = raw.decode("utf-8", "replace")
    text = "".join(char if char.isprintable() else "?" for char in text)
    return int(code), text
