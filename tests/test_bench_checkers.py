"""``bench-checkers`` rows: per checker states, seconds, states/s, memory; a checker that runs
past its timeout is reported as timed out, not as a disagreement or a failed run."""

from __future__ import annotations

import pytest

from autoconverge.proofs import crosscheck, tools


def test_each_checker_row_has_rates_and_memory() -> None:
    out = crosscheck.bench_checkers(["small"], verify=False)
    (row,) = out["rows"]
    ex = row["explorer"]
    assert ex["states"] > 100 and ex["all_hold"]
    assert ex["states_per_second"] > 0 and ex["peak_rss_bytes"] > 0
    assert ex["bytes_per_state"] >= 0 and ex["process_wall_s"] >= ex["wall_s"]
    assert out["rss_floor_bytes"] > 0
    assert row["states_match"] and "explorer" in row["states_compared"]
    for checker in ("spin", "tlc"):
        if "skipped" not in row[checker]:
            assert row[checker]["states"] == ex["states"]
            assert row[checker]["peak_rss_bytes"] > 0
    if "states" in row["spin"]:
        assert row["explorer_vs_spin_states_per_second"] > 0


@pytest.mark.skipif(bool(tools.skip_reason("spin")), reason="SPIN not installed")
def test_a_checker_past_its_timeout_is_reported_as_timed_out() -> None:
    out = crosscheck.bench_checkers(["small"], timeout=0.001, verify=False)
    (row,) = out["rows"]
    assert row["spin"]["timed_out"] is True and "states" not in row["spin"]
    assert row["states_match"]  # only the checkers that finished are compared
    assert "spin" not in row["states_compared"]
