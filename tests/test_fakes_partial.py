"""PartialVcpus, the double whose pause()/resume() fail or hang part-way, and what the
throttler does with a part-way failure today (its best-effort resume).

All in virtual time (seed 0), so every test replays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from autoconverge.impl import throttler as throttler_module
from autoconverge.impl.fakes import Action, PartialVcpus
from autoconverge.impl.throttler import Throttler, ThrottleWorkerError
from autoconverge.impl.vcpus import VcpuError, Vcpus, VcpuTimeout
from autoconverge.impl.virtualtime import VirtualRuntime
from autoconverge.spec import lifecycle as L

MS = 1_000_000
T = 100 * MS
COST = 50_000


def in_runtime(body: Callable[[VirtualRuntime], Any], **run_kw: Any) -> Any:
    rt = VirtualRuntime(seed=0)
    return rt.run(lambda: body(rt), **run_kw)


# --- the double itself ----------------------------------------------------------------------------


def test_pause_and_resume_every_vcpu_in_order() -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 3, vcpu_cost_ns=COST)
        assert isinstance(v, Vcpus)
        assert not v.is_paused() and not v.paused
        v.pause()
        assert v.all_paused() and v.is_paused() and v.paused_vcpus == [0, 1, 2]
        assert rt.now_ns() == 3 * COST
        v.pause()  # idempotent: nothing changes
        v.resume()
        assert not v.is_paused()
        assert [(a, i) for _, a, i in v.log] == [
            ("pause", 0), ("pause", 1), ("pause", 2),
            ("resume", 0), ("resume", 1), ("resume", 2),
        ]
        assert [c.outcome for c in v.calls] == ["ok"] * 3
        assert (v.pause_count, v.resume_count) == (2, 1)
        assert repr(v) == "<PartialVcpus [rrr]>"

    in_runtime(body)


@pytest.mark.parametrize("after", [0, 1, 3])
def test_pause_fails_part_way(after: int) -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 4, vcpu_cost_ns=COST, fail_on={("pause", 1): after})
        with pytest.raises(VcpuError, match=f"pause #1 after {after} of 4"):
            v.pause()
        assert v.paused_vcpus == list(range(after))
        assert v.is_paused() == (after > 0)  # the truth, not the all-or-nothing view
        assert not v.all_paused()
        call = v.calls[-1]
        assert call.outcome == "error" and call.end_ns == after * COST
        v.pause()  # pause #2 is not injected: completes the rest
        assert v.all_paused()

    in_runtime(body)


def test_resume_fails_part_way_then_a_retry_completes() -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 4, fail_on={("resume", 1): 2})
        v.pause()
        with pytest.raises(VcpuError):
            v.resume()
        assert v.paused_vcpus == [2, 3]
        v.resume()
        assert not v.is_paused()

    in_runtime(body)


@pytest.mark.parametrize("exc", [VcpuTimeout("2", "pause", 0.5), KeyboardInterrupt()])
def test_custom_error_part_way(exc: BaseException) -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 4, fail_on={("pause", 1): 2}, errors={("pause", 1): exc})
        with pytest.raises(type(exc)):
            v.pause()
        assert v.paused_vcpus == [0, 1]
        assert v.calls[-1].error is exc

    in_runtime(body)


@pytest.mark.parametrize("at", [0, 2, 4])
def test_hang_blocks_until_released(at: int) -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 4, vcpu_cost_ns=COST, hang_on={("pause", 1): at})
        th = rt.spawn("caller", v.pause)
        rt.sleep_ns(T)
        assert th.is_alive()
        assert v.hanging is v.calls[0] and v.calls[0].end_ns is None
        assert v.paused_vcpus == list(range(at))  # hung part-way
        v.release()
        assert th.join()
        assert v.hanging is None and v.all_paused()
        assert v.calls[0].ok and v.calls[0].end_ns == T + (4 - at) * COST

    in_runtime(body)


def test_hang_then_fail() -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 4, hang_on={("resume", 1): 1}, fail_on={("resume", 1): 3})
        v.pause()
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                v.resume()
            except VcpuError as exc:
                errors.append(exc)

        th = rt.spawn("caller", caller)
        rt.sleep_ns(MS)
        assert v.paused_vcpus == [1, 2, 3]
        v.release()
        assert th.join() and len(errors) == 1
        assert v.paused_vcpus == [3]

    in_runtime(body)


def test_release_before_the_hang_lets_it_through() -> None:
    def body(rt: VirtualRuntime) -> None:
        v = PartialVcpus(rt, 2, hang_on=[("pause", 1)])
        v.release()
        v.pause()
        assert v.all_paused() and rt.now_ns() == 0

    in_runtime(body)


def test_a_hang_never_released_is_killed_with_the_run() -> None:
    box: dict[str, PartialVcpus] = {}

    def body(rt: VirtualRuntime) -> None:
        v = box["v"] = PartialVcpus(rt, 2, hang_on={("pause", 1): 1})
        rt.spawn("caller", v.pause)
        rt.sleep_ns(MS)

    in_runtime(body, kill_leftover=True)
    v = box["v"]
    assert v.paused_vcpus == [0] and v.calls[0].outcome == "error" and v.calls[0].end_ns is None


@pytest.mark.parametrize(
    "kw",
    [
        {"n_vcpus": 0},
        {"fail_on": {("pause", 1): 5}},
        {"hang_on": {("resume", 1): -1}},
        {"errors": {("pause", 1): VcpuError("x")}},
    ],
)
def test_bad_arguments(kw: dict[str, Any]) -> None:
    rt = VirtualRuntime(seed=0)
    with pytest.raises(ValueError):
        PartialVcpus(rt, **kw)


# --- the throttler and a part-way failure ------------------------------------------------------


def _throttle_until_fault(fail_on: dict[tuple[Action, int], int],
                          ) -> tuple[Throttler, PartialVcpus, list[int]]:
    """Seed 0, 4 vCPUs (50 us each), timeslice 100 ms. Program: set 50 %; sleep 300 ms (the
    injected failure stops the worker); record the vCPUs paused then; shutdown() ->
    ThrottleWorkerError."""
    rt = VirtualRuntime(seed=0)
    v = PartialVcpus(rt, 4, vcpu_cost_ns=COST, fail_on=fail_on)
    box: dict[str, Any] = {}

    def main() -> None:
        t = box["t"] = Throttler(v, runtime=rt, timeslice_ns=T, trace=True)
        t.set_throttle_percent(50)
        rt.sleep_ns(3 * T)
        assert t.worker_state == L.EXIT
        box["paused_after_fault"] = v.paused_vcpus
        with pytest.raises(ThrottleWorkerError, match="injected failure"):
            t.shutdown()

    rt.run(main, fail_fast=True)
    return box["t"], v, box["paused_after_fault"]


PART_WAY = [
    {("pause", 1): 2},   # started by recv_set (waiting -> pause phase): fault@throttling_pause
    {("pause", 2): 3},   # started by run_elapsed (run -> pause phase): fault@throttling_pause
    {("pause", 2): 1},
    {("resume", 1): 2},  # started by pause_elapsed (pause -> run phase): fault@throttling_run
    {("resume", 2): 1},
]


def _case_id(fail_on: dict[tuple[Action, int], int]) -> str:
    ((action, number), after), = fail_on.items()
    return f"{action}{number}-after{after}"


@pytest.mark.parametrize("fail_on", PART_WAY, ids=_case_id)
def test_the_worker_resumes_what_a_part_way_failure_left_paused(
    fail_on: dict[tuple[Action, int], int],
) -> None:
    t, v, paused_after_fault = _throttle_until_fault(fail_on)
    assert paused_after_fault == [], f"the fault left vCPUs {paused_after_fault} paused"
    assert not v.is_paused()
    assert v.calls[-1].action == "resume" and v.calls[-1].ok  # the best-effort resume
    ((action, _), _), = fail_on.items()
    fault = [e for e in t.events if e.trigger == L.FAULT]
    # the fault ends the call in progress (from the state its transition entered) and
    # starts the resume, whose return the spec records too
    assert [(e.source, e.view_before.call) for e in fault] == [
        (L.PAUSE if action == "pause" else L.RUN, L.CALL_CODES[action]),
    ]
    after_fault = [e.trigger for e in t.events[t.events.index(fault[0]) + 1:]
                   if e.machine == "worker"]
    assert after_fault == [L.CALL_RETURN]


@pytest.mark.parametrize("fail_on", PART_WAY, ids=_case_id)
def test_dropping_the_best_effort_resume_is_noticed(
    fail_on: dict[tuple[Action, int], int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Mutant: the fault's best-effort resume (the ``resume`` call the spec's ``fault``
    starts, performed by ``_Worker._do_call`` once ``failed`` is set) does nothing. The test
    above must fail on it: the part-way failure's paused vCPUs stay paused (an all-or-nothing
    double could not show it for a failed pause(): it would report the vCPUs running)."""
    real_do_call = throttler_module._Worker._do_call

    def drop_best_effort_resume(self: Any, call: int) -> None:
        if self.failed and call == L.RESUME_CALL:
            return
        real_do_call(self, call)

    monkeypatch.setattr(throttler_module._Worker, "_do_call", drop_best_effort_resume)
    with pytest.raises(AssertionError, match=r"left vCPUs \[[0-9, ]+\] paused"):
        test_the_worker_resumes_what_a_part_way_failure_left_paused(fail_on)
