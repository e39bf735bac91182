"""One host thread per vCPU: it runs ``KVM_RUN`` and parks when the controller pauses it.

One job: the vCPU side of the pause/resume protocol, and each vCPU's time accounting.
:class:`VcpuRunner` is one vCPU (its binding, its thread, the protocol's flags);
:class:`~.guest_vm.GuestVm` is the controller. ``KVM_RUN`` goes through ctypes, GIL released.

Pause/resume protocol, per vCPU (controller side under one lock; vCPU side in its thread)::

    controller pause():  want_pause = True; kvm_run.immediate_exit = 1; pthread_kill(SIGUSR1)
                         ... for all vCPUs first, then wait until each is PARKED
    vCPU loop:           immediate_exit = 0
                         if want_pause: PARKED (ack); sleep while want_pause;
                                        WOKEN (ack); sleep while a resume is in progress;
                                        RUNNING
                         else KVM_RUN
    controller resume(): resumes_started += 1; want_pause = False; wake ... for all, then
                         wait until none is PARKED; resumes_done += 1; wake all; return

Every wait is a lock used as a binary semaphore plus a flag re-checked after each wake-up,
so a stale token costs one extra loop, never a wrong answer.

Realtime parking (GuestVm's ``realtime_vcpus``, opt-in, where permitted): the kick also
raises the vCPU thread to SCHED_FIFO, so it leaves the guest, acks, parks, wakes and acks the
resume without waiting in a run queue behind other normal threads (on a kernel that does not
preempt for a woken normal thread, up to a 4 ms tick each); right before it re-enters KVM_RUN
it drops back to SCHED_OTHER itself, in a C call with the GIL released (a thread preempted
there holds no GIL). Guest code never runs realtime.

The vCPU clears ``immediate_exit`` *before* it reads ``want_pause``, and the controller sets
``want_pause`` before ``immediate_exit``, so a kick can never be lost: either the vCPU sees
the flag, or it enters KVM_RUN with ``immediate_exit == 1`` and returns at once; the signal
only interrupts a KVM_RUN already in progress (it needs a real Python handler, see
:mod:`.kick`: an ignored signal does not interrupt). Waits are bounded and raise
:class:`VcpuTimeout` naming the vCPU. A vCPU with a pending I/O exit first completes it
(KVM_RUN with immediate_exit set) before it parks, so its saved registers are consistent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from autoconverge.impl.sched import (
    RT_POLICIES,
    SCHED_IDLE,
    current_policy,
    reset_to_sched_other,
    set_policy,
    set_realtime,
)
from autoconverge.impl.vcpus import VcpuError, VcpuTimeout

from . import abi
from .bindings import KvmError, Vcpu

Device = Callable[[int, int, bytes], None]
"""MMIO/port-I/O write handler: (vcpu index, address or port, bytes written). Runs on the
vCPU's thread; while it runs the vCPU cannot answer pause/resume."""


_libc = ctypes.CDLL(None, use_errno=True)


def _sched_yield() -> None:
    """sched_yield(2) with the GIL released (ctypes), so a thread waiting for the GIL can run."""
    _libc.sched_yield()


_NORMAL_PRIORITY = ctypes.c_int(0)  # struct sched_param { int sched_priority; } for SCHED_OTHER


def _drop_to_sched_other() -> bool:
    """sched_setscheduler(0, SCHED_OTHER) with the GIL released (ctypes): if the kernel switches
    to another thread right there, this thread holds no GIL others would wait for."""
    return int(_libc.sched_setscheduler(0, os.SCHED_OTHER,
                                        ctypes.byref(_NORMAL_PRIORITY))) == 0


def post_token(lock: threading.Lock) -> None:
    """Post a token on a lock used as a binary semaphore (a second post is a no-op)."""
    with contextlib.suppress(RuntimeError):
        lock.release()


@dataclass(frozen=True)
class VcpuTimes:
    """Time accounting of one vCPU thread (monotonic ns, includes the interval in progress)."""

    vcpu: int
    at_ns: int
    outside_ns: int
    """All time outside KVM_RUN since the thread started."""
    paused_ns: int
    """Time outside KVM_RUN in the intervals during which the vCPU was parked (paused)."""
    parks: int
    exits: int


def paused_share(before: Sequence[VcpuTimes], after: Sequence[VcpuTimes]) -> float:
    """Fraction of vCPU time spent parked (outside KVM_RUN while paused) between two
    :meth:`~.guest_vm.GuestVm.vcpu_times` snapshots, over all vCPUs (0.0 .. 1.0)."""
    paused = sum(a.paused_ns - b.paused_ns for a, b in zip(after, before, strict=True))
    wall = sum(a.at_ns - b.at_ns for a, b in zip(after, before, strict=True))
    return paused / wall if wall > 0 else 0.0


RUNNING: Final = 0
PARKED: Final = 1
WOKEN: Final = 2
"""vCPU thread phases: in its run loop / parked by a pause / woken by a resume in progress."""


class ResumeCounts:
    """Counts resume() calls started and finished (written by the controller only); a woken
    vCPU re-enters KVM_RUN once no resume is in progress."""

    __slots__ = ("done", "started")

    def __init__(self) -> None:
        self.started = 0
        self.done = 0


class VcpuRunner:
    """One vCPU: its binding, its thread, the flags of the pause protocol, its accounting."""

    def __init__(self, index: int, vcpu: Vcpu, resumes: ResumeCounts, *,
                 device: Device | None, cpu: int | None, background: bool,
                 realtime: bool = False) -> None:
        self.index = index
        self.resumes = resumes
        self.name = str(index)
        self.vcpu = vcpu
        self.run_page = vcpu.kvm_run
        self.device = device
        self.cpu = cpu
        self.background = background
        """Run guest code SCHED_IDLE (see GuestVm's ``background_vcpus``)."""
        self.realtime = realtime
        """Answer pause/resume at SCHED_FIFO (see GuestVm's ``realtime_vcpus``); cleared
        when the switch is refused (no permission)."""
        self.boosted = False
        """The controller raised this thread to SCHED_FIFO for the current pause."""
        # protocol flags (single writer each: controller writes want_pause/stop, vCPU writes
        # phase/started/finished)
        self.want_pause = True  # every thread starts parked
        self.stop = False
        self.phase = RUNNING
        self.started = False
        self.finished = False
        self.error: BaseException | None = None
        self.ack = threading.Lock()
        self.ack.acquire()
        self.wake = threading.Lock()
        self.wake.acquire()
        # accounting: one tuple replaced atomically (outside, paused, out_since, parked_in_it)
        self.acct: tuple[int, int, int, bool] = (0, 0, time.monotonic_ns(), False)
        self.parks = 0
        self.exits = 0
        self.stopped_ns = 0
        """When the vCPU last left KVM_RUN before parking."""
        self.ready_ns = 0
        """When the vCPU last woke from its park (it then waits for the resume to end)."""
        self.entered_ns = 0
        """When the vCPU last entered KVM_RUN."""
        self.io_exits = 0
        self.sched_reset: bool | None = None
        self.thread = threading.Thread(target=self._main, name=f"vcpu{index}", daemon=True)
        self.ident = 0
        self.tid = 0

    # vCPU thread ------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._setup_thread()
            self.started = True
            post_token(self.ack)
            self._loop()
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished = True
            post_token(self.ack)

    def _setup_thread(self) -> None:
        self.tid = threading.get_native_id()
        if current_policy() in RT_POLICIES:
            self.sched_reset = reset_to_sched_other()
        if self.cpu is not None:
            os.sched_setaffinity(0, {self.cpu})

    def _loop(self) -> None:
        run_page = self.run_page
        vcpu_run = self.vcpu.run
        now = time.monotonic_ns
        pending_io = False
        while True:
            run_page.immediate_exit = 0
            if self.want_pause or self.stop:
                if pending_io:
                    # finish the I/O instruction so the registers are consistent; returns
                    # at once (immediate_exit) without running guest code
                    run_page.immediate_exit = 1
                    vcpu_run()
                    run_page.immediate_exit = 0
                    pending_io = False
                if not self._park():
                    return
                continue
            t = now()
            self.entered_ns = t
            outside, paused, since, parked_in_it = self.acct
            self.acct = (outside + t - since, paused + (t - since if parked_in_it else 0),
                         0, False)
            reason = vcpu_run()
            self.acct = (self.acct[0], self.acct[1], now(), False)
            self.exits += 1
            if reason == abi.EXIT_INTR:
                continue
            if reason == abi.EXIT_MMIO:
                self._mmio()
                pending_io = True
                continue
            if reason == abi.EXIT_IO:
                self._port_io()
                pending_io = True
                continue
            raise VcpuError(f"vCPU {self.index}: guest stopped with {self._describe(reason)}")

    def _park(self) -> bool:
        """Park until resumed (two steps, see guest_vm.GuestVm.resume); False when told to stop."""
        a = self.acct
        self.acct = (a[0], a[1], a[2], True)
        self.stopped_ns = a[2]
        self.parks += 1
        self.phase = PARKED
        post_token(self.ack)
        while self.want_pause and not self.stop:
            self.wake.acquire()
        if self.stop:
            return False
        self.ready_ns = time.monotonic_ns()
        self.phase = WOKEN
        post_token(self.ack)
        resumes = self.resumes
        while resumes.done < resumes.started and not self.want_pause and not self.stop:
            self.wake.acquire()
        self.phase = RUNNING
        if self.boosted and not self.want_pause:
            # back to guest code at normal priority, never realtime
            self.boosted = False
            if not _drop_to_sched_other():
                reset_to_sched_other()
        if self.background and not self.want_pause:
            # back to guest code: as a background thread, and after letting whatever else is
            # runnable on this CPU (typically the thread that called resume(), or the one it
            # just woke) go first. Without this the controller often sits in this CPU's run
            # queue behind the vCPU in guest mode until the next scheduler tick (4 ms at
            # HZ=250): the kernel does not preempt a freshly woken CPU hog for it.
            self.background = set_policy(0, SCHED_IDLE)
            _sched_yield()
        return not self.stop

    def _mmio(self) -> None:
        self.io_exits += 1
        mmio = self.run_page.exit.mmio
        length = min(int(mmio.len), 8)
        if not mmio.is_write:
            ctypes.memset(ctypes.addressof(mmio.data), 0, 8)  # reads see zeros
            return
        if self.device is not None:
            self.device(self.index, int(mmio.phys_addr), bytes(mmio.data[:length]))

    def _port_io(self) -> None:
        self.io_exits += 1
        io = self.run_page.exit.io
        base = ctypes.addressof(self.run_page) + io.data_offset
        length = io.size * io.count
        if io.direction == abi.KVM_EXIT_IO_IN:
            ctypes.memset(base, 0, length)
            return
        if self.device is not None:
            self.device(self.index, int(io.port), ctypes.string_at(base, length))

    def _describe(self, reason: int) -> str:
        what = abi.exit_name(reason)
        try:
            rip = self.vcpu.get_regs().rip
            what += f" at rip {rip:#x}"
        except KvmError:
            pass
        if reason == abi.EXIT_FAIL_ENTRY:
            what += (f" (hardware reason "
                     f"{self.run_page.exit.fail_entry.hardware_entry_failure_reason:#x})")
        elif reason == abi.EXIT_INTERNAL_ERROR:
            what += f" (suberror {self.run_page.exit.internal.suberror})"
        return what

    # controller side ------------------------------------------------------------------------
    def kick(self, signum: int) -> None:
        if self.background and self.tid and not self.realtime:
            # answer at normal priority: a SCHED_IDLE thread can starve behind any busy thread
            reset_to_sched_other(self.tid)
        self.run_page.immediate_exit = 1
        if self.ident and not self.finished:
            with contextlib.suppress(ProcessLookupError):  # it just exited
                signal.pthread_kill(self.ident, signum)
        if self.realtime and self.tid and not self.boosted:
            # leave the guest, ack, park and answer the resume at SCHED_FIFO (see the module
            # docstring). Only after the signal: from then on KVM_RUN cannot enter the guest
            # (signal pending, immediate_exit set), so guest code never runs realtime. The
            # thread drops back itself before it re-enters the guest.
            self.boosted = set_realtime(self.tid)
            self.realtime = self.boosted
            if not self.boosted and self.background:
                reset_to_sched_other(self.tid)  # refused: answer at normal priority instead

    def wait(self, condition: Callable[[], bool], action: str, deadline: float,
             timeout_s: float) -> None:
        """Wait until ``condition()`` (the vCPU's ack) or raise naming this vCPU."""
        while True:
            if self.finished:
                raise VcpuError(f"vCPU {self.name} stopped running: {self.error}") \
                    from self.error
            if condition():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.ack.acquire(timeout=remaining):
                if condition() or self.finished:
                    continue
                raise VcpuTimeout(self.name, action, timeout_s)

    def times(self, now_ns: int) -> VcpuTimes:
        outside, paused, since, parked_in_it = self.acct
        if since:
            outside += now_ns - since
            if parked_in_it:
                paused += now_ns - since
        return VcpuTimes(self.index, now_ns, outside, paused, self.parks, self.exits)
