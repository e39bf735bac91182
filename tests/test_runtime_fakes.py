"""RecordingVcpus: records with costs in virtual time, injects failures and hangs; helpers."""

from __future__ import annotations

import pytest

from autoconverge.impl.fakes import (
    Action,
    Cycle,
    RecordingVcpus,
    VcpuCall,
    alternation_error,
    cycles,
    pause_intervals,
    run_intervals,
)
from autoconverge.impl.runtime import ChannelTimeout
from autoconverge.impl.vcpus import VcpuError, Vcpus, VcpuTimeout
from autoconverge.impl.virtualtime import VirtualChannel, VirtualDeadlock, VirtualRuntime


def _throttle(rt: VirtualRuntime, v: RecordingVcpus, n: int, pause_ns: int, run_ns: int) -> None:
    for _ in range(n):
        v.pause()
        rt.sleep_ns(pause_ns)
        v.resume()
        rt.sleep_ns(run_ns)


def test_is_a_vcpus() -> None:
    assert isinstance(RecordingVcpus(VirtualRuntime()), Vcpus)


def test_records_calls_with_costs_in_virtual_time() -> None:
    rt = VirtualRuntime()
    v = RecordingVcpus(rt, pause_cost_ns=100, resume_cost_ns=50)
    rt.run(lambda: _throttle(rt, v, 3, 850, 9_000))
    assert [(c.action, c.number, c.start_ns, c.end_ns, c.outcome) for c in v.calls[:4]] == [
        ("pause", 1, 0, 100, "ok"),
        ("resume", 1, 950, 1_000, "ok"),
        ("pause", 2, 10_000, 10_100, "ok"),
        ("resume", 2, 10_950, 11_000, "ok"),
    ]
    assert v.pause_count == v.resume_count == 3 and not v.paused
    assert v.alternation_error() is None
    assert v.pause_intervals() == [(0, 1_000), (10_000, 11_000), (20_000, 21_000)]
    assert v.run_intervals(end_ns=30_000) == [(1_000, 10_000), (11_000, 20_000), (21_000, 30_000)]
    assert v.cycles() == [Cycle(0, 1_000, 10_000), Cycle(10_000, 1_000, 10_000)]
    assert all(c.paused_percent == 10.0 and c.run_ns == 9_000 for c in v.cycles())


def test_cost_can_depend_on_the_call_number() -> None:
    rt = VirtualRuntime()
    v = RecordingVcpus(rt, pause_cost_ns=lambda k: 10 * k)

    def main() -> None:
        for _ in range(3):
            v.pause()
            v.resume()

    rt.run(main)
    assert [(c.end_ns or 0) - c.start_ns for c in v.calls if c.action == "pause"] == [10, 20, 30]


def test_injected_failure_on_the_kth_call() -> None:
    rt = VirtualRuntime()
    v = RecordingVcpus(rt, pause_cost_ns=5, fail_on={("pause", 2)})

    def main() -> None:
        v.pause()
        v.resume()
        with pytest.raises(VcpuError, match="pause #2"):
            v.pause()
        assert not v.paused  # a failed call leaves the state alone
        v.pause()

    rt.run(main)
    assert [c.outcome for c in v.calls] == ["ok", "ok", "error", "ok"]
    assert v.calls[2].end_ns == v.calls[2].start_ns + 5 and v.paused
    assert v.pause_count == 3


def test_injected_exception_object() -> None:
    rt = VirtualRuntime()
    boom = VcpuTimeout("vcpu1", "resume", 0.02)
    v = RecordingVcpus(rt, fail_on={("resume", 1): boom})

    def main() -> None:
        v.pause()
        with pytest.raises(VcpuTimeout) as info:
            v.resume()
        assert info.value is boom

    rt.run(main)
    assert v.paused and v.calls[-1].error is boom


def test_hang_lets_a_caller_time_out() -> None:
    rt = VirtualRuntime()
    v = RecordingVcpus(rt, hang_on={("pause", 1)}, hang_ns=10_000_000_000)

    def main() -> tuple[int, int | None]:
        done: VirtualChannel[None] = rt.channel()

        def worker() -> None:
            v.pause()
            done.put(None)

        w = rt.spawn("worker", worker)
        with pytest.raises(ChannelTimeout):
            done.get(2_000_000_000)
        assert v.in_progress is not None and v.in_progress.end_ns is None
        t_timeout = rt.now_ns()
        w.join()
        return t_timeout, v.calls[0].end_ns

    assert rt.run(main) == (2_000_000_000, 10_000_000_000)


def test_hang_forever_is_a_deadlock_when_nobody_gives_up() -> None:
    rt = VirtualRuntime()
    v = RecordingVcpus(rt, hang_on={("resume", 1)}, hang_ns=None)

    def main() -> None:
        v.pause()
        v.resume()

    with pytest.raises(VirtualDeadlock, match="main: get"):
        rt.run(main)
    assert v.in_progress is v.calls[1]


def _call(action: Action, number: int, start: int, end: int | None, ok: bool = True) -> VcpuCall:
    return VcpuCall(action, number, start, end, "ok" if ok else "error")


def test_alternation_check_names_the_problem() -> None:
    assert alternation_error([]) is None
    assert "expected pause" in str(alternation_error([_call("resume", 1, 0, 1)]))
    twice = [_call("pause", 1, 0, 1), _call("pause", 2, 2, 3)]
    assert "call 1: pause #2" in str(alternation_error(twice))
    overlap = [_call("pause", 1, 0, 10), _call("resume", 1, 5, 12)]
    assert "before the previous call ended" in str(alternation_error(overlap))
    open_call = [_call("pause", 1, 0, None), _call("resume", 1, 5, 12)]
    assert "before call 0 returned" in str(alternation_error(open_call))


def test_intervals_skip_failed_calls_and_close_at_end() -> None:
    calls = [
        _call("pause", 1, 0, 10),
        _call("resume", 1, 40, 50, ok=False),
        _call("resume", 2, 60, 70),
        _call("pause", 2, 100, 110),
    ]
    assert pause_intervals(calls) == [(0, 70)]
    assert pause_intervals(calls, end_ns=200) == [(0, 70), (100, 200)]
    assert run_intervals(calls, end_ns=200) == [(70, 100)]
    assert cycles(calls) == []
