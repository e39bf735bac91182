"""VirtualRuntime: determinism, replay, virtual time, timeouts, deadlocks, errors, cleanup."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import pytest

from autoconverge.impl.runtime import ChannelTimeout, Runtime
from autoconverge.impl.virtualtime import (
    ReplayDivergence,
    ThreadKilled,
    VirtualChannel,
    VirtualDeadlock,
    VirtualRuntime,
    VirtualRuntimeError,
    VirtualStall,
    VirtualStepLimit,
    VirtualTimeLimit,
)


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> object:
    before = threading.active_count()
    yield
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def _chatty(rt: VirtualRuntime) -> Callable[[], list[str]]:
    """Three threads appending to a shared log through channels and sleeps."""

    def main() -> list[str]:
        log: list[str] = []
        chan: VirtualChannel[str] = rt.channel()

        def producer(tag: str) -> Callable[[], None]:
            def body() -> None:
                for i in range(4):
                    rt.sleep_ns(10 * (i % 2))
                    chan.put(f"{tag}{i}")
                    log.append(f"{tag} put {i} at {rt.now_ns()}")

            return body

        threads = [rt.spawn(f"p{k}", producer(k)) for k in "ab"]
        for _ in range(8):
            log.append(f"got {chan.get()}")
        for t in threads:
            assert t.join()
        return log

    return main


def test_protocol_conformance() -> None:
    rt: Runtime = VirtualRuntime()
    assert rt.now_ns() == 0


def test_same_seed_same_trace_and_choices() -> None:
    runs = []
    for _ in range(2):
        rt = VirtualRuntime(seed=7)
        log = rt.run(_chatty(rt))
        runs.append((log, rt.trace, rt.choices))
    assert runs[0] == runs[1]
    assert len(runs[0][2]) > 5  # there were real choices to make


def test_different_seeds_explore_different_interleavings() -> None:
    logs = set()
    for seed in range(12):
        rt = VirtualRuntime(seed=seed)
        logs.add(tuple(rt.run(_chatty(rt))))
    assert len(logs) > 3


def test_replay_reproduces_a_run_whatever_the_seed() -> None:
    rt = VirtualRuntime(seed=3)
    log = rt.run(_chatty(rt))
    again = VirtualRuntime(seed=12345, replay=rt.choices)
    assert again.run(_chatty(again)) == log
    assert again.trace == rt.trace
    assert again.choices == rt.choices


def test_replay_that_does_not_fit_raises_divergence() -> None:
    rt = VirtualRuntime(replay=[5])
    with pytest.raises(ReplayDivergence, match="does not fit"):
        rt.run(_chatty(rt))


def test_chooser_sees_enabled_thread_names_in_creation_order() -> None:
    seen: list[list[str]] = []

    def chooser(names: list[str]) -> int:
        seen.append(list(names))
        return len(names) - 1  # always the newest thread

    rt = VirtualRuntime(chooser=chooser)
    rt.run(_chatty(rt))
    assert seen and all(names == sorted(names, key=["main", "pa", "pb"].index) for names in seen)
    assert rt.choices == [len(n) - 1 for n in seen]


def test_bad_chooser_index_is_an_error() -> None:
    rt = VirtualRuntime(chooser=lambda names: 99)
    with pytest.raises(VirtualRuntimeError, match="chooser"):
        rt.run(_chatty(rt))


def test_clock_jumps_only_when_nobody_can_run() -> None:
    rt = VirtualRuntime()

    def main() -> list[int]:
        seen = [rt.now_ns()]
        chan: VirtualChannel[int] = rt.channel()
        for i in range(100):  # busy work through the runtime: no time passes
            chan.put(i)
            chan.get_nowait()
        seen.append(rt.now_ns())
        rt.sleep_ns(1_000_000_000)
        seen.append(rt.now_ns())
        rt.sleep_ns(0)
        rt.sleep_ns(-5)
        seen.append(rt.now_ns())
        return seen

    assert rt.run(main) == [0, 0, 1_000_000_000, 1_000_000_000]
    clock_events = [ev for ev in rt.trace if ev.thread == "<clock>"]
    assert [ev.time_ns for ev in clock_events] == [1_000_000_000]


def test_concurrent_sleepers_wake_at_their_deadlines_in_order() -> None:
    rt = VirtualRuntime(start_ns=500)
    woke: list[tuple[str, int]] = []

    def sleeper(name: str, ns: int) -> Callable[[], None]:
        def body() -> None:
            rt.sleep_ns(ns)
            woke.append((name, rt.now_ns()))

        return body

    def main() -> None:
        ts = [rt.spawn(n, sleeper(n, ns)) for n, ns in (("c", 300), ("a", 100), ("b", 200))]
        for t in ts:
            t.join()

    rt.run(main)
    assert woke == [("a", 600), ("b", 700), ("c", 800)]


def test_get_times_out_exactly_at_its_deadline() -> None:
    rt = VirtualRuntime()

    def main() -> tuple[int, int]:
        chan: VirtualChannel[int] = rt.channel()
        with pytest.raises(ChannelTimeout):
            chan.get(2_500)
        t1 = rt.now_ns()
        with pytest.raises(ChannelTimeout):
            chan.get(0)
        with pytest.raises(ChannelTimeout):
            chan.get(-1)
        with pytest.raises(ChannelTimeout):
            chan.get_nowait()
        assert chan.empty()
        return t1, rt.now_ns()

    assert rt.run(main) == (2_500, 2_500)


def test_get_returns_when_an_item_arrives_before_the_deadline() -> None:
    rt = VirtualRuntime()

    def main() -> tuple[int, int]:
        chan: VirtualChannel[int] = rt.channel()

        def producer() -> None:
            rt.sleep_ns(40)
            chan.put(42)

        t = rt.spawn("producer", producer)
        item = chan.get(100)
        now = rt.now_ns()
        t.join()
        return item, now

    assert rt.run(main) == (42, 40)


def test_put_at_the_deadline_instant_is_a_genuine_race() -> None:
    outcomes = set()
    for seed in range(20):
        rt = VirtualRuntime(seed=seed)

        def main(rt: VirtualRuntime = rt) -> str:
            chan: VirtualChannel[int] = rt.channel()

            def producer() -> None:
                rt.sleep_ns(100)
                chan.put(1)

            t = rt.spawn("producer", producer)
            try:
                chan.get(100)
                result = "item"
            except ChannelTimeout:
                result = "timeout"
            t.join()
            return result

        outcomes.add(rt.run(main))
    assert outcomes == {"item", "timeout"}


def test_join_with_timeout_and_is_alive() -> None:
    rt = VirtualRuntime()

    def main() -> list[object]:
        t = rt.spawn("worker", lambda: rt.sleep_ns(1_000))
        out: list[object] = [t.is_alive(), t.join(100), rt.now_ns(), t.join(0)]
        out += [t.join(), rt.now_ns(), t.is_alive(), t.join(5), t.name]
        return out

    assert rt.run(main) == [True, False, 100, False, True, 1_000, False, True, "worker"]


def test_run_waits_for_non_daemon_threads_like_threading() -> None:
    rt = VirtualRuntime()
    done: list[int] = []

    def main() -> str:
        def late() -> None:
            rt.sleep_ns(5_000)
            done.append(rt.now_ns())

        rt.spawn("late", late)
        return "main done"

    assert rt.run(main) == "main done"
    assert done == [5_000]


def test_kill_leftover_terminates_remaining_threads_and_runs_their_finally() -> None:
    rt = VirtualRuntime()
    cleanup: list[str] = []

    def forever() -> None:
        try:
            while True:
                rt.sleep_ns(1_000)
        finally:
            cleanup.append("finally ran")
            with pytest.raises(ThreadKilled):
                rt.now_ns()  # every runtime op in a killed thread raises again

    def main() -> int:
        rt.spawn("forever", forever)
        rt.sleep_ns(10_500)
        return int(rt.now_ns())

    assert rt.run(main, kill_leftover=True) == 10_500
    assert cleanup == ["finally ran"]
    assert [t.done for t in rt.threads] == [True, True]


def test_deadlock_is_reported_with_each_thread_and_what_it_waits_for() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        a: VirtualChannel[int] = rt.channel("a")
        b: VirtualChannel[int] = rt.channel("b")
        t = rt.spawn("worker", lambda: a.put(b.get()))
        rt.sleep_ns(7)
        a.get()  # waits for the worker, which waits for main
        t.join()

    with pytest.raises(VirtualDeadlock) as info:
        rt.run(main)
    msg = str(info.value)
    assert "t=7 ns" in msg
    assert "main: get(a) [empty] forever" in msg
    assert "worker: get(b) [empty] forever" in msg


def test_deadlock_after_main_returned_names_the_stuck_thread() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        chan: VirtualChannel[int] = rt.channel()
        rt.spawn("stuck", lambda: chan.get())

    with pytest.raises(VirtualDeadlock, match=r"stuck: get\(ch0\)") as info:
        rt.run(main)
    assert "main: exited" in str(info.value)


def test_join_cycle_is_a_deadlock() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        me = rt.threads[0]
        t = rt.spawn("child", lambda: me.join())
        t.join()

    with pytest.raises(VirtualDeadlock, match=r"main: join\(child\) forever"):
        rt.run(main)


def test_exception_in_main_propagates() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        rt.sleep_ns(3)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        rt.run(main)


def test_exception_in_other_thread_is_reraised_by_run() -> None:
    rt = VirtualRuntime()

    def bad() -> None:
        rt.sleep_ns(10)
        raise ValueError("in worker")

    def main() -> str:
        t = rt.spawn("bad", bad)
        assert t.join()  # an exited-with-error thread counts as exited
        return "main finished"

    with pytest.raises(ValueError, match="in worker") as info:
        rt.run(main)
    assert any("'bad'" in note for note in info.value.__notes__)
    assert [(name, type(exc)) for name, exc in rt.errors] == [("bad", ValueError)]


def test_handled_exception_is_not_reraised() -> None:
    rt = VirtualRuntime()

    def careful() -> None:
        try:
            raise ValueError("handled")
        except ValueError:
            rt.sleep_ns(1)

    def main() -> None:
        rt.spawn("careful", careful).join()

    rt.run(main)
    assert rt.errors == []


def test_thread_failure_behind_a_deadlock_is_its_cause() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        resp: VirtualChannel[int] = rt.channel("resp")

        def worker() -> None:
            raise OSError("vcpu gone")

        rt.spawn("worker", worker)
        resp.get()  # the answer never comes

    with pytest.raises(VirtualDeadlock) as info:
        rt.run(main)
    assert isinstance(info.value.__cause__, OSError)
    assert "worker: exited with OSError" in str(info.value)


def test_fail_fast_stops_at_the_first_thread_error() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        rt.spawn("bad", lambda: 1 / 0)
        while True:
            rt.sleep_ns(1_000)

    with pytest.raises(ZeroDivisionError):
        rt.run(main, fail_fast=True)
    assert rt.now_ns() <= 1_000


def test_step_limit_turns_a_livelock_into_an_error() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        chan: VirtualChannel[int] = rt.channel()
        while chan.empty():
            pass

    with pytest.raises(VirtualStepLimit, match="more than 1000 scheduling steps"):
        rt.run(main, max_steps=1_000)


def test_time_limit() -> None:
    rt = VirtualRuntime()

    def main() -> None:
        while True:
            rt.sleep_ns(1_000_000)

    with pytest.raises(VirtualTimeLimit):
        rt.run(main, max_virtual_ns=50_000_000)
    assert rt.now_ns() == 50_000_000


def test_blocking_outside_the_runtime_is_caught_by_the_watchdog() -> None:
    rt = VirtualRuntime(stall_timeout_s=0.1)
    gate = threading.Event()

    def main() -> None:
        rt.spawn("other", lambda: rt.sleep_ns(1))
        gate.wait()  # a real blocking wait the scheduler cannot see
        rt.now_ns()  # ThreadKilled once the run was abandoned

    timer = threading.Timer(0.3, gate.set)  # frees main while run() cleans up
    timer.start()
    with pytest.raises(VirtualStall, match="'main'"):
        rt.run(main)
    timer.join()
    assert rt.leaked == []
    for t in rt.threads:
        assert t.os_thread is not None
        t.os_thread.join(2)
        assert not t.os_thread.is_alive()


def test_duplicate_names_get_unique_keys() -> None:
    rt = VirtualRuntime()

    def main() -> list[str]:
        ts = [rt.spawn("w", lambda: None) for _ in range(3)]
        for t in ts:
            t.join()
        return [t.name for t in ts]

    assert rt.run(main) == ["w", "w", "w"]
    assert [t.key for t in rt.threads] == ["main", "w", "w#2", "w#3"]


def test_use_outside_run_and_from_foreign_threads() -> None:
    rt = VirtualRuntime()
    chan: VirtualChannel[int] = rt.channel()
    chan.put(1)  # non-blocking operations work before run()
    assert not chan.empty() and chan.queued == 1 and rt.now_ns() == 0
    with pytest.raises(RuntimeError, match=r"inside VirtualRuntime\.run"):
        rt.spawn("x", lambda: None)
    with pytest.raises(RuntimeError, match=r"inside VirtualRuntime\.run"):
        rt.sleep_ns(1)
    errors: list[BaseException] = []

    def foreign() -> None:
        try:
            chan.put(2)
        except RuntimeError as exc:
            errors.append(exc)

    def main() -> int:
        t = threading.Thread(target=foreign)
        t.start()
        t.join()
        return int(chan.get())

    assert rt.run(main) == 1
    assert len(errors) == 1 and "does not manage" in str(errors[0])
    assert chan.empty()
    with pytest.raises(RuntimeError, match="would block"):
        chan.get()


def test_sequential_runs_share_the_clock() -> None:
    rt = VirtualRuntime()
    rt.run(lambda: rt.sleep_ns(10))

    def second() -> int:
        rt.sleep_ns(5)
        return int(rt.now_ns())

    assert rt.run(second) == 15


def test_nested_run_is_refused() -> None:
    rt = VirtualRuntime()
    with pytest.raises(RuntimeError, match="already running"):
        rt.run(lambda: rt.run(lambda: None))


def test_no_os_threads_leak_on_any_outcome() -> None:
    before = threading.active_count()

    def hang(rt: VirtualRuntime) -> None:
        c: VirtualChannel[int] = rt.channel()
        for i in range(5):
            rt.spawn(f"h{i}", c.get)
        c.get()

    def divide(rt: VirtualRuntime) -> None:
        rt.sleep_ns(1)
        print(1 / 0)

    cases: list[tuple[Callable[[VirtualRuntime], None], type[BaseException]]] = [
        (hang, VirtualDeadlock),
        (divide, ZeroDivisionError),
    ]
    for main, exc in cases:
        rt = VirtualRuntime()
        with pytest.raises(exc):
            rt.run(functools.partial(main, rt))
        assert threading.active_count() == before
        assert all(t.os_thread is not None and not t.os_thread.is_alive() for t in rt.threads)


def test_worker_and_controller_pattern_is_exact_in_virtual_time() -> None:
    """The throttler's shape: a worker looping on get(deadline - now), a controller doing
    put + get on a response channel. Phase boundaries land exactly on the deadlines and
    every command is answered, under many seeds."""
    for seed in range(10):
        rt = VirtualRuntime(seed=seed)
        boundaries: list[int] = []

        def main(rt: VirtualRuntime = rt, boundaries: list[int] = boundaries) -> list[int]:
            cmds: VirtualChannel[int] = rt.channel("cmds")
            resp: VirtualChannel[int] = rt.channel("resp")

            def worker() -> None:
                deadline = rt.now_ns() + 1_000
                while True:
                    try:
                        cmd = cmds.get(deadline - rt.now_ns())
                    except ChannelTimeout:
                        boundaries.append(rt.now_ns())
                        deadline += 1_000
                        continue
                    resp.put(cmd * 10)
                    if cmd == 0:
                        return

            w = rt.spawn("worker", worker)
            answers = []
            for cmd in (3, 2, 1, 0):
                rt.sleep_ns(2_600)  # never at a phase boundary: that instant is a real race
                cmds.put(cmd)
                answers.append(resp.get(10_000))
            assert w.join(1_000)
            return answers

        assert rt.run(main) == [30, 20, 10, 0]
        assert boundaries == [1_000 * k for k in range(1, 11)]
