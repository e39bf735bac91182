"""Argument types shared by the subcommands: checked when the command line is parsed.

Each is an argparse ``type=``: a bad value is a one-line usage error naming the argument
(exit 2) before any work starts, never a traceback halfway through a run.
"""

from __future__ import annotations

import argparse
import math
import os
import random
from collections.abc import Callable

from .errors import UsageError


def integer(lo: int, hi: int | None = None, what: str = "an integer") -> Callable[[str], int]:
    """An integer in ``lo..hi`` (no upper bound when ``hi`` is None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if value < lo or (hi is not None and value > hi):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {value}")
        return value

    return parse


def seconds(lo_exclusive: float = 0.0, hi: float = 86_400.0) -> Callable[[str], float]:
    """A finite number of seconds in ``(lo_exclusive, hi]``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not (math.isfinite(value) and lo_exclusive < value <= hi):
            raise argparse.ArgumentTypeError(
                f"seconds must be in ({lo_exclusive:g}, {hi:g}], got {text}")
        return value

    return parse


def output_file(suffix: str | None = None) -> Callable[[str], str]:
    """A file to write: its folder exists and is writable (``-`` is stdout when allowed by
    the caller); with ``suffix``, the name must end in it (case-insensitive)."""

    def parse(text: str) -> str:
        if text == "-":
            return text
        if suffix is not None and not text.lower().endswith(suffix):
            raise argparse.ArgumentTypeError(f"needs a file name ending in {suffix}: {text!r}")
        folder = os.path.dirname(os.path.abspath(text))
        if not os.path.isdir(folder):
            raise argparse.ArgumentTypeError(f"folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise argparse.ArgumentTypeError(f"folder {folder} is not writable")
        if os.path.isdir(text):
            raise argparse.ArgumentTypeError(f"{text} is a folder")
        return text

    return parse


def input_file(text: str) -> str:
    """A file to read: it exists and is readable."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text!r}")
    return text


MAX_SEED = 2**32 - 1
"""The largest seed a soak accepts (``--seed``, ``--replay``)."""


def soak_runs_and_seed(args: argparse.Namespace, default_runs: int, what: str
                       ) -> tuple[int, int]:
    """A soak's ``--runs`` / ``--seed`` / ``--replay``: (runs, first seed). ``--replay S``
    is the one run of seed S; without ``--seed`` the first seed is drawn at random; the last
    run's seed must stay within :data:`MAX_SEED`."""
    if args.replay is not None and args.runs is not None:
        raise UsageError(f"--replay runs the one {what} of its seed; drop --runs")
    runs = 1 if args.replay is not None else (args.runs or default_runs)
    seed = args.replay if args.replay is not None else (
        args.seed if args.seed is not None else random.randrange(MAX_SEED + 1 - runs))
    if seed + runs - 1 > MAX_SEED:
        raise UsageError(f"--seed {seed} with --runs {runs} goes past seed {MAX_SEED}")
    return runs, seed
