"""``autoconverge bench-virtualtime``: scheduling steps/s of the virtual-time runtime (JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autoconverge.impl.virtualtime_bench import bench

from .errors import EXIT_OK, UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("bench-virtualtime",
                       help="benchmark the deterministic virtual-time runtime (JSON)")
    p.add_argument("--cycles", type=int, default=2_000,
                   help="command round trips of the throttler's pattern (2000)")
    p.add_argument("--seed", type=int, default=0, help="the scheduler's seed (0)")
    p.set_defaults(func=cmd_bench_virtualtime)


def cmd_bench_virtualtime(args: argparse.Namespace) -> int:
    if not 1 <= args.cycles <= 10_000_000:
        raise UsageError(f"--cycles must be in 1..10000000, got {args.cycles}")
    print(json.dumps({"virtualtime_bench": bench(args.cycles, args.seed)}, indent=2))
    return EXIT_OK
