"""RealRuntime on real threads: blocking gets, timeouts, join, errors, SCHED_OTHER reset,
realtime blocks (boost, restore, refusal).

These use the wall clock with timeouts of a few milliseconds only.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from autoconverge.impl.realtime import RealChannel, RealRuntime
from autoconverge.impl.runtime import ChannelTimeout, Runtime
from autoconverge.impl.sched import policy_of

pytestmark = pytest.mark.realtime

MS = 1_000_000


def test_protocol_and_clock() -> None:
    rt: Runtime = RealRuntime()
    a = rt.now_ns()
    rt.sleep_ns(1 * MS)
    rt.sleep_ns(0)
    rt.sleep_ns(-5)
    assert rt.now_ns() - a >= 1 * MS


def test_get_times_out_after_its_timeout() -> None:
    rt = RealRuntime()
    chan: RealChannel[int] = rt.channel()
    t0 = time.monotonic_ns()
    with pytest.raises(ChannelTimeout):
        chan.get(2 * MS)
    assert time.monotonic_ns() - t0 >= 2 * MS
    for timeout in (0, -1):
        with pytest.raises(ChannelTimeout):
            chan.get(timeout)
    with pytest.raises(ChannelTimeout):
        chan.get_nowait()
    assert chan.empty()


def test_put_from_another_thread_wakes_a_blocked_get_in_fifo_order() -> None:
    rt = RealRuntime()
    chan: RealChannel[int] = rt.channel()

    def producer() -> None:
        rt.sleep_ns(1 * MS)
        for i in range(3):
            chan.put(i)

    t = rt.spawn("producer", producer)
    assert t.name == "producer"
    got = [chan.get(), chan.get(1_000 * MS), chan.get_nowait() if not chan.empty() else chan.get()]
    assert got == [0, 1, 2]
    assert t.join(1_000 * MS) and not t.is_alive()


def test_join_timeout_and_self_join() -> None:
    rt = RealRuntime()
    gate: RealChannel[None] = rt.channel()
    errors: list[BaseException] = []
    holder: list[object] = []

    def body() -> None:
        gate.get(2_000 * MS)
        try:
            holder[0].join(0)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            errors.append(exc)

    t = rt.spawn("gated", body)
    holder.append(t)
    assert not t.join(2 * MS) and t.is_alive()
    gate.put(None)
    assert t.join(1_000 * MS) and not t.is_alive()
    assert len(errors) == 1 and "cannot join itself" in str(errors[0])


def test_uncaught_exception_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    hooked: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(repr(args.exc_value)))
    rt = RealRuntime()

    def bad() -> None:
        raise ValueError("real boom")

    t = rt.spawn("bad", bad)
    assert t.join(1_000 * MS)
    assert isinstance(t.error, ValueError)
    assert hooked == ["ValueError('real boom')"]


def _policy_of_child(rt: RealRuntime, **spawn_kw: bool) -> tuple[int, bool | None]:
    """Spawn from a SCHED_FIFO thread and return the child's policy."""
    out: list[tuple[int, bool | None]] = []
    problems: list[BaseException] = []

    def creator() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except OSError as exc:
            problems.append(exc)
            return
        policy: list[int] = []
        child = rt.spawn("child", lambda: policy.append(policy_of(0)), **spawn_kw)
        child.join(1_000 * MS)
        out.append((policy[0], child.reset_policy))

    t = threading.Thread(target=creator)
    t.start()
    t.join(5)
    if problems:
        pytest.skip(f"cannot make a SCHED_FIFO thread here: {problems[0]}")
    return out[0]


def test_spawned_thread_drops_realtime_policy() -> None:
    assert _policy_of_child(RealRuntime()) == (os.SCHED_OTHER, True)


def test_sched_other_false_keeps_inherited_policy() -> None:
    assert _policy_of_child(RealRuntime(sched_other=False)) == (os.SCHED_FIFO, None)
    assert _policy_of_child(RealRuntime(), sched_other=False) == (os.SCHED_FIFO, None)


def test_normal_parent_needs_no_reset() -> None:
    rt = RealRuntime()
    t = rt.spawn("plain", lambda: None)
    assert t.join(1_000 * MS)
    assert t.reset_policy is None


def _in_thread(body: Callable[[], object]) -> object:
    """Run ``body`` on a fresh thread (policy changes stay off the test runner's thread)."""
    out: list[object] = []
    t = threading.Thread(target=lambda: out.append(body()))
    t.start()
    t.join(5)
    return out[0]


def test_realtime_block_boosts_and_restores() -> None:
    from autoconverge.impl.sched import realtime_permitted

    if not realtime_permitted():
        pytest.skip("SCHED_FIFO needs CAP_SYS_NICE here")
    rt = RealRuntime()

    def body() -> tuple[object, ...]:
        with rt.realtime(True) as boosted:
            inside = policy_of(0)
            with rt.realtime(True) as nested:  # already realtime: stays so
                nested_inside = policy_of(0)
            after_nested = policy_of(0)
        after = policy_of(0)
        with rt.realtime(False) as off:
            off_inside = policy_of(0)
        with rt.realtime(True, restore=False) as kept:
            pass
        return (boosted, inside, nested, nested_inside, after_nested, after, off, off_inside,
                kept, policy_of(0))

    assert _in_thread(body) == (True, os.SCHED_FIFO, True, os.SCHED_FIFO, os.SCHED_FIFO,
                                os.SCHED_OTHER, False, os.SCHED_OTHER, True, os.SCHED_FIFO)


@pytest.mark.usefixtures("realtime_refused")
def test_realtime_block_without_permission_changes_nothing() -> None:
    rt = RealRuntime()

    def body() -> tuple[object, ...]:
        with rt.realtime(True) as boosted:
            inside = policy_of(0)
        return boosted, inside, policy_of(0)

    assert _in_thread(body) == (False, os.SCHED_OTHER, os.SCHED_OTHER)
