"""Every schedule of the real throttler code up to a preemption bound, and trace checks."""

from __future__ import annotations

import pytest

from autoconverge.impl import throttler as throttler_module
from autoconverge.model.interleavings import SCENARIOS, explore_scenario
from autoconverge.model.tracecheck import SpecFollower, TraceMismatch
from autoconverge.spec import SPEC


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.covers("safety", "ShutdownCompletes", "HandoverCompletes", "AbortCompletes")
def test_every_schedule_follows_the_spec(name: str) -> None:
    result = explore_scenario(name, preemption_bound=2)
    assert result.ok, (result.failure, result.failing_choices)
    assert result.complete and result.schedules > 10


def _racy_expire(self: throttler_module._Worker) -> None:
    """The throttler before the fix: fire expire without a last look at the queue."""
    self._step(clock=True)


def test_exploration_finds_the_expire_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker can fail: the race it once found is reintroduced and found again."""
    monkeypatch.setattr(throttler_module._Worker, "_expire", _racy_expire)
    result = explore_scenario("change_at_phase_boundary", preemption_bound=1)
    assert not result.ok
    assert "TraceMismatch" in (result.failure or "") and "expire" in (result.failure or "")
    assert result.failing_choices  # replayable


def test_trace_checker_rejects_a_forged_step() -> None:
    from autoconverge.impl.throttler import TraceEvent
    from autoconverge.spec import lifecycle as L

    forged = TraceEvent(0, "worker", L.RECV_SET, L.WAITING, L.PAUSE, {}, SPEC.initial, {})
    with pytest.raises(TraceMismatch, match="enables 0"):
        SpecFollower(SPEC).step(forged)  # nothing was queued
