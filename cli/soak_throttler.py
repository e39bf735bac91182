"""``autoconverge soak-throttler``: soak the throttler with random programs and backend faults.

Each run draws, from its seed, an API program for --callers threads (set 0..99, bad input,
shutdown, handover, waits) and a fault plan for the vCPU backend (--faults: raise - a
VcpuError or a KeyboardInterrupt part-way through pause()/resume() - and hang - block until
released after a delay shorter or longer than the call timeout), runs it against one
throttler, releases any hang, shuts down and checks the end state (the counters are defined
in autoconverge.model.soak_throttler). --backend fake runs in deterministic virtual time
(--replay SEED reproduces a run exactly); --backend kvm on a real KVM guest with real
threads. A failing run is one stderr line with its seed and counters. Exit 0: every counter
but runs is zero; 1: some is not; 2: usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from autoconverge.model.soak_throttler import (
    COUNTERS,
    FAULT_KINDS,
    KvmUnavailable,
    RunResult,
    SoakReport,
    soak,
)

from .arguments import MAX_SEED, integer, soak_runs_and_seed
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError

DEFAULT_RUNS = 1000
PROGRESS_EVERY_S = 5.0
MAX_FINDING_LINES = 50
"""Failing runs printed one line each; the rest are counted (``--json`` lists the first)."""


def _faults(text: str) -> frozenset[str]:
    """``raise,hang``, a subset, or ``none``."""
    if text.strip() == "none":
        return frozenset()
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in FAULT_KINDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault {', '.join(unknown) or repr(text)}; known: "
            f"{','.join(FAULT_KINDS)} (or none)")
    return frozenset(names)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "soak-throttler",
        help="soak the throttler: random programs, injected backend failures and hangs, "
             "counters (exit 1 on any finding)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--runs", type=integer(1, 10_000_000), default=None,
                   help=f"programs to run (default {DEFAULT_RUNS})")
    p.add_argument("--callers", type=integer(1, 16), default=3,
                   help="caller threads per program, 1..16 (default %(default)s)")
    p.add_argument("--faults", type=_faults, default=frozenset(FAULT_KINDS),
                   help="comma-separated subset of raise,hang, or none (default raise,hang)")
    p.add_argument("--backend", choices=("fake", "kvm"), default="fake",
                   help="fake: PartialVcpus in virtual time (replayable); kvm: a real KVM "
                        "guest, real threads (default %(default)s)")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=integer(0, MAX_SEED), default=None,
                       help="the first run's seed; runs use SEED, SEED+1, ... (default: "
                            "random, reported)")
    seeds.add_argument("--replay", type=integer(0, MAX_SEED), default=None, metavar="SEED",
                       help="run the one program of this seed and print all it found")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=cmd_soak)


def _replay_hint(args: argparse.Namespace, seed: int) -> str:
    faults = ",".join(k for k in FAULT_KINDS if k in args.faults) or "none"
    return (f"autoconverge soak-throttler --backend {args.backend} --callers {args.callers} "
            f"--faults {faults} --replay {seed}")


class _Printer:
    """The stderr side of a soak: one line per failing run (up to a cap), progress every
    few seconds unless ``--quiet``."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.args = args
        self.total = total
        self.printed = 0
        self.t0 = time.monotonic()
        self.last = self.t0

    def __call__(self, result: RunResult, report: SoakReport) -> None:
        if result.counters and self.args.replay is None:  # a replay prints them all
            if self.printed < MAX_FINDING_LINES:
                first = result.details[0][1]
                print(f"soak-throttler: seed {result.seed}: {', '.join(result.counters)} "
                      f"(first: {first}) replay: {_replay_hint(self.args, result.seed)}",
                      file=sys.stderr, flush=True)
            self.printed += 1
        now = time.monotonic()
        if not self.args.quiet and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            print(f"[{now - self.t0:6.1f}s] {report.runs}/{self.total} runs, "
                  f"{report.failing_seeds} failing", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.printed > MAX_FINDING_LINES:
            print(f"soak-throttler: {self.printed - MAX_FINDING_LINES} more failing runs not "
                  f"shown (--json lists the first ones)", file=sys.stderr)


def cmd_soak(args: argparse.Namespace) -> int:
    runs, seed = soak_runs_and_seed(args, DEFAULT_RUNS, "program")
    printer = _Printer(args, runs)
    results: list[RunResult] = []

    def on_run(result: RunResult, report: SoakReport) -> None:
        if args.replay is not None:
            results.append(result)
        printer(result, report)

    try:
        report = soak(runs, callers=args.callers, faults=args.faults, backend=args.backend,
                      seed=seed, on_run=on_run)
    except KvmUnavailable as exc:
        raise UsageError(f"--backend kvm: {exc}") from None
    printer.done()
    out: dict[str, Any] = report.as_dict()
    if args.replay is not None:
        out["replay"] = seed
        out["details"] = [{"counter": c, "detail": d} for r in results for c, d in r.details]
        out["fingerprint"] = results[0].fingerprint if results else None
    if args.json:
        print(json.dumps(out))
    else:
        _print_text(out, args)
    return int(EXIT_OK if report.ok else EXIT_VIOLATED)


def _print_text(out: dict[str, Any], args: argparse.Namespace) -> None:
    seeds = (f"seed {out['seed']}" if out["runs"] == 1
             else f"seeds {out['seed']}..{out['seed'] + out['runs'] - 1}")
    print(f"soak-throttler: {out['runs']} runs ({out['backend']} backend, {out['callers']} "
          f"callers, faults {','.join(out['faults']) or 'none'}, {seeds}) in "
          f"{out['elapsed_s']:.1f} s: " + ("all counters zero" if out["ok"] else
                                           f"{out['failing_runs']} failing runs"))
    for name in COUNTERS:
        print(f"  {name:24} {out[name]}")
    if args.replay is not None:
        for f in out["details"]:
            print(f"  - {f['counter']}: {f['detail']}")
        print("  outcomes: " + ", ".join(f"{k} {v}" for k, v in out["outcomes"].items()))
