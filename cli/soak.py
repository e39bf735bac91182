"""``autoconverge soak``: back-to-back real migrations, one injected fault each, checked.

Each run migrates a busy guest from this process to a ``receive`` child process and injects
one fault at a step drawn from its seed (run i has seed SEED+i; the kind is round-robin over
--faults): SIGKILL of the receiver, a connection reset (either side), a cancel, a timeout,
a pause() or resume() failure of the throttler's vCPU calls. After each run it checks where
the guest runs (resolving an in-doubt result as an operator would, from the receiver's
result), the throttler, the dirty log and, when completed, the memory hashes; threads and
file descriptors are compared with their number after the first run (the counters are
defined in autoconverge.model.soak_migration). A failing run is one stderr line with its
seed, its fault and the --replay command line. Exit 0: no failure counter is set; 1: some
is (hangs, guest_lost, guest_twice, source_left_throttled, leaked_threads, leaked_fds,
dirty_log_left_on, hash_mismatch, ...); 2: usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from autoconverge.model.soak_migration import (
    BACKENDS,
    FAILURES,
    FAULT_KINDS,
    KvmUnavailable,
    RunRecord,
    SoakReport,
    SoakSettings,
    soak,
)

from .arguments import MAX_SEED, integer, seconds, soak_runs_and_seed
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError

DEFAULT_RUNS = 100
MAX_FINDING_LINES = 50


def _faults(text: str) -> tuple[str, ...]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in FAULT_KINDS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault {', '.join(unknown) or repr(text)}; known: {','.join(FAULT_KINDS)}")
    return tuple(k for k in FAULT_KINDS if k in names)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "soak",
        help="soak the migration: back-to-back real migrations, one injected fault each, "
             "end-state checks (exit 1 on any finding)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--runs", type=integer(1, 1_000_000), default=None,
                   help=f"migrations to run (default {DEFAULT_RUNS})")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=integer(0, MAX_SEED), default=None,
                       help="the first run's seed; runs use SEED, SEED+1, ... (default: "
                            "random, reported)")
    seeds.add_argument("--replay", type=integer(0, MAX_SEED), default=None, metavar="SEED",
                       help="run the one migration of this seed (same fault, same step) and "
                            "print all it found")
    p.add_argument("--backend", choices=BACKENDS, default="kvm",
                   help="kvm: the built-in KVM guest and a KVM receiver (default); fake: the "
                        "simulated guest and a --backend sim receiver (no KVM needed)")
    p.add_argument("--faults", type=_faults, default=FAULT_KINDS,
                   help=f"comma-separated fault kinds, taken round-robin (default all: "
                        f"{','.join(FAULT_KINDS)})")
    p.add_argument("--run-timeout", type=seconds(1.0, 3600.0), default=60.0, metavar="S",
                   help="a run not over after S seconds is a hang: its receiver is killed "
                        "(default 60); if the source does not end then, the campaign stops")
    p.add_argument("--progress-every", type=integer(1, 1_000_000), default=10, metavar="N",
                   help="a progress line on stderr every N runs (default 10)")
    p.add_argument("--details", action="store_true",
                   help="--json: add every run's record (fault, statuses, findings)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_soak)


def replay_hint(args: argparse.Namespace, seed: int) -> str:
    faults = "" if tuple(args.faults) == FAULT_KINDS else f" --faults {','.join(args.faults)}"
    return f"autoconverge soak --backend {args.backend}{faults} --replay {seed}"


class _Printer:
    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.args = args
        self.total = total
        self.printed = 0
        self.t0 = time.monotonic()

    def __call__(self, rec: RunRecord, report: SoakReport) -> None:
        if rec.findings and self.args.replay is None:
            if self.printed < MAX_FINDING_LINES:
                detail = rec.findings[0][1]
                print(f"soak: seed {rec.seed}: fault {rec.plan} ({rec.kind}): "
                      f"{', '.join(rec.failing)} (first: {detail}); replay: "
                      f"{replay_hint(self.args, rec.seed)}", file=sys.stderr, flush=True)
            self.printed += 1
        if not self.args.quiet and (report.runs % self.args.progress_every == 0
                                    or report.runs == self.total):
            print(f"[{time.monotonic() - self.t0:7.1f}s] {report.runs}/{self.total} runs, "
                  f"{report.failing_runs} failing", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.printed > MAX_FINDING_LINES:
            print(f"soak: {self.printed - MAX_FINDING_LINES} more failing runs not shown "
                  f"(--json lists the first ones)", file=sys.stderr)


def cmd_soak(args: argparse.Namespace) -> int:
    runs, seed = soak_runs_and_seed(args, DEFAULT_RUNS, "migration")
    settings = SoakSettings(backend=args.backend, faults=tuple(args.faults),
                            run_timeout_s=args.run_timeout)
    printer = _Printer(args, runs)
    try:
        report = soak(runs, seed=seed, settings=settings, on_run=printer,
                      keep_records=args.replay is not None or args.details)
    except KvmUnavailable as exc:
        raise UsageError(f"--backend kvm: {exc}") from None
    printer.done()
    out: dict[str, Any] = report.as_dict(details=args.details)
    if args.replay is not None and report.records:
        out["replay"] = seed
        out["run"] = report.records[0].as_dict()
    if args.json:
        print(json.dumps(out), flush=True)
    else:
        _print_text(out, args)
    return EXIT_OK if report.ok else EXIT_VIOLATED


def _print_text(out: dict[str, Any], args: argparse.Namespace) -> None:
    seeds = (f"seed {out['seed']}" if out["runs"] == 1
             else f"seeds {out['seed']}..{out['seed'] + out['runs'] - 1}")
    noun = "migration" if out["runs"] == 1 else "migrations"
    print(f"soak: {out['runs']} {noun} ({out['backend']} backend, {seeds}) in "
          f"{out['seconds']:.1f} s: " + ("no failure" if out["ok"] else
                                         f"{out['failing_runs']} failing runs"))
    print(f"  completed {out['completed']} (unverified {out['unverified']}), cancelled "
          f"{out['cancelled']} (timed out {out['timed_out']}), failed {out['failed']}, in "
          f"doubt {out['in_doubt']} (resumed {out['in_doubt_resumed']}, discarded "
          f"{out['in_doubt_discarded']}); faults not fired {out['not_fired']}; guest died "
          f"with the receiver {out['destination_died_running']}")
    for name in FAILURES:
        print(f"  {name:24} {out[name]}")
    if out.get("stopped_early"):
        print(f"  stopped early: {out['stopped_early']}")
    run = out.get("run")
    if run is not None:
        print(f"  fault {run['plan']} ({run['kind']}), fired {run['fired']}: source "
              f"{run['source_status']} ({run['source_outcome']}), receiver "
              f"{run['dest_status']}, guest at {run['guest_at']}"
              + (f", in doubt: {run['in_doubt_action']}" if run["in_doubt_action"] else ""))
        for f in run["findings"]:
            print(f"  - {f['counter']}: {f['detail']}")
