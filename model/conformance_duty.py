"""Duty-cycle measurement on any backend with ``progress()``: what share the throttle took.

Unthrottled progress is measured before and after the throttled run (half the baseline
each, so a drift cancels); the achieved throttle is ``1 - throttled rate / unthrottled
rate``. Next to it: the time share the calls held the backend paused (from each ``pause()``
returning to the next ``resume()`` starting), and the share of the throttled run's progress
made inside those paused intervals (0 for vCPUs that really stop).

On a busy host the progress drop comes out *below* the setpoint even when everything works:
the scheduler lets vCPU threads that were stopped catch up in their run phases (they are
owed CPU time), so a 50 % stop of wall time takes less than 50 % of their CPU. The stopped
share (time share with no progress while paused) is immune to that. Used by the conformance
kit (``DutyCycle``) and by ``autoconverge throttle --pid``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.throttler import Throttler

from .conformance_probe import Probe


@dataclass(frozen=True)
class DutyResult:
    requested_percent: int
    seconds: float
    timeslice_ms: float
    cycles: int
    achieved_progress_percent: float | None
    """How much the throttle cut progress (None: no unthrottled progress to compare with)."""
    paused_time_share_percent: float
    """Share of the throttled run between pause() returning and resume() starting."""
    progress_while_paused_percent: float | None
    """Share of the throttled run's progress made inside those paused intervals."""
    unthrottled_progress_per_s: float
    throttled_progress_per_s: float
    host_cpu_pressure_percent: float | None
    """Share of the throttled run in which some runnable thread on the host waited for a CPU
    (/proc/pressure/cpu; None where the kernel has no PSI): a busy host skews the result."""

    def error_pp(self) -> float | None:
        if self.achieved_progress_percent is None:
            return None
        return self.achieved_progress_percent - self.requested_percent

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


PSI_CPU = Path("/proc/pressure/cpu")


def cpu_pressure_us() -> int | None:
    """Total µs some task waited for a CPU (PSI), None where unavailable."""
    try:
        for line in PSI_CPU.read_text().splitlines():
            if line.startswith("some "):
                return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure_duty(backend: Any, progress: Callable[[], int], percent: int, seconds: float,
                 timeslice_ns: int, *, baseline_s: float | None = None,
                 call_timeout_ns: int = 2_000_000_000, name: str = "duty-cycle",
                 warmup_s: float = 0.1) -> DutyResult:
    """Throttle ``backend`` at ``percent`` for ``seconds`` (see the module docstring).
    ``baseline_s``: unthrottled time, split before and after (default ``seconds / 2``);
    ``warmup_s``: unmeasured running first (a fresh guest or process starts slower)."""
    half = (seconds / 2 if baseline_s is None else baseline_s) / 2

    def unthrottled() -> tuple[int, float]:
        p0, t0 = progress(), time.monotonic()
        time.sleep(half)
        return progress() - p0, time.monotonic() - t0

    time.sleep(warmup_s)
    before = unthrottled()
    probe = Probe(backend, progress=progress)
    with Throttler(probe, runtime=RealRuntime(), timeslice_ns=timeslice_ns,
                   call_timeout_ns=call_timeout_ns, name=name) as t:
        p0, t0, psi0 = progress(), time.monotonic_ns(), cpu_pressure_us()
        t.set_throttle_percent(percent)
        time.sleep(seconds)
        p1, t1, psi1 = progress(), time.monotonic_ns(), cpu_pressure_us()
        cycles = t.stats.cycles
        if percent:
            t.set_throttle_percent(0)
    if probe.violation is not None:
        raise probe.violation
    after = unthrottled()
    base_rate = (before[0] + after[0]) / (before[1] + after[1])
    rate = (p1 - p0) / ((t1 - t0) / 1e9)
    return DutyResult(
        requested_percent=percent, seconds=seconds, timeslice_ms=timeslice_ns / 1e6,
        cycles=cycles,
        achieved_progress_percent=100 * (1 - rate / base_rate) if base_rate > 0 else None,
        paused_time_share_percent=100 * probe.paused_share(t0, t1),
        progress_while_paused_percent=(100 * probe.progress_while_paused(t0, t1) / (p1 - p0)
                                       if p1 > p0 else None),
        unthrottled_progress_per_s=base_rate, throttled_progress_per_s=rate,
        host_cpu_pressure_percent=(100 * (psi1 - psi0) / ((t1 - t0) / 1e3)
                                   if psi0 is not None and psi1 is not None else None))
