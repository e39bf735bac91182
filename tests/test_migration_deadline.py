"""Finish-by-deadline: the throttle plan (least stolen CPU in time), the predictive policy's
re-planning and infeasibility verdict, and the source's reaction (fakes, virtual time)."""

from __future__ import annotations

import math

import pytest

from autoconverge.impl.migration.deadline import plan_throttle, precopy_time_s
from autoconverge.impl.migration.fakes import run_fake_migration
from autoconverge.impl.migration.policy import Observation, PredictivePolicy, make_policy
from autoconverge.impl.migration.source import MigrationConfig, Sample

MIB = 1024 * 1024


def stolen(ratio: float, send_s: float, percent: int, one_pass: int) -> float:
    """Guest CPU stolen (per vCPU) over the predicted pre-copy at ``percent``."""
    t = precopy_time_s(ratio, send_s, percent, one_pass)
    return math.inf if math.isinf(t) else percent / 100 * t


@pytest.mark.parametrize("ratio", [1.0, 1.5, 3.0, 8.0])
def test_a_guest_faster_than_the_link_gets_the_one_pass_throttle_the_least_stealing(
        ratio: float) -> None:
    b, r, budget = 100 * MIB, 64 * MIB, 10 * MIB
    plan = plan_throttle(dirty_rate_bps=ratio * b, bandwidth_bps=b, remaining_bytes=r,
                         budget_bytes=budget, horizon_s=None, max_percent=99)
    one_pass = math.ceil(100 * (1 - budget / (ratio * r)))
    assert plan.percent == one_pass and plan.feasible
    # no other throttle steals less (the model's claim, checked by brute force)
    best = min(range(100), key=lambda p: stolen(ratio, r / b, p, one_pass))
    assert stolen(ratio, r / b, plan.percent, one_pass) <= stolen(ratio, r / b, best, one_pass)


def test_a_guest_slower_than_the_link_is_not_throttled_without_a_tight_horizon() -> None:
    b = 100 * MIB
    plan = plan_throttle(dirty_rate_bps=0.5 * b, bandwidth_bps=b, remaining_bytes=64 * MIB,
                         budget_bytes=10 * MIB, horizon_s=30.0, max_percent=99)
    assert plan.percent == 0 and plan.feasible
    assert plan.predicted_s == pytest.approx(0.64 / 0.5)


def test_a_tight_horizon_gets_the_least_throttle_that_meets_it() -> None:
    b, r = 100 * MIB, 64 * MIB  # one pass: 0.64 s; unthrottled at ratio 0.9: 6.4 s
    plan = plan_throttle(dirty_rate_bps=0.9 * b, bandwidth_bps=b, remaining_bytes=r,
                         budget_bytes=1 * MIB, horizon_s=2.0, max_percent=99)
    assert 0 < plan.percent < 99 and plan.feasible
    assert plan.predicted_s <= 2.0
    less = precopy_time_s(0.9, r / b, plan.percent - 1, 99)
    assert less > 2.0, "one point less would also meet the horizon: not the least"


def test_a_horizon_shorter_than_one_pass_is_infeasible() -> None:
    plan = plan_throttle(dirty_rate_bps=3e8, bandwidth_bps=1e8, remaining_bytes=int(5e8),
                         budget_bytes=1e6, horizon_s=4.0, max_percent=99)
    assert not plan.feasible and plan.percent == 99


def obs(kind: str = "iteration", iteration: int = 1, *, rate: float = 300 * MIB,
        bw: float = 100 * MIB, remaining: int = 64 * MIB, deadline: float | None = None,
        timeout: float | None = None, throttle: int = 0) -> Observation:
    return Observation(kind=kind, time_s=0.0, iteration=iteration, throttle_percent=throttle,  # type: ignore[arg-type]
                       period_s=0.25, dirty_bytes_period=0, dirty_rate_bps=rate,
                       sent_bytes_period=0, bandwidth_bps=bw, remaining_bytes=remaining,
                       downtime_limit_s=0.3, deadline_left_s=deadline, timeout_left_s=timeout)


def test_predictive_reports_an_infeasible_deadline_and_clears_it_when_it_becomes_feasible(
        ) -> None:
    p = PredictivePolicy(smoothing=1.0)
    p.observe(obs("tick", iteration=0, remaining=640 * MIB, deadline=3.0))
    assert p.infeasible is not None and "infeasible even at 99 %" in p.infeasible
    p.observe(obs("tick", iteration=0, remaining=64 * MIB, deadline=3.0))
    assert p.infeasible is None


def test_predictive_without_a_deadline_never_says_infeasible() -> None:
    p = PredictivePolicy()
    p.observe(obs(remaining=640 * MIB, timeout=0.5))
    assert p.infeasible is None


def test_predictive_does_not_throttle_a_guest_that_converges_alone_in_time() -> None:
    p = PredictivePolicy(smoothing=1.0)
    assert p.observe(obs(rate=50 * MIB, timeout=60.0)) == 0
    q = PredictivePolicy(smoothing=1.0)  # the same guest, little time left: it must
    assert q.observe(obs(rate=90 * MIB, timeout=2.0)) > 0


CAP = 10e6
BUSY = {"rate_pps": 20_000.0, "working_set": (64, 1024)}


def test_source_says_early_that_a_deadline_is_infeasible_and_cancels() -> None:
    samples: list[Sample] = []
    # 4096 pages = 16 MiB at 10 MB/s: the first pass alone takes ~1.7 s > a 1 s deadline
    run = run_fake_migration(make_policy("predictive"), pages=4096, on_progress=samples.append,
                             config=MigrationConfig(max_bandwidth_bps=CAP, timeout_s=60.0,
                                                    deadline_s=1.0), **BUSY)
    r = run.result
    assert r.status == "timeout" and r.deadline_infeasible and r.source_running is True
    assert r.deadline_note and "infeasible" in r.deadline_note
    assert r.total_time_s < 1.0, "said so early, not at the deadline"
    notes = [s.note for s in samples if s.note]
    assert notes == [r.deadline_note]


def test_source_with_strategy_ignore_goes_on_after_an_infeasible_deadline() -> None:
    run = run_fake_migration(make_policy("predictive"), pages=4096,
                             config=MigrationConfig(max_bandwidth_bps=CAP, timeout_s=60.0,
                                                    deadline_s=1.0, timeout_strategy="ignore"),
                             **BUSY)
    r = run.result
    assert r.converged and r.deadline_infeasible and r.timeout_exceeded
    assert r.memory_hash_match is True


def test_a_feasible_deadline_is_met_and_the_result_says_so() -> None:
    run = run_fake_migration(make_policy("predictive"),
                             config=MigrationConfig(max_bandwidth_bps=CAP, timeout_s=60.0,
                                                    deadline_s=5.0), **BUSY)
    r = run.result
    assert r.converged and not r.deadline_infeasible and r.total_time_s <= 5.0
    assert r.deadline_s == 5.0


def test_progress_samples_carry_the_stolen_cpu_so_far() -> None:
    samples: list[Sample] = []
    run = run_fake_migration(make_policy("ch"), on_progress=samples.append,
                             config=MigrationConfig(max_bandwidth_bps=CAP, timeout_s=120.0),
                             **BUSY)
    assert run.result.converged
    stolen = [s.guest_cpu_stolen_s for s in samples]
    assert stolen == sorted(stolen) and stolen[-1] > 0


def test_the_progress_line_shows_stolen_cpu_per_round_and_notes_on_their_own_line() -> None:
    import io

    from autoconverge.impl.migration.progress import ProgressPrinter

    out = io.StringIO()
    printer = ProgressPrinter(out)
    base = (1.0, "iteration", 3, 8 * MIB, 90, 10e6, 1e6, 0.2, 40 * MIB)
    printer(Sample(*base, guest_cpu_stolen_s=1.25, throttle_ms_per_round=90.0))
    printer(Sample(*base, guest_cpu_stolen_s=1.5, note="deadline infeasible"))
    lines = out.getvalue().splitlines()
    assert "stolen 1.25 vCPU-s (90 ms/round)" in lines[0]
    assert lines[1] == "NOTE: deadline infeasible"
    assert "stolen 1.50 vCPU-s" in lines[2] and "ms/round" not in lines[2]
