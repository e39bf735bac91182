"""``autoconverge bench-model``: the explorer benchmark (:mod:`autoconverge.model.bench`), JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from autoconverge.model.bench import bench
from autoconverge.model.progress import stderr_progress

from .arguments import input_file, integer
from .errors import EXIT_OK, UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("bench-model", help="benchmark the explicit-state explorer (JSON)")
    p.add_argument("--config", metavar="FILE", type=input_file,
                   help="explorer config (default: built-in)")
    p.add_argument("--sections", default="ci,large",
                   help="comma-separated config sections (default: ci,large)")
    p.add_argument("--repeat", type=integer(1, 1000), default=1,
                   help="runs per section; best is kept")
    p.add_argument("--no-variants", action="store_true", help="skip the bug-zoo timing")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_bench_model)


def cmd_bench_model(args: argparse.Namespace) -> int:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    try:
        result = bench(args.config, sections, args.repeat, not args.no_variants,
                       progress=None if args.quiet else stderr_progress)
    except (KeyError, ValueError, OSError) as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(result, indent=2))
    return EXIT_OK
