"""Benchmarks of the KVM backend (``autoconverge bench-kvm``), printed as one JSON object.

Everything is measured side by side in one run, on the same host and under the same load:

- ``pause_resume``: ``GuestVm.pause()``/``resume()`` latency p50/p99 for N = 1, 2 and the
  number of cores, next to the *floor*: a bare kick-and-wake round trip (set immediate_exit,
  signal, wait for the thread to leave KVM_RUN and post a lock; post a lock, wait for the
  thread to post back, then release all) on a second VM with the same guest and the
  minimum of code; ``one_step_floor`` is the same without the final release (each thread
  re-enters KVM_RUN right after it answered). They alternate in blocks; the idle ones stay
  parked.
- ``duty_cycle``: achieved vCPU time share (time parked outside KVM_RUN over all vCPU time)
  of the project's :class:`~autoconverge.impl.throttler.Throttler` at 10/50/90/99 % for a
  100 ms timeslice and the smallest supported one, next to a naive throttler that sleeps a
  fixed p % / (100 - p) % of the slice without compensating for pause/resume cost; plus the
  CPU time the throttle thread used per second of throttling.
- ``api_latency``: return latency p50/p99/max of ``set_throttle_percent`` (async), abort
  (``set_throttle_percent(0)``, returns once the vCPUs run) and ``shutdown`` (``--api-trials``
  samples each, default 200, on a busy guest, each call at a random point of a 50 % throttle's
  timeslice), next to ``floor``: the kick-and-wake floor of the same vCPU count from this run's
  ``pause_resume`` section (``*_p99_over_floor_round_trip``: p99 over the floor's pause +
  resume p99); which priorities were used (``worker_realtime``, ``caller_realtime``,
  ``realtime_vcpus``); ``worker_step_us``, the cost of each worker transition fired through
  the spec's compiled machine during those runs, next to ``plain_trigger_us`` (a trigger of a
  bare two-state ``transitions`` machine) and ``spec_machine_trigger_us`` (the spec's worker
  machine fired through ``transitions`` with its guard and effect callbacks, the path before
  the compiled table), both measured in the same process.
- ``api_latency_options`` (``--api-options``): abort/shutdown latency for each of
  :data:`API_OPTIONS` (which threads run SCHED_FIFO), one after the other.
- ``background_load`` (``--background-load``): a busy-loop process kept one core busy for
  the whole run (its pid and CPU seconds).
- ``dirty_log``: fetch (GET + CLEAR) cost and the dirty rate of a worst-case dirtier.
- ``background_vcpus_comparison`` (``--compare``): pause/resume and abort/shutdown latency
  with GuestVm's ``background_vcpus`` off (the earlier behaviour) and on, alternating.

Timing numbers are what this host gave during this run (``host.loadavg`` says how busy it
was); nothing here asserts.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoconverge.impl.sched import current_policy, realtime_priority, reset_to_sched_other
from autoconverge.spec import timing

from . import abi, guest, guest_vm
from .bindings import Kvm, Vcpu
from .guest_vm import MAP_NORESERVE, GuestVm
from .kick import ensure_kick_handler
from .vcpu_thread import VcpuTimes, paused_share

NS_PER_MS = 1_000_000
PERCENTS = (10, 50, 90, 99)


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e3
    if a.size == 0:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan"), "n": 0,
                "samples": 0}
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
        "n": int(a.size),
        "samples": int(a.size),
    }


def host_info() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sched_policy": {os.SCHED_OTHER: "SCHED_OTHER", os.SCHED_FIFO: "SCHED_FIFO",
                         os.SCHED_RR: "SCHED_RR"}.get(os.sched_getscheduler(0), "other"),
    }


# --------------------------------------------------------------------------------------------
# the floor: a bare kick-and-wake round trip


class _FloorThread:
    def __init__(self, vcpu: Vcpu, release: threading.Event | None) -> None:
        self.vcpu = vcpu
        self.run_page = vcpu.kvm_run
        self.release = release
        self.flag = False
        self.stop = False
        self.ack = threading.Lock()
        self.ack.acquire()
        self.wake = threading.Lock()
        self.wake.acquire()
        self.go = threading.Lock()
        self.go.acquire()
        self.thread = threading.Thread(target=self._main, name=f"floor{vcpu.index}",
                                       daemon=True)

    def _main(self) -> None:
        run_page = self.run_page
        vcpu_run = self.vcpu.run
        if current_policy() != os.SCHED_OTHER:
            reset_to_sched_other()
        while True:
            run_page.immediate_exit = 0
            if self.flag:
                if self.stop:
                    return
                self.ack.release()
                self.wake.acquire()
                if self.stop:
                    return
                self.ack.release()
                if self.release is not None:
                    self.go.acquire()
                continue
            vcpu_run()


class FloorVm:
    """The same guest on N vCPU threads with the least code around the kick-and-wake.

    ``two_step=True`` is the protocol GuestVm uses (woken threads wait for a release that
    comes after every thread answered); ``False`` lets each thread re-enter KVM_RUN right
    after it answered.
    """

    def __init__(self, vcpus: int, *, two_step: bool, memory_size: int = 16 << 20) -> None:
        ensure_kick_handler()
        self.two_step = two_step
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        self.layout = guest.GuestLayout(memory_size, vcpus)
        self.mem = mmap.mmap(-1, memory_size,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE)
        self.anchor = ctypes.c_char.from_buffer(self.mem)
        with memoryview(self.mem) as view:
            guest.write_image(view, self.layout)
            for i in range(vcpus):
                guest.write_workload(view, self.layout, i, guest.idle())
        self.vm.set_user_memory_region(abi.KvmUserspaceMemoryRegion(
            slot=0, flags=0, guest_phys_addr=0, memory_size=memory_size,
            userspace_addr=ctypes.addressof(self.anchor)))
        self.threads: list[_FloorThread] = []
        marker = threading.Event() if two_step else None
        for i in range(vcpus):
            vcpu = self.vm.create_vcpu(i)
            vcpu.set_sregs(guest.initial_sregs(self.layout))
            vcpu.set_regs(guest.initial_regs(self.layout, i))
            self.threads.append(_FloorThread(vcpu, marker))
        for t in self.threads:
            t.thread.start()

    def pause(self) -> None:
        for t in self.threads:
            t.flag = True
            t.run_page.immediate_exit = 1
            signal.pthread_kill(t.thread.ident or 0, signal.SIGUSR1)
        for t in self.threads:
            t.ack.acquire()

    def resume(self) -> None:
        for t in self.threads:
            t.flag = False
            t.wake.release()
        for t in self.threads:
            t.ack.acquire()
        if self.two_step:
            for t in self.threads:
                t.go.release()

    def close(self) -> None:
        for t in self.threads:
            t.stop = True
            t.flag = True
            t.run_page.immediate_exit = 1
            if t.thread.is_alive():
                signal.pthread_kill(t.thread.ident or 0, signal.SIGUSR1)
            with suppress(RuntimeError):
                t.wake.release()
        for t in self.threads:
            t.thread.join(5)
            t.run_page = None  # type: ignore[assignment]
            t.vcpu.close()
        self.vm.close()
        self.kvm.close()
        del self.anchor
        self.mem.close()


# --------------------------------------------------------------------------------------------
# pause / resume latency


def _measure(target: GuestVm | FloorVm, count: int, gap_s: float,
             pauses: list[int], resumes: list[int]) -> None:
    clock = time.perf_counter_ns
    for _ in range(count):
        time.sleep(gap_s)  # let the vCPUs run in the guest before each kick
        t0 = clock()
        target.pause()
        t1 = clock()
        target.resume()
        t2 = clock()
        pauses.append(t1 - t0)
        resumes.append(t2 - t1)


def bench_pause_resume(vcpus: int, iterations: int, *, block: int = 25,
                       gap_s: float = 0.002,
                       raw: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """GuestVm next to the two floors, alternating blocks; the idle ones stay paused."""
    samples: dict[str, tuple[list[int], list[int]]] = {
        name: ([], []) for name in ("impl", "floor", "one_step")}
    targets: dict[str, GuestVm | FloorVm] = {}
    try:
        targets["impl"] = GuestVm(16 << 20, vcpus, paused=True)
        targets["floor"] = FloorVm(vcpus, two_step=True)
        targets["floor"].pause()
        targets["one_step"] = FloorVm(vcpus, two_step=False)
        targets["one_step"].pause()
        done = 0
        while done < iterations:
            k = min(block, iterations - done)
            for name, target in targets.items():
                target.resume()
                _measure(target, k, gap_s, *samples[name])
                target.pause()
            done += k
    finally:
        for target in targets.values():
            target.resume()
            target.close()
    if raw is not None:
        for name, (pauses, resumes) in samples.items():
            raw.setdefault(f"{name}_pause", []).extend(pauses)
            raw.setdefault(f"{name}_resume", []).extend(resumes)
    out: dict[str, Any] = {
        "vcpus": vcpus,
        "pause_us": percentiles_us(samples["impl"][0]),
        "resume_us": percentiles_us(samples["impl"][1]),
        "floor_pause_us": percentiles_us(samples["floor"][0]),
        "floor_resume_us": percentiles_us(samples["floor"][1]),
        "one_step_floor_pause_us": percentiles_us(samples["one_step"][0]),
        "one_step_floor_resume_us": percentiles_us(samples["one_step"][1]),
    }
    for what in ("pause", "resume"):
        floor_p99 = out[f"floor_{what}_us"]["p99"]
        out[f"{what}_p99_over_floor"] = round(out[f"{what}_us"]["p99"] / floor_p99, 2) \
            if floor_p99 > 0 else None
    return out


# --------------------------------------------------------------------------------------------
# duty cycle


def _thread_cpu_ns(ident: int) -> int:
    return time.clock_gettime_ns(time.pthread_getcpuclockid(ident))


class NaiveThrottler:
    """What the benchmark compares against: fixed sleeps, no cost compensation."""

    def __init__(self, vm: GuestVm, percent: int, timeslice_ns: int) -> None:
        self.vm = vm
        self.pause_s = timeslice_ns * percent / 100 / 1e9
        self.run_s = timeslice_ns * (100 - percent) / 100 / 1e9
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="naive-throttle", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.vm.pause()
            time.sleep(self.pause_s)
            self.vm.resume()
            if self.stopping.wait(self.run_s):
                break

    def shutdown(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.vm.resume()


@dataclass
class DutyResult:
    time_share_percent: float
    progress_per_s: float
    thread_cpu_ms_per_s: float | None


def _window(vm: GuestVm, seconds: float,
            ident: int | None) -> tuple[list[VcpuTimes], list[VcpuTimes], int, float, int]:
    cpu0 = _thread_cpu_ns(ident) if ident else 0
    before = vm.vcpu_times()
    p0 = sum(vm.progress())
    time.sleep(seconds)
    after = vm.vcpu_times()
    progress = sum(vm.progress()) - p0
    cpu = (_thread_cpu_ns(ident) - cpu0) if ident else 0
    wall_s = (after[0].at_ns - before[0].at_ns) / 1e9
    return before, after, progress, wall_s, cpu


def run_throttled(vm: GuestVm, percent: int, timeslice_ns: int, seconds: float, *,
                  naive: bool = False, rt: bool = False) -> DutyResult:
    """Throttle ``vm`` at ``percent`` and measure over ``seconds`` after one settling slice."""
    from autoconverge.impl.realtime import RealRuntime
    from autoconverge.impl.throttler import Throttler

    settle_s = 2 * timeslice_ns / 1e9
    if naive:
        nt = NaiveThrottler(vm, percent, timeslice_ns)
        try:
            time.sleep(settle_s)
            before, after, progress, wall_s, cpu = _window(vm, seconds, nt.thread.ident)
        finally:
            nt.shutdown()
    else:
        name = f"bench-throttle-{percent}-{timeslice_ns}"
        with Throttler(vm, runtime=RealRuntime(sched_other=not rt),
                       timeslice_ns=timeslice_ns, name=name) as t:
            t.set_throttle_percent(percent)
            worker = next(th for th in threading.enumerate() if th.name == name)
            time.sleep(settle_s)
            before, after, progress, wall_s, cpu = _window(vm, seconds, worker.ident)
    return DutyResult(
        round(100 * paused_share(before, after), 3),
        progress / wall_s,
        round(cpu / 1e6 / wall_s, 3),
    )


def _unthrottled_rate(vm: GuestVm, seconds: float) -> float:
    p0, t0 = sum(vm.progress()), time.monotonic()
    time.sleep(seconds)
    return (sum(vm.progress()) - p0) / (time.monotonic() - t0)


def bench_duty_cycle(vcpus: int, seconds: float, percents: Sequence[int],
                     timeslices_ns: Sequence[int], rt: bool) -> list[dict[str, Any]]:
    """Per point: unthrottled, throttler, naive, unthrottled (the baseline for progress is
    the mean of the two unthrottled windows around it, so load drift mostly cancels)."""
    rows: list[dict[str, Any]] = []
    with GuestVm(16 << 20, vcpus) as vm:
        time.sleep(0.1)
        for ts in timeslices_ns:
            for p in percents:
                base = _unthrottled_rate(vm, seconds / 4)
                thr = run_throttled(vm, p, ts, seconds, rt=rt)
                naive = run_throttled(vm, p, ts, seconds, naive=True)
                base = (base + _unthrottled_rate(vm, seconds / 4)) / 2
                rows.append({
                    "percent": p,
                    "timeslice_ms": ts / NS_PER_MS,
                    "time_share_percent": thr.time_share_percent,
                    "error_pp": round(thr.time_share_percent - p, 3),
                    "naive_time_share_percent": naive.time_share_percent,
                    "naive_error_pp": round(naive.time_share_percent - p, 3),
                    "progress_throttle_percent":
                        round(100 * (1 - thr.progress_per_s / base), 2),
                    "naive_progress_throttle_percent":
                        round(100 * (1 - naive.progress_per_s / base), 2),
                    "throttle_thread_cpu_ms_per_s": thr.thread_cpu_ms_per_s,
                    "naive_thread_cpu_ms_per_s": naive.thread_cpu_ms_per_s,
                })
    return rows


# --------------------------------------------------------------------------------------------
# API return latency


REALTIME_MODES = ("on", "worker", "off")
"""Throttler priorities: the throttle worker and the caller of a blocking call at SCHED_FIFO
(``on``, the Throttler's default), the worker only, or neither (both SCHED_OTHER)."""
API_OPTIONS: dict[str, tuple[str, bool]] = {
    "fifo_worker_caller": ("on", False),
    "fifo_worker_caller_vcpus": ("on", True),
    "fifo_worker": ("worker", False),
    "normal_priority": ("off", False),
}
"""What ``bench-kvm --api-options`` compares: (throttler realtime mode, GuestVm's
``realtime_vcpus``). The first is the defaults (Throttler and GuestVm)."""


class _WorkerOnlyRealtime:
    """A RealRuntime whose realtime() boosts only the throttle worker's thread (the caller of
    a blocking call stays as it is): the ``worker`` mode of :data:`REALTIME_MODES`."""

    def __init__(self, worker_name: str, sched_other: bool) -> None:
        from autoconverge.impl.realtime import RealRuntime

        self._inner = RealRuntime(sched_other=sched_other)
        self._worker_name = worker_name
        self.now_ns = self._inner.now_ns
        self.channel = self._inner.channel
        self.spawn = self._inner.spawn
        self.sleep_ns = self._inner.sleep_ns

    def realtime(self, enabled: bool, *, restore: bool = True) -> Any:
        return self._inner.realtime(enabled and threading.current_thread().name
                                    == self._worker_name, restore=restore)


def bench_api_latency(vcpus: int, trials: int, rt: bool, seed: int = 1,
                      raw: dict[str, list[int]] | None = None,
                      realtime: str = "on",
                      realtime_vcpus: bool | None = None) -> dict[str, Any]:
    """Return latency of set_throttle_percent (async), abort and shutdown on a busy guest,
    each call at a random point of a 50 % throttle's timeslice; plus the cost of each worker
    step (one transition fired through the spec's compiled machine) in the same runs."""
    from autoconverge.impl.realtime import RealRuntime
    from autoconverge.impl.throttler import Throttler

    if realtime not in REALTIME_MODES:
        raise ValueError(f"realtime must be one of {REALTIME_MODES}, got {realtime!r}")
    rng = random.Random(seed)
    ts = timing.DEFAULT_TIMESLICE_NS
    set_ns: list[int] = []
    abort_ns: list[int] = []
    shutdown_ns: list[int] = []
    step_ns: list[int] = []
    used: dict[str, set[bool | None]] = {"worker": set(), "caller": set()}
    clock = time.perf_counter_ns

    def lap(fn: Callable[[], None], into: list[int]) -> None:
        t0 = clock()
        fn()
        into.append(clock() - t0)

    def runtime(name: str) -> Any:
        if realtime == "worker":
            return _WorkerOnlyRealtime(name, sched_other=not rt)
        return RealRuntime(sched_other=not rt)

    def throttler(name: str) -> Throttler:
        return Throttler(vm, runtime=runtime(name), timeslice_ns=ts, name=name,
                         realtime=realtime != "off", step_clock=clock)

    def note(t: Throttler) -> None:
        stats = t.stats
        used["worker"].add(stats.worker_realtime)
        used["caller"].add(stats.caller_realtime)
        step_ns.extend(t.step_costs_ns())

    with GuestVm(16 << 20, vcpus, realtime_vcpus=realtime_vcpus) as vm:
        with throttler("bench-api") as t:
            for _ in range(trials):
                t.set_throttle_percent(50)
                time.sleep(rng.uniform(0, ts / 1e9))
                lap(lambda: t.set_throttle_percent(60), set_ns)
                time.sleep(rng.uniform(0, ts / 1e9))
                lap(lambda: t.set_throttle_percent(0), abort_ns)
                if vm.is_paused():
                    raise AssertionError("abort returned with the vCPUs paused")
        note(t)
        for _ in range(trials):
            th = throttler("bench-api-shutdown")
            th.set_throttle_percent(50)
            time.sleep(rng.uniform(0, ts / 1e9))
            lap(th.shutdown, shutdown_ns)
            if vm.is_paused():
                raise AssertionError("shutdown returned with the vCPUs paused")
            note(th)
    if raw is not None:
        for key, values in (("set", set_ns), ("abort", abort_ns), ("shutdown", shutdown_ns)):
            raw.setdefault(key, []).extend(values)
    return {
        "timeslice_ms": ts / NS_PER_MS,
        "realtime_mode": realtime,
        "realtime_vcpus": guest_vm.REALTIME_VCPUS if realtime_vcpus is None
        else realtime_vcpus,
        "worker_realtime": sorted(used["worker"], key=str),
        "caller_realtime": sorted(used["caller"], key=str),
        "set_throttle_percent_us": percentiles_us(set_ns),
        "abort_us": percentiles_us(abort_ns),
        "shutdown_us": percentiles_us(shutdown_ns),
        "worker_step_us": percentiles_us(step_ns),
    }


def bench_transitions_trigger(samples: int) -> dict[str, Any]:
    """The cost of a trigger on a plain ``transitions`` machine (two states, no callbacks)
    and of the spec's own worker machine fired through ``transitions`` (guard and effect
    callbacks: the path each worker step took before the compiled table), same process."""
    from transitions import Machine

    from autoconverge.spec import SPEC
    from autoconverge.spec import lifecycle as L

    class Plain:
        state: str

    plain = Plain()
    Machine(model=plain, states=["a", "b"], initial="a", auto_transitions=False,
            transitions=[["go", "a", "b"], ["back", "b", "a"]])

    class Probe:
        """A model of the spec's worker machine in throttling_run, where ``expire`` loops."""

        state: str
        trigger: Callable[..., bool]

        def spec_view(self) -> Any:
            return L.INITIAL.replace(w=self.state, percent=50, applied=50, polled=True)

        def apply_updates(self, updates: Any) -> None:
            pass

    probe = Probe()
    machine = SPEC.machine("worker")
    machine.add_model(probe)
    machine.set_state(L.RUN, model=probe)
    plain_ns: list[int] = []
    spec_ns: list[int] = []
    clock = time.perf_counter_ns
    try:
        for _ in range(samples):
            t0 = clock()
            plain.go()  # type: ignore[attr-defined]
            t1 = clock()
            plain.back()  # type: ignore[attr-defined]
            t2 = clock()
            if not probe.trigger(L.EXPIRE):
                raise AssertionError("expire refused in throttling_run")
            t3 = clock()
            plain_ns += (t1 - t0, t2 - t1)
            spec_ns.append(t3 - t2)
    finally:
        machine.remove_model(probe)
    return {"plain_trigger_us": percentiles_us(plain_ns),
            "spec_machine_trigger_us": percentiles_us(spec_ns)}


@contextmanager
def background_load(enabled: bool) -> Iterator[dict[str, Any]]:
    """A busy-loop process (one core kept busy) for the duration of the block, killed after."""
    info: dict[str, Any] = {"enabled": enabled}
    if not enabled:
        yield info
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    info["pid"] = proc.pid
    try:
        yield info
    finally:
        cpu = _process_cpu_s(proc.pid)
        proc.kill()
        proc.wait()
        info["busy_process_cpu_s"] = cpu


def _process_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)
    except (OSError, IndexError, ValueError):
        return None


# --------------------------------------------------------------------------------------------
# dirty log


def bench_dirty_log(memory_mib: int, vcpus: int, seconds: float,
                    interval_s: float = 0.1) -> dict[str, Any]:
    """A worst-case dirtier over each vCPU's whole region: fetch cost and dirty rate."""
    with GuestVm(memory_mib << 20, vcpus) as vm:
        vm.set_workload(guest.worst_case(vm.layout.region_pages))
        vm.start_dirty_log()
        fetch_ns: list[int] = []
        dirty = 0
        t0 = time.monotonic()
        vm.fetch_dirty_bitmap()
        while time.monotonic() - t0 < seconds:
            time.sleep(interval_s)
            t = time.perf_counter_ns()
            bitmap = vm.fetch_dirty_bitmap()
            fetch_ns.append(time.perf_counter_ns() - t)
            dirty += int(np.unpackbits(bitmap).sum())
        elapsed = time.monotonic() - t0
        vm.stop_dirty_log()
    return {
        "memory_mib": memory_mib,
        "vcpus": vcpus,
        "working_set_pages": vm.layout.region_pages * vcpus,
        "fetch_us": percentiles_us(fetch_ns),
        "manual_protect": vm.manual_protect,
        "dirty_pages_per_s": round(dirty / elapsed),
    }


# --------------------------------------------------------------------------------------------


@contextmanager
def background_vcpus(enabled: bool) -> Iterator[None]:
    """GuestVms created inside the block use ``background_vcpus=enabled``."""
    old = guest_vm.BACKGROUND_VCPUS
    guest_vm.BACKGROUND_VCPUS = enabled
    try:
        yield
    finally:
        guest_vm.BACKGROUND_VCPUS = old


def compare_background(vcpus: Sequence[int], iterations: int, api_trials: int, rt: bool,
                       rounds: int = 4) -> dict[str, Any]:
    """pause/resume and API latency with ``background_vcpus`` off ("foreground", the earlier
    behaviour) and on, in ``rounds`` rounds alternating the order; samples pooled."""
    raw: dict[str, dict[int, dict[str, list[int]]]] = {"foreground": {}, "background": {}}
    for r in range(rounds):
        order = [("foreground", False), ("background", True)]
        for name, enabled in order if r % 2 == 0 else order[::-1]:
            with background_vcpus(enabled):
                for n in vcpus:
                    into = raw[name].setdefault(n, {})
                    bench_pause_resume(n, max(1, iterations // rounds), raw=into)
                    bench_api_latency(n, max(1, api_trials // rounds), rt, seed=r, raw=into)
    return {"rounds": rounds, **{
        name: {f"n{n}": {key: percentiles_us(v) for key, v in sorted(d.items())}
               for n, d in per_n.items()}
        for name, per_n in raw.items()}}


def _floor_of(pause_resume: Sequence[dict[str, Any]], vcpus: int) -> dict[str, Any] | None:
    """The kick-and-wake floor measured for ``vcpus`` in this run's pause/resume section."""
    for row in pause_resume:
        if row["vcpus"] == vcpus:
            return {"vcpus": vcpus, "pause_us": row["floor_pause_us"],
                    "resume_us": row["floor_resume_us"],
                    "round_trip_p99_us": round(row["floor_pause_us"]["p99"]
                                               + row["floor_resume_us"]["p99"], 2)}
    return None


def run(*, iterations: int = 200, duty_seconds: float = 2.0, api_trials: int = 200,
        vcpus: Sequence[int] | None = None, duty_vcpus: int | None = None,
        percents: Sequence[int] = PERCENTS, timeslices_ms: Sequence[int] | None = None,
        rt: bool = False, dirty_log_mib: Sequence[int] = (64, 256),
        compare: bool = False, api_options: bool = False,
        background: bool = False) -> dict[str, Any]:
    nproc = len(os.sched_getaffinity(0))
    ns = sorted(set(vcpus or (1, 2, nproc)))
    dv = duty_vcpus or min(2, nproc)
    slices = [ms * NS_PER_MS for ms in (timeslices_ms or
              (timing.DEFAULT_TIMESLICE_NS // NS_PER_MS, timing.MIN_TIMESLICE_NS // NS_PER_MS))]
    started = time.monotonic()
    report: dict[str, Any] = {"host": host_info(), "controller_rt": rt}
    with realtime_priority(rt), background_load(background) as load:
        report["background_load"] = load
        report["pause_resume"] = [bench_pause_resume(n, iterations) for n in ns]
        report["duty_cycle"] = {
            "vcpus": dv,
            "seconds_per_point": duty_seconds,
            "rows": bench_duty_cycle(dv, duty_seconds, percents, slices, rt),
        }
        api = bench_api_latency(dv, api_trials, rt)
        api["floor"] = _floor_of(report["pause_resume"], dv)
        if api["floor"]:
            for what in ("abort", "shutdown"):
                api[f"{what}_p99_over_floor_round_trip"] = round(
                    api[f"{what}_us"]["p99"] / api["floor"]["round_trip_p99_us"], 2)
        api.update(bench_transitions_trigger(max(api_trials, 1000)))
        report["api_latency"] = api
        if api_options:
            report["api_latency_options"] = {
                option: {key: value for key, value in bench_api_latency(
                    dv, api_trials, rt, realtime=mode, realtime_vcpus=vcpus_rt).items()
                    if key not in ("timeslice_ms", "set_throttle_percent_us")}
                for option, (mode, vcpus_rt) in API_OPTIONS.items()}
        dl_seconds = min(duty_seconds, 1.0)
        report["dirty_log"] = [bench_dirty_log(mib, 1, dl_seconds) for mib in dirty_log_mib]
        if compare:
            report["background_vcpus_comparison"] = compare_background(
                [n for n in ns if n <= nproc], iterations, api_trials, rt)
    report["host"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = round(time.monotonic() - started, 1)
    return report
