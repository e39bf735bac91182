"""Throttle policies: given what the migration observed, which throttle percentage to apply.

A policy sees a sequence of :class:`Observation` values (one at the end of every pre-copy
iteration and one per *tick*, at least once a second, in between) and answers each with the
throttle percentage it wants (0 = none). It has no clock, no threads and no I/O: its answer
depends only on the observations so far, so the policies are unit-tested by feeding them
observation sequences.

- ``none``: never throttles.
- ``ch``: Cloud Hypervisor's, as in its auto-converge pull request (the code this project
  starts from): from delta iteration 2 on, +10 % at every even delta iteration (2, 4, 6,
  ...), capped at 99 % (reached at iteration 20).
- ``qemu``: QEMU's auto-converge. Per sync period (an iteration end at least 1 s after the
  previous period began): if the bytes dirtied in the period exceed
  ``throttle-trigger-threshold`` % of the bytes transferred in it for the second time, step:
  first ``cpu-throttle-initial``, then ``+cpu-throttle-increment`` up to
  ``max-cpu-throttle``; with ``cpu-throttle-tailslow`` the step shrinks to what the ratio
  says is needed. Not during the first (bulk) pass.
- ``predictive`` (ours): estimate the guest's unthrottled dirty rate ``D`` from the rate
  measured at the current throttle, the link bandwidth ``B`` and the bytes ``R`` still to
  send; the next pass over ``R`` takes ``R / B`` seconds, in which a guest throttled to ``p``
  dirties ``D (1 - p) R / B`` bytes; switch-over needs that to fit ``B x downtime-limit``.
  So ``p = 1 - m B^2 L / (D R)`` with a safety margin ``m``; re-evaluated at every tick.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from autoconverge.spec import MAX_PERCENT

ObservationKind = Literal["iteration", "tick"]


@dataclass(frozen=True)
class Observation:
    """What the source measured since the previous observation.

    ``iteration``: for kind "iteration", the index of the pass that just ended (0 = the
    first full pass, 1.. = delta iterations); for "tick", the pass in progress.
    """

    kind: ObservationKind
    time_s: float
    iteration: int
    throttle_percent: int
    period_s: float
    dirty_bytes_period: int
    """Bytes of pages that became dirty (not already pending) since the last observation."""
    dirty_rate_bps: float
    """Raw dirty rate (bytes/s of pages written, from the log) measured at
    ``rate_throttle_percent``."""
    sent_bytes_period: int
    bandwidth_bps: float
    """Measured transfer rate (wire bytes/s); 0 if not measured yet."""
    remaining_bytes: int
    """Dirty bytes known still to send (rest of this pass + pending for the next)."""
    downtime_limit_s: float
    rate_throttle_percent: int | None = None
    """The throttle in force while the dirty rate was measured (None: the current one)."""
    rate_run_share: float | None = None
    """Measured share of vCPU time the guest ran while the rate was measured (None: infer
    it from the throttle percentage)."""


class Policy(Protocol):
    name: str

    def observe(self, obs: Observation) -> int:
        """The throttle percentage wanted from now on (0..99)."""
        ...


def _clamp(p: int, hi: int = MAX_PERCENT) -> int:
    return max(0, min(hi, p))


class NoThrottle:
    name = "none"

    def observe(self, obs: Observation) -> int:
        return 0


@dataclass
class CloudHypervisorPolicy:
    """Policy ``ch``: the step schedule of Cloud Hypervisor's auto-converge pull request (the
    code this project starts from): +increment at every ``every``-th delta iteration from
    ``start_iteration``."""

    start_iteration: int = 2
    every: int = 2
    increment: int = 10
    max_percent: int = MAX_PERCENT
    name: str = "ch"

    def __post_init__(self) -> None:
        self._percent = 0
        _check_percent("max_percent", self.max_percent, 1)
        _check_percent("increment", self.increment, 1)
        if self.start_iteration < 1 or self.every < 1:
            raise ValueError("ch policy: start_iteration and every must be >= 1")

    def observe(self, obs: Observation) -> int:
        i = obs.iteration
        if obs.kind == "iteration" and i >= self.start_iteration and \
                (i - self.start_iteration) % self.every == 0:
            steps = (i - self.start_iteration) // self.every + 1
            self._percent = _clamp(steps * self.increment, self.max_percent)
        return self._percent


@dataclass
class QemuPolicy:
    """QEMU's auto-converge (migration/ram.c), parameter names as QEMU's."""

    throttle_trigger_threshold: int = 50
    cpu_throttle_initial: int = 20
    cpu_throttle_increment: int = 10
    max_cpu_throttle: int = MAX_PERCENT
    cpu_throttle_tailslow: bool = False
    high_periods_to_trigger: int = 2
    min_period_s: float = 1.0
    name: str = "qemu"

    def __post_init__(self) -> None:
        _check_percent("throttle-trigger-threshold", self.throttle_trigger_threshold, 1, 100)
        _check_percent("cpu-throttle-initial", self.cpu_throttle_initial, 1)
        _check_percent("cpu-throttle-increment", self.cpu_throttle_increment, 1)
        _check_percent("max-cpu-throttle", self.max_cpu_throttle, 1)
        self._percent = 0
        self._high = 0
        self._period_s = 0.0
        self._dirty = 0
        self._xfer = 0

    def observe(self, obs: Observation) -> int:
        self._period_s += obs.period_s
        self._dirty += obs.dirty_bytes_period
        self._xfer += obs.sent_bytes_period
        if obs.kind != "iteration" or self._period_s < self.min_period_s:
            return self._percent
        dirty, xfer = self._dirty, self._xfer
        self._period_s, self._dirty, self._xfer = 0.0, 0, 0
        if obs.iteration < 1:  # bulk stage: QEMU does not throttle during it
            return self._percent
        threshold = xfer * self.throttle_trigger_threshold / 100
        if dirty > threshold:
            self._high += 1
            if self._high >= self.high_periods_to_trigger:
                self._high = 0
                self._step(dirty, threshold)
        return self._percent

    def _step(self, dirty: int, threshold: float) -> None:
        if self._percent == 0:
            self._percent = min(self.cpu_throttle_initial, self.max_cpu_throttle)
            return
        inc = float(self.cpu_throttle_increment)
        if self.cpu_throttle_tailslow and dirty > 0:
            cpu_now = 100 - self._percent
            cpu_ideal = cpu_now * (threshold / dirty)
            inc = min(cpu_now - cpu_ideal, inc)
        self._percent = _clamp(self._percent + max(int(inc), 0), self.max_cpu_throttle)


@dataclass
class PredictivePolicy:
    """Ours: the throttle that makes the next pass fit the downtime limit, re-set every tick."""

    margin: float = 0.7
    """Aim for this fraction of ``bandwidth x downtime-limit`` (estimates are noisy)."""
    max_cpu_throttle: int = MAX_PERCENT
    smoothing: float = 0.5
    """Weight of the newest unthrottled-dirty-rate estimate in the running average."""
    min_percent_step: int = 1
    name: str = "predictive"

    def __post_init__(self) -> None:
        if not 0 < self.margin <= 1 or not 0 < self.smoothing <= 1:
            raise ValueError("predictive policy: margin and smoothing must be in (0, 1]")
        _check_percent("max-cpu-throttle", self.max_cpu_throttle, 1)
        self._percent = 0
        self._d0: float | None = None

    def unthrottled_rate(self) -> float | None:
        return self._d0

    def observe(self, obs: Observation) -> int:
        if obs.period_s > 0 and obs.dirty_rate_bps >= 0:
            at = obs.throttle_percent if obs.rate_throttle_percent is None else \
                obs.rate_throttle_percent
            share = 1.0 - at / 100.0 if obs.rate_run_share is None else obs.rate_run_share
            run_share = max(share, 0.005)
            est = obs.dirty_rate_bps / run_share
            # a burst or an idle tick moves the estimate part of the way only
            self._d0 = est if self._d0 is None else (
                self.smoothing * est + (1 - self.smoothing) * self._d0)
        if obs.iteration < 1 and obs.kind == "tick":
            return self._percent  # first full pass: re-dirtying is bounded by the working set
        b, r, d0 = obs.bandwidth_bps, obs.remaining_bytes, self._d0
        if b <= 0 or d0 is None or d0 <= 0 or r <= 0:
            return self._percent
        budget = self.margin * b * obs.downtime_limit_s
        if r <= budget:  # the switch-over happens at the next check; keep what got us here
            return self._percent
        # (capped: a vanishing dirty rate makes the quotient overflow to infinity)
        allowed_share = min(budget * b / (d0 * r), 1.0)
        want = math.ceil(100.0 * (1.0 - allowed_share))
        want = _clamp(want, self.max_cpu_throttle)
        if abs(want - self._percent) >= self.min_percent_step:
            self._percent = want
        return self._percent


def _check_percent(name: str, v: int, lo: int = 0, hi: int = MAX_PERCENT) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")


POLICY_NAMES = ("ch", "qemu", "predictive", "none")


def make_policy(name: str, *, tailslow: bool = False, max_cpu_throttle: int = MAX_PERCENT,
                ) -> Policy:
    if name == "none":
        return NoThrottle()
    if name == "ch":
        return CloudHypervisorPolicy(max_percent=max_cpu_throttle)
    if name == "qemu":
        return QemuPolicy(cpu_throttle_tailslow=tailslow, max_cpu_throttle=max_cpu_throttle)
    if name == "predictive":
        return PredictivePolicy(max_cpu_throttle=max_cpu_throttle)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
