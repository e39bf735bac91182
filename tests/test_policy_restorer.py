"""The deferred policy restore of a boosted caller (impl/policy_restorer.py)."""

from __future__ import annotations

import os
import threading

import pytest

from autoconverge.impl.policy_restorer import RESTORER, PolicyRestorer
from autoconverge.impl.sched import policy_of, realtime_boost, realtime_permitted


def test_a_scheduled_restore_is_performed_once_and_a_taken_one_never() -> None:
    now = [0.0]
    applied: list[tuple[int, int, int]] = []
    r = PolicyRestorer(now=lambda: now[0], apply=lambda *a: applied.append(a))
    r.schedule(11, 0, 0, delay_s=0.001)
    r.schedule(12, 3, 0, delay_s=0.001)
    taken = r.take(12)
    assert taken is not None and (taken.tid, taken.policy) == (12, 3)
    assert r.take(12) is None
    r.flush()
    assert applied == [(11, 0, 0)]
    r.flush()
    assert applied == [(11, 0, 0)]  # once
    assert r.pending() == []


def test_a_restore_of_an_exited_thread_is_skipped() -> None:
    def gone(tid: int, policy: int, priority: int) -> None:
        raise ProcessLookupError(tid)

    r = PolicyRestorer(now=lambda: 0.0, apply=gone)
    r.schedule(99, 0, 0)
    r.flush()  # no exception
    assert r.pending() == []


def _in_thread(body):  # type: ignore[no-untyped-def]
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(body()))
    t.start()
    t.join(5)
    return out[0]


def test_deferred_restore_keeps_the_boost_past_the_block_and_restores_the_original() -> None:
    if not realtime_permitted():
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE here")

    def body() -> tuple[object, ...]:
        tid = threading.get_native_id()
        with realtime_boost(True, defer_restore_s=3600.0) as first:
            pass
        after_first = policy_of(0)
        pending_after_first = [p.tid for p in RESTORER.pending()].count(tid)
        # a second block before the restore takes it back and ends with the original policy
        with realtime_boost(True, defer_restore_s=3600.0) as second:
            inside = policy_of(0)
        pending = [p for p in RESTORER.pending() if p.tid == tid]
        RESTORER.flush()
        return (first, after_first, pending_after_first, second, inside,
                [p.policy for p in pending], policy_of(0))

    assert _in_thread(body) == (True, os.SCHED_FIFO, 1, True, os.SCHED_FIFO,
                                [os.SCHED_OTHER], os.SCHED_OTHER)


def test_the_restorer_thread_restores_without_being_asked() -> None:
    if not realtime_permitted():
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE here")
    done = threading.Event()
    seen: list[int] = []

    def apply(tid: int, policy: int, priority: int) -> None:
        seen.append(policy)
        done.set()

    r = PolicyRestorer(apply=apply)
    r.schedule(threading.get_native_id(), os.SCHED_OTHER, 0, delay_s=0.0)
    assert done.wait(10)  # an event, not a sleep: the restorer's own thread performed it
    assert seen == [os.SCHED_OTHER]


def test_a_thread_started_while_the_boost_lingers_does_not_inherit_it() -> None:
    """Found by the suite: a caller still boosted after its call (restore pending) started a
    thread, which inherited SCHED_FIFO for good; the boost sets SCHED_RESET_ON_FORK."""
    if not realtime_permitted():
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE here")

    def body() -> tuple[object, ...]:
        with realtime_boost(True, defer_restore_s=3600.0):
            pass
        lingering = policy_of(0)
        child: list[int | None] = []
        th = threading.Thread(target=lambda: child.append(policy_of(0)))
        th.start()
        th.join(5)
        RESTORER.flush()
        return lingering, child, policy_of(0)

    assert _in_thread(body) == (os.SCHED_FIFO, [os.SCHED_OTHER], os.SCHED_OTHER)
