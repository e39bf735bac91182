"""Thread scheduling policies: read a thread's policy, switch it to or from realtime.

One job, one place: the production runtime's threads and the KVM vCPU threads leave a
realtime policy (SCHED_FIFO/SCHED_RR, inherited from the thread that created them) through
:func:`reset_to_sched_other`; the vCPU threads also switch to and from SCHED_IDLE with
:func:`set_policy`; benchmarks and ``throttle --rt`` run a block at SCHED_FIFO with
:func:`realtime_priority`; the throttle worker and the caller of a blocking throttler call
go SCHED_FIFO where permitted through :func:`realtime_boost` (the throttler reaches it through
the runtime). A switch that is not permitted (or not available) returns False and changes
nothing; it never raises (except :func:`realtime_priority`, which was asked to).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from .policy_restorer import RESTORER

BOOST_PRIORITY: Final = 1
"""The SCHED_FIFO priority of a boosted thread: the lowest realtime one, above every normal
(SCHED_OTHER/BATCH/IDLE) thread, below any realtime thread the host already runs."""

RT_POLICIES: Final = frozenset(
    p for p in (getattr(os, "SCHED_FIFO", None), getattr(os, "SCHED_RR", None)) if p is not None
)
"""The realtime policies a thread inherits from its creator on Linux."""
SCHED_IDLE: Final = getattr(os, "SCHED_IDLE", 5)
RESET_ON_FORK: Final = getattr(os, "SCHED_RESET_ON_FORK", 0)
"""Policy flag: threads and processes the boosted thread creates start at SCHED_OTHER instead
of inheriting its realtime policy (a caller boosted by :func:`realtime_boost` keeps the boost
for a moment after its call, and must not pass it on to a thread it starts then)."""


def current_policy() -> int | None:
    """The calling thread's scheduling policy, or None where it cannot be read."""
    return policy_of(0)


def policy_of(tid: int) -> int | None:
    """Thread ``tid``'s (0: the caller's) scheduling policy without the
    :data:`RESET_ON_FORK` flag, or None where it cannot be read."""
    try:
        return os.sched_getscheduler(tid) & ~RESET_ON_FORK
    except (AttributeError, OSError):
        return None


def set_policy(tid: int, policy: int) -> bool:
    """Set thread ``tid``'s (0: the caller's) policy, priority 0; False if not permitted."""
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


def set_realtime(tid: int = 0) -> bool:
    """Switch thread ``tid`` (0: the caller) to SCHED_FIFO at :data:`BOOST_PRIORITY`; True if
    it worked (False, nothing changed, where not permitted)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(BOOST_PRIORITY))
    except (OSError, AttributeError):
        return False
    return True


def reset_to_sched_other(tid: int = 0) -> bool:
    """Switch thread ``tid`` (0: the caller) to SCHED_OTHER; True if it worked."""
    return set_policy(tid, os.SCHED_OTHER)


def realtime_permitted() -> bool:
    """Whether the caller may switch to SCHED_FIFO (needs CAP_SYS_NICE); changes nothing."""
    try:
        param = os.sched_getparam(0)
        policy = os.sched_getscheduler(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, policy, param)
    except (OSError, AttributeError):
        return False
    return True


@contextmanager
def realtime_priority(enabled: bool) -> Iterator[None]:
    """Run the calling thread SCHED_FIFO (priority 1) inside the block, if ``enabled``.

    Raises PermissionError where SCHED_FIFO is not permitted (check
    :func:`realtime_permitted` first for a clean message).
    """
    if not enabled:
        yield
        return
    old = os.sched_getscheduler(0)
    old_param = os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    try:
        yield
    finally:
        os.sched_setscheduler(0, old, old_param)


@contextmanager
def realtime_boost(enabled: bool = True, *, restore: bool = True,
                   defer_restore_s: float | None = None) -> Iterator[bool]:
    """Run the calling thread SCHED_FIFO inside the block where permitted; yield whether it
    runs realtime there. Never raises: without permission (no CAP_SYS_NICE, RLIMIT_RTPRIO 0)
    it yields False and changes nothing. A thread already realtime stays as it is (True); the
    previous policy and priority come back on exit.

    Why: on a kernel without wake-up preemption of normal threads (PREEMPT_NONE, lazy
    preemption) a woken SCHED_OTHER thread can wait for the next tick (4 ms at HZ=250) behind
    a thread running guest code; a realtime thread is switched to at once. ``restore=False``
    keeps the realtime policy after the block: for a thread that ends there (lowering it first
    would let busy normal threads delay its end by a tick). ``defer_restore_s``: the previous
    policy comes back that long after the block ended, from another thread
    (:mod:`.policy_restorer`), so lowering it cannot delay the block's end either; a block the
    same thread enters before then takes the pending restore back and ends with it.
    """
    if not enabled:
        yield False
        return
    tid = threading.get_native_id()
    pending = RESTORER.take(tid)
    if pending is not None:  # still boosted by an earlier block whose restore was deferred
        old, old_priority = pending.policy, pending.priority
    else:
        try:
            old = os.sched_getscheduler(0)
            old_priority = os.sched_getparam(0).sched_priority
        except (OSError, AttributeError):
            yield False
            return
        old &= ~RESET_ON_FORK
        if old in RT_POLICIES:
            yield True
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO | RESET_ON_FORK,
                                  os.sched_param(BOOST_PRIORITY))
        except (OSError, AttributeError):
            yield False
            return
    try:
        yield True
    finally:
        if restore and defer_restore_s is not None:
            RESTORER.schedule(tid, old, old_priority, defer_restore_s)
        elif restore:
            try:
                os.sched_setscheduler(0, old, os.sched_param(old_priority))
            except OSError:
                reset_to_sched_other()
