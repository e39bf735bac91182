"""The sweep's parts that need no guest: its rows, table, and the target checker (shown to
catch each kind of miss), and the warm-up dirty-rate measurement the link is set from."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from autoconverge.cli.bench_sweep import ROW_KEYS, evaluate_targets, sweep_row, table
from autoconverge.impl.migration.dirty_rate import measure_dirty_rate
from autoconverge.impl.migration.fakes import FakeClock, FakeVm
from autoconverge.impl.migration.source import MigrationResult

LIMIT_MS = 300.0


def row(ratio: float, policy: str, converged: bool, time_s: float, stolen: float,
        downtime: float | None = 100.0) -> dict[str, Any]:
    r = MigrationResult(status="completed" if converged else "timeout", policy=policy,
                        total_time_s=time_s, guest_cpu_stolen_s=stolen,
                        downtime_ms=downtime if converged else None,
                        est_downtime_ms=90.0 if converged else None,
                        downtime_estimate_error_ms=(downtime or 0) - 90.0 if converged else None)
    return sweep_row(ratio, policy, 1, r, {"dirty_rate_to_bandwidth": ratio})


def good_rows() -> list[dict[str, Any]]:
    return [
        # ratio 0.5: none converges, nobody needs to steal
        row(0.5, "none", True, 1.0, 0.0), row(0.5, "ch", True, 1.0, 0.0),
        row(0.5, "qemu", True, 1.0, 0.0), row(0.5, "predictive", True, 1.0, 0.0),
        # ratio 3: throttling needed; qemu times out
        row(3.0, "none", False, 45.0, 0.0), row(3.0, "ch", True, 24.0, 8.0),
        row(3.0, "qemu", False, 45.0, 15.0), row(3.0, "predictive", True, 4.0, 1.2),
    ]


def misses(rows: list[dict[str, Any]]) -> list[str]:
    return [m["target"] for m in evaluate_targets(rows, LIMIT_MS)["misses"]]


def edit(rows: list[dict[str, Any]], ratio: float, policy: str, **kw: Any) -> None:
    for r in rows:
        if r["ratio"] == ratio and r["policy"] == policy:
            r.update(kw)


def test_rows_carry_the_issues_keys_first() -> None:
    r = row(2.0, "ch", True, 3.0, 1.0)
    assert tuple(r)[:len(ROW_KEYS)] == ROW_KEYS
    assert "| 2 | ch | 1 | yes |" in table([r])


def test_the_good_sweep_meets_every_target() -> None:
    t = evaluate_targets(good_rows(), LIMIT_MS)
    assert t["all_met"] and t["misses"] == []
    assert t["worst_downtime_estimate_error_ms"] == pytest.approx(10.0)


@pytest.mark.parametrize("break_it, caught", [
    (lambda rs: edit(rs, 0.5, "predictive", guest_cpu_stolen_s=0.3),
     "none converges: predictive steals 0"),
    (lambda rs: edit(rs, 3.0, "predictive", total_time_s=13.0),
     "predictive total time <= 0.5x ch's"),
    (lambda rs: edit(rs, 3.0, "predictive", guest_cpu_stolen_s=5.0),
     "predictive stolen CPU <= 0.5x ch's"),
    (lambda rs: edit(rs, 3.0, "predictive", converged=False),
     "predictive converges wherever any policy does"),
    (lambda rs: edit(rs, 3.0, "ch", downtime_ms=301.0),
     "downtime <= 300 ms in every converged run"),
])
def test_each_kind_of_miss_is_caught(break_it: Any, caught: str) -> None:
    rows = copy.deepcopy(good_rows())
    break_it(rows)
    got = misses(rows)
    assert any(caught in m for m in got), got


def test_deadline_rows_report_actual_time_against_the_deadline() -> None:
    r = MigrationResult(status="completed", policy="predictive", total_time_s=6.0,
                        deadline_s=8.0, downtime_ms=100.0)
    d = sweep_row(1.5, "predictive+deadline", 1, r, {})
    assert d["deadline_met"] is True
    t = evaluate_targets([d], LIMIT_MS)
    assert t["deadline"][0]["time_over_deadline"] == 0.75
    late = sweep_row(1.5, "predictive+deadline", 1, MigrationResult(
        status="completed", policy="predictive", total_time_s=9.0, deadline_s=8.0,
        downtime_ms=100.0), {})
    assert late["deadline_met"] is False


def test_the_dirty_rate_counts_distinct_pages_per_window() -> None:
    clock = FakeClock()
    # 20 000 writes/s cycling over 1 000 pages: a 0.3 s window holds at most 1 000 of them
    vm = FakeVm(clock, pages=4096, vcpus=1, dirty_rate_pps=20_000.0, working_set=(1, 1000))
    rate = measure_dirty_rate(vm, 1.0, 0.3, sleep=clock.advance, now=clock.now)
    assert rate == pytest.approx(1000 * 4096 / 0.3, rel=0.05)
    assert not vm.logging, "dirty logging left on"
    slow = FakeVm(clock, pages=4096, vcpus=1, dirty_rate_pps=1_000.0, working_set=(1, 4000))
    assert measure_dirty_rate(slow, 1.0, 0.3, sleep=clock.advance, now=clock.now) == \
        pytest.approx(1000 * 4096, rel=0.05)
