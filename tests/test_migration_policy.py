"""Throttle policies as pure functions of observation sequences (no VM, no clock)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoconverge.impl.migration.policy import (
    CloudHypervisorPolicy,
    NoThrottle,
    Observation,
    PredictivePolicy,
    QemuPolicy,
    make_policy,
)

MIB = 1024 * 1024


def obs(kind: str = "iteration", iteration: int = 1, *, throttle: int = 0, period: float = 1.0,
        dirty: int = 0, rate: float = 0.0, sent: int = 0, bw: float = 100 * MIB,
        remaining: int = 64 * MIB, limit: float = 0.3, t: float = 0.0) -> Observation:
    return Observation(kind=kind, time_s=t, iteration=iteration,
                       throttle_percent=throttle, period_s=period, dirty_bytes_period=dirty,
                       dirty_rate_bps=rate, sent_bytes_period=sent, bandwidth_bps=bw,
                       remaining_bytes=remaining, downtime_limit_s=limit)


def test_none_never_throttles() -> None:
    p = NoThrottle()
    assert all(p.observe(obs(iteration=i, rate=1e12)) == 0 for i in range(50))


# The seed's schedule, percent by delta iteration (0 = the first full pass): its PR
# description (the default): 10 % at delta iteration 4, +10 % every 2, capped at 99 %
CH_DEFAULT_TABLE = [0, 0, 0, 0, 10, 10, 20, 20, 30, 30, 40, 40, 50, 50, 60, 60, 70, 70, 80,
                    80, 90, 90, 99, 99, 99]
# its commit message's variant: from delta iteration 2
CH_FROM_TWO_TABLE = [0, 0, 10, 10, 20, 20, 30, 30, 40, 40, 50, 50, 60, 60, 70, 70, 80, 80, 90,
                     90, 99, 99]


def test_ch_default_schedule_is_the_seeds_pr_description() -> None:
    p = CloudHypervisorPolicy()
    assert [p.observe(obs(iteration=i)) for i in range(len(CH_DEFAULT_TABLE))] == \
        CH_DEFAULT_TABLE


@pytest.mark.parametrize("kwargs, table", [
    ({"start_iteration": 2}, CH_FROM_TWO_TABLE),
    ({"start_iteration": 1, "every": 1, "increment": 25}, [0, 25, 50, 75, 99, 99]),
    ({"start_iteration": 3, "every": 3, "increment": 5}, [0, 0, 0, 5, 5, 5, 10, 10, 10, 15]),
])
def test_ch_configured_schedules(kwargs: dict[str, int], table: list[int]) -> None:
    for p in (CloudHypervisorPolicy(**kwargs), make_policy("ch", **kwargs)):
        assert [p.observe(obs(iteration=i)) for i in range(len(table))] == table


def test_make_policy_passes_the_increment_to_qemu_only_when_given() -> None:
    q = make_policy("qemu")
    assert isinstance(q, QemuPolicy) and q.cpu_throttle_increment == 10
    q = make_policy("qemu", increment=5)
    assert isinstance(q, QemuPolicy) and q.cpu_throttle_increment == 5


def test_ch_ignores_ticks_and_respects_max() -> None:
    p = CloudHypervisorPolicy(max_percent=35)
    for i in range(1, 30):
        p.observe(obs("tick", iteration=i))
    assert p.observe(obs("tick", iteration=2)) == 0
    assert max(p.observe(obs(iteration=i)) for i in range(1, 30)) == 35


def _qemu_periods(p: QemuPolicy, dirty_ratio: float, n: int, start_it: int = 1) -> list[int]:
    out = []
    for i in range(n):
        out.append(p.observe(obs(iteration=start_it + i, period=1.0, sent=100 * MIB,
                                 dirty=int(dirty_ratio * 100 * MIB))))
    return out


def test_qemu_triggers_on_second_high_period_then_steps() -> None:
    p = QemuPolicy()
    got = _qemu_periods(p, 0.8, 8)  # dirty 80 % of transferred > threshold 50 %
    assert got == [0, 20, 20, 30, 30, 40, 40, 50]


def test_qemu_below_threshold_never_triggers() -> None:
    assert _qemu_periods(QemuPolicy(), 0.5, 10) == [0] * 10  # not strictly greater


def test_qemu_accumulates_short_iterations_into_one_second_periods() -> None:
    p = QemuPolicy()
    out = []
    for i in range(1, 17):  # 0.25 s iterations: a period closes every 4th one
        out.append(p.observe(obs(iteration=i, period=0.25, sent=25 * MIB, dirty=20 * MIB)))
    assert out[:7] == [0] * 7 and out[7] == 20  # second high period ends at iteration 8
    assert out[15] == 30


def test_qemu_not_during_bulk_stage_and_max() -> None:
    p = QemuPolicy(max_cpu_throttle=45)
    assert p.observe(obs(iteration=0, period=5, sent=MIB, dirty=100 * MIB)) == 0
    assert p.observe(obs(iteration=0, period=5, sent=MIB, dirty=100 * MIB)) == 0
    assert max(_qemu_periods(p, 5.0, 40)) == 45


def test_qemu_tailslow_takes_smaller_steps_near_the_ideal() -> None:
    fast, slow = QemuPolicy(), QemuPolicy(cpu_throttle_tailslow=True)
    # dirty just above the threshold: the ideal CPU share is close to the current one
    a = _qemu_periods(fast, 0.55, 6)
    b = _qemu_periods(slow, 0.55, 6)
    assert a[-1] == 40
    assert b[1] == 20 and b[-1] < a[-1]
    # cpu_now = 80, ideal = 80 * 50/55 = 72.7 -> step min(7.27, 10) -> +7
    assert b[3] == 27


def test_predictive_hits_the_formula() -> None:
    p = PredictivePolicy(margin=0.7, smoothing=1.0)
    bw, limit, rem = 100 * MIB, 0.3, 64 * MIB
    d0 = 400 * MIB
    got = p.observe(obs(iteration=1, rate=d0, bw=bw, remaining=rem, limit=limit))
    share = 0.7 * bw * limit * bw / (d0 * rem)
    assert got == math.ceil(100 * (1 - share))


def test_predictive_unthrottled_estimate_divides_out_the_current_throttle() -> None:
    p = PredictivePolicy(smoothing=1.0)
    p.observe(obs(iteration=1, throttle=75, rate=100 * MIB))
    assert p.unthrottled_rate() == pytest.approx(400 * MIB)


def test_predictive_no_throttle_when_it_fits_or_dirtying_is_slow() -> None:
    p = PredictivePolicy()
    assert p.observe(obs(iteration=1, rate=MIB, remaining=64 * MIB)) == 0
    q = PredictivePolicy()
    assert q.observe(obs(iteration=1, rate=1e12, remaining=MIB)) == 0  # fits the budget


def test_predictive_not_during_first_pass_ticks_but_at_its_end() -> None:
    p = PredictivePolicy()
    assert p.observe(obs("tick", iteration=0, rate=1e10)) == 0
    assert p.observe(obs("iteration", iteration=0, rate=1e10)) > 0


def test_predictive_readjusts_on_ticks_and_lowers_when_remaining_shrinks() -> None:
    p = PredictivePolicy(smoothing=1.0)
    high = p.observe(obs("tick", iteration=3, rate=300 * MIB, remaining=64 * MIB))
    low = p.observe(obs("tick", iteration=3, throttle=high, rate=300 * MIB * (1 - high / 100),
                        remaining=32 * MIB))
    assert 0 < low < high


@given(rate=st.floats(0, 1e11), bw=st.floats(0, 1e10), rem=st.integers(0, 1 << 40),
       limit=st.floats(0.001, 10), thr=st.integers(0, 99),
       kind=st.sampled_from(["tick", "iteration"]), it=st.integers(0, 100))
def test_every_policy_answers_a_valid_percent(rate: float, bw: float, rem: int, limit: float,
                                              thr: int, kind: str, it: int) -> None:
    for name in ("ch", "qemu", "predictive", "none"):
        p = make_policy(name)
        for _ in range(3):
            v = p.observe(obs(kind, iteration=it, throttle=thr, rate=rate, bw=bw,
                              remaining=rem, limit=limit, dirty=int(rate), sent=int(bw)))
            assert isinstance(v, int) and 0 <= v <= 99


def test_make_policy_rejects_unknown_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fast")
    with pytest.raises(ValueError, match="max-cpu-throttle"):
        QemuPolicy(max_cpu_throttle=100)
    with pytest.raises(ValueError, match="cpu-throttle-initial"):
        QemuPolicy(cpu_throttle_initial=0)
    with pytest.raises(ValueError):
        PredictivePolicy(margin=0)
