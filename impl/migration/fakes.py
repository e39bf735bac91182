"""Deterministic stand-ins for tests: a virtual clock, a clock-driven VM, a throttle.

:class:`FakeVm` is a VM whose "guest" is arithmetic on the virtual clock: while running it
writes ``dirty_rate_pps x (1 - throttle)`` pages per virtual second, cycling through a
working set, and bumps one progress counter per vCPU kept in guest page 0 (so counters
migrate with memory, as the real guest's do). Writes happen lazily, up to the current
virtual time, whenever the VM is observed (dirty-log fetch, pause, memory read through
``sync()``); the dirty log records them like KVM's. :class:`FakeThrottle` sets the VM's
throttle fraction directly and accounts stolen vCPU time by integrating the setpoint; its
handover lets virtual time pass before the pause (``stop_latency_s``), so the guest keeps
writing until the stop, as a real one does, and a page it dirties after the source's last
sync must be re-sent (a source without the final dirty sync fails the memory-hash check).
:func:`writes_until_stop` does the same for a real (KVM) guest in tests. Nothing here except
that helper sleeps on the wall clock.
"""

from __future__ import annotations

import math
import mmap
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from autoconverge.impl.throttler import validate_percent

from .destination import DestinationResult, MigrationDestination
from .errors import MigrationError
from .handshake import client_handshake, server_handshake
from .messages import Layout, Limits
from .policy import Policy
from .source import MigrationConfig, MigrationResult, MigrationSource, Sample
from .throttling import ThrottleControl, ThrottleFactory
from .transport import CancellableSocket
from .vmapi import MigratableVm

COUNTER_STRUCT = struct.Struct("<Q")
STATE_SIZE = 64
_STATE = struct.Struct("<4sIQQ")


class NowClock(Protocol):
    def now(self) -> float: ...


class FakeClock:
    """Virtual monotonic time; ``wait`` advances it instead of sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._time_lock = threading.Lock()  # guards t (read and advanced from several threads)

    def now(self) -> float:
        with self._time_lock:
            return self.t

    def advance(self, dt: float) -> None:
        with self._time_lock:
            self.t += max(dt, 0.0)

    def wait(self, event: threading.Event, timeout_s: float) -> bool:
        if event.is_set():
            return True
        self.advance(timeout_s)
        return event.is_set()


def _coprime_stride(n: int) -> int:
    """A step near ``n`` times the golden ratio's fraction, coprime with ``n``: walking the
    working set with it visits every page once per cycle in an order unrelated to page
    index order (the order the source sends in), as a real guest's writes are."""
    s = max(1, round(n * 0.6180339887))
    while math.gcd(s, n) != 1:
        s += 1
    return s % n or 1


class FakeVm:
    """Clock-driven VM implementing both MigratableVm and DestinationVm.

    The guest writes its working set page after page in a fixed order (``stride`` steps, by
    default one unrelated to page index order; ``stride=1``: ascending), one full cycle per
    ``working-set pages / dirty rate`` seconds of running."""

    guest_kind = "fake"
    vcpu_state_size = STATE_SIZE
    memory_written_only_in_calls = True
    """The "guest" writes memory only inside this object's calls (see ``sync``): the source
    may send frames straight from its memory (:func:`~.pages.zero_copy_safe`)."""

    def __init__(self, clock: NowClock, pages: int = 1024, page_size: int = 4096,
                 vcpus: int = 2, dirty_rate_pps: float = 0.0,
                 working_set: tuple[int, int] | None = None, seed: int = 0,
                 running: bool = True, fill: float = 0.5, prefault: bool = False,
                 stride: int | None = None) -> None:
        if pages < 2:
            raise ValueError("FakeVm needs at least 2 pages (page 0 holds the counters)")
        self.clock = clock
        self.page_size = page_size
        self.memory_size = pages * page_size
        self.vcpu_count = vcpus
        self.rate = dirty_rate_pps
        ws = working_set or (1, pages - 1)
        if ws[0] < 1 or ws[1] < 1 or ws[0] + ws[1] > pages:
            raise ValueError("working set must lie within pages 1..pages-1")
        self.ws_first, self.ws_len = ws
        self.stride = _coprime_stride(self.ws_len) if stride is None else stride
        if math.gcd(self.stride, self.ws_len) != 1:
            raise ValueError("stride must be coprime with the working set's length")
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        if prefault:
            flags |= getattr(mmap, "MAP_POPULATE", 0)
        self._mem = mmap.mmap(-1, self.memory_size, flags=flags)
        self._m2 = np.frombuffer(self._mem, dtype=np.uint8).reshape(pages, page_size)
        filled = int(pages * fill)
        if filled > 1:  # static random content in pages 1..filled-1; the rest are zero pages
            rng = np.random.default_rng(seed)
            self._m2[1:filled] = np.frombuffer(rng.bytes((filled - 1) * page_size),
                                               dtype=np.uint8).reshape(filled - 1, page_size)
        self._dirty = np.zeros(pages, dtype=np.bool_)
        self.logging = False
        self.paused = not running
        self.throttle = 0.0
        self.closed = False
        self.started = running
        self.cursor = 0
        self.seq = 0
        self._carry = 0.0
        self._last = clock.now()
        self._state_lock = threading.RLock()  # guards memory, dirty log, run state and counters
        self.log_starts = 0
        self.log_stops = 0
        self.pause_calls = 0
        self.resume_calls = 0
        self.loaded_states: list[bytes] | None = None

    # ---------------------------------------------------------------- the "guest"
    def sync(self) -> None:
        """Apply the guest's writes up to the current virtual time."""
        with self._state_lock:
            now = self.clock.now()
            dt, self._last = now - self._last, now
            if self.paused or self.closed or dt <= 0 or self.rate <= 0:
                return
            work = dt * (1.0 - self.throttle) * self.rate + self._carry
            n = int(work)
            self._carry = work - n
            if n == 0:
                return
            k = min(n, self.ws_len)
            steps = (self.cursor + np.arange(n - k, n)) % self.ws_len
            pages = self.ws_first + steps * self.stride % self.ws_len
            self.cursor = (self.cursor + n) % self.ws_len
            self.seq += n
            stamp = np.frombuffer(COUNTER_STRUCT.pack(self.seq), dtype=np.uint8)
            self._m2[pages, 8:16] = stamp
            self._m2[pages, 16] += 1
            per, extra = divmod(n, self.vcpu_count)
            for i in range(self.vcpu_count):
                off = 8 * i
                (c,) = COUNTER_STRUCT.unpack_from(self._mem, off)
                COUNTER_STRUCT.pack_into(self._mem, off, c + per + (1 if i < extra else 0))
            if self.logging:
                self._dirty[pages] = True
                self._dirty[0] = True

    def set_throttle(self, fraction: float) -> None:
        with self._state_lock:
            self.sync()
            self.throttle = fraction

    # ---------------------------------------------------------------- MigratableVm
    def memory(self) -> memoryview:
        return memoryview(self._mem)

    def start_dirty_log(self) -> None:
        with self._state_lock:
            self.sync()
            self._dirty[:] = False
            self.logging = True
            self.log_starts += 1

    def fetch_dirty_bitmap(self) -> np.ndarray:
        with self._state_lock:
            self.sync()
            if not self.logging:
                raise RuntimeError("dirty logging is off")
            bits = np.packbits(self._dirty, bitorder="little")
            self._dirty[:] = False
            return bits

    def stop_dirty_log(self) -> None:
        with self._state_lock:
            self.sync()
            self.logging = False
            self.log_stops += 1

    def pause(self) -> None:
        with self._state_lock:
            self.sync()
            self.paused = True
            self.pause_calls += 1

    def resume(self) -> None:
        with self._state_lock:
            self.sync()
            self.paused = False
            self.resume_calls += 1

    def is_paused(self) -> bool:
        return self.paused

    def save_vcpu_state(self) -> list[bytes]:
        with self._state_lock:
            if not self.paused:
                raise RuntimeError("save_vcpu_state needs paused vCPUs")
            return [_STATE.pack(b"FVCP", i, self.cursor, self.seq).ljust(STATE_SIZE, b"\0")
                    for i in range(self.vcpu_count)]

    def progress(self) -> list[int]:
        with self._state_lock:
            self.sync()
            return [COUNTER_STRUCT.unpack_from(self._mem, 8 * i)[0]
                    for i in range(self.vcpu_count)]

    # ---------------------------------------------------------------- DestinationVm
    def load_vcpu_state(self, states: Sequence[bytes]) -> None:
        if len(states) != self.vcpu_count:
            raise ValueError("wrong number of vCPU states")
        magic, _, cursor, seq = _STATE.unpack_from(states[0])
        if magic != b"FVCP":
            raise ValueError("not a fake vCPU state")
        self.cursor, self.seq = cursor % self.ws_len, seq
        self.loaded_states = list(states)

    def start(self) -> None:
        with self._state_lock:
            self._last = self.clock.now()
            self.paused = False
            self.started = True

    def close(self) -> None:
        with self._state_lock:
            self.closed = True
            self.paused = True


def fake_vm_factory(clock: FakeClock, dirty_rate_pps: float = 0.0,
                    working_set: tuple[int, int] | None = None,
                    created: list[FakeVm] | None = None) -> Callable[[Layout], FakeVm]:
    """A destination factory making empty, stopped FakeVms (appended to ``created``)."""

    def make(lay: Layout) -> FakeVm:
        vm = FakeVm(clock, pages=lay.page_count, page_size=lay.page_size,
                    vcpus=lay.vcpu_count, dirty_rate_pps=dirty_rate_pps,
                    working_set=working_set, running=False, fill=0.0)
        if created is not None:
            created.append(vm)
        return vm

    return make


STOP_LATENCY_S = 0.002
"""Virtual time from a handover's call to the pause (the guest runs unthrottled meanwhile)."""


class FakeThrottle:
    """ThrottleControl for FakeVm: sets the run fraction, integrates the setpoint.

    ``handover()`` stops throttling, lets ``stop_latency_s`` of virtual time pass (when the
    VM's clock can advance: a :class:`FakeClock`) and pauses: the guest writes until the stop.
    """

    def __init__(self, vm: FakeVm, stop_latency_s: float = STOP_LATENCY_S) -> None:
        self.vm = vm
        self.stop_latency_s = stop_latency_s
        self.calls: list[tuple[float, str, int]] = []
        self._p = 0
        self._since = vm.clock.now()
        self._stolen = 0.0
        self.handed = False
        self.shut = False

    def _account(self) -> None:
        now = self.vm.clock.now()
        self._stolen += (now - self._since) * self._p / 100.0 * self.vm.vcpu_count
        self._since = now

    def set_throttle_percent(self, percent: int) -> None:
        if self.handed or self.shut:
            raise RuntimeError("throttle already closed")
        validate_percent(percent)
        self._account()
        self._p = percent
        self.vm.set_throttle(percent / 100.0)
        self.calls.append((self.vm.clock.now(), "set", percent))

    def handover(self) -> None:
        self._account()
        self._p = 0
        self.vm.set_throttle(0.0)
        advance = getattr(self.vm.clock, "advance", None)
        if advance is not None and self.stop_latency_s > 0:
            advance(self.stop_latency_s)  # the guest keeps writing until it is stopped
        self.vm.pause()
        self.handed = True
        self.calls.append((self.vm.clock.now(), "handover", 0))

    def shutdown(self) -> None:
        if not self.handed and not self.shut:
            self._account()
            self._p = 0
            self.vm.set_throttle(0.0)
        self.shut = True
        self.calls.append((self.vm.clock.now(), "shutdown", 0))

    def stolen_vcpu_seconds(self) -> float:
        if not self.handed and not self.shut:
            self._account()
        return self._stolen


class _WritesUntilStop:
    """ThrottleControl wrapper: the handover waits for guest progress first (see below)."""

    def __init__(self, inner: ThrottleControl, vm: MigratableVm, writes: int,
                 timeout_s: float) -> None:
        self._inner, self._vm = inner, vm
        self._writes, self._timeout_s = writes, timeout_s
        self.waited_s = 0.0
        self.progress_seen = 0

    def set_throttle_percent(self, percent: int) -> None:
        self._inner.set_throttle_percent(percent)

    def handover(self) -> None:
        t0 = time.monotonic()
        start = sum(self._vm.progress())
        while time.monotonic() - t0 < self._timeout_s:
            self.progress_seen = sum(self._vm.progress()) - start
            if self.progress_seen >= self._writes:
                break
            time.sleep(0.002)
        self.waited_s = time.monotonic() - t0
        self._inner.handover()

    def shutdown(self) -> None:
        self._inner.shutdown()

    def stolen_vcpu_seconds(self) -> float:
        return self._inner.stolen_vcpu_seconds()


def writes_until_stop(factory: ThrottleFactory, writes: int, timeout_s: float = 5.0
                      ) -> ThrottleFactory:
    """For tests with a real guest: its handover first waits (still throttling, at most
    ``timeout_s``) until the guest's progress counters advanced by ``writes`` - one page write
    per step for the KVM guest's worst-case workload - and only then stops the vCPUs.

    The source calls handover() right after its last sync; a guest throttled to 99 % hardly
    runs in that millisecond, so without this no page is dirtied between the last sync and
    the stop, and a source that skips the final dirty sync still passes the hash check.
    ``writes`` of a whole working set guarantees the pages not pending at the last sync
    (at least what did not fit the downtime budget) are written again.
    """

    def make(vm: MigratableVm) -> ThrottleControl:
        return _WritesUntilStop(factory(vm), vm, writes, timeout_s)

    return make


# ---------------------------------------------------------------------------------------------
# a whole migration between two threads over a socket pair, for tests

TEST_KEY = b"autoconverge-test-key-0123456789"


@dataclass
class FakeRun:
    result: MigrationResult
    dest: DestinationResult | None
    src_vm: FakeVm
    dest_vms: list[FakeVm]
    throttles: list[FakeThrottle]
    dest_error: BaseException | None = None


class VirtualLink:
    """Peer messages from the socket; no bytes "in flight" (virtual time has no queue)."""

    def __init__(self, stream: CancellableSocket) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return self.stream.readable()

    def unsent_bytes(self) -> int:
        return 0


def run_fake_migration(policy: Policy, *, pages: int = 2048, vcpus: int = 2,
                       rate_pps: float = 20_000.0, working_set: tuple[int, int] = (64, 1024),
                       config: MigrationConfig | None = None, key: bytes = TEST_KEY,
                       dest_key: bytes | None = None,
                       on_progress: Callable[[Sample], None] | None = None,
                       on_source: Callable[[MigrationSource], None] | None = None,
                       limits: Limits | None = None, run_after_s: float = 0.5,
                       io_timeout_s: float = 10.0) -> FakeRun:
    """Source (calling thread) and destination (a thread) over a socketpair, virtual time."""
    src_clock, dst_clock = FakeClock(), FakeClock()
    vm = FakeVm(src_clock, pages=pages, vcpus=vcpus, dirty_rate_pps=rate_pps,
                working_set=working_set)
    created: list[FakeVm] = []
    throttles: list[FakeThrottle] = []
    a, b = socket.socketpair()
    box: dict[str, Any] = {}

    def dest() -> None:
        ev = threading.Event()
        stream = CancellableSocket(b, ev, io_timeout_s=io_timeout_s)
        try:
            channel = server_handshake(stream, dest_key or key)
            d = MigrationDestination(channel, fake_vm_factory(dst_clock, rate_pps, working_set,
                                                              created),
                                     limits or Limits(guest_kinds=("fake",)), clock=dst_clock,
                                     run_after_s=run_after_s, cancel_event=ev)
            box["res"] = d.run()
        except BaseException as exc:
            box["err"] = exc
        finally:
            stream.close()

    def make_throttle(v: MigratableVm) -> ThrottleControl:
        assert isinstance(v, FakeVm)
        t = FakeThrottle(v)
        throttles.append(t)
        return t

    th = threading.Thread(target=dest, name="fake-destination")
    th.start()
    ev = threading.Event()
    stream = CancellableSocket(a, ev, io_timeout_s=io_timeout_s)
    try:
        try:
            channel = client_handshake(stream, key)
        except MigrationError as exc:
            result = MigrationResult(status="failed", policy=policy.name, error=str(exc),
                                     source_running=not vm.is_paused())
        else:
            src = MigrationSource(vm, channel, policy, make_throttle,
                                  config or MigrationConfig(max_bandwidth_bps=10e6),
                                  clock=src_clock, on_progress=on_progress,
                                  link=VirtualLink(stream), cancel_event=ev)
            if on_source is not None:
                on_source(src)
            result = src.run()
    finally:
        stream.close()
        th.join(30)
    return FakeRun(result, box.get("res"), vm, created, throttles, box.get("err"))
