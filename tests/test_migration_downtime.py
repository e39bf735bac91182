"""The switch-over estimate: what it counts (final sync, vCPU state, backlog) and the fixed
part it learns from earlier switch-overs; the source records estimate vs actual."""

from __future__ import annotations

import pytest

from autoconverge.impl.migration.downtime import (
    INITIAL_FIXED_S,
    DowntimeHistory,
    SwitchoverInputs,
    transfer_s,
)
from autoconverge.impl.migration.fakes import run_fake_migration
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig

MB = 1e6


def inputs(**kw: float) -> SwitchoverInputs:
    base: dict[str, float] = {"remaining_bytes": 10 * MB, "queued_bytes": 0, "backlog_s": 0.0,
                              "dirty_rate_bps": 0.0, "since_sync_s": 0.0, "pause_delay_s": 0.0,
                              "vcpu_state_bytes": 0, "bandwidth_bps": 100 * MB}
    base.update(kw)
    return SwitchoverInputs(**base)  # type: ignore[arg-type]


def test_transfer_counts_every_byte_the_switch_over_sends() -> None:
    assert transfer_s(inputs()) == pytest.approx(0.1)
    # the pages dirtied since the last sync go out in the final pass
    assert transfer_s(inputs(dirty_rate_bps=50 * MB, since_sync_s=0.2)) == pytest.approx(0.2)
    # ... and those dirtied until the vCPUs are paused
    assert transfer_s(inputs(dirty_rate_bps=50 * MB, since_sync_s=0.1, pause_delay_s=0.1)) == \
        pytest.approx(0.2)
    assert transfer_s(inputs(vcpu_state_bytes=int(5 * MB))) == pytest.approx(0.15)
    assert transfer_s(inputs(queued_bytes=int(10 * MB), backlog_s=0.05)) == \
        pytest.approx(0.25)
    assert transfer_s(inputs(bandwidth_bps=0.0)) is None
    assert transfer_s(inputs(remaining_bytes=0, bandwidth_bps=0.0)) == 0.0


def test_the_fixed_part_is_learnt_from_a_high_quantile_of_recent_residuals() -> None:
    h = DowntimeHistory(length=8)
    assert h.fixed_s() == INITIAL_FIXED_S
    h.record(0.10, 0.15)
    assert h.fixed_s() == pytest.approx(0.05)
    assert h.estimate_s(inputs()) == pytest.approx(0.15)
    for residual in (0.01, 0.02, 0.03, 0.04, 0.06, 0.07):
        h.record(0.10, 0.10 + residual)
    # 7 residuals 0.01..0.07: the 0.75 quantile is the sixth smallest (index 0.75 x 6)
    assert h.fixed_s() == pytest.approx(0.06)
    h.record(0.10, 0.50)  # one stall does not become the margin (index 0.75 x 7 -> 5)
    assert h.fixed_s() == pytest.approx(0.06)
    for _ in range(8):
        h.record(0.10, 0.50)  # stalls every time: learnt, but capped at half the limit
    assert h.fixed_s() == pytest.approx(0.40)
    assert h.fixed_s(limit_s=0.3) == pytest.approx(0.15)
    h.record(0.20, 0.10)  # an over-estimate never makes the fixed part negative
    for _ in range(8):
        h.record(0.20, 0.10)
    assert h.fixed_s() == 0.0


def test_the_pause_delay_is_the_median_recent_one() -> None:
    h = DowntimeHistory(length=3, initial_pause_delay_s=0.01)
    assert h.pause_delay_s() == 0.01
    for d in (0.004, 0.002, 0.5):
        h.record_pause_delay(d)
    assert h.pause_delay_s() == 0.004
    h.record_pause_delay(0.001)  # the window holds 0.002, 0.5, 0.001
    assert h.pause_delay_s() == 0.002


def test_the_source_records_each_switch_over_and_reports_the_estimate_error() -> None:
    h = DowntimeHistory()
    busy = {"rate_pps": 20_000.0, "working_set": (64, 1024)}
    cfg = MigrationConfig(max_bandwidth_bps=10e6, timeout_s=120.0)
    results, fixed_before = [], []
    for _ in range(2):
        fixed_before.append(h.fixed_s())
        run = run_fake_migration(make_policy("predictive"), config=cfg,
                                 on_source=lambda s: setattr(s, "downtime_history", h),
                                 **busy)
        r = run.result
        assert r.converged and r.downtime_ms is not None and r.est_downtime_ms is not None
        assert r.downtime_estimate_error_ms == pytest.approx(r.downtime_ms - r.est_downtime_ms)
        assert r.downtime_ms <= r.downtime_limit_ms
        results.append(r)
    assert fixed_before[0] == INITIAL_FIXED_S
    assert results[0].switchover_fixed_ms == pytest.approx(INITIAL_FIXED_S * 1e3)
    # the second run decided with what the first one measured
    assert fixed_before[1] != INITIAL_FIXED_S
    assert results[1].switchover_fixed_ms == pytest.approx(fixed_before[1] * 1e3)
