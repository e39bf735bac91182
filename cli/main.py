"""The ``autoconverge`` command line: one entry point, subcommands registered by modules.

Each module in :data:`COMMAND_MODULES` defines ``register(subparsers)``, which adds its
subcommands with ``set_defaults(func=handler)``; a handler takes the parsed arguments and
returns the exit code. Exit codes (:mod:`.errors`): 0 success / all properties hold, 1 something
violated or failed, 2 usage error (bad arguments, bad environment), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from .errors import EXIT_INTERRUPTED, EXIT_USAGE, EXIT_VIOLATED, UsageError

COMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("autoconverge.cli.verify", "verify"),
    ("autoconverge.cli.bench_model", "verify"),
    ("autoconverge.cli.bench_virtualtime", "verify"),
    ("autoconverge.cli.soak_throttler", "kvm"),
    ("autoconverge.cli.soak", "migration"),
    ("autoconverge.cli.migration", "migration"),
    ("autoconverge.cli.demo", "migration"),
    ("autoconverge.cli.bench_migration", "migration"),
    ("autoconverge.cli.kvm", "kvm"),
    ("autoconverge.cli.conformance", "conformance"),
    ("autoconverge.cli.bench_checkers", "crosscheck"),
)
"""Modules that add subcommands, in ``--help`` order, each with the extra (pyproject's
``[project.optional-dependencies]``) whose packages it needs; each defines
``register(subparsers)``. A module whose packages are not installed adds no subcommand, and
asking for one of its commands says which extra to install."""

MISSING_EXTRAS: dict[str, str] = {}
"""extra -> the missing package, for the command modules that could not be imported."""


def _missing_hint() -> str:
    return "; ".join(f"some commands need {pkg!r}: pip install 'autoconverge[{extra}]'"
                     for extra, pkg in sorted(MISSING_EXTRAS.items()))


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), naming the argument.

    argparse's default prints the usage block first; a hurried operator (and a script reading
    stderr) gets one line, which points at ``--help`` for the usage.
    """

    def error(self, message: str) -> NoReturn:
        hint = f"see {self.prog} --help"
        if MISSING_EXTRAS and "invalid choice" in message:
            hint += "; " + _missing_hint()
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} ({hint})\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="autoconverge",
        description="Verified vCPU throttling (auto-converge) for pre-copy live migration.",
    )
    parser.add_argument("--debug", action="store_true",
                        help="on an unexpected error, print the traceback too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=OneLineErrorParser)
    for name, extra in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.startswith("autoconverge"):
                raise  # our own module missing is a bug, not a missing extra
            MISSING_EXTRAS.setdefault(extra, exc.name)
            continue
        before = set(sub.choices)
        module.register(sub)
        for command in set(sub.choices) - before:
            sub.choices[command].set_defaults(extra=extra)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; every failure is one line on stderr and an exit code, never a
    traceback (``--debug`` adds it for unexpected errors): 2 for bad input, 1 for a failed
    run, 130 for Ctrl-C."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"autoconverge: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("autoconverge: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ModuleNotFoundError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"autoconverge: error: {args.command} needs the Python module {exc.name!r}, "
              f"which is not installed: pip install 'autoconverge[{args.extra}]'",
              file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # stdout's reader went away (``| head``): nothing left to say to anyone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_VIOLATED
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"autoconverge: {args.command} failed: {type(exc).__name__}"
              + (f": {text}" if text else "")
              + ("" if args.debug else " (--debug shows the traceback)"), file=sys.stderr)
        return EXIT_VIOLATED
    return code
