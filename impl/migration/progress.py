"""What a user sees: the live progress line on stderr, the summary, and the optional plot.

The progress line shows iteration, dirty data still to send, throttle %, transfer rate,
dirty rate, the estimated downtime, the guest CPU stolen so far and the pause per throttle
round; a note (an infeasible deadline) is printed on a line of its own as it happens.
On a terminal it is redrawn in place (at most ~10 times a second); otherwise one line per
iteration is printed. ``--plot`` draws remaining dirty memory and throttle % over time
with matplotlib (the ``plot`` extra), which is only imported when a plot is asked for.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from .source import MigrationResult, Sample

MIB = 1024 * 1024


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 1024 ** 3), ("MiB", MIB), ("KiB", 1024)):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f} B"


def fmt_rate(bps: float) -> str:
    return f"{fmt_bytes(bps)}/s"


class ProgressPrinter:
    """Callable used as ``on_progress``: prints one status line per sample (rate-limited)."""

    def __init__(self, stream: IO[str] | None = None, page_size: int = 4096,
                 min_interval_s: float = 0.1) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.page_size = page_size
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._dirty_line = False

    def line(self, s: Sample) -> str:
        est = "?" if s.est_downtime_s is None else f"{s.est_downtime_s * 1e3:.0f} ms"
        per_round = "" if s.throttle_ms_per_round is None else \
            f" ({s.throttle_ms_per_round:.0f} ms/round)"
        return (f"iter {s.iteration:3d}  dirty {s.remaining_bytes // self.page_size:8d} pages "
                f"({fmt_bytes(s.remaining_bytes):>10})  throttle {s.throttle_percent:2d} %  "
                f"rate {fmt_rate(s.bandwidth_bps):>12}  dirtying {fmt_rate(s.dirty_rate_bps):>12}"
                f"  est. downtime {est}  stolen {s.guest_cpu_stolen_s:.2f} vCPU-s{per_round}")

    def __call__(self, s: Sample) -> None:
        if s.note is not None:
            self.finish()
            self.stream.write(f"NOTE: {s.note}\n")
        if self.tty:
            now = time.monotonic()
            if now - self._last < self.min_interval_s and s.kind == "tick":
                return
            self._last = now
            self.stream.write("\r\x1b[2K" + self.line(s))
            self._dirty_line = True
        elif s.kind == "iteration":
            self.stream.write(self.line(s) + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._dirty_line:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty_line = False


def summary(r: MigrationResult) -> str:
    """Human-readable result: several lines, one if it failed before anything was sent."""
    if not r.converged and r.bytes_sent == 0 and r.source_running and r.outcome == "aborted":
        return (f"migration {r.status} before anything was sent: {r.error} (the guest keeps "
                f"running here)")
    lines = []
    if r.outcome == "in_doubt":
        lines.append(f"migration IN DOUBT (policy {r.policy}) after {r.total_time_s:.2f} s: "
                     f"{r.error}")
    elif r.converged:
        verdict = {"unverified": " UNVERIFIED (no memory hash came back)",
                   "mismatch": " but the memory hashes DIFFER"}.get(r.outcome, "")
        lines.append(f"migration completed{verdict} with policy {r.policy}: converged after "
                     f"{r.iterations} delta iterations in {r.total_time_s:.2f} s")
    else:
        lines.append(f"migration {r.status} (policy {r.policy}) after {r.total_time_s:.2f} s,"
                     f" {r.iterations} delta iterations: {r.error}")
        if r.source_running:
            lines.append("  the source guest keeps running, unthrottled; dirty logging "
                         f"{'stopped' if r.dirty_log_stopped else 'NOT stopped'}")
        elif r.source_running is None:
            lines.append("  the source guest's state is UNKNOWN (a vCPU call is stuck)")
        else:
            lines.append("  the source guest is PAUSED and the destination does not run it: "
                         "the guest runs nowhere")
    if r.downtime_ms is not None:
        est = f" (estimated {r.est_downtime_ms:.0f} ms)" if r.est_downtime_ms is not None else ""
        lines.append(f"  downtime {r.downtime_ms:.1f} ms{est}, limit "
                     f"{r.downtime_limit_ms:.0f} ms")
        if r.switchover_fixed_ms is not None:
            lines.append(f"  (estimate: transfer + learnt fixed part "
                         f"{r.switchover_fixed_ms:.0f} ms)")
    lines.append(f"  sent {fmt_bytes(r.bytes_sent)} ({r.pages_sent} pages, {r.zero_pages_sent} "
                 f"zero) for {fmt_bytes(r.memory_bytes)} of guest memory, last rate "
                 f"{fmt_rate(r.bandwidth_bps)}")
    per_round = "" if r.throttle_ms_per_round is None else \
        f", {r.throttle_rounds} rounds of {r.throttle_ms_per_round:.0f} ms per vCPU"
    lines.append(f"  guest CPU stolen by throttling {r.guest_cpu_stolen_s:.2f} vCPU-s, "
                 f"max throttle {r.max_throttle_percent} %{per_round}")
    if r.deadline_s is not None:
        met = r.converged and r.total_time_s <= r.deadline_s
        lines.append(f"  deadline {r.deadline_s:g} s {'met' if met else 'MISSED'}"
                     + (f"; {r.deadline_note}" if r.deadline_note else ""))
    if r.memory_hash_match is not None:
        lines.append(f"  memory hash {'matches' if r.memory_hash_match else 'DIFFERS'} "
                     f"({(r.source_hash or '')[:16]}...)")
    if r.guest_continued is not None:
        lines.append(f"  guest counters at stop {r.counters_at_stop}, at the destination "
                     f"{r.dest_counters_after}: "
                     f"{'continues' if r.guest_continued else 'did NOT continue'}")
    if r.converged and r.error:
        lines.append(f"  note: {r.error}")
    return "\n".join(lines)


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


PLOT_MISSING = ("--plot needs matplotlib, which is not installed; install it with "
                "pip install 'autoconverge[plot]' (or pip install matplotlib)")


def write_plot(results: list[MigrationResult], path: str) -> None:
    """Remaining dirty memory and throttle % over time, one line pair per result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for r in results:
        t = [s.time_s for s in r.timeline]
        rem = [s.remaining_bytes / MIB for s in r.timeline]
        thr = [s.throttle_percent for s in r.timeline]
        label = f"{r.policy} ({r.status})"
        ax1.plot(t, rem, label=label)
        ax2.step(t, thr, where="post", label=label)
    ax1.set_ylabel("remaining dirty memory (MiB)")
    ax1.set_title("pre-copy migration: remaining dirty memory and throttle")
    ax1.grid(True, alpha=0.3)
    ax1.legend(loc="upper right")
    ax2.set_ylabel("throttle (%)")
    ax2.set_xlabel("time since start (s)")
    ax2.set_ylim(-2, 101)
    ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def json_summary(r: MigrationResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    d = r.to_dict()
    d.update(extra or {})
    return d
