"""The migration wire protocol: authenticated framing, message types and strict decoding.

Every frame is ``header (24 bytes) | payload | tag (32 bytes)``:

- header ``<4sBBHQII``: magic ``b"ACMG"``, protocol version, message type, flags (0),
  sequence number (per direction, from 0, no gaps), payload length, reserved (0);
- tag over header and payload under the sending direction's key: HMAC-SHA256 (32 bytes)
  during the handshake, then AES-256-GMAC (16 bytes; AES-GCM with an empty plaintext, the
  frame as associated data, nonce = the frame's sequence number) for the session, unless
  the client asked for HMAC-SHA256 throughout (HELLO flag ``HELLO_FLAG_HMAC``).

GMAC (``cryptography``/OpenSSL with AES-NI and carry-less multiply) authenticates ~25 GB/s
on one core here, HMAC-SHA256 ~2 GB/s: with GMAC the MAC no longer bounds the page rate.
A GMAC nonce must never repeat under one key: session keys are fresh per connection and
direction (both nonces go into them) and the sequence number never repeats within a
session; the handshake frames, whose key is derived from the PSK alone, use HMAC.

Authentication (pre-shared key, ``PSK``), replay-safe through fresh nonces on both sides:

1. client -> server ``HELLO(client_nonce)``, MAC'd with a key derived from the PSK alone
   (a peer without the key is rejected here, before anything else happens);
2. server -> client ``CHALLENGE(server_nonce, server_proof)``;
3. client -> server ``AUTH(client_proof)``.

From step 2 on each direction uses its own session key
``HMAC(PSK, "c2s"/"s2c" | client_nonce | server_nonce)`` (after AUTH: the GMAC keys
``HMAC(PSK, "gmac c2s"/"gmac s2c" | nonces)``); the proofs are
``HMAC(PSK, "server"/"client" | nonces)``. A recorded session replayed later fails, because
the other side's nonce differs; a frame replayed, dropped or reordered within a session fails
the sequence check (the sequence number is inside the MAC).

Receiving checks the header (magic, version, type, flags, length bound for the type)
*before* reading the payload, then the MAC, then the sequence number; the payload decoders
then validate every field (lengths exact, page numbers inside guest memory, runs sorted and
disjoint, vCPU count and state size as announced). Nothing reaches guest memory before all
of that passed: :func:`apply_pages` is only ever given a :class:`PageBatch` that
:func:`decode_pages` produced for the same layout.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .errors import AuthenticationError, PeerError, ProtocolError, TransportError

MAGIC = b"ACMG"
VERSION = 2
HEADER = struct.Struct("<4sBBHQII")
HEADER_SIZE = HEADER.size  # 24
TAG_SIZE = 32  # HMAC-SHA256
GMAC_TAG_SIZE = 16
HELLO_FLAG_HMAC = 1
"""HELLO flag: keep HMAC-SHA256 for the whole session (slower; the benchmark's baseline)."""
MAC_NAMES = ("gmac", "hmac")
NONCE_SIZE = 32
MIN_KEY_BYTES = 16

MAX_CONTROL_PAYLOAD = 64 * 1024
MAX_VCPU_STATE_PAYLOAD = 4 * 1024 * 1024
DEFAULT_MAX_PAGES_PAYLOAD = 16 * 1024 * 1024 + 64 * 1024
HARD_MAX_PAGES_PAYLOAD = 256 * 1024 * 1024
MAX_ERROR_TEXT = 1024
MAX_VCPUS = 256
MAX_VCPU_STATE_SIZE = 16 * 1024
MAX_GUEST_KIND = 64
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 2 * 1024 * 1024


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


_MSG_VALUES = frozenset(int(m) for m in MsgType)


class ErrorCode(enum.IntEnum):
    PROTOCOL = 1
    AUTHENTICATION = 2
    VM_SETUP = 3
    CANCELLED = 4
    INTERNAL = 5
    TIMEOUT = 6


# ---------------------------------------------------------------------------------------------
# streams and the authenticated channel


class ByteStream(Protocol):
    """What the channel needs from a connection (a connected ``socket.socket`` fits)."""

    def recv_into(self, buffer: memoryview, nbytes: int = 0, /) -> int: ...

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None: ...


Buffer = bytes | bytearray | memoryview


class _Mac:
    """HMAC-SHA256 tags (handshake; whole session with ``HELLO_FLAG_HMAC``)."""

    size = TAG_SIZE

    def __init__(self, key: bytes) -> None:
        self.key = key

    def tag(self, header: bytes, seq: int, parts: Sequence[Buffer]) -> bytes:
        mac = hmac.new(self.key, header, hashlib.sha256)
        for p in parts:
            mac.update(p)
        return mac.digest()

    def verify(self, header: bytes | bytearray, seq: int, payload: memoryview,
               tag: memoryview) -> bool:
        mac = hmac.new(self.key, header, hashlib.sha256)
        mac.update(payload)
        return hmac.compare_digest(mac.digest(), tag)


class _Gmac(_Mac):
    """AES-256-GMAC: AES-GCM over an empty plaintext, the frame as associated data.

    The nonce is the frame's sequence number (unique per session key and direction); the
    parts are fed as memoryviews, no copy.
    """

    size = GMAC_TAG_SIZE

    def __init__(self, key: bytes) -> None:
        super().__init__(key)
        try:  # imported here: the rest of the CLI works without the package
            from cryptography.exceptions import InvalidTag
            from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        except ImportError as exc:
            raise TransportError(
                "AES-GMAC needs the 'cryptography' package (pip install cryptography); "
                "without it, use --mac hmac on the source") from exc
        self._invalid = InvalidTag
        self._cipher, self._gcm = Cipher, modes.GCM
        self._aes = algorithms.AES(key)

    @staticmethod
    def _nonce(seq: int) -> bytes:
        return seq.to_bytes(8, "little") + b"GMAC"

    def tag(self, header: bytes, seq: int, parts: Sequence[Buffer]) -> bytes:
        enc = self._cipher(self._aes, self._gcm(self._nonce(seq))).encryptor()
        enc.authenticate_additional_data(header)
        for p in parts:
            if len(p):
                enc.authenticate_additional_data(p)
        enc.finalize()
        return bytes(enc.tag)

    def verify(self, header: bytes | bytearray, seq: int, payload: memoryview,
               tag: memoryview) -> bool:
        if len(tag) != GMAC_TAG_SIZE:
            return False
        dec = self._cipher(self._aes, self._gcm(self._nonce(seq), bytes(tag))).decryptor()
        dec.authenticate_additional_data(bytes(header))
        if len(payload):
            dec.authenticate_additional_data(payload)
        try:
            dec.finalize()
        except self._invalid:
            return False
        return True


@dataclass(frozen=True)
class Frame:
    """A received, authenticated frame. ``payload`` is valid until the next ``recv``."""

    type: MsgType
    payload: memoryview


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


class Channel:
    """One side of an authenticated frame stream: MAC and sequence number on every frame."""

    def __init__(self, stream: ByteStream, send_key: bytes, recv_key: bytes,
                 max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> None:
        if not 0 < max_pages_payload <= HARD_MAX_PAGES_PAYLOAD:
            raise ValueError(f"max_pages_payload out of range: {max_pages_payload}")
        self.stream = stream
        self._send_mac: _Mac = _Mac(send_key)
        self._recv_mac: _Mac = _Mac(recv_key)
        self.send_seq = 0
        self.recv_seq = 0
        self.max_pages_payload = max_pages_payload
        self._hdr = bytearray(HEADER_SIZE)
        self._buf = bytearray(64 * 1024 + TAG_SIZE)
        self.bytes_sent = 0
        self.bytes_received = 0
        self.mac_name = "hmac"
        self.broken = False
        """True while (or if interrupted while) a frame is partly written."""

    # -- keys
    @property
    def send_key(self) -> bytes:
        return self._send_mac.key

    @send_key.setter
    def send_key(self, key: bytes) -> None:
        self._send_mac = _Mac(key)

    @property
    def recv_key(self) -> bytes:
        return self._recv_mac.key

    @recv_key.setter
    def recv_key(self, key: bytes) -> None:
        self._recv_mac = _Mac(key)

    def use_gmac(self, send_key: bytes, recv_key: bytes) -> None:
        """Switch both directions to AES-GMAC with fresh per-session keys."""
        self._send_mac, self._recv_mac = _Gmac(send_key), _Gmac(recv_key)
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
        self.bytes_sent += HEADER_SIZE + length + len(tag)
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
    def _read_exact(self, view: memoryview, what: str) -> None:
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
        self._read_exact(hview, "frame header")
        magic, version, mtype, flags, seq, length, reserved = HEADER.unpack(self._hdr)
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
        limit = self.payload_limit(kind)
        if length > limit:
            raise ProtocolError(f"{kind.name} frame announces {length} payload bytes, more "
                                f"than the limit of {limit}")
        need = length + self._recv_mac.size
        if len(self._buf) < need:
            self._buf = bytearray(need)
        body = memoryview(self._buf)[:need]
        self._read_exact(body, f"{kind.name} frame")
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


# ---------------------------------------------------------------------------------------------
# handshake

_HELLO = struct.Struct(f"<{NONCE_SIZE}sI")
_CHALLENGE = struct.Struct(f"<{NONCE_SIZE}s32s")


def _session_keys(psk: bytes, cn: bytes, sn: bytes) -> tuple[bytes, bytes]:
    return _derive(psk, b"autoconverge/v1 c2s", cn, sn), _derive(psk, b"autoconverge/v1 s2c",
                                                                  cn, sn)


def gmac_keys(psk: bytes, cn: bytes, sn: bytes) -> tuple[bytes, bytes]:
    """(client-to-server, server-to-client) AES-256-GMAC keys of one session."""
    return (_derive(psk, b"autoconverge/v2 gmac c2s", cn, sn),
            _derive(psk, b"autoconverge/v2 gmac s2c", cn, sn))


def client_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD,
                     mac: str = "gmac") -> Channel:
    """Authenticate to the receiver; returns the channel with session keys installed.

    ``mac``: ``gmac`` (default) or ``hmac`` (HMAC-SHA256 for the whole session).
    """
    check_key(psk)
    if mac not in MAC_NAMES:
        raise ValueError(f"mac must be one of {', '.join(MAC_NAMES)}, got {mac!r}")
    hk = hello_key(psk)
    ch = Channel(stream, hk, hk, max_pages_payload)
    cn = rng(NONCE_SIZE)
    ch.send(MsgType.HELLO, _HELLO.pack(cn, HELLO_FLAG_HMAC if mac == "hmac" else 0))
    try:
        frame = _recv_challenge(ch, psk, cn)
    except AuthenticationError as exc:
        raise AuthenticationError(
            f"authentication with the receiver failed: {exc} (are both sides using the same "
            f"key?)") from exc
    sn, proof = _CHALLENGE.unpack(frame)
    c2s, s2c = _session_keys(psk, cn, sn)
    if not hmac.compare_digest(proof, _derive(psk, b"autoconverge/v1 server", cn, sn)):
        raise AuthenticationError("the receiver failed to prove it holds the key")
    ch.send_key, ch.recv_key = c2s, s2c
    ch.send(MsgType.AUTH, _derive(psk, b"autoconverge/v1 client", cn, sn))
    if mac == "gmac":
        ch.use_gmac(*gmac_keys(psk, cn, sn))
    return ch


def _recv_challenge(ch: Channel, psk: bytes, cn: bytes) -> bytes:
    """Receive CHALLENGE: its MAC key depends on the server nonce inside it."""
    hview = memoryview(ch._hdr)
    ch._read_exact(hview, "frame header")
    magic, version, mtype, flags, seq, length, reserved = HEADER.unpack(ch._hdr)
    if magic != MAGIC:
        raise ProtocolError("bad frame magic from the receiver: not an autoconverge receiver")
    if version != VERSION:
        raise ProtocolError(f"the receiver speaks protocol version {version}, we speak "
                            f"{VERSION}")
    if mtype == MsgType.ERROR and length <= MAX_CONTROL_PAYLOAD:
        body = memoryview(bytearray(length + TAG_SIZE))
        ch._read_exact(body, "ERROR frame")
        mac = hmac.new(hello_key(psk), ch._hdr, hashlib.sha256)
        mac.update(body[:length])
        if hmac.compare_digest(mac.digest(), body[length:]):
            code, text = decode_error(body[:length])
            raise PeerError(code, text)
        raise AuthenticationError("the receiver refused the connection (its error message "
                                  "does not carry a valid MAC: different keys?)")
    if mtype != MsgType.CHALLENGE or flags or reserved or seq != 0:
        raise ProtocolError(f"expected CHALLENGE from the receiver, got message type {mtype}")
    if length != _CHALLENGE.size:
        raise ProtocolError(f"CHALLENGE has {length} bytes, expected {_CHALLENGE.size}")
    body = memoryview(bytearray(length + TAG_SIZE))
    ch._read_exact(body, "CHALLENGE frame")
    sn = bytes(body[:NONCE_SIZE])
    _, s2c = _session_keys(psk, cn, sn)
    mac = hmac.new(s2c, ch._hdr, hashlib.sha256)
    mac.update(body[:length])
    if not hmac.compare_digest(mac.digest(), body[length:]):
        raise AuthenticationError("CHALLENGE failed authentication (bad MAC)")
    ch.recv_seq = 1
    return bytes(body[:length])


def server_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> Channel:
    """Authenticate the connecting peer; raises AuthenticationError if it lacks the key."""
    check_key(psk)
    hk = hello_key(psk)
    ch = Channel(stream, hk, hk, max_pages_payload)
    try:
        frame = ch.recv()
    except AuthenticationError as exc:
        ch.send_error(ErrorCode.AUTHENTICATION, "authentication failed: wrong key")
        raise AuthenticationError(
            "rejected an unauthenticated peer: its HELLO does not carry a valid MAC for our "
            "key") from exc
    if frame.type is not MsgType.HELLO:
        ch.send_error(ErrorCode.PROTOCOL, "expected HELLO")
        raise ProtocolError(f"expected HELLO from the peer, got {frame.type.name}")
    if len(frame.payload) != _HELLO.size:
        raise ProtocolError(f"HELLO has {len(frame.payload)} bytes, expected {_HELLO.size}")
    cn, hello_flags = _HELLO.unpack(frame.payload)
    if hello_flags & ~HELLO_FLAG_HMAC:
        raise ProtocolError("HELLO has unknown flags set")
    sn = rng(NONCE_SIZE)
    c2s, s2c = _session_keys(psk, cn, sn)
    ch.send_key = s2c
    ch.send(MsgType.CHALLENGE,
            _CHALLENGE.pack(sn, _derive(psk, b"autoconverge/v1 server", cn, sn)))
    ch.recv_key = c2s
    try:
        auth = ch.recv()
    except AuthenticationError as exc:
        raise AuthenticationError("rejected the peer: its AUTH message failed authentication "
                                  "(replayed session or wrong key)") from exc
    if auth.type is not MsgType.AUTH or len(auth.payload) != 32:
        raise ProtocolError(f"expected AUTH from the peer, got {auth.type.name}")
    if not hmac.compare_digest(bytes(auth.payload),
                               _derive(psk, b"autoconverge/v1 client", cn, sn)):
        raise AuthenticationError("rejected the peer: wrong proof of key")
    if not hello_flags & HELLO_FLAG_HMAC:
        g_c2s, g_s2c = gmac_keys(psk, cn, sn)
        ch.use_gmac(g_s2c, g_c2s)
    return ch


# ---------------------------------------------------------------------------------------------
# payloads


@dataclass(frozen=True)
class Layout:
    """What the destination needs to create a VM the guest can run in."""

    memory_size: int
    page_size: int
    vcpu_count: int
    vcpu_state_size: int
    guest_kind: str

    @property
    def page_count(self) -> int:
        return self.memory_size // self.page_size


_LAYOUT = struct.Struct("<QIIIH")


def encode_layout(lay: Layout) -> bytes:
    kind = lay.guest_kind.encode()
    return _LAYOUT.pack(lay.memory_size, lay.page_size, lay.vcpu_count, lay.vcpu_state_size,
                        len(kind)) + kind


@dataclass(frozen=True)
class Limits:
    """What the receiver accepts (checked against every announced layout)."""

    max_memory_size: int = 16 * 1024 ** 3
    max_vcpus: int = 64
    guest_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.max_vcpus <= MAX_VCPUS:
            raise ValueError(f"max_vcpus must be in 1..{MAX_VCPUS}")


def decode_layout(payload: memoryview | bytes, limits: Limits) -> Layout:
    if len(payload) < _LAYOUT.size:
        raise ProtocolError(f"LAYOUT too short ({len(payload)} bytes)")
    mem, ps, nv, ss, klen = _LAYOUT.unpack_from(payload)
    if len(payload) != _LAYOUT.size + klen or klen > MAX_GUEST_KIND:
        raise ProtocolError("LAYOUT length does not match its guest-kind field")
    try:
        kind = bytes(payload[_LAYOUT.size:]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("LAYOUT guest kind is not ASCII") from exc
    if not kind.isprintable():
        raise ProtocolError("LAYOUT guest kind has unprintable characters")
    if ps < MIN_PAGE_SIZE or ps > MAX_PAGE_SIZE or ps & (ps - 1):
        raise ProtocolError(f"page size {ps} is not a power of two in "
                            f"{MIN_PAGE_SIZE}..{MAX_PAGE_SIZE}")
    if mem == 0 or mem % ps:
        raise ProtocolError(f"memory size {mem} is not a positive multiple of the page size")
    if mem > limits.max_memory_size:
        raise ProtocolError(f"memory size {mem} exceeds this receiver's limit of "
                            f"{limits.max_memory_size} bytes")
    if not 1 <= nv <= limits.max_vcpus:
        raise ProtocolError(f"vCPU count {nv} outside 1..{limits.max_vcpus}")
    if not 0 < ss <= MAX_VCPU_STATE_SIZE or nv * ss > MAX_VCPU_STATE_PAYLOAD - 8:
        raise ProtocolError(f"vCPU state size {ss} outside 1..{MAX_VCPU_STATE_SIZE}")
    if limits.guest_kinds and kind not in limits.guest_kinds:
        raise ProtocolError(f"guest kind {kind!r} not supported here (supported: "
                            f"{', '.join(limits.guest_kinds)})")
    return Layout(mem, ps, nv, ss, kind)


_READY = struct.Struct("<I")


def encode_ready(max_pages_payload: int) -> bytes:
    return _READY.pack(max_pages_payload)


def decode_ready(payload: memoryview | bytes) -> int:
    if len(payload) != _READY.size:
        raise ProtocolError("READY has the wrong length")
    (limit,) = _READY.unpack(payload)
    if not 64 * 1024 <= limit <= HARD_MAX_PAGES_PAYLOAD:
        raise ProtocolError(f"READY announces an unusable frame limit {limit}")
    return int(limit)


# PAGES: u32 nruns | u32 data_pages | runs (u64 first, u32 count, u16 kind, u16 0) | data
PAGES_HEAD = struct.Struct("<II")
RUN_DTYPE = np.dtype([("first", "<u8"), ("count", "<u4"), ("kind", "<u2"), ("pad", "<u2")])
RUN_DATA = 0
RUN_ZERO = 1


@dataclass(frozen=True)
class PageBatch:
    """A validated PAGES payload: runs inside guest memory, data length exact."""

    first: np.ndarray  # int64
    count: np.ndarray  # int64
    kind: np.ndarray  # uint16
    data: memoryview

    @property
    def pages(self) -> int:
        return int(self.count.sum())


def encode_pages_head(runs: np.ndarray, data_pages: int) -> bytes:
    """Header + run table for a PAGES payload (the page data follows as a separate part)."""
    return PAGES_HEAD.pack(len(runs), data_pages) + runs.astype(RUN_DTYPE, copy=False).tobytes()


def decode_pages(payload: memoryview, layout: Layout) -> PageBatch:
    n = len(payload)
    if n < PAGES_HEAD.size:
        raise ProtocolError("PAGES payload too short")
    nruns, data_pages = PAGES_HEAD.unpack_from(payload)
    if nruns == 0:
        raise ProtocolError("PAGES with no runs")
    table_end = PAGES_HEAD.size + nruns * RUN_DTYPE.itemsize
    if table_end > n:
        raise ProtocolError(f"PAGES announces {nruns} runs, more than its length holds")
    if n - table_end != data_pages * layout.page_size:
        raise ProtocolError(f"PAGES data is {n - table_end} bytes, but {data_pages} pages "
                            f"of {layout.page_size} bytes were announced")
    runs = np.frombuffer(payload, dtype=RUN_DTYPE, count=nruns, offset=PAGES_HEAD.size)
    total = layout.page_count
    first_u = runs["first"]
    if (first_u >= total).any():
        raise ProtocolError("PAGES run starts outside guest memory")
    count = runs["count"].astype(np.int64)
    if (count == 0).any():
        raise ProtocolError("PAGES run with zero pages")
    first = first_u.astype(np.int64)
    end = first + count
    if (end > total).any():
        raise ProtocolError("PAGES run extends past the end of guest memory")
    if nruns > 1 and (first[1:] < end[:-1]).any():
        raise ProtocolError("PAGES runs overlap or are not in ascending order")
    kind = runs["kind"]
    if ((kind != RUN_DATA) & (kind != RUN_ZERO)).any() or runs["pad"].any():
        raise ProtocolError("PAGES run with an unknown kind or nonzero padding")
    if int(count[kind == RUN_DATA].sum()) != data_pages:
        raise ProtocolError("PAGES data-run page count does not match the announced total")
    return PageBatch(first, count, kind.copy(), payload[table_end:])


def apply_pages(memory: memoryview, batch: PageBatch, page_size: int,
                touched: np.ndarray | None = None) -> None:
    """Write a validated batch into guest memory (bounds were checked by decode_pages).

    ``touched`` (optional, one bool per page): pages written so far; a zero run over pages
    never written is skipped (fresh guest memory is zero), the others are marked.
    """
    mem_u8 = np.frombuffer(memory, dtype=np.uint8)
    off = 0
    src = np.frombuffer(batch.data, dtype=np.uint8)
    for f, c, k in zip(batch.first.tolist(), batch.count.tolist(), batch.kind.tolist(),
                       strict=True):
        a = f * page_size
        b = a + c * page_size
        if k == RUN_DATA:
            nb = c * page_size
            mem_u8[a:b] = src[off:off + nb]  # numpy copy: about twice a memoryview's speed
            off += nb
            if touched is not None:
                touched[f:f + c] = True
        elif touched is None or touched[f:f + c].any():
            mem_u8[a:b] = 0


_ITER = struct.Struct("<IIQQ")


@dataclass(frozen=True)
class IterationEnd:
    iteration: int
    throttle_percent: int
    dirty_pages: int
    sent_pages: int


def encode_iteration_end(it: IterationEnd) -> bytes:
    return _ITER.pack(it.iteration, it.throttle_percent, it.dirty_pages, it.sent_pages)


def decode_iteration_end(payload: memoryview | bytes) -> IterationEnd:
    if len(payload) != _ITER.size:
        raise ProtocolError("ITERATION_END has the wrong length")
    i, t, d, s = _ITER.unpack(payload)
    if t > 99:
        raise ProtocolError(f"ITERATION_END throttle {t} % is out of range")
    return IterationEnd(i, t, d, s)


_VSTATE = struct.Struct("<II")


def encode_vcpu_state(states: Sequence[bytes]) -> list[bytes]:
    size = len(states[0]) if states else 0
    if any(len(s) != size for s in states):
        raise ValueError("all vCPU states must have the same size")
    return [_VSTATE.pack(len(states), size), *states]


def decode_vcpu_state(payload: memoryview | bytes, layout: Layout) -> list[bytes]:
    if len(payload) < _VSTATE.size:
        raise ProtocolError("VCPU_STATE too short")
    count, size = _VSTATE.unpack_from(payload)
    if count != layout.vcpu_count:
        raise ProtocolError(f"VCPU_STATE carries {count} vCPUs, the layout announced "
                            f"{layout.vcpu_count}")
    if size != layout.vcpu_state_size:
        raise ProtocolError(f"VCPU_STATE entries have {size} bytes, the layout announced "
                            f"{layout.vcpu_state_size}")
    if len(payload) != _VSTATE.size + count * size:
        raise ProtocolError("VCPU_STATE length does not match count x size")
    base = _VSTATE.size
    return [bytes(payload[base + i * size: base + (i + 1) * size]) for i in range(count)]


_DONE = struct.Struct("<QII")


def encode_done(pages_sent: int, iterations: int) -> bytes:
    return _DONE.pack(pages_sent, iterations, 0)


def decode_done(payload: memoryview | bytes) -> tuple[int, int]:
    if len(payload) != _DONE.size:
        raise ProtocolError("DONE has the wrong length")
    pages, iters, reserved = _DONE.unpack(payload)
    if reserved:
        raise ProtocolError("DONE has nonzero reserved bytes")
    return int(pages), int(iters)


def expect_empty(frame: Frame) -> None:
    if len(frame.payload):
        raise ProtocolError(f"{frame.type.name} must be empty, has {len(frame.payload)} bytes")


@dataclass(frozen=True)
class Report:
    """The destination's account after resuming the guest."""

    memory_hash: bytes | None
    counters_at_resume: tuple[int, ...]
    counters_after: tuple[int, ...]
    run_after_ns: int
    prepare_ns: int


_REPORT = struct.Struct("<32sIIQQ")


def encode_report(r: Report) -> bytes:
    n = len(r.counters_at_resume)
    if len(r.counters_after) != n:
        raise ValueError("counter lists differ in length")
    flags = 1 if r.memory_hash is not None else 0
    h = r.memory_hash if r.memory_hash is not None else bytes(32)
    return (_REPORT.pack(h, flags, n, r.run_after_ns, r.prepare_ns)
            + struct.pack(f"<{2 * n}Q", *r.counters_at_resume, *r.counters_after))


def decode_report(payload: memoryview | bytes, layout: Layout) -> Report:
    if len(payload) < _REPORT.size:
        raise ProtocolError("REPORT too short")
    h, flags, n, run_ns, prep_ns = _REPORT.unpack_from(payload)
    if flags not in (0, 1):
        raise ProtocolError("REPORT has unknown flags")
    if n > layout.vcpu_count or len(payload) != _REPORT.size + 16 * n:
        raise ProtocolError("REPORT counter list has the wrong length")
    vals = struct.unpack_from(f"<{2 * n}Q", payload, _REPORT.size)
    return Report(bytes(h) if flags else None, tuple(vals[:n]), tuple(vals[n:]), run_ns,
                  prep_ns)


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
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return int(code), text


# ---------------------------------------------------------------------------------------------
# addresses and sockets


UNIX_PREFIX = "unix:"


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Like :func:`parse_hostport`, plus ``unix:PATH`` -> (``"unix:PATH"``, 0)."""
    if isinstance(text, str) and text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX):]
        if not path or "\0" in path:
            raise ValueError(f"bad Unix socket address {text!r}; expected unix:PATH")
        if len(os.fsencode(path)) > 107:
            raise ValueError(f"Unix socket path too long ({len(path)} bytes, at most 107)")
        return UNIX_PREFIX + path, 0
    return parse_hostport(text, default_host=default_host)


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` -> (host, port); ValueError with a reason."""
    if not isinstance(text, str) or not text:
        raise ValueError("address is empty; expected HOST:PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"bad address {text!r}; expected [IPv6]:PORT")
        host, port_s = text[1:end], text[end + 2:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}; expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad address {text!r}; write IPv6 addresses as [ADDR]:PORT")
    host = host or default_host
    if not port_s.isdigit():
        raise ValueError(f"bad port {port_s!r} in {text!r}; expected 0..65535")
    port = int(port_s)
    if port > 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    if any(ch.isspace() for ch in host):
        raise ValueError(f"bad host {host!r}")
    return host, port


SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def tune_socket(sock: socket.socket, timeout_s: float | None) -> None:
    sock.settimeout(timeout_s)
    if sock.family == socket.AF_UNIX:  # (for TCP: no gain measured, keeps autotuning)
        # the default (~200 KiB) is far below a frame: sender and receiver would take turns
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER_BYTES)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
