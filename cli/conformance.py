"""``autoconverge conformance MODULE:FACTORY``: run the conformance kit on your vCPU backend.

Imports the factory (a zero-argument callable returning a fresh backend with ``pause()``,
``resume()``, ``is_paused()`` and optionally ``progress()`` and ``close()``; the contract is
in :mod:`autoconverge.model.conformance`), runs the kit's stages on fresh backends from it
and prints one row per property (``--json``: one object). On a failure it prints the
property, where it was found, Hypothesis's shortest failing API program and the seed that
replays it. Exit 0: every property holds; 1: one fails; 2: usage (a bad MODULE:FACTORY, an
import error, a factory that is not callable).
"""

from __future__ import annotations

import argparse
import re

from autoconverge.model.conformance import (
    STAGES,
    FactoryError,
    KitConfig,
    load_factory,
    run_conformance,
)

from .arguments import integer, seconds
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError

FACTORY_SYNTAX = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
MAX_SEED = 2**32 - 1


def _factory_name(text: str) -> str:
    if not FACTORY_SYNTAX.match(text):
        raise argparse.ArgumentTypeError(
            f"expected MODULE:FACTORY (e.g. mypkg.backend:make_backend), got {text!r}")
    return text


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown stage {', '.join(unknown) or repr(text)}; known: {', '.join(STAGES)}")
    return names


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "conformance",
        help="check your vCPU backend against the throttler's property suite",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("factory", metavar="MODULE:FACTORY", type=_factory_name,
                   help="a zero-argument callable returning a fresh backend")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--examples", type=integer(1, 100_000), default=KitConfig.examples,
                   help="Hypothesis programs run on real threads (default %(default)s)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=None,
                   help="Hypothesis seed, to replay a run (default: random, reported)")
    p.add_argument("--stages", type=_stages, default=list(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all)")
    p.add_argument("--fail-fast", action="store_true",
                   help="skip the stages after the first failing one")
    p.add_argument("--call-timeout", type=seconds(0.0, 600.0),
                   default=KitConfig.call_timeout_s,
                   help="bound on each pause()/resume() call, in seconds; a call that takes "
                        "longer fails CallsReturn (default %(default)s)")
    p.set_defaults(func=cmd_conformance)


def cmd_conformance(args: argparse.Namespace) -> int:
    try:
        factory = load_factory(args.factory)
    except FactoryError as exc:
        raise UsageError(str(exc)) from None
    report = run_conformance(
        factory, name=args.factory, stages=args.stages, fail_fast=args.fail_fast,
        config=KitConfig(examples=args.examples, seed=args.seed,
                         call_timeout_s=args.call_timeout))
    print(report.to_json() if args.json else report.table())
    return int(EXIT_OK if report.ok else EXIT_VIOLATED)
