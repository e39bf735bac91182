"""``autoconverge bench-migration --sweep``: every policy at dirty-rate / bandwidth ratios.

At each ratio of :data:`RATIOS` every policy migrates the same small busy guest once per
``--repeat`` (a receiver process each, over loopback). The link is set in each run from the
guest's dirty rate measured during its warm-up (:mod:`autoconverge.impl.migration.dirty_rate`:
distinct pages per downtime-limit window), divided by the ratio, so a ratio means the same
on any host and under any load. One more run per ratio is ``predictive`` with
``--deadline`` (the deadline column). Output: a table on stderr, rows as JSON (``--json``)
or a table on stdout, the targets evaluated on the rows (:func:`evaluate_targets`), and
``--plot`` (total time and stolen CPU per ratio, one line per policy).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from statistics import median
from typing import Any

from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.policy import POLICY_NAMES, make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult

from .demo import run_demo_once

RATIOS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
"""Dirty rate / bandwidth (like the QEMU dirty-limit comparison at 70, 90, 110 MB)."""
SWEEP_MEMORY = "64M"
SWEEP_WORKING_SET = "16M"
SWEEP_TIMEOUT_S = 45.0
"""Long enough for ``ch`` and ``qemu`` at ratio 4 on this guest (their schedules need ~20
delta iterations); ``none`` spends it whole wherever it cannot converge."""
SWEEP_DEADLINE_S = 8.0
"""The deadline column's ``--deadline``."""
SWEEP_WARMUP_S = 1.0
DEADLINE_POLICY = "predictive+deadline"
STOLEN_SLACK = 0.10
"""Where ``none`` converges, predictive may steal up to 10 % more than the least policy."""
TIME_AND_STOLEN_FACTOR = 0.5
"""Where throttling is needed, predictive's time and stolen CPU vs ch's and qemu's."""
ROW_KEYS = ("ratio", "policy", "run", "converged", "total_time_s", "guest_cpu_stolen_s",
            "downtime_ms", "iterations", "max_throttle_percent", "deadline_s", "deadline_met")


def sweep_row(ratio: float, policy: str, run: int, r: MigrationResult,
              extra: dict[str, Any]) -> dict[str, Any]:
    """One run as a row: the issue's keys first, then what explains them."""
    met = None if r.deadline_s is None else bool(r.converged and r.total_time_s <= r.deadline_s)
    return {
        "ratio": ratio, "policy": policy, "run": run, "converged": r.converged,
        "total_time_s": round(r.total_time_s, 3),
        "guest_cpu_stolen_s": round(r.guest_cpu_stolen_s, 3),
        "downtime_ms": None if r.downtime_ms is None else round(r.downtime_ms, 1),
        "iterations": r.iterations, "max_throttle_percent": r.max_throttle_percent,
        "deadline_s": r.deadline_s, "deadline_met": met,
        "deadline_infeasible": r.deadline_infeasible,
        "status": r.status,
        "est_downtime_ms": None if r.est_downtime_ms is None else round(r.est_downtime_ms, 1),
        "downtime_estimate_error_ms": None if r.downtime_estimate_error_ms is None else
        round(r.downtime_estimate_error_ms, 1),
        "measured_ratio": extra.get("dirty_rate_to_bandwidth"),
        "guest_dirty_rate_bps": extra.get("guest_dirty_rate_bps"),
        "max_bandwidth_bps": extra.get("max_bandwidth_bps"),
        "memory_hash_match": r.memory_hash_match, "error": r.error,
    }


def run_sweep(args: argparse.Namespace, guest_cfg: GuestConfig, cfg: MigrationConfig,
              policies: Sequence[str], repeat: int, deadline_s: float | None,
              ratios: Sequence[float] = RATIOS, warmup_s: float = SWEEP_WARMUP_S,
              ) -> list[dict[str, Any]]:
    """Every policy (and the deadline run) at every ratio, ``repeat`` times, interleaved."""
    from dataclasses import replace

    rows = []
    runs = [(name, cfg) for name in policies]
    if deadline_s is not None:
        runs.append((DEADLINE_POLICY, replace(cfg, deadline_s=deadline_s)))
    for run in range(1, repeat + 1):
        for ratio in ratios:
            for name, run_cfg in runs:
                print(f"bench-migration --sweep: run {run}, ratio {ratio:g}, {name} ...",
                      file=sys.stderr, flush=True)
                policy = make_policy(name.split("+")[0])
                r, extra = run_demo_once(args, guest_cfg, run_cfg, policy, 30.0, warmup_s,
                                         quiet=True, dirty_ratio=ratio)
                rows.append(sweep_row(ratio, name, run, r, extra))
    return rows


def _med(rows: Iterable[dict[str, Any]], key: str) -> float | None:
    vals = [row[key] for row in rows if row[key] is not None]
    return median(vals) if vals else None


def evaluate_targets(rows: Sequence[dict[str, Any]], downtime_limit_ms: float
                     ) -> dict[str, Any]:
    """The issue's targets on the rows (medians over the runs of a ratio and policy)."""
    checks: list[dict[str, Any]] = []
    ratios = sorted({row["ratio"] for row in rows})

    def of(ratio: float, policy: str) -> list[dict[str, Any]]:
        return [row for row in rows if row["ratio"] == ratio and row["policy"] == policy]

    for ratio in ratios:
        pred = of(ratio, "predictive")
        if not pred:
            continue
        none = of(ratio, "none")
        none_converges = bool(none) and all(row["converged"] for row in none)
        stolen = {p: _med(of(ratio, p), "guest_cpu_stolen_s") for p in POLICY_NAMES
                  if of(ratio, p) and all(row["converged"] for row in of(ratio, p))}
        p_stolen = _med(pred, "guest_cpu_stolen_s") or 0.0
        p_time = _med(pred, "total_time_s") or 0.0
        p_conv = all(row["converged"] for row in pred)
        any_conv = any(all(row["converged"] for row in of(ratio, p)) and of(ratio, p)
                       for p in POLICY_NAMES)
        checks.append({"ratio": ratio, "target": "predictive converges wherever any policy "
                       "does", "met": p_conv or not any_conv})
        if none_converges:
            least = min(v for v in stolen.values() if v is not None)
            checks.append({"ratio": ratio, "target": "none converges: predictive steals 0 or "
                           "within 10 % of the least", "predictive_stolen_s": p_stolen,
                           "least_stolen_s": least,
                           "met": p_stolen == 0.0 or p_stolen <= least * (1 + STOLEN_SLACK)})
            continue
        for other in ("ch", "qemu"):
            o = of(ratio, other)
            if not o:
                continue
            o_conv = all(row["converged"] for row in o)
            o_time, o_stolen = _med(o, "total_time_s"), _med(o, "guest_cpu_stolen_s")
            assert o_time is not None and o_stolen is not None
            for what, mine, theirs in (("total time", p_time, o_time),
                                       ("stolen CPU", p_stolen, o_stolen)):
                ratio_v = mine / theirs if theirs > 0 else None
                met = p_conv and (not o_conv or (ratio_v is not None and
                                                 ratio_v <= TIME_AND_STOLEN_FACTOR))
                checks.append({"ratio": ratio, "target": f"throttling needed: predictive "
                               f"{what} <= 0.5x {other}'s", "predictive": round(mine, 3),
                               other: round(theirs, 3), other + "_converged": o_conv,
                               "ratio_to_" + other: None if ratio_v is None else
                               round(ratio_v, 3), "met": met})
    converged = [row for row in rows if row["converged"]]
    over = [row for row in converged if row["downtime_ms"] > downtime_limit_ms]
    checks.append({"target": f"downtime <= {downtime_limit_ms:g} ms in every converged run",
                   "converged_runs": len(converged), "over_limit": [
                       {k: row[k] for k in ("ratio", "policy", "run", "downtime_ms")}
                       for row in over], "met": not over})
    errors = [row["downtime_estimate_error_ms"] for row in converged
              if row["downtime_estimate_error_ms"] is not None]
    deadline_rows = [row for row in rows if row["deadline_s"] is not None]
    return {
        "checks": checks, "all_met": all(c["met"] for c in checks),
        "misses": [c for c in checks if not c["met"]],
        "worst_downtime_estimate_error_ms": max(errors, key=abs) if errors else None,
        "worst_downtime_underestimate_ms": max(errors) if errors else None,
        "deadline": [{k: row[k] for k in ("ratio", "run", "deadline_s", "total_time_s",
                                          "converged", "deadline_met", "deadline_infeasible")}
                     | {"time_over_deadline": round(row["total_time_s"] / row["deadline_s"], 3)}
                     for row in deadline_rows],
    }


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("ratio", "policy", "run", "conv", "time s", "stolen vCPU-s", "downtime ms",
            "est ms", "iters", "max %", "deadline")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for row in rows:
        dl = "" if row["deadline_s"] is None else (
            f"{row['deadline_s']:g} s {'met' if row['deadline_met'] else 'missed'}"
            + (" (infeasible)" if row["deadline_infeasible"] else ""))
        lines.append(" | ".join(str(v) for v in (
            f"{row['ratio']:g}", row["policy"], row["run"], "yes" if row["converged"] else
            f"no ({row['status']})", f"{row['total_time_s']:.1f}",
            f"{row['guest_cpu_stolen_s']:.2f}", "-" if row["downtime_ms"] is None else
            f"{row['downtime_ms']:.0f}", "-" if row["est_downtime_ms"] is None else
            f"{row['est_downtime_ms']:.0f}", row["iterations"], row["max_throttle_percent"],
            dl)))
    return "\n".join("| " + line + " |" for line in lines)


def write_sweep_plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Total time and guest CPU stolen per ratio (medians), one line per policy; runs that
    did not converge are drawn hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(8, 7))
    for policy in dict.fromkeys(row["policy"] for row in rows):
        mine = [row for row in rows if row["policy"] == policy]
        ratios = sorted({row["ratio"] for row in mine})
        for ax, key in ((ax1, "total_time_s"), (ax2, "guest_cpu_stolen_s")):
            ys = [_med([r for r in mine if r["ratio"] == x], key) for x in ratios]
            (line,) = ax.plot(ratios, ys, marker="o", label=policy)
            bad = [(x, y) for x, y in zip(ratios, ys, strict=True) if not all(
                r["converged"] for r in mine if r["ratio"] == x)]
            if bad:
                ax.plot([b[0] for b in bad], [b[1] for b in bad], linestyle="none",
                        marker="o", markersize=11, markerfacecolor="none",
                        color=line.get_color())
    ax1.set_ylabel("total time (s)")
    ax1.set_title("policies by dirty rate / bandwidth (hollow ring: did not converge)")
    ax2.set_ylabel("guest CPU stolen (vCPU-s)")
    ax2.set_xlabel("dirty rate / bandwidth")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
