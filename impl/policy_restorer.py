"""Put a boosted thread back to its own scheduling policy shortly after its call returned.

One job: a thread that ran a blocking throttler call at SCHED_FIFO (:func:`.sched.realtime_boost`)
must get its previous policy back, but not from inside the call. Measured on this PREEMPT_NONE
kernel (``bench-kvm``, 2 vCPUs in guest code on 2 cores, quiet host): a caller that lowers its
own policy as the call's last act is preempted right there by the runnable vCPU threads and
waits for the next scheduler tick, which put abort's and shutdown's p99 at 5.4-5.6 ms against
0.7 ms when the policy is lowered after the call returned. So the call *schedules* the
restore, and :class:`PolicyRestorer`'s own thread performs it ``delay_s`` later with
``sched_setscheduler(tid, ...)`` (Linux lets one thread set another's policy).

What it guarantees: every scheduled restore is performed once, ``delay_s`` after it was
scheduled (later if the host is busy), unless the same thread enters a boosted block again
first - then the pending restore is taken back by :meth:`PolicyRestorer.take` (the thread is
still boosted, and the block restores the *original* policy when it ends). A thread that has
exited meanwhile is skipped. What it does not: the boosted thread runs its own code at
SCHED_FIFO for up to ``delay_s`` after the call returned (an embedding VMM that cannot accept
that passes ``Throttler(realtime=False)``); and a thread id reused by a new thread within
``delay_s`` would get the old thread's policy (Linux recycles ids slowly).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_DELAY_S = 0.001
"""How long after a boosted call returned its thread gets its own policy back."""


@dataclass(frozen=True)
class Pending:
    """A restore to perform: thread ``tid`` back to ``policy``/``priority`` at ``due``."""

    tid: int
    policy: int
    priority: int
    due: float


class PolicyRestorer:
    """Restores thread policies from a daemon thread of its own (started on first use)."""

    def __init__(self, now: Callable[[], float] = time.monotonic,
                 apply: Callable[[int, int, int], None] | None = None) -> None:
        self._now = now
        self._apply = apply or _set_policy
        self._cond = threading.Condition()
        self._pending: dict[int, Pending] = {}
        self._thread: threading.Thread | None = None

    def schedule(self, tid: int, policy: int, priority: int,
                 delay_s: float = DEFAULT_DELAY_S) -> None:
        """Restore thread ``tid`` to ``policy``/``priority`` in ``delay_s``."""
        with self._cond:
            self._pending[tid] = Pending(tid, policy, priority, self._now() + delay_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="policy-restorer",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def take(self, tid: int) -> Pending | None:
        """Take back thread ``tid``'s pending restore (it enters a boosted block again)."""
        with self._cond:
            return self._pending.pop(tid, None)

    def pending(self) -> list[Pending]:
        with self._cond:
            return list(self._pending.values())

    def flush(self) -> None:
        """Perform every pending restore now (tests; interpreter shutdown)."""
        with self._cond:
            due = list(self._pending.values())
            self._pending.clear()
        for p in due:
            self._restore(p)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                now = self._now()
                first = min(self._pending.values(), key=lambda p: p.due)
                if first.due > now:
                    self._cond.wait(first.due - now)
                    continue
                del self._pending[first.tid]
                # under the lock: once flush() or take() returns, no restore is in flight
                self._restore(first)

    def _restore(self, p: Pending) -> None:
        try:
            self._apply(p.tid, p.policy, p.priority)
        except (OSError, AttributeError):
            pass  # the thread exited, or the host took the permission away: nothing to undo


def _set_policy(tid: int, policy: int, priority: int) -> None:
    os.sched_setscheduler(tid, policy, os.sched_param(priority))


RESTORER = PolicyRestorer()
"""The process's restorer (one thread for every throttler's callers)."""
