"""Injected runtime primitives: clock, channels, threads, interruptible waits.

The throttler never touches ``threading``, ``queue`` or ``time`` directly; it receives a
:class:`Runtime`. Two implementations exist:

- :class:`autoconverge.impl.realtime.RealRuntime`: ``threading``, ``queue``, the monotonic
  clock. Used in production and in a few short real-thread tests.
- :class:`autoconverge.impl.virtualtime.VirtualRuntime`: a deterministic, seeded,
  cooperative scheduler with a virtual clock. Unit tests use it, so no unit test sleeps on the
  wall clock, and any failure replays from its seed (or from a recorded list of choices).

All durations are integer nanoseconds.

A runtime may also offer :class:`SupportsRealtime` (``RealRuntime`` does, the virtual one
does not): the throttler then runs its worker, and the caller of a blocking call for the
call's duration, at a realtime priority where the host permits it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeVar, runtime_checkable

from .errors import AutoconvergeError

T = TypeVar("T")


class ChannelTimeout(AutoconvergeError):
    """``Channel.get`` found nothing before its timeout (or ``get_nowait`` found it empty)."""


class JoinTimeout(AutoconvergeError, RuntimeError):
    """A thread did not exit within the join bound; carries the thread's name."""

    def __init__(self, name: str, timeout_ns: int) -> None:
        super().__init__(f"thread {name!r} did not exit within {timeout_ns / 1e6:.1f} ms")
        self.thread_name = name
        self.timeout_ns = timeout_ns


class Channel(Protocol, Generic[T]):
    """Unbounded FIFO between threads."""

    def put(self, item: T) -> None: ...

    def get(self, timeout_ns: int | None = None) -> T:
        """Block until an item arrives (``None``: forever); raise ChannelTimeout after timeout."""
        ...

    def get_nowait(self) -> T:
        """Return the head at once or raise ChannelTimeout if empty."""
        ...

    def empty(self) -> bool: ...


class Thread(Protocol):
    @property
    def name(self) -> str: ...

    def join(self, timeout_ns: int | None = None) -> bool:
        """Wait for exit; True if the thread has exited."""
        ...

    def is_alive(self) -> bool: ...


class Runtime(Protocol):
    def now_ns(self) -> int:
        """Monotonic clock."""
        ...

    def channel(self) -> Channel[T]: ...

    def spawn(self, name: str, target: Callable[[], None]) -> Thread: ...

    def sleep_ns(self, duration_ns: int) -> None:
        """Uninterruptible sleep (fakes use it to model the cost of pause/resume)."""
        ...


@runtime_checkable
class SupportsRealtime(Protocol):
    """Optional: run the calling thread at a realtime priority for the duration of a block."""

    def realtime(self, enabled: bool, *, restore: bool = True,
                 defer_restore_s: float | None = None) -> AbstractContextManager[bool]:
        """Inside the block the calling thread runs realtime where permitted (the context
        value says whether it does); nothing changes when ``enabled`` is False or when not
        permitted. Never raises for lack of permission. ``restore=False``: the thread keeps
        the realtime policy after the block (for a thread that ends with it).
        ``defer_restore_s``: the previous policy comes back that long after the block, from
        another thread (so lowering it cannot delay the block's end)."""
        ...
