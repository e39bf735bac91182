"""Page bookkeeping for the source: dirty bitmaps to page lists, page lists to PAGES frames.

A frame carries up to ``frame_pages`` pages as merged runs of consecutive page numbers.
While the guest can write its memory, page contents are copied (gathered) into a private
buffer first, so the MAC and the bytes sent describe one snapshot; the page's dirty bit was
cleared before the copy, so a concurrent write marks it dirty again and it is resent. Where
nothing can write the pages while the frame is sealed and sent (a paused guest, or a guest
that only writes inside calls the sender makes, see :func:`zero_copy_safe`), the frame is
built *zero-copy*: its data parts are views of guest memory, one per run of data pages,
which the MAC reads and ``sendmsg`` hands to the kernel as they are (one copy fewer).
All-zero pages travel as zero runs without data (as QEMU's zero-page flag).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .messages import PAGES_HEAD, RUN_DATA, RUN_DTYPE, RUN_ZERO, encode_pages_head


def bitmap_to_bool(bitmap: np.ndarray, pages: int) -> np.ndarray:
    """Little-endian dirty bitmap (uint8/uint64 array) -> bool array of ``pages`` entries."""
    raw = np.ascontiguousarray(bitmap).view(np.uint8)
    if raw.size * 8 < pages:
        raise ValueError(f"dirty bitmap covers {raw.size * 8} pages, guest has {pages}")
    return np.unpackbits(raw, count=pages, bitorder="little").view(np.bool_)


def runs_of(idx: np.ndarray, kind: np.ndarray | None = None) -> np.ndarray:
    """Sorted page numbers (+ per-page kind) -> structured run table (RUN_DTYPE)."""
    n = len(idx)
    if n == 0:
        return np.zeros(0, dtype=RUN_DTYPE)
    brk = np.diff(idx) != 1
    if kind is not None:
        brk |= np.diff(kind) != 0
    starts = np.concatenate(([0], np.flatnonzero(brk) + 1))
    counts = np.diff(np.concatenate((starts, [n])))
    runs = np.zeros(len(starts), dtype=RUN_DTYPE)
    runs["first"] = idx[starts]
    runs["count"] = counts
    if kind is not None:
        runs["kind"] = kind[starts]
    return runs


def zero_copy_safe(vm: Any, handed_over: bool) -> bool:
    """True if nothing writes ``vm``'s memory except inside calls the source makes itself:
    its vCPUs were handed over (paused for the switch-over), or the VM says so
    (``memory_written_only_in_calls``: the simulated guest, as long as no throttler calls it
    from its own thread - the source checks that). Frames may then be sent
    straight from guest memory, as long as no VM call runs while one is in flight
    (:class:`~.connections.PageStreams` keeps to that). (Not ``is_paused()``: a throttled
    KVM guest is paused and resumed again by the throttler in the middle of a pass.)"""
    return handed_over or bool(getattr(vm, "memory_written_only_in_calls", False))


@dataclass
class BuiltFrame:
    head: bytes
    parts: tuple[memoryview, ...]
    """The page data in wire order: one private buffer, or views of guest memory (zero-copy)."""
    pages: int
    data_pages: int
    zero_pages: int

    @property
    def data(self) -> bytes | memoryview:
        """The page data as one buffer (joined if the frame was built zero-copy)."""
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class FrameBuilder:
    """Builds PAGES payloads from guest memory: gathered into one reusable buffer, or
    zero-copy (views of guest memory; only while nothing writes it, see the module doc)."""

    def __init__(self, memory: memoryview, page_size: int, frame_pages: int,
                 zero_detection: bool = True, zero_copy: bool = False) -> None:
        if frame_pages < 1:
            raise ValueError("frame_pages must be >= 1")
        self.page_size = page_size
        self.memory = memoryview(memory).cast("B")
        self.mem2d = np.frombuffer(memory, dtype=np.uint8).reshape(-1, page_size)
        self.mem64 = self.mem2d.view(np.uint64)
        self.frame_pages = frame_pages
        self.zero_detection = zero_detection
        self.zero_copy = zero_copy
        self._buf: np.ndarray | None = None  # the gather buffer, made on first use

    @staticmethod
    def frame_pages_for(max_payload: int, page_size: int, want_bytes: int) -> int:
        """Pages per frame so that even one run per page fits ``max_payload``."""
        fit = (max_payload - PAGES_HEAD.size) // (page_size + RUN_DTYPE.itemsize)
        return max(1, min(fit, max(1, want_bytes // page_size)))

    def build(self, idx: np.ndarray) -> BuiltFrame:
        n = len(idx)
        if not 0 < n <= self.frame_pages:
            raise ValueError(f"frame of {n} pages (max {self.frame_pages})")
        if self.zero_detection:
            # on guest memory itself, before copying: zero pages are never copied. A page
            # written after its check was written after the dirty-log sync that cleared it,
            # so it is sent again; the copy below is what the MAC and the wire carry.
            nonzero = self._nonzero(idx)
            k = int(np.count_nonzero(nonzero))
        else:
            nonzero, k = None, n
        if k == n:
            runs = runs_of(idx)
            data_idx = idx
        else:
            assert nonzero is not None
            kind = np.where(nonzero, RUN_DATA, RUN_ZERO).astype(np.uint16)
            runs = runs_of(idx, kind)
            data_idx = idx[nonzero]
        if k == 0:
            return BuiltFrame(encode_pages_head(runs, 0), (), n, 0, n)
        head = encode_pages_head(runs, k)
        if self.zero_copy:
            return BuiltFrame(head, self._views(runs), n, k, n - k)
        if self._buf is None:
            self._buf = np.empty((self.frame_pages, self.page_size), dtype=np.uint8)
        buf = self._buf[:k]
        self._gather(data_idx, buf)
        return BuiltFrame(head, (buf.reshape(-1).data,), n, k, n - k)

    def _views(self, runs: np.ndarray) -> tuple[memoryview, ...]:
        """Views of guest memory, one per run of data pages (no copy)."""
        ps, mem = self.page_size, self.memory
        data = runs[runs["kind"] == RUN_DATA]
        return tuple(mem[f * ps:(f + c) * ps] for f, c in
                     zip(data["first"].tolist(), data["count"].tolist(), strict=True))

    def _gather(self, idx: np.ndarray, out: np.ndarray) -> None:
        runs = runs_of(idx)
        if len(runs) * 8 <= len(idx):  # long runs: one memcpy per run beats a per-page gather
            off = 0
            for f, c in zip(runs["first"].tolist(), runs["count"].tolist(), strict=True):
                out[off:off + c] = self.mem2d[f:f + c]
                off += c
        else:
            np.take(self.mem2d, idx, axis=0, out=out)

    def _nonzero(self, idx: np.ndarray) -> np.ndarray:
        """Per page of ``idx``: has a nonzero byte (screen on the first word, then scan)."""
        words = self.mem64
        nonzero: np.ndarray = words[idx, 0] != 0
        cand = np.flatnonzero(~nonzero)
        if len(cand):
            pages = idx[cand]
            runs = runs_of(pages)
            if len(runs) * 8 <= len(pages):  # long runs: scan views, no copy
                res = np.empty(len(pages), dtype=np.bool_)
                off = 0
                for f, c in zip(runs["first"].tolist(), runs["count"].tolist(), strict=True):
                    res[off:off + c] = words[f:f + c].max(axis=1) != 0
                    off += c
            else:
                res = words[pages].max(axis=1) != 0
            nonzero[cand] = res
        return nonzero
