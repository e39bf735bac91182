"""``autoconverge bench-checkers``: explorer vs SPIN vs TLC on the same model at three bounds.

Prints JSON: per bound the distinct states and end-to-end wall time of each checker (SPIN:
generate + ``spin -a`` + ``gcc`` + every ``pan`` run; TLC: generate + JVM + every TLC run,
one worker). A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import sys

from autoconverge.model.config import default_section
from autoconverge.proofs.crosscheck import BENCH_SECTIONS, bench_checkers
from autoconverge.spec.specs import SPECS

from .arguments import seconds
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench-checkers",
        help="benchmark the explorer, SPIN and TLC on the same model at several bounds (JSON)",
        description=__doc__,
    )
    p.add_argument("--spec", choices=tuple(SPECS), default="throttle", metavar="|".join(SPECS),
                   help="which spec (default: throttle)")
    p.add_argument(
        "--bounds", nargs="+", default=None, metavar="BOUND",
        help="explorer config sections (ci, large, migration), 'small', or calls=N,cap=M "
             f"(default: {' '.join(BENCH_SECTIONS)} for the throttle, the spec's own section "
             "for another)",
    )
    p.add_argument("--timeout", type=seconds(), default=900.0, help="per checker run, seconds")
    p.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    spec = SPECS[args.spec]
    bounds = list(args.bounds) if args.bounds else (
        list(BENCH_SECTIONS) if spec.family == "throttle" else [default_section(spec)])
    try:
        out = bench_checkers(bounds, spec=spec, timeout=args.timeout)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"--bounds {' '.join(bounds)}: {exc}") from None
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK if all(r["states_match"] for r in out["rows"]) else EXIT_VIOLATED
