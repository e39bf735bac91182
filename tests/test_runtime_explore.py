"""explore_schedules: bounded-preemption enumeration finds a lost update, passes a locked one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from autoconverge.impl.runtime import ChannelTimeout
from autoconverge.impl.schedules import explore_schedules
from autoconverge.impl.virtualtime import ReplayDivergence, VirtualChannel, VirtualRuntime


class Register:
    """A shared integer whose reads and writes are separate runtime steps."""

    def __init__(self, rt: VirtualRuntime) -> None:
        self.rt = rt
        self.value = 0

    def read(self) -> int:
        self.rt.sleep_ns(0)  # a scheduling point before the read
        return self.value

    def write(self, v: int) -> None:
        self.rt.sleep_ns(0)
        self.value = v


def two_incrementers(locked: bool) -> tuple[list[int], Callable[[VirtualRuntime], None]]:
    finals: list[int] = []

    def make_and_run(rt: VirtualRuntime) -> None:
        def main() -> int:
            reg = Register(rt)
            token: VirtualChannel[None] = rt.channel("token")
            token.put(None)

            def incr() -> None:
                if locked:
                    token.get()
                reg.write(reg.read() + 1)
                if locked:
                    token.put(None)

            ts = [rt.spawn(n, incr) for n in ("a", "b")]
            for t in ts:
                t.join()
            return reg.value

        final = rt.run(main)
        finals.append(final)
        assert final == 2, f"lost update: counter is {final}"

    return finals, make_and_run


def test_race_is_not_visible_without_preemption() -> None:
    _, make_and_run = two_incrementers(locked=False)
    res = explore_schedules(make_and_run, preemption_bound=0, max_schedules=1_000)
    assert res.ok and res.complete
    assert res.schedules >= 2  # free switches where main blocks in join are explored


def test_one_preemption_finds_the_lost_update_and_it_replays() -> None:
    finals, make_and_run = two_incrementers(locked=False)
    res = explore_schedules(make_and_run, preemption_bound=1, max_schedules=1_000)
    assert not res.ok and not res.complete
    assert isinstance(res.failure, AssertionError) and "lost update" in str(res.failure)
    assert res.failing_choices is not None and res.failing_trace
    assert finals[-1] == 1
    # the recorded choices replay the failure, whatever the seed
    for seed in (0, 1, 99):
        rt = VirtualRuntime(seed=seed, replay=res.failing_choices)
        with pytest.raises(AssertionError, match="counter is 1"):
            make_and_run(rt)
        assert rt.trace == res.failing_trace


def test_locked_version_passes_every_schedule_within_the_bound() -> None:
    finals, make_and_run = two_incrementers(locked=True)
    res = explore_schedules(make_and_run, preemption_bound=2, max_schedules=5_000)
    assert res.ok and res.complete, res.failure
    assert res.schedules > 10 and set(finals) == {2}


def test_schedules_are_distinct_and_grow_with_the_bound() -> None:
    counts = []
    for bound in (0, 1, 2, 3):
        seen: list[tuple[int, ...]] = []

        def make_and_run(rt: VirtualRuntime, seen: list[tuple[int, ...]] = seen) -> None:
            def main() -> None:
                chan: VirtualChannel[int] = rt.channel()

                def twice() -> None:
                    chan.put(1)
                    chan.put(2)

                ts = [rt.spawn(n, twice) for n in "ab"]
                for t in ts:
                    t.join()

            rt.run(main)
            seen.append(tuple(rt.choices))

        res = explore_schedules(make_and_run, preemption_bound=bound)
        assert res.ok and res.complete
        assert len(set(seen)) == len(seen) == res.schedules
        counts.append(res.schedules)
    assert counts == sorted(counts) and counts[0] < counts[-1]


def test_schedule_cap_reports_incomplete() -> None:
    _, make_and_run = two_incrementers(locked=True)
    res = explore_schedules(make_and_run, preemption_bound=3, max_schedules=3)
    assert res.ok and not res.complete and res.schedules == 3


def test_nondeterministic_test_is_reported() -> None:
    calls = [0]

    def make_and_run(rt: VirtualRuntime) -> None:
        calls[0] += 1
        n = 2 + calls[0] % 2  # a different number of threads on every other run

        def main() -> None:
            ts = [rt.spawn(f"t{i}", lambda: rt.sleep_ns(0)) for i in range(n)]
            for t in ts:
                t.join()

        rt.run(main)

    res = explore_schedules(make_and_run, preemption_bound=1)
    assert isinstance(res.failure, ReplayDivergence)


def test_finds_a_timeout_dependent_bug_in_the_worker_pattern() -> None:
    """A controller that treats a timeout of its request as 'worker idle' while the worker
    answers late is found by exploring who runs first at a shared instant."""

    def make_and_run(rt: VirtualRuntime) -> None:
        def main() -> None:
            cmds: VirtualChannel[int] = rt.channel("cmds")
            resp: VirtualChannel[int] = rt.channel("resp")

            def worker() -> None:
                cmd = cmds.get()
                rt.sleep_ns(100)  # modelled work
                resp.put(cmd)

            w = rt.spawn("worker", worker)
            cmds.put(1)
            try:
                resp.get(100)  # BUG: the answer can arrive exactly at the deadline
            except ChannelTimeout:
                assert resp.empty(), "stale answer left behind"
            w.join()

        rt.run(main)

    res = explore_schedules(make_and_run, preemption_bound=1)
    assert not res.ok and "stale answer" in str(res.failure)
