"""The message authentication codes of the migration wire protocol: HMAC-SHA256 and AES-GMAC.

One job: compute and check the tag of one frame (header and payload) under one key.
:class:`HmacSha256` tags the handshake frames, and every frame of a session whose client
asked for HMAC-SHA256 throughout; :class:`Gmac` (AES-256-GMAC) tags the session frames
otherwise.

GMAC (``cryptography``/OpenSSL with AES-NI and carry-less multiply) authenticates ~25 GB/s
on one core here, HMAC-SHA256 ~2 GB/s: with GMAC the MAC no longer bounds the page rate.
A GMAC nonce must never repeat under one key: session keys are fresh per connection and
direction (both nonces go into them, see :mod:`.handshake`) and the sequence number, which
is the nonce, never repeats within a session; the handshake frames, whose key is derived
from the PSK alone, use HMAC.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from .errors import TransportError

TAG_SIZE = 32  # HMAC-SHA256
GMAC_TAG_SIZE = 16
MAC_NAMES = ("gmac", "hmac")
"""The session MACs a client may ask for (``gmac``: AES-256-GMAC; ``hmac``: HMAC-SHA256)."""

Buffer = bytes | bytearray | memoryview


class HmacSha256:
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


class Gmac(HmacSha256):
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
