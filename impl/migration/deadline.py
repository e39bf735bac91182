"""Throttle planning: the least guest CPU stolen that still converges within a time horizon.

The model the predictive policy plans with. A pass sends the ``R`` bytes still dirty over a
link of ``B`` bytes/s in ``R / B`` seconds. A guest whose unthrottled dirty rate is ``D``,
throttled to ``p`` %, dirties ``q = (D / B)(1 - p/100)`` bytes for every byte sent, so the
passes shrink geometrically by ``q`` and the whole pre-copy takes about ``(R / B) / (1 - q)``
seconds (``q < 1``); it ends in one pass once ``q R`` fits the switch-over budget, i.e. from
``p* = 1 - budget / ((D / B) R)`` on.

Guest CPU stolen is ``p`` times that time (per vCPU), which is proportional to
``p / (1 - q)``. Its derivative in ``p`` has the sign of ``1 - D / B``:

- ``D < B`` (the guest alone converges): stealing grows with ``p``, so throttle as little as
  the horizon allows: the least ``p`` with ``(R / B) / (1 - q) <= horizon``, which is 0 when
  the horizon is long enough;
- ``D >= B``: stealing shrinks with ``p`` up to ``p*`` and grows past it (one pass is the
  least time possible), so ``p*`` is both the fastest and the least-stealing choice.

A horizon is infeasible when even the highest throttle cannot finish in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    percent: int
    """The throttle to apply (0..max)."""
    feasible: bool
    """The horizon can be met (at ``percent``, or at the highest throttle)."""
    predicted_s: float
    """Predicted pre-copy time left at ``percent`` (inf: it does not converge)."""


def precopy_time_s(ratio: float, send_s: float, percent: int, one_pass_percent: int) -> float:
    """Predicted pre-copy time left: ``send_s`` for one pass, the geometric sum otherwise."""
    if percent >= one_pass_percent:
        return send_s
    q = ratio * (1.0 - percent / 100.0)
    return send_s / (1.0 - q) if q < 1.0 else math.inf


def plan_throttle(*, dirty_rate_bps: float, bandwidth_bps: float, remaining_bytes: int,
                  budget_bytes: float, horizon_s: float | None, max_percent: int) -> Plan:
    """The least-stealing throttle that converges within ``horizon_s`` (None: no horizon).

    ``dirty_rate_bps`` is the guest's *unthrottled* dirty rate; ``budget_bytes`` what the
    switch-over can send within the downtime limit. All inputs positive.
    """
    ratio = dirty_rate_bps / bandwidth_bps
    send_s = remaining_bytes / bandwidth_bps
    allowed_share = min(budget_bytes / (ratio * remaining_bytes), 1.0)
    one_pass = max(0, math.ceil(100.0 * (1.0 - allowed_share)))
    best = min(one_pass, max_percent)
    feasible = horizon_s is None or (
        horizon_s > 0 and precopy_time_s(ratio, send_s, max_percent, one_pass) <= horizon_s)
    if ratio >= 1.0 or horizon_s is None:
        percent = best if ratio >= 1.0 else 0
    elif horizon_s <= send_s:
        percent = best  # not even one pass fits: as fast as possible
    else:
        need = 1.0 - (1.0 - send_s / horizon_s) / ratio
        percent = min(best, max(0, math.ceil(100.0 * need - 1e-9)))
    return Plan(percent, feasible, precopy_time_s(ratio, send_s, percent, one_pass))
