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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable

from .errors import AuthenticationError, PeerError, ProtocolError
from .framing import (
    DEFAULT_MAX_PAGES_PAYLOAD,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_CONTROL_PAYLOAD,
    VERSION,
    ByteStream,
    ErrorCode,
    FrameChannel,
    MsgType,
    decode_error,
)
from .macs import MAC_NAMES, TAG_SIZE

NONCE_SIZE = 32
MIN_KEY_BYTES = 16
HELLO_FLAG_HMAC = 1
"""HELLO flag: keep HMAC-SHA256 for the whole session (slower; the benchmark's baseline)."""

HELLO = struct.Struct(f"<{NONCE_SIZE}sI")
"""HELLO payload: client nonce, flags."""
CHALLENGE = struct.Struct(f"<{NONCE_SIZE}s32s")
"""CHALLENGE payload: server nonce, server proof."""


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


def client_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD,
                     mac: str = "gmac") -> FrameChannel:
    """Authenticate to the receiver; returns the channel with session keys installed.

    ``mac``: ``gmac`` (default) or ``hmac`` (HMAC-SHA256 for the whole session).
    """
    check_key(psk)
    if mac not in MAC_NAMES:
        raise ValueError(f"mac must be one of {', '.join(MAC_NAMES)}, got {mac!r}")
    hk = hello_key(psk)
    channel = FrameChannel(stream, hk, hk, max_pages_payload)
    cn = rng(NONCE_SIZE)
    channel.send(MsgType.HELLO, HELLO.pack(cn, HELLO_FLAG_HMAC if mac == "hmac" else 0))
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


def server_handshake(stream: ByteStream, psk: bytes,
                     rng: Callable[[int], bytes] = os.urandom,
                     max_pages_payload: int = DEFAULT_MAX_PAGES_PAYLOAD) -> FrameChannel:
    """Authenticate the connecting peer; raises AuthenticationError if it lacks the key."""
    check_key(psk)
    hk = hello_key(psk)
    channel = FrameChannel(stream, hk, hk, max_pages_payload)
    try:
        frame = channel.recv()
    except AuthenticationError as exc:
        channel.send_error(ErrorCode.AUTHENTICATION, "authentication failed: wrong key")
        raise AuthenticationError(
            "rejected an unauthenticated peer: its HELLO does not carry a valid MAC for our "
            "key") from exc
    if frame.type is not MsgType.HELLO:
        channel.send_error(ErrorCode.PROTOCOL, "expected HELLO")
        raise ProtocolError(f"expected HELLO from the peer, got {frame.type.name}")
    if len(frame.payload) != HELLO.size:
        raise ProtocolError(f"HELLO has {len(frame.payload)} bytes, expected {HELLO.size}")
    cn, hello_flags = HELLO.unpack(frame.payload)
    if hello_flags & ~HELLO_FLAG_HMAC:
        raise ProtocolError("HELLO has unknown flags set")
    sn = rng(NONCE_SIZE)
    c2s, s2c = session_keys(psk, cn, sn)
    channel.send_key = s2c
    channel.send(MsgType.CHALLENGE, CHALLENGE.pack(sn, server_proof(psk, cn, sn)))
    channel.recv_key = c2s
    try:
        auth = channel.recv()
    except AuthenticationError as exc:
        raise AuthenticationError("rejected the peer: its AUTH message failed authentication "
                                  "(replayed session or wrong key)") from exc
    if auth.type is not MsgType.AUTH or len(auth.payload) != 32:
        raise ProtocolError(f"expected AUTH from the peer, got {auth.type.name}")
    if not hmac.compare_digest(bytes(auth.payload), client_proof(psk, cn, sn)):
        raise AuthenticationError("rejected the peer: wrong proof of key")
    if not hello_flags & HELLO_FLAG_HMAC:
        g_c2s, g_s2c = gmac_keys(psk, cn, sn)
        channel.use_gmac(g_s2c, g_c2s)
    return channel
