"""Hypothesis fuzzing of the receiver: arbitrary, mutated and hostile-but-authenticated streams.

Whatever arrives, the receiver must end with a result (completed, or failed with a
MigrationError subclass naming the problem), never crash, never write outside guest memory
(an out-of-range write would surface as ValueError/IndexError, caught and typed here), and
discard its VM unless the guest was started.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from autoconverge.impl.migration import errors, framing, messages
from autoconverge.impl.migration.errors import MigrationError, ProtocolError
from autoconverge.impl.migration.framing import MsgType
from autoconverge.impl.migration.scripted import (
    LAYOUT,
    PAGES,
    PS,
    client_frames,
    run_destination,
    valid_migration_frames,
)

PEER_ERRORS = {c.__name__ for c in vars(errors).values()
               if isinstance(c, type) and issubclass(c, MigrationError) and c is not MigrationError}
"""Every documented error a peer can cause: the MigrationError subclasses (not the base)."""
VALID_FRAMES, VALID_MEMORY = valid_migration_frames()
VALID_STREAM = client_frames(VALID_FRAMES)


def _check(stream: bytes, chunk: int = 1 << 30) -> None:
    res, err, created, _ = run_destination(stream, chunk=chunk)
    if res is None:  # failed during the handshake: nothing created
        assert isinstance(err, MigrationError)
        assert created == []
        return
    if res.status == "completed":
        assert len(created) == 1 and created[0].started
        return
    assert res.error_type in PEER_ERRORS, (res.error_type, res.error)
    assert res.error
    for vm in created:
        assert vm.closed and not vm.started


@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _check(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_header_prefix(data: bytes) -> None:
    _check(framing.MAGIC + bytes([framing.VERSION]) + data)


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    s = bytearray(VALID_STREAM)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(s) - 1, 0)))
        if op == "flip" and s:
            s[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and s:
            s[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del s[pos:pos + draw(st.integers(1, 64))]
        elif op == "insert":
            s[pos:pos] = draw(st.binary(min_size=1, max_size=32))
        elif op == "truncate":
            del s[pos:]
        elif op == "dup":
            n = draw(st.integers(1, 128))
            s[pos:pos] = s[pos:pos + n]
    return bytes(s)


@given(mutations(), st.sampled_from([1 << 30, 7, 1]))
def test_mutated_valid_stream(stream: bytes, chunk: int) -> None:
    _check(stream, chunk)


def test_unmutated_stream_completes_with_exact_memory() -> None:
    res, err, created, _ = run_destination(VALID_STREAM, chunk=5)
    assert err is None and res is not None and res.status == "completed", res
    assert bytes(created[0].memory()) == VALID_MEMORY


# ----------------------------------------------- authenticated peer sending hostile payloads
U64 = st.integers(0, 2 ** 64 - 1)
U32 = st.integers(0, 2 ** 32 - 1)


@st.composite
def hostile_pages(draw: st.DrawFn) -> bytes:
    """PAGES payloads: often self-consistent (so they reach the bounds checks), often not."""
    n = draw(st.integers(0, 5))
    runs = np.zeros(n, dtype=messages.RUN_DTYPE)
    structured = draw(st.booleans())  # ascending, mostly in range: reaches the later checks
    nxt = draw(st.integers(0, PAGES))
    for i in range(n):
        if structured:
            first = nxt + draw(st.integers(0, 3))
            count = draw(st.integers(0, 12))
        else:
            first = draw(st.one_of(st.integers(0, PAGES + 2), U64))
            count = draw(st.one_of(st.integers(0, 4), U32))
        nxt = first + count
        kind = draw(st.sampled_from([0, 0, 1, 2] if not structured else [0, 0, 0, 1, 1]))
        pad = 0 if structured else draw(st.sampled_from([0, 0, 0, 1]))
        runs[i] = (first, count, kind, pad)
    ndata = int(sum(int(r["count"]) for r in runs if r["kind"] == 0))
    consistent = ndata <= 64 and draw(st.booleans())
    declared = ndata if consistent else draw(st.one_of(st.integers(0, 16), U32))
    data_pages = ndata if consistent else draw(st.integers(0, 10))
    nruns = n if draw(st.integers(0, 4)) else draw(st.sampled_from([n + 1, 2 ** 32 - 1]))
    head = messages.PAGES_HEAD.pack(nruns, declared)
    return bytes(head + runs.tobytes() + bytes(data_pages * PS))


@st.composite
def hostile_frame(draw: st.DrawFn) -> tuple[MsgType, bytes]:
    t = draw(st.sampled_from(list(MsgType)))
    if t is MsgType.PAGES:
        return t, draw(hostile_pages())
    return t, draw(st.binary(max_size=80))


@given(st.lists(hostile_frame(), max_size=6), st.booleans())
def test_authenticated_hostile_frames(frames: list[tuple[MsgType, bytes]],
                                      with_layout: bool) -> None:
    prefix = [(MsgType.LAYOUT, messages.encode_layout(LAYOUT))] if with_layout else []
    _check(client_frames(prefix + frames))


@given(hostile_pages())
def test_decode_pages_accepts_only_in_bounds_batches(payload: bytes) -> None:
    try:
        batch = messages.decode_pages(memoryview(payload), LAYOUT)
    except ProtocolError:
        return
    end = batch.first + batch.count
    assert (batch.first >= 0).all() and (end <= PAGES).all()
    mem = bytearray(PAGES * PS)
    messages.apply_pages(memoryview(mem), batch, PS)
    assert len(mem) == PAGES * PS
