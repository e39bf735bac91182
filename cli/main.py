"""The ``autoconverge`` command line: one entry point, subcommands registered by modules.

Each module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its
subcommands with ``set_defaults(func=handler)``; a handler takes the parsed arguments and
returns the exit code. Exit codes: 0 success / all properties hold, 1 something violated or
failed, 2 usage error (bad arguments, bad environment).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import EXIT_USAGE, UsageError

COMMAND_MODULES: tuple[str, ...] = (
    "autoconverge.cli.verify",
    "autoconverge.cli.bench_model",
    "autoconverge.cli.bench_virtualtime",
    "autoconverge.cli.migration",
    "autoconverge.cli.demo",
    "autoconverge.cli.bench_migration",
    "autoconverge.cli.kvm",
    "autoconverge.cli.bench_checkers",
)
"""Modules that add subcommands, in ``--help`` order; each defines ``register(subparsers)``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoconverge",
        description="Verified vCPU throttling (auto-converge) for pre-copy live migration.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"autoconverge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoconverge: interrupted", file=sys.stderr)
        return 130
    return code
