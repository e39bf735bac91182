"""``GuestVm``: a small KVM VM running the counter/dirtier guest, with pausable vCPU threads.

One job: the VM as the throttler and a migration see it. It implements the throttler's
:class:`~autoconverge.impl.vcpus.Vcpus` protocol and what a migration needs (memory, dirty
log, vCPU state, progress counters). It owns one :class:`~.vcpu_thread.VcpuRunner` per vCPU
and is the controller side of their pause/resume protocol (described in
:mod:`.vcpu_thread`): controller calls run one at a time, under one lock.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import signal
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Self

import numpy as np
import numpy.typing as npt

from autoconverge.impl.vcpus import VcpuError, VcpuTimeout

from . import abi, guest
from .bindings import DEV_KVM, Kvm, KvmError, Vm
from .kick import ensure_kick_handler
from .vcpu_thread import (
    PARKED,
    RUNNING,
    Device,
    ResumeCounts,
    VcpuRunner,
    VcpuTimes,
    post_token,
)

PAGE_SIZE: Final = guest.PAGE_SIZE
MAX_MEMORY: Final = guest.MAX_MEMORY_GIB * guest.GIB
VCPU_LIMIT: Final = 64
"""Most vCPUs a GuestVm accepts (also capped by KVM_CAP_MAX_VCPUS). Each vCPU is a host thread
whose pause and resume acks go through the Python wake path one at a time; measured here,
all-vCPU pause/resume grows ~linearly with N once N exceeds the cores (see bench-kvm), so
beyond 64 on small hosts a single resume would take a large part of a 100 ms timeslice."""
DEFAULT_MEMORY: Final = 64 << 20
DEFAULT_TIMEOUT_S: Final = 1.0
BACKGROUND_VCPUS = False
"""Default of GuestVm's ``background_vcpus`` (a module variable so benchmarks can compare).
Off: measured here it cuts abort/shutdown p50 and p90 several-fold but not the p99 below
1 ms, and it over-throttles (vCPUs re-enter the guest later: +0.5-0.8 pp time share at 10 %
on a quiet host, up to +4 pp under load), see /work/notes/readme-kvm.md."""
REALTIME_VCPUS = False
"""Default of GuestVm's ``realtime_vcpus`` (a module variable so benchmarks can compare).
Off: measured here (``bench-kvm --api-options``) it left abort/shutdown latency where it was
(the realtime throttle worker and caller already avoid the tick) and made pause p50 slower
(a boosted vCPU thread preempts the controller, then waits for the GIL it holds)."""
GUEST_KIND: Final = "autoconverge-kvm-counter-loop/1"
"""Identifies the guest program (migration checks source and destination agree)."""
VCPU_STATE_SIZE: Final = ctypes.sizeof(abi.KvmRegs) + ctypes.sizeof(abi.KvmSregs)
MAP_NORESERVE: Final = getattr(mmap, "MAP_NORESERVE", 0x4000)


@dataclass(frozen=True)
class CallTiming:
    """One pause()/resume() call seen from both sides (monotonic ns).

    ``vcpu_ns`` has, per vCPU the call waited for, when it left KVM_RUN (pause) or woke in
    its park (resume; it re-enters KVM_RUN one wake-up after the call returns).
    """

    action: str
    start_ns: int
    end_ns: int
    vcpu_ns: tuple[int, ...]

    @property
    def call_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def effective_ns(self) -> int:
        """From the call's start until the last vCPU stopped (pause) / woke (resume)."""
        return max(self.vcpu_ns) - self.start_ns


@dataclass(frozen=True)
class VcpuState:
    """One vCPU's registers, as needed to move it: ``struct kvm_regs`` + ``struct kvm_sregs``."""

    regs: bytes
    sregs: bytes

    def to_bytes(self) -> bytes:
        return self.regs + self.sregs

    @classmethod
    def from_bytes(cls, data: bytes) -> VcpuState:
        if len(data) != VCPU_STATE_SIZE:
            raise ValueError(f"vCPU state must be {VCPU_STATE_SIZE} bytes, got {len(data)}")
        n = ctypes.sizeof(abi.KvmRegs)
        return cls(bytes(data[:n]), bytes(data[n:]))

    @property
    def rip(self) -> int:
        return int(abi.KvmRegs.from_buffer_copy(self.regs).rip)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def validate_shape(memory_size: object, vcpus: object) -> tuple[int, int]:
    """Check memory size and vCPU count before touching KVM; KvmError(EINVAL) if invalid."""
    mem = _check_int("memory_size", memory_size)
    n = _check_int("vcpus", vcpus)
    if not 1 <= n <= VCPU_LIMIT:
        raise KvmError(errno.EINVAL, "GuestVm", f"vcpus must be in 1..{VCPU_LIMIT}, got {n}")
    if mem % PAGE_SIZE:
        raise KvmError(errno.EINVAL, "GuestVm",
                       f"memory_size must be a multiple of the {PAGE_SIZE}-byte page, "
                       f"got {mem}")
    low = guest.GuestLayout.min_memory(n)
    if not low <= mem <= MAX_MEMORY:
        raise KvmError(errno.EINVAL, "GuestVm",
                       f"memory_size must be in {low} .. {MAX_MEMORY} bytes "
                       f"({low >> 10} KiB .. {MAX_MEMORY >> 30} GiB) for {n} vCPUs, got {mem}")
    return mem, n


class GuestVm:
    """A KVM VM running the counter/dirtier guest on ``vcpus`` threads.

    ``paused=True`` creates the vCPU threads parked (a migration destination: load memory
    and state, then :meth:`start`). ``load_image=False`` leaves memory zeroed and registers
    at reset (the destination overwrites both). ``device`` handles the guest's MMIO
    writes (see :meth:`ring_doorbell`). ``pin`` pins vCPU ``i`` to the ``i``-th allowed CPU
    (round robin). ``timeout_s`` bounds every wait for a vCPU thread.

    ``background_vcpus`` (default :data:`BACKGROUND_VCPUS`, off): the vCPU threads run guest
    code as SCHED_IDLE threads, yield the CPU once before re-entering the guest after a
    resume, and are raised back to SCHED_OTHER by each kick, so they answer pause/resume at
    normal priority. This keeps the threads that drive the VM (the throttle worker, the
    caller of an abort) from waiting in a run queue behind a vCPU in guest mode until the
    next scheduler tick, most of the time; the price is that guest code only gets CPU time
    no other normal thread wants, and it re-enters the guest later after each resume (the
    throttle over-shoots). Falls back to plain SCHED_OTHER where the policy cannot be set.

    ``realtime_vcpus`` (default :data:`REALTIME_VCPUS`, off): each kick raises the vCPU thread
    to SCHED_FIFO until it re-enters the guest after the next resume (it drops back itself
    first), so pausing and resuming never wait in a run queue behind busy normal threads;
    guest code always runs SCHED_OTHER. Where SCHED_FIFO is not permitted nothing changes.
    """

    def __init__(
        self,
        memory_size: int = DEFAULT_MEMORY,
        vcpus: int = 1,
        *,
        workload: guest.Workload | None = None,
        paused: bool = False,
        load_image: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        kick_signal: int = signal.SIGUSR1,
        device: Device | None = None,
        pin: bool = False,
        background_vcpus: bool | None = None,
        realtime_vcpus: bool | None = None,
        kvm_path: str = DEV_KVM,
    ) -> None:
        self.memory_size, self.vcpu_count = validate_shape(memory_size, vcpus)
        if not (isinstance(timeout_s, int | float) and 0 < timeout_s <= 3600):
            raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.layout = guest.GuestLayout(self.memory_size, self.vcpu_count)
        self._signal = kick_signal
        # one controller call at a time: pause/resume, dirty log, vCPU state, close
        self._control_lock = threading.Lock()
        self._closed = False
        self._runners: list[VcpuRunner] = []
        self._resumes = ResumeCounts()
        self._dirty_logging = False
        self.last_pause: CallTiming | None = None
        """Timing of the last pause() that had work to do."""
        self.last_resume: CallTiming | None = None
        """Timing of the last resume() that had work to do."""
        self._mem: mmap.mmap | None = None
        self._mem_anchor: ctypes.c_char | None = None
        self._view: memoryview | None = None
        self._u64: npt.NDArray[np.uint64] | None = None
        self._vm: Vm | None = None
        self._kvm = Kvm(kvm_path)
        try:
            self._setup(workload, paused, load_image, device, pin,
                        BACKGROUND_VCPUS if background_vcpus is None else background_vcpus,
                        REALTIME_VCPUS if realtime_vcpus is None else realtime_vcpus)
        except BaseException:
            self._teardown(self.timeout_s)
            raise

    # construction -------------------------------------------------------------------------------
    def _setup(self, workload: guest.Workload | None, paused: bool, load_image: bool,
               device: Device | None, pin: bool, background: bool,
               realtime: bool) -> None:
        kvm = self._kvm
        kvm.require_extension(abi.CAP_USER_MEMORY)
        kvm.require_extension(abi.CAP_IMMEDIATE_EXIT)
        limit = kvm.max_vcpus()
        if self.vcpu_count > limit:
            raise KvmError(errno.EINVAL, "GuestVm",
                           f"{self.vcpu_count} vCPUs exceed this KVM's maximum of {limit} "
                           "(KVM_CAP_MAX_VCPUS)")
        ensure_kick_handler(self._signal)
        self._vm = vm = kvm.create_vm()
        self.manual_protect = vm.check_extension(abi.CAP_MANUAL_DIRTY_LOG_PROTECT2) \
            & abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE != 0
        if self.manual_protect:
            vm.enable_cap(abi.CAP_MANUAL_DIRTY_LOG_PROTECT2,
                          abi.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)
        self._mem = mmap.mmap(-1, self.memory_size,
                              flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._mem_anchor = ctypes.c_char.from_buffer(self._mem)
        self._view = memoryview(self._mem)
        self._u64 = np.frombuffer(self._mem, dtype=np.uint64)
        self._set_region(0)
        words = -(-self.page_count // 64)
        self._bitmap: npt.NDArray[np.uint64] = np.zeros(words, dtype=np.uint64)
        if load_image:
            guest.write_image(self._view, self.layout)
            for i in range(self.vcpu_count):
                guest.write_workload(self._view, self.layout, i, workload or guest.idle())
        cpus = sorted(os.sched_getaffinity(0)) if pin else []
        for i in range(self.vcpu_count):
            vcpu = vm.create_vcpu(i)
            # every thread starts parked; one resume() below releases them together, so
            # starting thread k+1 does not compete with k busy vCPUs for a core
            runner = VcpuRunner(i, vcpu, self._resumes, device=device,
                             cpu=cpus[i % len(cpus)] if cpus else None, background=background,
                             realtime=realtime)
            self._runners.append(runner)
            if load_image:
                vcpu.set_sregs(guest.initial_sregs(self.layout))
                vcpu.set_regs(guest.initial_regs(self.layout, i))
        for r in self._runners:
            r.thread.start()
            r.ident = r.thread.ident or 0
        deadline = time.monotonic() + self.timeout_s
        for r in self._runners:
            r.wait(lambda r=r: r.started and r.phase == PARKED, "start",  # type: ignore[misc]
                   deadline, self.timeout_s)
        if not paused:
            self.resume()

    def _set_region(self, flags: int) -> None:
        assert self._vm is not None and self._mem_anchor is not None
        self._vm.set_user_memory_region(abi.KvmUserspaceMemoryRegion(
            slot=0, flags=flags, guest_phys_addr=0, memory_size=self.memory_size,
            userspace_addr=ctypes.addressof(self._mem_anchor)))

    # shape / memory -------------------------------------------------------------------------
    page_size: Final = PAGE_SIZE
    guest_kind: Final = GUEST_KIND
    vcpu_state_size: Final = VCPU_STATE_SIZE

    @property
    def page_count(self) -> int:
        return self.memory_size // PAGE_SIZE

    def memory(self) -> memoryview:
        """The whole guest memory (writable, ``memory_size`` bytes, guest physical 0..)."""
        return self._live_view()

    def memory_array(self) -> npt.NDArray[np.uint8]:
        """The guest memory as a writable numpy uint8 view (no copy)."""
        return np.frombuffer(self._live_view(), dtype=np.uint8)

    def _live_view(self) -> memoryview:
        if self._view is None or self._closed:
            raise VcpuError("GuestVm is closed")
        return self._view

    # dirty log ----------------------------------------------------------------------------------
    @property
    def dirty_log_enabled(self) -> bool:
        return self._dirty_logging

    def start_dirty_log(self) -> None:
        """Turn on dirty-page logging (KVM_MEM_LOG_DIRTY_PAGES); idempotent.

        Pages count from here: the first :meth:`fetch_dirty_bitmap` returns the pages
        written since this call.
        """
        with self._control_lock:
            self._check_open()
            if not self._dirty_logging:
                self._set_region(abi.KVM_MEM_LOG_DIRTY_PAGES)
                self._dirty_logging = True

    def stop_dirty_log(self) -> None:
        with self._control_lock:
            if self._dirty_logging and not self._closed:
                self._set_region(0)
            self._dirty_logging = False

    def fetch_dirty_bitmap(self) -> npt.NDArray[np.uint8]:
        """Get and clear the pages written since the previous fetch (or start_dirty_log).

        A little-endian bit array (bit ``i % 8`` of byte ``i // 8`` is page ``i``),
        ``8 * ceil(pages / 64)`` bytes, a fresh array per call. With manual protection
        (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) this is KVM_GET_DIRTY_LOG followed by
        KVM_CLEAR_DIRTY_LOG of the returned bits, otherwise KVM_GET_DIRTY_LOG alone (which
        clears). Either way a write that lands after the fetch shows up in the next one, so
        copying the returned pages after this call is safe.
        """
        with self._control_lock:
            self._check_open()
            if not self._dirty_logging:
                raise KvmError(errno.EINVAL, "KVM_GET_DIRTY_LOG",
                               "dirty logging is off: call start_dirty_log() first")
            assert self._vm is not None
            bitmap = np.zeros_like(self._bitmap)
            address = bitmap.ctypes.data
            self._vm.get_dirty_log(0, address)
            if self.manual_protect:
                self._vm.clear_dirty_log(0, 0, self.page_count, address)
            return bitmap.view(np.uint8)

    @staticmethod
    def dirty_pages(bitmap: npt.NDArray[np.uint8]) -> npt.NDArray[np.intp]:
        """Indices of the set bits of a bitmap from :meth:`fetch_dirty_bitmap`."""
        return np.flatnonzero(np.unpackbits(bitmap, bitorder="little"))

    # the guest ----------------------------------------------------------------------------------
    def set_workload(self, workload: guest.Workload, vcpu: int | None = None) -> None:
        """Change what vCPU ``vcpu`` (default: every vCPU) does, effective at once."""
        targets = range(self.vcpu_count) if vcpu is None else [self._index(vcpu)]
        for i in targets:
            guest.write_workload(self._live_view(), self.layout, i, workload)

    def working_set(self, vcpu: int) -> range:
        """Page indices vCPU ``vcpu`` writes under its current workload."""
        view = self._live_view()
        base, = struct.unpack_from("<Q", view, self.layout.control(vcpu) + guest.WS_BASE)
        pages, = struct.unpack_from("<Q", view, self.layout.control(vcpu) + guest.WS_PAGES)
        return range(base // PAGE_SIZE, base // PAGE_SIZE + pages)

    def control_pages(self) -> list[int]:
        """Page indices of the per-vCPU control blocks (always dirty while vCPUs run)."""
        return [self.layout.control(i) // PAGE_SIZE for i in range(self.vcpu_count)]

    def progress(self) -> list[int]:
        """Each vCPU's progress counter (guest loop iterations), read from guest memory."""
        u64 = self._u64
        if u64 is None or self._closed:
            raise VcpuError("GuestVm is closed")
        return [int(u64[(self.layout.control(i) + guest.COUNTER) // 8])
                for i in range(self.vcpu_count)]

    def pages_written(self) -> list[int]:
        """Each vCPU's count of page writes (its dirtying progress)."""
        u64 = self._u64
        if u64 is None or self._closed:
            raise VcpuError("GuestVm is closed")
        return [int(u64[(self.layout.control(i) + guest.PAGES_WRITTEN) // 8])
                for i in range(self.vcpu_count)]

    def ring_doorbell(self, vcpu: int, value: int = 1) -> None:
        """Make vCPU ``vcpu`` write ``value & 0xff`` to ``layout.mmio_addr`` (a KVM_EXIT_MMIO
        handled by the ``device`` callback) at its next outer loop pass."""
        if not 1 <= value <= 0xFF:
            raise ValueError(f"doorbell value must be in 1..255, got {value}")
        struct.pack_into("<Q", self._live_view(),
                         self.layout.control(self._index(vcpu)) + guest.DOORBELL, value)

    def _index(self, vcpu: int) -> int:
        if isinstance(vcpu, bool) or not isinstance(vcpu, int) \
                or not 0 <= vcpu < self.vcpu_count:
            raise ValueError(f"vcpu must be in 0..{self.vcpu_count - 1}, got {vcpu!r}")
        return vcpu

    # Vcpus protocol -----------------------------------------------------------------------------
    def pause(self) -> None:
        """Kick every vCPU out of KVM_RUN and return once each is parked. Idempotent."""
        with self._control_lock:
            self._check_open()
            targets = [r for r in self._runners if not (r.want_pause and r.phase == PARKED)]
            start = time.monotonic_ns()
            for r in targets:
                r.want_pause = True
                r.kick(self._signal)
            deadline = time.monotonic() + self.timeout_s
            for r in targets:
                r.wait(lambda r=r: r.phase == PARKED, "pause",  # type: ignore[misc]
                       deadline, self.timeout_s)
            if targets:
                self.last_pause = CallTiming("pause", start, time.monotonic_ns(),
                                             tuple(r.stopped_ns for r in targets))

    def resume(self) -> None:
        """Unpark every vCPU; return once each is awake in its run loop. Idempotent.

        Two steps: wake every parked thread and wait until each answered (bounded, raises
        VcpuTimeout naming the vCPU), then release them all at once (a generation bump)
        and return. The vCPUs re-enter KVM_RUN one thread wake-up *after* this returns.
        Letting each re-enter as soon as it woke would make the vCPUs restart up to a
        scheduler slice *before* resume() returns whenever they occupy every core (the
        controller must then wait for a core to see the last answer), and the throttler,
        which counts the vCPUs paused until resume() returns, would over-count the pause.
        """
        with self._control_lock:
            self._check_open()
            targets = [r for r in self._runners if r.want_pause or r.phase != RUNNING]
            if not targets:
                return
            start = time.monotonic_ns()
            self._resumes.started += 1
            for r in targets:
                r.want_pause = False
                post_token(r.wake)
            deadline = time.monotonic() + self.timeout_s
            try:
                for r in targets:
                    r.wait(lambda r=r: r.phase != PARKED,  # type: ignore[misc]
                           "resume", deadline, self.timeout_s)
            finally:  # release the ones that answered even if one did not
                self._resumes.done = self._resumes.started
                for r in targets:
                    post_token(r.wake)
            self.last_resume = CallTiming("resume", start, time.monotonic_ns(),
                                          tuple(r.ready_ns for r in targets))

    def start(self) -> None:
        """Run the vCPUs of a VM created with ``paused=True`` (same as :meth:`resume`)."""
        self.resume()

    def is_paused(self) -> bool:
        return all(r.want_pause and r.phase == PARKED for r in self._runners)

    @property
    def paused(self) -> bool:
        return self.is_paused()

    # vCPU state ---------------------------------------------------------------------------------
    def get_vcpu_state(self, vcpu: int) -> VcpuState:
        with self._control_lock:
            r = self._paused_runner(vcpu)
            return VcpuState(bytes(r.vcpu.get_regs()), bytes(r.vcpu.get_sregs()))

    def set_vcpu_state(self, vcpu: int, state: VcpuState) -> None:
        with self._control_lock:
            r = self._paused_runner(vcpu)
            r.vcpu.set_sregs(abi.KvmSregs.from_buffer_copy(state.sregs))
            r.vcpu.set_regs(abi.KvmRegs.from_buffer_copy(state.regs))

    def save_vcpu_state(self) -> list[bytes]:
        """Every vCPU's state (``vcpu_state_size`` bytes each); only while paused."""
        return [self.get_vcpu_state(i).to_bytes() for i in range(self.vcpu_count)]

    def load_vcpu_state(self, states: Sequence[bytes]) -> None:
        """Load every vCPU's state (from :meth:`save_vcpu_state`); only while paused."""
        if len(states) != self.vcpu_count:
            raise ValueError(f"expected {self.vcpu_count} vCPU states, got {len(states)}")
        for i, data in enumerate(states):
            self.set_vcpu_state(i, VcpuState.from_bytes(data))

    def _paused_runner(self, vcpu: int) -> VcpuRunner:
        self._check_open()
        r = self._runners[self._index(vcpu)]
        if not ((r.want_pause and r.phase == PARKED) or r.finished):
            raise VcpuError(f"vCPU {vcpu} is running: pause() before saving or loading state")
        return r

    # accounting ---------------------------------------------------------------------------------
    def vcpu_times(self) -> list[VcpuTimes]:
        now = time.monotonic_ns()
        return [r.times(now) for r in self._runners]

    def parked_ns(self) -> int:
        """Time parked (outside KVM_RUN while paused) per vCPU since it started, averaged over
        the vCPUs, by their own stop and re-entry timestamps (an interval in progress
        included): what the throttler compensates its pause share with."""
        now = time.monotonic_ns()
        return sum(r.times(now).paused_ns for r in self._runners) // len(self._runners)

    def thread_ids(self) -> list[int]:
        """Native thread ids of the vCPU threads (for /proc/self/task/<tid>)."""
        return [r.thread.native_id or 0 for r in self._runners]

    @property
    def vcpu_errors(self) -> list[BaseException | None]:
        return [r.error for r in self._runners]

    # lifetime -----------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise VcpuError("GuestVm is closed")

    def close(self) -> None:
        """Stop and join every vCPU thread (parked ones too), then free KVM resources.

        Idempotent. Raises VcpuTimeout naming a vCPU whose thread does not exit within the
        timeout (its resources are then left allocated rather than freed under it).
        """
        with self._control_lock:
            if self._closed:
                return
            self._closed = True
            self._teardown(self.timeout_s)

    def _teardown(self, timeout_s: float) -> None:
        for r in self._runners:
            r.stop = True
            r.kick(self._signal)
            post_token(r.wake)
        deadline = time.monotonic() + timeout_s
        stuck = []
        for r in self._runners:
            if r.ident:
                r.thread.join(max(0.0, deadline - time.monotonic()))
                if r.thread.is_alive():
                    stuck.append(r)
        if stuck:
            raise VcpuTimeout(stuck[0].name, "close", timeout_s)
        for r in self._runners:
            r.run_page = None  # type: ignore[assignment]
            r.vcpu.close()
        if self._vm is not None:
            self._vm.close()
        self._kvm.close()
        self._u64 = None
        self._mem_anchor = None
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
            self._view = None
        if self._mem is not None:
            # BufferError: a caller still holds a view; leave the mapping to the GC
            with contextlib.suppress(BufferError):
                self._mem.close()
            self._mem = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("paused" if self.is_paused() else "running")
        return (f"<GuestVm {self.memory_size >> 20} MiB, {self.vcpu_count} vCPUs, {state}>")
