"""Progress reports of a long exploration: the record, a rate limiter, a stderr printer.

:func:`autoconverge.model.explorer.explore` (and :func:`.graph.build_graph`) take an optional
``progress`` callback; it receives an :class:`ExploreProgress` at most about twice a second
(:class:`ProgressTicker` decides, with an injected clock) and once more when the state graph
is complete (``done=True``). :func:`stderr_progress` is the callback the CLI uses: one
updating line on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

__all__ = ["ExploreProgress", "ProgressTicker", "format_progress", "stderr_progress"]

REPORT_INTERVAL_SECONDS = 0.5
"""Least time between two reports (the callback is called at most ~2 times a second)."""


@dataclass(frozen=True)
class ExploreProgress:
    """A snapshot of a running exploration."""

    states: int
    """Distinct states (graph nodes) found so far."""
    transitions: int
    """Edges of the expanded nodes so far."""
    queue: int
    """Nodes found but not yet expanded (the BFS frontier)."""
    seconds: float
    """Wall time since the exploration started."""
    states_per_second: float
    eta_seconds: float | None
    """Seconds to the expected state count (the bound's ``expected_states``), None if unknown."""
    done: bool = False
    """The state graph is complete (the last report; property checks may still follow)."""


def make_progress(states: int, transitions: int, queue: int, seconds: float,
                  expected_states: int | None, *, done: bool = False) -> ExploreProgress:
    """The record for these counts; the ETA extrapolates the rate to ``expected_states``."""
    rate = states / seconds if seconds > 0 else 0.0
    eta: float | None = None
    if expected_states is not None and rate > 0:
        eta = max(0.0, (expected_states - states) / rate)
    return ExploreProgress(states=states, transitions=transitions, queue=queue,
                           seconds=round(seconds, 3), states_per_second=round(rate, 1),
                           eta_seconds=None if eta is None else round(eta, 1), done=done)


class ProgressTicker:
    """Calls ``callback`` with a progress record at most once per ``interval`` seconds.

    The explorer calls :meth:`poll` cheaply and often (every few thousand states); only when
    ``interval`` has passed on ``clock`` does it build a record and report.
    """

    def __init__(self, callback: Callable[[ExploreProgress], None],
                 expected_states: int | None, *,
                 clock: Callable[[], float] = time.perf_counter,
                 interval: float = REPORT_INTERVAL_SECONDS) -> None:
        self._callback = callback
        self._expected = expected_states
        self._clock = clock
        self._interval = interval
        self._start = clock()
        self._next = self._start + interval

    def poll(self, states: int, transitions: int, queue: int) -> None:
        now = self._clock()
        if now >= self._next:
            self._next = now + self._interval
            self._callback(make_progress(states, transitions, queue, now - self._start,
                                         self._expected))

    def finish(self, states: int, transitions: int) -> None:
        self._callback(make_progress(states, transitions, 0, self._clock() - self._start,
                                     self._expected, done=True))


def format_progress(label: str, p: ExploreProgress) -> str:
    """``explorer large: 250,000 states, 780,000 transitions, queue 12,345, 3.1 s, ...``."""
    eta = "" if p.eta_seconds is None or p.done else f", ETA {p.eta_seconds:.0f} s"
    tail = " (graph done)" if p.done else f", queue {p.queue:,}"
    return (f"{label}: {p.states:,} states, {p.transitions:,} transitions{tail}, "
            f"{p.seconds:.1f} s, {p.states_per_second:,.0f} states/s{eta}")


def stderr_progress(label: str, stream: TextIO | None = None
                    ) -> Callable[[ExploreProgress], None]:
    """A progress callback printing to stderr: one updating line on a TTY, else plain lines."""

    def report(p: ExploreProgress) -> None:
        out = stream if stream is not None else sys.stderr
        line = format_progress(label, p)
        if out.isatty():
            out.write("\r\x1b[K" + line + ("\n" if p.done else ""))
        else:
            out.write(line + "\n")
        out.flush()

    return report
