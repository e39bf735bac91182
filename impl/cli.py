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

COMMAND_MODULES: tuple[str, ...] = (
    "autoconverge.impl.cli_verify",
    "autoconverge.model.bench",
    "autoconverge.impl.migration.cli",
    "autoconverge.impl.kvm.cli",
    "autoconverge.proofs.bench",
)

EXIT_OK = 0
EXIT_VIOLATED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed as ``autoconverge: error: ...`` with exit code 2."""


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


if __name__ == "__main__":
    sys.exit(main())
