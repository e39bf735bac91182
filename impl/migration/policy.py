"""Throttle policies: given what the migration observed, which throttle percentage to apply.

A policy sees a sequence of :class:`Observation` values (one at the end of every pre-copy
iteration and one per *tick*, at least once a second, in between) and answers each with the
throttle percentage it wants (0 = none). It has no clock, no threads and no I/O: its answer
depends only on the observations so far, so the policies are unit-tested by feeding them
observation sequences.

- ``none``: never throttles.
- ``ch``: Cloud Hypervisor's, as in its auto-converge pull request (the code this project
  starts from). Its description ("Effective Behaviour") says throttling starts after
  **four** delta iterations, "not configurable yet"; one of its commit messages says two.
  The default is the description's, the PR's final behaviour: 10 % at delta iteration 4,
  +10 % every 2 delta iterations (4, 6, 8, ...), capped at 99 % (reached at iteration 22).
  All three are configurable (``--cpu-throttle-start-iteration``, ``--cpu-throttle-every``,
  ``--cpu-throttle-increment``); ``start_iteration=2`` is the commit message's variant.
- ``qemu``: QEMU's auto-converge. Per sync period (an iteration end at least 1 s after the
  previous period began): if the bytes dirtied in the period exceed
  ``throttle-trigger-threshold`` % of the bytes transferred in it for the second time, step:
  first ``cpu-throttle-initial``, then ``+cpu-throttle-increment`` up to
  ``max-cpu-throttle``; with ``cpu-throttle-tailslow`` the step shrinks to what the ratio
  says is needed. Not during the first (bulk) pass.
- ``predictive`` (ours): estimate the guest's unthrottled dirty rate ``D`` from the rate
  measured at the current throttle, the link bandwidth ``B`` and the bytes ``R`` still to
  send, and plan the least-stealing throttle (:mod:`.deadline`): none while the guest alone
  converges (``D < B``) within the horizon (``--deadline``, else half the time left before
  the timeout), the least that meets the horizon if it does not, and the throttle that
  makes the next pass fit the switch-over budget (``p = 1 - m B^2 L' / (D R)``, margin
  ``m``, ``L'`` the downtime limit less the switch-over's fixed cost) when ``D >= B``.
  Re-planned at every tick; an infeasible deadline is reported in ``infeasible``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

from autoconverge.spec import MAX_PERCENT

from .deadline import plan_throttle, precopy_time_s

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
    deadline_left_s: float | None = None
    """Seconds left before the ``--deadline`` (None: no deadline)."""
    timeout_left_s: float | None = None
    """Seconds left before the timeout (None: unknown)."""
    switchover_fixed_s: float = 0.0
    """The switch-over's estimated cost besides sending the dirty pages (vCPU state, round
    trips, pausing; learnt, see :mod:`.downtime`)."""


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


CH_START_ITERATION = 4
"""The seed's first throttled delta iteration (its PR description; a commit message says 2)."""
CH_EVERY = 2
"""The seed steps the throttle at every second delta iteration."""
CH_INCREMENT = 10
"""The seed's step, in percent (also its first percentage)."""


@dataclass
class CloudHypervisorPolicy:
    """Policy ``ch``: the step schedule of Cloud Hypervisor's auto-converge pull request (the
    code this project starts from): +increment at every ``every``-th delta iteration from
    ``start_iteration``."""

    start_iteration: int = CH_START_ITERATION
    every: int = CH_EVERY
    increment: int = CH_INCREMENT
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
    """Ours: the least-stealing throttle that converges in time (:mod:`.deadline`), re-planned
    at every tick."""

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
        self.infeasible: str | None = None
        """Set while the deadline cannot be met even at ``max_cpu_throttle`` (why)."""

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
        b, r, d0 = obs.bandwidth_bps, obs.remaining_bytes, self._d0
        if b <= 0 or r <= 0:
            return self._percent
        limit = obs.downtime_limit_s
        budget = self.margin * b * max(limit - obs.switchover_fixed_s, 0.25 * limit)
        if obs.deadline_left_s is not None:
            horizon: float | None = obs.deadline_left_s - limit
        elif obs.timeout_left_s is not None:
            horizon = 0.5 * obs.timeout_left_s  # finish well before the timeout
        else:
            horizon = None
        if d0 is None or d0 <= 0 or not math.isfinite(d0 / b):
            if obs.deadline_left_s is not None and horizon is not None and r / b > horizon:
                self.infeasible = self._why(r / b, horizon)
            return self._percent
        if r <= budget:  # the switch-over happens at the next check; keep what got us here
            return self._percent
        plan = plan_throttle(dirty_rate_bps=d0, bandwidth_bps=b, remaining_bytes=r,
                             budget_bytes=budget, horizon_s=horizon,
                             max_percent=self.max_cpu_throttle)
        if obs.deadline_left_s is not None and horizon is not None:
            self.infeasible = None if plan.feasible else self._why(
                precopy_floor_s(d0, b, r, self.max_cpu_throttle), horizon)
        if obs.iteration < 1 and obs.kind == "tick":
            return self._percent  # first full pass: re-dirtying is bounded by the working set
        want = plan.percent
        if abs(want - self._percent) >= self.min_percent_step:
            self._percent = want
        return self._percent

    def _why(self, need_s: float, horizon_s: float) -> str:
        return (f"deadline infeasible even at {self.max_cpu_throttle} %: pre-copy needs "
                f"~{need_s:.1f} s, {max(horizon_s, 0.0):.1f} s left before the deadline less "
                f"the downtime limit")


def precopy_floor_s(dirty_rate_bps: float, bandwidth_bps: float, remaining_bytes: int,
                    max_percent: int) -> float:
    """Predicted pre-copy time left at the highest throttle (inf: never converges)."""
    ratio = dirty_rate_bps / bandwidth_bps
    return precopy_time_s(ratio, remaining_bytes / bandwidth_bps, max_percent, 101)


def _check_percent(name: str, v: int, lo: int = 0, hi: int = MAX_PERCENT) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {v!r}")


POLICY_NAMES = ("ch", "qemu", "predictive", "none")


def make_policy(name: str, *, tailslow: bool = False, max_cpu_throttle: int = MAX_PERCENT,
                start_iteration: int = CH_START_ITERATION, every: int = CH_EVERY,
                increment: int | None = None) -> Policy:
    """``start_iteration`` and ``every`` shape ``ch``; ``increment`` is ``ch``'s and
    ``qemu``'s step (QEMU's ``cpu-throttle-increment``; None: each policy's default)."""
    if name == "none":
        return NoThrottle()
    if name == "ch":
        return CloudHypervisorPolicy(
            start_iteration=start_iteration, every=every, max_percent=max_cpu_throttle,
            increment=CH_INCREMENT if increment is None else increment)
    if name == "qemu":
        q = QemuPolicy(cpu_throttle_tailslow=tailslow, max_cpu_throttle=max_cpu_throttle)
        return q if increment is None else QemuPolicy(
            cpu_throttle_tailslow=tailslow, max_cpu_throttle=max_cpu_throttle,
            cpu_throttle_increment=increment)
    if name == "predictive":
        return PredictivePolicy(max_cpu_throttle=max_cpu_throttle)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}")
