"""Progress reports of a long exploration: rate limiting, ETA, the stderr printer, the hook."""

from __future__ import annotations

import io

from autoconverge.model.config import load_config
from autoconverge.model.explorer import explore
from autoconverge.model.progress import (
    ExploreProgress,
    ProgressTicker,
    format_progress,
    make_progress,
    stderr_progress,
)
from autoconverge.spec import SPEC


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ticker_reports_at_most_once_per_interval() -> None:
    clock = FakeClock()
    seen: list[ExploreProgress] = []
    ticker = ProgressTicker(seen.append, expected_states=1000, clock=clock, interval=0.5)
    ticker.poll(10, 20, 5)
    assert seen == []  # not yet half a second
    clock.now += 0.5
    ticker.poll(100, 300, 50)
    ticker.poll(110, 330, 55)  # same instant: suppressed
    assert [p.states for p in seen] == [100]
    clock.now += 0.4
    ticker.poll(150, 400, 60)
    assert len(seen) == 1
    clock.now += 0.2
    ticker.poll(200, 600, 70)
    assert [p.states for p in seen] == [100, 200]
    clock.now += 5.0
    ticker.finish(1000, 3000)
    last = seen[-1]
    assert last.done and last.states == 1000 and last.queue == 0


def test_eta_from_the_expected_state_count() -> None:
    p = make_progress(states=250, transitions=600, queue=10, seconds=1.0, expected_states=1000)
    assert p.states_per_second == 250.0 and p.eta_seconds == 3.0
    unknown = make_progress(250, 600, 10, 1.0, None)
    assert unknown.eta_seconds is None
    past = make_progress(1200, 600, 10, 1.0, 1000)  # a variant outgrowing the estimate
    assert past.eta_seconds == 0.0
    assert make_progress(0, 0, 1, 0.0, 1000).eta_seconds is None


def test_format_progress_names_the_counts() -> None:
    p = make_progress(250_000, 780_000, 12_345, 3.0, 500_000)
    line = format_progress("explorer large", p)
    assert line.startswith("explorer large: 250,000 states, 780,000 transitions, queue 12,345")
    assert "ETA 3 s" in line
    done = make_progress(500_000, 1_500_000, 0, 6.0, 500_000, done=True)
    assert "graph done" in format_progress("x", done) and "ETA" not in format_progress("x", done)


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_stderr_printer_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    report = stderr_progress("ci", stream=out)
    report(make_progress(10, 20, 3, 1.0, None))
    report(make_progress(20, 40, 0, 2.0, None, done=True))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("ci: ") for line in lines)
    assert "\r" not in out.getvalue()


def test_stderr_printer_updates_one_line_on_a_terminal() -> None:
    out = FakeTTY()
    report = stderr_progress("ci", stream=out)
    report(make_progress(10, 20, 3, 1.0, None))
    report(make_progress(20, 40, 2, 2.0, None))
    assert out.getvalue().count("\n") == 0 and out.getvalue().count("\r") == 2
    report(make_progress(30, 60, 0, 3.0, None, done=True))
    assert out.getvalue().endswith("\n")


def test_explore_reports_the_finished_graph_and_needs_no_callback() -> None:
    cfg = load_config()
    seen: list[ExploreProgress] = []
    r = explore(SPEC, cfg, progress=seen.append)
    assert seen and seen[-1].done
    assert seen[-1].states == r.stats.distinct_states == cfg.expected_states
    assert seen[-1].transitions == r.stats.transitions
    assert all(not p.done for p in seen[:-1])
    assert [p.states for p in seen] == sorted(p.states for p in seen)
    interpreted: list[ExploreProgress] = []
    explore(SPEC, cfg, progress=interpreted.append, engine="interpreted")
    assert interpreted[-1].states == seen[-1].states
    assert explore(SPEC, cfg).ok  # no callback: nothing reported, same verdicts
