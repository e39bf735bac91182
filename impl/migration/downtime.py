"""The switch-over (downtime) estimate, with a fixed part learnt from earlier switch-overs.

The source switches over when this estimate fits the downtime limit. It counts what the
switch-over really does after the vCPUs stop:

- send the dirty bytes pending at the check, after what still sits in the socket buffer and
  the rate limiter's backlog;
- the pages the guest dirties between the last dirty-log sync and the pause (the final sync
  fetches them): the dirty rate measured at the current throttle times the time since that
  sync plus the time from the decision until the vCPUs are paused (learnt: the median of
  the recent switch-overs);
- the vCPU state frames;
- a fixed part: pausing the vCPUs, the final sync, the PREPARED and RESUMED round trips, the
  destination loading the state and starting the guest. It is *learnt*: after each
  switch-over :meth:`DowntimeHistory.record` keeps the actual downtime less the estimate's
  transfer part, and the fixed part is a high quantile (:data:`FIXED_QUANTILE`) of the
  recent ones (a margin from previous estimates vs actuals), :data:`INITIAL_FIXED_S` before
  any was measured, never more than half the downtime limit. Not the largest: on a loaded
  host one switch-over stalled by the scheduler would otherwise make the next ones wait for
  a near-empty dirty set that a running guest never reaches (measured: ``ch`` and
  ``predictive`` then took 20-30 delta iterations at 99 % instead of 1-3).

One :data:`PROCESS_HISTORY` per process (every migration a benchmark runs learns from the
ones before); a source can be given its own.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

INITIAL_FIXED_S = 0.03
"""The fixed part before any switch-over was measured (round trips and pausing, generous)."""
INITIAL_PAUSE_DELAY_S = 0.01
"""Decision to vCPUs paused, before any was measured (a scheduler tick here is 4 ms)."""
HISTORY_LENGTH = 8
FIXED_QUANTILE = 0.75
"""Which recent residual is the fixed part (0.75 of 8: the third largest)."""
MAX_FIXED_SHARE = 0.5
"""The fixed part is at most this share of the downtime limit (the rest sends pages)."""


@dataclass(frozen=True)
class SwitchoverInputs:
    remaining_bytes: int
    queued_bytes: int
    """In the socket buffer, not yet acknowledged by the peer."""
    backlog_s: float
    """How long the rate limiter holds the next byte back."""
    dirty_rate_bps: float
    """Measured at the current throttle."""
    since_sync_s: float
    pause_delay_s: float
    """Expected time from the decision until the vCPUs are paused (they dirty on till then)."""
    vcpu_state_bytes: int
    bandwidth_bps: float


def transfer_s(x: SwitchoverInputs) -> float | None:
    """The part of the switch-over that is sending bytes (None: bandwidth not measured)."""
    late = x.dirty_rate_bps * (max(x.since_sync_s, 0.0) + x.pause_delay_s)
    if x.remaining_bytes == 0 and late == 0:
        return x.backlog_s if x.bandwidth_bps <= 0 else x.backlog_s + (
            x.queued_bytes + x.vcpu_state_bytes) / x.bandwidth_bps
    if x.bandwidth_bps <= 0:
        return None
    return x.backlog_s + (x.remaining_bytes + x.queued_bytes + late + x.vcpu_state_bytes) / \
        x.bandwidth_bps


class DowntimeHistory:
    """Recent switch-overs: (estimated transfer part, actual downtime) and the decision-to-
    paused delays, seconds. Thread-safe."""

    def __init__(self, length: int = HISTORY_LENGTH, initial_fixed_s: float = INITIAL_FIXED_S,
                 initial_pause_delay_s: float = INITIAL_PAUSE_DELAY_S) -> None:
        self._lock = threading.Lock()
        self._runs: deque[tuple[float, float]] = deque(maxlen=length)
        self._delays: deque[float] = deque(maxlen=length)
        self._initial = initial_fixed_s
        self._initial_delay = initial_pause_delay_s

    def record(self, estimated_transfer_s: float, actual_s: float) -> None:
        with self._lock:
            self._runs.append((estimated_transfer_s, actual_s))

    def record_pause_delay(self, delay_s: float) -> None:
        with self._lock:
            self._delays.append(max(delay_s, 0.0))

    def pause_delay_s(self) -> float:
        """The median recent decision-to-paused delay."""
        with self._lock:
            if not self._delays:
                return self._initial_delay
            return sorted(self._delays)[len(self._delays) // 2]

    def fixed_s(self, limit_s: float | None = None) -> float:
        """The learnt fixed part: a high quantile of the recent (actual - transfer estimate),
        >= 0; with ``limit_s``, at most :data:`MAX_FIXED_SHARE` of it."""
        with self._lock:
            if not self._runs:
                fixed = self._initial
            else:
                residuals = sorted(actual - est for est, actual in self._runs)
                fixed = max(0.0, residuals[int(FIXED_QUANTILE * (len(residuals) - 1) + 0.5)])
        return fixed if limit_s is None else min(fixed, MAX_FIXED_SHARE * limit_s)

    def estimate_s(self, x: SwitchoverInputs, limit_s: float | None = None) -> float | None:
        t = transfer_s(x)
        return None if t is None else t + self.fixed_s(limit_s)


PROCESS_HISTORY = DowntimeHistory()
