"""Scripted peers for tests and fuzzing: in-memory byte streams, a valid client byte stream.

:func:`client_frames` produces exactly what an authenticated source sends (fixed nonces, so
a server using :func:`fixed` nonces accepts it); :func:`run_destination` runs the receiver's
handshake and destination over such bytes with a fake VM. The fuzz tests mutate these
streams.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from . import handshake, messages
from .destination import DestinationResult, MigrationDestination
from .errors import MigrationError
from .fakes import STATE_SIZE, FakeClock, FakeVm, fake_vm_factory
from .framing import FrameChannel, MsgType

KEY = b"unit-test-pre-shared-key-0123456"
CLIENT_NONCE = b"C" * 32
SERVER_NONCE = b"S" * 32
PAGES = 64
PS = 4096
LAYOUT = messages.Layout(PAGES * PS, PS, 1, STATE_SIZE, "fake")


class MemStream:
    """A ByteStream reading from fixed bytes and recording what is sent."""

    def __init__(self, data: bytes = b"", chunk: int = 1 << 30) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.chunk = chunk
        self.out = bytearray()

    def recv_into(self, buf: memoryview, nbytes: int = 0, /) -> int:
        n = min(nbytes or len(buf), self.chunk)
        piece = self.data[self.pos:self.pos + n]
        buf[:len(piece)] = piece
        self.pos += len(piece)
        return len(piece)

    def sendall(self, data: bytes | bytearray | memoryview, /) -> None:
        self.out += data


def fixed(byte: bytes) -> Callable[[int], bytes]:
    """A deterministic "random" source (tests only)."""
    return lambda n: byte * n


def client_frames(frames: list[tuple[MsgType, bytes]], key: bytes = KEY) -> bytes:
    """What an authenticated client sends: HELLO, AUTH, then ``frames`` (fixed nonces)."""
    rec = MemStream()
    hk = handshake.hello_key(key)
    channel = FrameChannel(rec, hk, hk)
    channel.send(MsgType.HELLO, handshake.HELLO.pack(CLIENT_NONCE, 0))
    c2s, _ = handshake.session_keys(key, CLIENT_NONCE, SERVER_NONCE)
    channel.send_key = c2s
    channel.send(MsgType.AUTH, handshake.client_proof(key, CLIENT_NONCE, SERVER_NONCE))
    channel.use_gmac(*handshake.gmac_keys(key, CLIENT_NONCE, SERVER_NONCE))
    for t, payload in frames:
        channel.send(t, payload)
    return bytes(rec.out)


def pages_payload(runs: list[tuple[int, int, int]], data: bytes) -> bytes:
    table = np.zeros(len(runs), dtype=messages.RUN_DTYPE)
    for i, (f, c, k) in enumerate(runs):
        table[i] = (f, c, k, 0)
    ndata = sum(c for _, c, k in runs if k == messages.RUN_DATA)
    return messages.encode_pages_head(table, ndata) + data


def valid_migration_frames(seed: int = 1) -> tuple[list[tuple[MsgType, bytes]], bytes]:
    """A complete, valid migration of a 64-page guest; returns frames and final memory."""
    rng = np.random.default_rng(seed)
    mem = bytearray(PAGES * PS)
    frames: list[tuple[MsgType, bytes]] = [(MsgType.LAYOUT, messages.encode_layout(LAYOUT))]
    runs = [(0, 4, messages.RUN_DATA), (4, 4, messages.RUN_ZERO), (10, 3, messages.RUN_DATA)]
    data = rng.bytes(7 * PS)
    mem[0:4 * PS] = data[:4 * PS]
    mem[10 * PS:13 * PS] = data[4 * PS:]
    frames.append((MsgType.PAGES, pages_payload(runs, data)))
    frames.append((MsgType.ITERATION_END, messages.encode_iteration_end(
        messages.IterationEnd(0, 0, 1, 11))))
    d2 = rng.bytes(PS)
    mem[11 * PS:12 * PS] = d2
    frames.append((MsgType.PAGES, pages_payload([(11, 1, messages.RUN_DATA)], d2)))
    state = struct.pack("<4sIQQ", b"FVCP", 0, 3, 77).ljust(STATE_SIZE, b"\0")
    frames.append((MsgType.VCPU_STATE, b"".join(messages.encode_vcpu_state([state]))))
    frames.append((MsgType.DONE, messages.encode_done(12, 1)))
    frames.append((MsgType.COMMIT, b""))
    return frames, bytes(mem)


def run_destination(stream_bytes: bytes, key: bytes = KEY, chunk: int = 1 << 30,
                    ) -> tuple[DestinationResult | None, BaseException | None, list[FakeVm],
                               MemStream]:
    """Handshake + destination over an in-memory stream; returns (result, handshake error)."""
    stream = MemStream(stream_bytes, chunk)
    created: list[FakeVm] = []
    clock = FakeClock()
    try:
        channel = handshake.server_handshake(stream, key, rng=fixed(b"S"))
    except MigrationError as exc:
        return None, exc, created, stream
    dest = MigrationDestination(channel, fake_vm_factory(clock, 0.0, None, created),
                                messages.Limits(max_memory_size=1 << 20, max_vcpus=4,
                                            guest_kinds=("fake",)),
                                clock=clock, run_after_s=0.0)
    return dest.run(), None, created, stream
