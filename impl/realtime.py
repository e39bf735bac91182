"""The production runtime: real threads, ``queue.SimpleQueue`` channels, the monotonic clock.

:class:`RealRuntime` implements :class:`autoconverge.impl.runtime.Runtime`. Blocking calls
block in the kernel (a lock wait with a timeout), never by polling. Spawned threads are
daemon threads, so a handle its owner forgot to shut down cannot block interpreter exit;
owners still join them (the throttler's shutdown() does). A thread created by a
SCHED_FIFO/SCHED_RR (realtime) thread inherits that policy on Linux; with
``sched_other=True`` (the default) the spawned thread resets itself to SCHED_OTHER before
running its target, so a busy helper thread can never starve the system. Errors of that
reset (no permission, no such call) are ignored. :meth:`RealRuntime.realtime` is the opposite,
on purpose and for a block only: SCHED_FIFO where permitted (the throttle worker, a caller
blocked in abort/shutdown/handover; see :func:`autoconverge.impl.sched.realtime_boost`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from .runtime import ChannelTimeout
from .sched import RT_POLICIES, current_policy, realtime_boost, reset_to_sched_other

T = TypeVar("T")

def _to_seconds(timeout_ns: int) -> float:
    return min(max(timeout_ns, 0) / 1e9, threading.TIMEOUT_MAX)


class RealChannel(Generic[T]):
    """Unbounded FIFO on ``queue.SimpleQueue``; ``get`` waits on a lock (no polling)."""

    __slots__ = ("_q",)

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[T] = queue.SimpleQueue()

    def put(self, item: T) -> None:
        self._q.put(item)

    def get(self, timeout_ns: int | None = None) -> T:
        try:
            if timeout_ns is None:
                return self._q.get()
            if timeout_ns <= 0:
                return self._q.get(block=False)
            return self._q.get(timeout=_to_seconds(timeout_ns))
        except queue.Empty:
            raise ChannelTimeout(f"nothing received within {timeout_ns} ns") from None

    def get_nowait(self) -> T:
        try:
            return self._q.get(block=False)
        except queue.Empty:
            raise ChannelTimeout("channel empty") from None

    def empty(self) -> bool:
        return self._q.empty()


class RealThread:
    """A started ``threading.Thread``; an exception that ends it is kept in ``error``."""

    def __init__(self, name: str, target: Callable[[], object], *, sched_other: bool) -> None:
        self.error: BaseException | None = None
        self.reset_policy: bool | None = None
        """Whether the thread reset itself to SCHED_OTHER (None: no reset was needed)."""
        self._target = target
        self._reset = sched_other and current_policy() in RT_POLICIES
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self._reset:
            self.reset_policy = reset_to_sched_other()
        try:
            self._target()
        except BaseException as exc:
            self.error = exc
            raise  # still reported by threading.excepthook

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def ident(self) -> int | None:
        return self._thread.ident

    def join(self, timeout_ns: int | None = None) -> bool:
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"thread {self.name!r} cannot join itself")
        self._thread.join(None if timeout_ns is None else _to_seconds(timeout_ns))
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def __repr__(self) -> str:
        return f"<RealThread {self.name!r} alive={self.is_alive()}>"


class RealRuntime:
    """:class:`~autoconverge.impl.runtime.Runtime` on real threads and the monotonic clock."""

    def __init__(self, *, sched_other: bool = True) -> None:
        self.sched_other = sched_other

    def now_ns(self) -> int:
        return time.monotonic_ns()

    def channel(self) -> RealChannel[T]:
        return RealChannel()

    def spawn(
        self, name: str, target: Callable[[], object], *, sched_other: bool | None = None
    ) -> RealThread:
        """Start ``target`` on a new thread (``sched_other`` overrides the runtime's flag)."""
        return RealThread(
            name, target, sched_other=self.sched_other if sched_other is None else sched_other
        )

    def sleep_ns(self, duration_ns: int) -> None:
        if duration_ns > 0:
            time.sleep(duration_ns / 1e9)

    def realtime(self, enabled: bool, *, restore: bool = True,
                 defer_restore_s: float | None = None) -> AbstractContextManager[bool]:
        """The calling thread at SCHED_FIFO inside the block where permitted (see
        :class:`~autoconverge.impl.runtime.SupportsRealtime`)."""
        return realtime_boost(enabled, restore=restore, defer_restore_s=defer_restore_s)
