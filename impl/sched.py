"""Thread scheduling policies: read a thread's policy, switch it to or from realtime.

One job, one place: the production runtime's threads and the KVM vCPU threads leave a
realtime policy (SCHED_FIFO/SCHED_RR, inherited from the thread that created them) through
:func:`reset_to_sched_other`; the vCPU threads also switch to and from SCHED_IDLE with
:func:`set_policy`; benchmarks and ``throttle --rt`` run a block at SCHED_FIFO with
:func:`realtime_priority`. A switch that is not permitted (or not available) returns False
and changes nothing; it never raises (except :func:`realtime_priority`, which was asked to).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

RT_POLICIES: Final = frozenset(
    p for p in (getattr(os, "SCHED_FIFO", None), getattr(os, "SCHED_RR", None)) if p is not None
)
"""The realtime policies a thread inherits from its creator on Linux."""
SCHED_IDLE: Final = getattr(os, "SCHED_IDLE", 5)


def current_policy() -> int | None:
    """The calling thread's scheduling policy, or None where it cannot be read."""
    try:
        return os.sched_getscheduler(0)
    except (AttributeError, OSError):
        return None


def set_policy(tid: int, policy: int) -> bool:
    """Set thread ``tid``'s (0: the caller's) policy, priority 0; False if not permitted."""
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(0))
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
