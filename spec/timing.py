"""Phase durations of one throttle timeslice, with compensation for pause/resume cost.

One timeslice of ``T`` ns at ``p`` percent is: ``pause()`` (cost ``cp``), a pause-phase sleep,
``resume()`` (cost ``cr``), a run-phase sleep. The vCPUs count as paused from the start of
``pause()`` to the end of ``resume()`` (a vCPU stops soon after the kick and restarts when
``resume()`` has seen it back in its run loop), so the pause sleep is shortened by the
measured costs of the previous cycle:

    pause_sleep = p*T/100 - cp - cr          run_sleep = T - p*T/100

Inside the *compensable* range (``cp + cr <= MIN_PERCENT * T / 100``, i.e. the costs fit in
the smallest pause share) both sleeps are non-negative, ``cp + pause_sleep + cr + run_sleep
== T`` exactly, and the paused share is ``p*T/100`` to one nanosecond (integer division).
Outside it the pause sleep is clamped to 0 (the pause then runs longer than its share; the
run share is kept so the guest always runs). ``autoconverge.proofs`` proves these facts for
all ``p``, ``T`` and costs in range with Z3; the functions use only :mod:`expr` helpers so
the proof evaluates this very code.
"""

from __future__ import annotations

from .expr import And, If, Value
from .lifecycle import MAX_PERCENT, MIN_PERCENT

NS_PER_MS = 1_000_000
DEFAULT_TIMESLICE_NS = 100 * NS_PER_MS
MIN_TIMESLICE_NS = 20 * NS_PER_MS
"""Below 20 ms, 99 % leaves the guest under 200 us per slice: less than one Python wake-up
plus sleep overshoot (measured ~100 us here), so the setpoint could not be met."""
MAX_TIMESLICE_NS = 1_000 * NS_PER_MS
CLOCK_GRANULARITY_NS = 1


def pause_share_ns(percent: Value, timeslice_ns: Value) -> Value:
    """The part of the timeslice the vCPUs should spend paused (floor, in ns)."""
    if isinstance(percent, int) and isinstance(timeslice_ns, int):
        return percent * timeslice_ns // 100
    import z3

    return z3.ToInt(z3.ToReal(percent * timeslice_ns) / 100)  # floor for non-negatives


def compensable(percent: Value, timeslice_ns: Value, pause_cost_ns: Value,
                resume_cost_ns: Value) -> Value:
    """The measured costs fit in the pause share: compensation is exact."""
    return And(pause_cost_ns >= 0, resume_cost_ns >= 0,
               pause_cost_ns + resume_cost_ns <= pause_share_ns(percent, timeslice_ns))


def pause_sleep_ns(percent: Value, timeslice_ns: Value, pause_cost_ns: Value,
                   resume_cost_ns: Value) -> Value:
    """How long to sleep with the vCPUs paused (clamped at 0)."""
    raw = pause_share_ns(percent, timeslice_ns) - pause_cost_ns - resume_cost_ns
    return If(raw > 0, raw, 0)


def run_sleep_ns(percent: Value, timeslice_ns: Value) -> Value:
    """How long to let the vCPUs run."""
    return timeslice_ns - pause_share_ns(percent, timeslice_ns)


def valid_percent(percent: Value) -> Value:
    return And(percent >= MIN_PERCENT, percent <= MAX_PERCENT)


def valid_timeslice(timeslice_ns: Value) -> Value:
    return And(timeslice_ns >= MIN_TIMESLICE_NS, timeslice_ns <= MAX_TIMESLICE_NS)
