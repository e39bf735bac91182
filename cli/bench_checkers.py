"""``autoconverge bench-checkers``: explorer vs SPIN vs TLC on the same model at several bounds.

Prints JSON: per bound the distinct states, end-to-end wall time, states/s and peak RSS of
each checker, each in a process of its own (SPIN: generate + ``spin -a`` + ``gcc`` + every
``pan`` run; TLC: generate + JVM + every TLC run, one worker), and a cold ``autoconverge
verify`` beside SPIN at verify's bound. Explorer progress goes to stderr unless ``--quiet``.
A benchmark, never a test.
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
    p.add_argument("--timeout", type=seconds(), default=900.0,
                   help="per checker run, seconds (a checker past it is reported as timed out)")
    p.add_argument("--json", action="store_true",
                   help="print JSON (the only output format; accepted for symmetry with verify)")
    p.add_argument("--quiet", action="store_true", help="no explorer progress on stderr")
    p.add_argument("--no-verify", action="store_true",
                   help="skip the cold `autoconverge verify` timing (verify_full_seconds)")
    p.set_defaults(func=_handler)


def _handler(args: argparse.Namespace) -> int:
    spec = SPECS[args.spec]
    bounds = list(args.bounds) if args.bounds else (
        list(BENCH_SECTIONS) if spec.family == "throttle" else [default_section(spec)])
    try:
        out = bench_checkers(bounds, spec=spec, timeout=args.timeout, quiet=args.quiet,
                             verify=not args.no_verify)
    except (KeyError, ValueError) as exc:
        raise UsageError(f"--bounds {' '.join(bounds)}: {exc}") from None
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK if all(r["states_match"] for r in out["rows"]) else EXIT_VIOLATED
