"""``autoconverge bench-migration``: the policies side by side, and the copy throughput (JSON).

One run per policy, same guest workload (a guest dirtying faster than the capped link),
each a real two-process migration over loopback: converged, total time, delta iterations,
downtime, guest CPU stolen. Then the cross-process copy throughput of the transport in
pages/s for the first full pass, with random page contents (every page carries data) and
with zero pages (sent as runs without data), over loopback TCP and over a Unix-domain
socket, with the session MAC (AES-GMAC) and with the HMAC-SHA256 baseline; and, in the same
run, the floors: raw TCP / Unix-socket streaming between two Python processes with no
protocol at all, and one core's HMAC-SHA256 and AES-GMAC speed, and the scaling over 1, 2
and 4 connections (:mod:`.bench_throughput`). ``--sweep`` runs every
policy at a range of dirty-rate / bandwidth ratios instead (:mod:`.bench_sweep`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from autoconverge.impl.migration.backends import BACKENDS, WORKLOADS
from autoconverge.impl.migration.policy import POLICY_NAMES, make_policy
from autoconverge.impl.migration.progress import PLOT_MISSING, plot_available, write_plot
from autoconverge.impl.migration.source import MigrationResult

from .arguments import integer, output_file, seconds
from .bench_sweep import (
    RATIOS,
    SWEEP_DEADLINE_S,
    SWEEP_MEMORY,
    SWEEP_TIMEOUT_S,
    SWEEP_WARMUP_S,
    SWEEP_WORKING_SET,
    evaluate_targets,
    run_sweep,
    table,
    write_sweep_plot,
)
from .bench_throughput import throughput_memory, throughput_section
from .demo import run_demo_once
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError
from .migration import guest_config, migration_config


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench-migration", help="compare throttle policies; transport speed",
                       description="Migrate the same busy guest once per policy over a capped "
                       "loopback link (two processes each) and measure the transport; JSON.")
    p.add_argument("--backend", choices=BACKENDS, default="kvm")
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help=f"guest memory (256M; --sweep {SWEEP_MEMORY})")
    p.add_argument("--vcpus", type=int, default=1, metavar="N")
    p.add_argument("--workload", choices=WORKLOADS, default="worst")
    p.add_argument("--working-set", default=None, metavar="SIZE",
                   help=f"memory the guest keeps writing (64M; --sweep {SWEEP_WORKING_SET})")
    p.add_argument("--max-bandwidth", default="128M", metavar="RATE",
                   help="link cap of the policy comparison (128M; --sweep sets it per run)")
    p.add_argument("--downtime-limit", default="300", metavar="MS")
    p.add_argument("--timeout", default=None, metavar="S",
                   help=f"per-run timeout, strategy cancel (30; --sweep {SWEEP_TIMEOUT_S:g})")
    p.add_argument("--sweep", action="store_true",
                   help="every policy at dirty rate / bandwidth "
                   f"{', '.join(f'{r:g}' for r in RATIOS)} (the link set from the guest's "
                   "dirty rate measured in each run's warm-up), plus predictive with "
                   "--deadline; a table on stderr, rows and targets as JSON")
    p.add_argument("--repeat", type=integer(1, 20), default=1, metavar="N",
                   help="--sweep: runs per ratio and policy (1)")
    p.add_argument("--deadline", type=seconds(0.5, 3600.0), default=SWEEP_DEADLINE_S,
                   dest="sweep_deadline", metavar="S",
                   help=f"--sweep: the deadline column's deadline ({SWEEP_DEADLINE_S:g})")
    p.add_argument("--json", action="store_true",
                   help="--sweep: JSON on stdout (else the table); the policy comparison "
                   "always prints JSON")
    p.add_argument("--policies", default=",".join(POLICY_NAMES), metavar="LIST",
                   help="comma-separated subset of " + ",".join(POLICY_NAMES))
    p.add_argument("--throughput-memory", default="512M", metavar="SIZE",
                   help="guest size for the copy-throughput runs (512M)")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("--throughput-only", action="store_true",
                   help="skip the policy runs; only the transport measurements")
    p.add_argument("--throughput-repeat", type=integer(1, 20), default=3, metavar="N",
                   help="runs per transport measurement, reported as median and best (3)")
    p.add_argument("--plot", metavar="FILE.png", type=output_file(".png"),
                   help="draw the policy runs (matplotlib)")
    p.set_defaults(func=cmd_bench)


def _policy_row(r: MigrationResult) -> dict[str, Any]:
    return {
        "policy": r.policy, "converged": r.converged, "status": r.status,
        "total_time_s": round(r.total_time_s, 3), "iterations": r.iterations,
        "downtime_ms": None if r.downtime_ms is None else round(r.downtime_ms, 1),
        "est_downtime_ms": None if r.est_downtime_ms is None else round(r.est_downtime_ms, 1),
        "guest_cpu_stolen_s": round(r.guest_cpu_stolen_s, 3),
        "max_throttle_percent": r.max_throttle_percent, "bytes_sent": r.bytes_sent,
        "memory_hash_match": r.memory_hash_match, "guest_continued": r.guest_continued,
        "source_running_after": r.source_running, "error": r.error,
    }


def cmd_bench(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    bad = [p for p in policies if p not in POLICY_NAMES]
    if bad or not policies:
        raise UsageError(f"--policies: unknown {', '.join(bad) or '(empty)'}; choose from "
                         f"{', '.join(POLICY_NAMES)}")
    if args.plot and not plot_available():
        raise UsageError(PLOT_MISSING)
    if args.sweep:
        return cmd_sweep(args, policies)
    args.memory = args.memory or "256M"
    args.working_set = args.working_set or "64M"
    args.timeout = args.timeout or "30"
    if not args.no_throughput:
        throughput_memory(args)  # checked before the first run, not after the policy runs
    args.warmup, args.timeout_strategy, args.no_verify = "0.3", "cancel", False
    guest_cfg = guest_config(args)
    cfg = migration_config(args)
    out: dict[str, Any] = {
        "backend": args.backend, "memory_bytes": guest_cfg.memory_bytes, "vcpus": guest_cfg.vcpus,
        "workload": guest_cfg.workload, "working_set_bytes": guest_cfg.working_set_bytes,
        "max_bandwidth_bps": cfg.max_bandwidth_bps, "downtime_limit_ms":
        cfg.downtime_limit_s * 1e3, "timeout_s": cfg.timeout_s, "policies": [],
    }
    results = []
    for name in [] if args.throughput_only else policies:
        print(f"bench-migration: policy {name} ...", file=sys.stderr, flush=True)
        r, extra = run_demo_once(args, guest_cfg, cfg, make_policy(name), 30.0, 0.3, quiet=True)
        results.append(r)
        row = _policy_row(r)
        row["receiver_status"] = (extra.get("receiver") or {}).get("status")
        out["policies"].append(row)
    by = {row["policy"]: row for row in out["policies"]}
    if "ch" in by and "predictive" in by and by["ch"]["converged"] and \
            by["predictive"]["converged"]:
        out["predictive_vs_ch"] = {
            "time_ratio": round(by["predictive"]["total_time_s"] / by["ch"]["total_time_s"], 3),
            "stolen_ratio": round(by["predictive"]["guest_cpu_stolen_s"]
                                  / max(by["ch"]["guest_cpu_stolen_s"], 1e-9), 3),
        }
    if not args.no_throughput:
        out.update(throughput_section(args))
    if args.plot:
        write_plot(results, args.plot)
    print(json.dumps(out, indent=2))
    ok = all(row["status"] in ("completed", "timeout") for row in out["policies"])
    return EXIT_OK if ok else EXIT_VIOLATED


def cmd_sweep(args: argparse.Namespace, policies: list[str]) -> int:
    if args.throughput_only:
        raise UsageError("--sweep and --throughput-only exclude each other")
    args.memory = args.memory or SWEEP_MEMORY
    args.working_set = args.working_set or SWEEP_WORKING_SET
    args.timeout = args.timeout or str(SWEEP_TIMEOUT_S)
    args.warmup, args.timeout_strategy, args.no_verify = str(SWEEP_WARMUP_S), "cancel", False
    args.max_bandwidth = "0"  # set per run from the measured dirty rate
    guest_cfg = guest_config(args)
    cfg = migration_config(args)
    if args.sweep_deadline <= cfg.downtime_limit_s:
        raise UsageError("--deadline must be longer than --downtime-limit")
    deadline = args.sweep_deadline if "predictive" in policies else None
    rows = run_sweep(args, guest_cfg, cfg, policies, args.repeat, deadline)
    targets = evaluate_targets(rows, cfg.downtime_limit_s * 1e3)
    out: dict[str, Any] = {
        "backend": args.backend, "memory_bytes": guest_cfg.memory_bytes,
        "vcpus": guest_cfg.vcpus, "workload": guest_cfg.workload,
        "working_set_bytes": guest_cfg.working_set_bytes,
        "downtime_limit_ms": cfg.downtime_limit_s * 1e3, "timeout_s": cfg.timeout_s,
        "deadline_s": deadline, "repeat": args.repeat, "ratios": list(RATIOS),
        "ratio_note": "dirty rate / link bandwidth; the dirty rate is distinct pages per "
        "downtime-limit window, measured in each run's warm-up (fastest window)",
        "rows": rows, "targets": targets,
    }
    if args.plot:
        write_sweep_plot(rows, args.plot)
    if args.json:
        print(table(rows), file=sys.stderr)
    print(json.dumps(out, indent=2) if args.json else table(rows))
    ok = all(row["status"] in ("completed", "timeout") for row in rows)
    return EXIT_OK if ok else EXIT_VIOLATED
