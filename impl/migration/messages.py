"""The migration wire protocol's payloads: encoders and strict decoders, one per message.

One job: the bytes inside a frame. LAYOUT, READY, PAGES, ITERATION_END, VCPU_STATE, DONE,
REPORT, JOIN and PASS_END each have an encoder and a decoder (the ERROR payload belongs to
:mod:`.framing`, whose channel sends and reads it). Every decoder validates every field
(lengths exact, page numbers inside guest memory, runs sorted and disjoint, vCPU count and
state size as announced) and raises :class:`ProtocolError` otherwise. Nothing reaches guest
memory before all of that passed: :func:`apply_pages` is only ever given a
:class:`PageBatch` that :func:`decode_pages` produced for the same layout.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import ProtocolError
from .framing import HARD_MAX_PAGES_PAYLOAD, MAX_VCPU_STATE_PAYLOAD, Frame

MAX_VCPUS = 256
MAX_VCPU_STATE_SIZE = 16 * 1024
MAX_GUEST_KIND = 64
MIN_PAGE_SIZE = 4096
MAX_PAGE_SIZE = 2 * 1024 * 1024


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


MAX_CONNECTIONS = 128
"""Connections of one migration at most (as Cloud Hypervisor's 1..128)."""
JOIN_TOKEN_SIZE = 32
_JOIN = struct.Struct(f"<{JOIN_TOKEN_SIZE}sHH")


@dataclass(frozen=True)
class Join:
    """A data connection's JOIN: the session it belongs to, its index, the connection count."""

    token: bytes
    index: int
    connections: int


def encode_join(j: Join) -> bytes:
    return _JOIN.pack(j.token, j.index, j.connections)


def decode_join(payload: memoryview | bytes) -> Join:
    if len(payload) != _JOIN.size:
        raise ProtocolError("JOIN has the wrong length")
    token, index, n = _JOIN.unpack(payload)
    if not 2 <= n <= MAX_CONNECTIONS or not 1 <= index < n:
        raise ProtocolError(f"JOIN names data connection {index} of {n} (expected 1..n-1 of "
                            f"2..{MAX_CONNECTIONS})")
    return Join(bytes(token), int(index), int(n))


_PASS_END = struct.Struct("<IB3x")


def encode_pass_end(number: int, final: bool) -> bytes:
    return _PASS_END.pack(number, 1 if final else 0)


def decode_pass_end(payload: memoryview | bytes) -> tuple[int, bool]:
    """(pass number, final): the connection sent every frame of that pass it carries."""
    if len(payload) != _PASS_END.size:
        raise ProtocolError("PASS_END has the wrong length")
    number, final = _PASS_END.unpack(payload)
    if final not in (0, 1) or bytes(payload[5:]) != bytes(3):
        raise ProtocolError("PASS_END has unknown flags or nonzero padding")
    return int(number), bool(final)


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
