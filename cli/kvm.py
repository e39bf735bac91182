"""CLI subcommands of the KVM backend: ``throttle`` and ``bench-kvm``.

``autoconverge throttle --percent P --seconds S --vcpus N`` runs the guest, measures its
unthrottled progress (S/2 before and S/2 after the throttled part, so drift cancels), then
throttles it for S seconds with the project's throttler and reports the achieved throttle
both as vCPU time share (time parked outside KVM_RUN over all vCPU time) and as the drop of
guest progress relative to the unthrottled rate.

``autoconverge throttle --pid PID --percent P --seconds S`` throttles a Linux process and its
descendants instead (no KVM guest: cgroup v2 freezer where writable, else SIGSTOP/SIGCONT;
:mod:`autoconverge.impl.process_tree`) and reports the achieved throttle as the drop of the
tree's CPU time rate, measured the same way, next to the time share the throttler held it
stopped. The process is resumed on every way out (also on SIGTERM, SIGHUP and Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from autoconverge.impl.kvm import guest
from autoconverge.impl.kvm.bindings import DEV_KVM, KvmError
from autoconverge.impl.kvm.guest_vm import VCPU_LIMIT, GuestVm
from autoconverge.impl.kvm.vcpu_thread import paused_share
from autoconverge.impl.sched import realtime_permitted, realtime_priority
from autoconverge.impl.throttler import validate_percent
from autoconverge.impl.vcpus import VcpuError
from autoconverge.spec import timing

from .arguments import integer, seconds
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError

MAX_SECONDS = 3600.0
DEFAULT_MEMORY_MIB = 64
VCPUS = integer(1, VCPU_LIMIT, "an integer vCPU count")


def _percent(text: str) -> int:
    """The throttler's own check (the spec's domain), as an argparse type."""
    try:
        return validate_percent(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an integer percent: {text!r}" if not text.strip().lstrip("-").isdigit()
            else str(exc)
        ) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lo, hi = timing.MIN_TIMESLICE_NS // 1_000_000, timing.MAX_TIMESLICE_NS // 1_000_000
    p = sub.add_parser(
        "throttle",
        help="throttle a KVM guest (or a process tree: --pid) and report the achieved throttle",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--percent", type=_percent, required=True,
                   help="throttle percent, 0..99 (0: no throttling)")
    p.add_argument("--seconds", type=seconds(0.0, MAX_SECONDS), required=True,
                   help="length of the throttled run (the unthrottled baseline is as long)")
    p.add_argument("--vcpus", type=VCPUS, default=None,
                   help=f"vCPUs of the KVM guest, 1..{VCPU_LIMIT} (required without --pid)")
    p.add_argument("--pid", type=integer(1), default=None,
                   help="throttle this process and its descendants instead of a KVM guest")
    p.add_argument("--mechanism", choices=("auto", "cgroup", "signal"), default="auto",
                   help="with --pid: cgroup v2 freezer, SIGSTOP/SIGCONT, or auto (the "
                        "freezer where writable; default %(default)s)")
    p.add_argument("--timeslice-ms", type=integer(1),
                   default=timing.DEFAULT_TIMESLICE_NS // 1_000_000,
                   help=f"throttle timeslice in ms, {lo}..{hi} (default %(default)s)")
    p.add_argument("--memory-mib", type=integer(1, 64 * 1024), default=DEFAULT_MEMORY_MIB,
                   help="guest memory in MiB (default %(default)s)")
    p.add_argument("--workload", choices=guest.PRESETS, default="idle",
                   help="what each vCPU does besides counting (default %(default)s)")
    p.add_argument("--working-set-pages", type=integer(0), default=256,
                   help="pages each vCPU writes for moderate/worst (default %(default)s)")
    p.add_argument("--rt", action="store_true",
                   help="run the whole controller SCHED_FIFO (vCPUs run guest code "
                        "SCHED_OTHER); needs CAP_SYS_NICE. Without it the throttle thread, "
                        "and a caller inside a blocking call, still run SCHED_FIFO where "
                        "permitted")
    p.add_argument("--kvm-device", default=DEV_KVM, help="KVM device (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_throttle)

    b = sub.add_parser(
        "bench-kvm",
        help="benchmark pause/resume, duty cycle and throttler API latency on KVM (JSON)",
    )
    b.add_argument("--iterations", type=integer(1), default=200,
                   help="pause/resume samples per vCPU count (default %(default)s)")
    b.add_argument("--duty-seconds", type=seconds(0.0, MAX_SECONDS), default=2.0,
                   help="measurement window per duty-cycle point (default %(default)s)")
    b.add_argument("--api-trials", type=integer(1), default=200,
                   help="samples of set/abort/shutdown latency (default %(default)s)")
    b.add_argument("--vcpus", type=VCPUS, action="append",
                   help="vCPU counts for pause/resume (repeatable; default 1, 2, nproc)")
    b.add_argument("--percents", type=_percent, nargs="+", default=None,
                   help="duty-cycle setpoints (default 10 50 90 99)")
    b.add_argument("--timeslices-ms", type=integer(1), nargs="+", default=None,
                   help=f"duty-cycle timeslices (default 100 and {lo})")
    b.add_argument("--rt", action="store_true",
                   help="run the whole benchmark's controller SCHED_FIFO (needs "
                        "CAP_SYS_NICE); the throttler's own realtime use is on either way")
    b.add_argument("--compare", action="store_true",
                   help="also measure pause/resume and abort/shutdown latency with "
                        "background vCPUs off and on, alternating")
    b.add_argument("--api-options", action="store_true",
                   help="also measure abort/shutdown latency with the throttle worker and "
                        "the caller at SCHED_FIFO, the worker only, and neither")
    b.add_argument("--background-load", action="store_true",
                   help="keep one core busy with a busy-loop process for the whole run")
    b.add_argument("--json", action="store_true",
                   help="print JSON (the only output format; accepted for symmetry)")
    b.add_argument("--quick", action="store_true",
                   help="a few samples only (a smoke run, numbers not meaningful)")
    b.set_defaults(func=cmd_bench)


def _check_timeslice(ms: int) -> int:
    ns = ms * 1_000_000
    if not timing.valid_timeslice(ns):
        raise UsageError(
            f"--timeslice-ms must be in {timing.MIN_TIMESLICE_NS // 1_000_000}.."
            f"{timing.MAX_TIMESLICE_NS // 1_000_000}, got {ms}"
        )
    return ns


def _check_rt(rt: bool) -> None:
    if rt and not realtime_permitted():
        raise UsageError("--rt needs permission to use SCHED_FIFO (CAP_SYS_NICE)")


def _open_vm(memory_mib: int, vcpus: int, workload: guest.Workload, device: str) -> GuestVm:
    try:
        return GuestVm(memory_mib << 20, vcpus, workload=workload, kvm_path=device)
    except (KvmError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def measure_throttle(vm: GuestVm, percent: int, seconds: float, timeslice_ns: int,
                     *, rt: bool = False) -> dict[str, Any]:
    """Unthrottled halves around a throttled run; see the module docstring."""
    from autoconverge.impl.realtime import RealRuntime
    from autoconverge.impl.throttler import Throttler

    def unthrottled(length: float) -> tuple[int, float]:
        p0, t0 = sum(vm.progress()), time.monotonic()
        time.sleep(length)
        return sum(vm.progress()) - p0, time.monotonic() - t0

    time.sleep(0.05)  # let the vCPUs get going
    base1 = unthrottled(seconds / 2)
    name = "throttle-cli"
    with Throttler(vm, runtime=RealRuntime(sched_other=not rt), timeslice_ns=timeslice_ns,
                   name=name) as t:
        before = vm.vcpu_times()
        p0 = sum(vm.progress())
        worker = next(th for th in threading.enumerate() if th.name == name)
        cpu0 = time.clock_gettime_ns(time.pthread_getcpuclockid(worker.ident or 0))
        t.set_throttle_percent(percent)
        time.sleep(seconds)
        after = vm.vcpu_times()
        throttled = sum(vm.progress()) - p0
        cpu = time.clock_gettime_ns(time.pthread_getcpuclockid(worker.ident or 0)) - cpu0
        stats = t.stats
        cycles, pause_cost, resume_cost = stats.cycles, stats.pause_cost_ns, stats.resume_cost_ns
        worker_realtime = stats.worker_realtime
        if percent:
            t.set_throttle_percent(0)
    base2 = unthrottled(seconds / 2)
    wall = (after[0].at_ns - before[0].at_ns) / 1e9
    base_rate = (base1[0] + base2[0]) / (base1[1] + base2[1])
    thr_rate = throttled / wall
    relative = thr_rate / base_rate if base_rate > 0 else 0.0
    return {
        "requested_percent": percent,
        "achieved_time_share_percent": round(100 * paused_share(before, after), 3),
        "achieved_progress_percent": round(100 * (1 - relative), 3),
        "relative_progress_percent": round(100 * relative, 3),
        "seconds": seconds,
        "vcpus": vm.vcpu_count,
        "timeslice_ms": timeslice_ns / 1e6,
        "cycles": cycles,
        "last_pause_cost_us": round(pause_cost / 1e3, 1),
        "last_resume_cost_us": round(resume_cost / 1e3, 1),
        "throttle_thread_cpu_ms_per_s": round(cpu / 1e6 / wall, 3),
        "worker_realtime": worker_realtime,
        "unthrottled_progress_per_s": round(base_rate),
        "throttled_progress_per_s": round(thr_rate),
    }


@contextlib.contextmanager
def _exit_on_signals(*signals: int) -> Iterator[None]:
    """Turn ``signals`` into SystemExit in the main thread, so every ``finally`` (and each
    ``with``'s exit, which resumes the processes) runs; the old handlers come back after."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, leave) for s in signals}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def throttle_pid(pid: int, mechanism: str, percent: int, seconds: float,
                 timeslice_ns: int) -> dict[str, Any]:
    """Throttle process ``pid``'s tree; the processes run again on every way out."""
    from autoconverge.impl.process_tree import ProcessTreeVcpus
    from autoconverge.model.conformance_duty import measure_duty

    try:
        tree = ProcessTreeVcpus(pid, mechanism=mechanism)  # type: ignore[arg-type]
    except (ValueError, OSError, VcpuError) as exc:
        raise UsageError(f"--pid {pid}: {exc}") from None
    with _exit_on_signals(signal.SIGTERM, signal.SIGHUP), tree:
        if tree.is_paused():
            raise UsageError(f"--pid {pid}: the process is stopped; continue it first")
        processes = len(tree.tree())
        result = measure_duty(tree, tree.progress, percent, seconds, timeslice_ns,
                              name="throttle-cli")
    return {"pid": pid, "mechanism": tree.mechanism, "processes": processes,
            **result.as_dict()}


def _print_pid_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    achieved = result["achieved_progress_percent"]
    print(f"pid {result['pid']} ({result['mechanism']}): requested "
          f"{result['requested_percent']} %: "
          + (f"CPU time reduced by {achieved:.2f} %" if achieved is not None else
             "no CPU time used unthrottled, nothing to compare")
          + f" (held stopped {result['paused_time_share_percent']:.2f} % of the time; "
          f"{result['seconds']:g} s, timeslice {result['timeslice_ms']:g} ms, "
          f"{result['cycles']} cycles)")


def cmd_throttle(args: argparse.Namespace) -> int:
    timeslice_ns = _check_timeslice(args.timeslice_ms)
    _check_rt(args.rt)
    if args.pid is not None:
        if args.vcpus is not None:
            raise UsageError("--pid throttles a process, --vcpus a KVM guest: give one")
        with realtime_priority(args.rt):
            result = throttle_pid(args.pid, args.mechanism, args.percent, args.seconds,
                                  timeslice_ns)
        _print_pid_result(result, args.json)
        return int(EXIT_OK)
    if args.vcpus is None:
        raise UsageError("--vcpus is required (or --pid PID to throttle a process)")
    try:
        workload = guest.preset(args.workload, args.working_set_pages)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    with realtime_priority(args.rt):
        vm = _open_vm(args.memory_mib, args.vcpus, workload, args.kvm_device)
        try:
            with vm:
                result = measure_throttle(vm, args.percent, args.seconds, timeslice_ns,
                                          rt=args.rt)
        except ValueError as exc:  # e.g. the working set does not fit
            raise UsageError(str(exc)) from None
        except VcpuError as exc:
            print(f"autoconverge: throttle failed: {exc}", file=sys.stderr)
            return int(EXIT_VIOLATED)
    result["workload"] = args.workload
    if args.json:
        print(json.dumps(result))
    else:
        print(f"requested {result['requested_percent']} %: vCPU time share "
              f"{result['achieved_time_share_percent']:.2f} %, guest progress reduced by "
              f"{result['achieved_progress_percent']:.2f} % "
              f"({result['vcpus']} vCPUs, {result['seconds']:g} s, "
              f"timeslice {result['timeslice_ms']:g} ms, {result['cycles']} cycles)")
    return int(EXIT_OK)


def cmd_bench(args: argparse.Namespace) -> int:
    from autoconverge.impl.kvm import bench

    if args.iterations < 1 or args.api_trials < 1:
        raise UsageError("--iterations and --api-trials must be >= 1")
    for ms in args.timeslices_ms or ():
        _check_timeslice(ms)
    _check_rt(args.rt)
    kwargs: dict[str, Any] = {
        "iterations": args.iterations, "duty_seconds": args.duty_seconds,
        "api_trials": args.api_trials, "vcpus": args.vcpus, "rt": args.rt,
        "timeslices_ms": args.timeslices_ms, "compare": args.compare,
        "api_options": args.api_options, "background": args.background_load,
    }
    if args.percents:
        kwargs["percents"] = args.percents
    if args.quick:
        kwargs.update(iterations=10, duty_seconds=0.3, api_trials=3,
                      percents=args.percents or [50], dirty_log_mib=[16])
    try:
        report = bench.run(**kwargs)
    except KvmError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report, indent=2))
    return int(EXIT_OK)
