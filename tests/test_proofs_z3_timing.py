"""Timing arithmetic proofs, and that they fail for broken arithmetic."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import z3

from autoconverge.proofs.timing_proofs import TimingProof, prove_timing
from autoconverge.spec import timing
from autoconverge.spec.expr import If


def _broken(**overrides: Any) -> SimpleNamespace:
    funcs = {n: getattr(timing, n) for n in dir(timing) if not n.startswith("_")}
    funcs.update(overrides)
    return SimpleNamespace(**funcs)


def _failed(result: TimingProof) -> set[str]:
    return set(result.failed_obligations)


def test_timing_holds() -> None:
    r = prove_timing()
    assert r.holds is True
    assert len(r.obligations) >= 10
    for o in r.obligations:
        assert o.verdict == "proved" and o.hypotheses_satisfiable, o
    assert r.ranges["percent"] == [1, 99]


def test_unclamped_pause_sleep_goes_negative() -> None:
    def raw(p: Any, t: Any, cp: Any, cr: Any) -> Any:
        return timing.pause_share_ns(p, t) - cp - cr

    r = prove_timing(_broken(pause_sleep_ns=raw))
    assert not r.holds
    assert "uncompensable-clamped" in _failed(r)
    assert "pause-sleep-non-negative" not in _failed(r)


def test_uncompensated_costs_break_the_sum() -> None:
    def no_comp(p: Any, t: Any, cp: Any, cr: Any) -> Any:
        return timing.pause_share_ns(p, t)

    assert {"slice-sums-to-timeslice", "paused-share-exact"} <= _failed(
        prove_timing(_broken(pause_sleep_ns=no_comp)))


def test_rounding_up_is_caught() -> None:
    def ceil_share(p: Any, t: Any) -> Any:
        return z3.ToInt(z3.ToReal(p * t + 99) / 100)

    assert "floor-division" in _failed(prove_timing(_broken(pause_share_ns=ceil_share)))


def test_a_too_small_timeslice_would_not_pause() -> None:
    def coarse(p: Any, t: Any) -> Any:  # shares counted in whole 10 ms ticks
        return If(p * t >= 100 * 10_000_000, (p * t) / 100, 0)

    assert "smallest-percent-pauses" in _failed(prove_timing(_broken(pause_share_ns=coarse)))
