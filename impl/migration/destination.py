"""The migration destination: receive layout, pages and vCPU state; resume only on COMMIT.

The destination creates its VM only after the peer authenticated (the channel comes from
the handshake) and announced a layout this receiver accepts. Each message is decoded and
validated in full (see :mod:`.messages`) before anything is written into the VM; message
order is enforced (LAYOUT, then PAGES / ITERATION_END, then VCPU_STATE, then DONE). Over
several connections (:mod:`.connections`) each data connection's frames are authenticated,
validated and applied by a thread of its own, and every connection meets the first at each
pass end (PASS_END) before anything of the next pass is applied; VCPU_STATE is taken only
after the final pass ended on every connection. After DONE
it takes a snapshot of guest memory for the integrity hash, loads the vCPU state and
answers PREPARED; it starts the guest only when COMMIT arrives, answers RESUMED, lets the
guest run ``run_after_s`` and sends REPORT (memory hash at the stop, counters at resume and
after). On any failure before the guest started (also a VM that fails to start on COMMIT)
it discards the VM and only then sends ERROR (when the stream allows): an ERROR from the
destination always means the guest does not run here, which is what lets the source resume
its copy after an ERROR in answer to COMMIT. Whatever the peer causes ends as a
:class:`~.errors.MigrationError` subclass whose ``code`` goes into that ERROR frame: a
layout this host has no memory for
(:class:`~.errors.VmSetupError`, checked against MemAvailable before the VM is created, see
:mod:`.host_memory`), a vCPU state the VM refuses to load (:class:`~.errors.VmStateError`;
the KVM layer raises ``KvmError``/``ValueError`` there).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from autoconverge.spec import migration as M

from . import fault_points
from .connections import DataReceivers
from .errors import (
    ErrorCode,
    MigrationCancelled,
    MigrationError,
    ProtocolError,
    VmSetupError,
    VmStateError,
)
from .framing import FrameChannel, MsgType
from .host_memory import check_fits
from .lifecycle import (
    MigrationSpecViolation,
    SideLifecycle,
    destination_observation,
    destination_refuses,
    refusal_observation,
)
from .messages import (
    Layout,
    Limits,
    Report,
    apply_pages,
    decode_done,
    decode_iteration_end,
    decode_layout,
    decode_pages,
    decode_vcpu_state,
    encode_ready,
    encode_report,
    expect_empty,
)
from .transport import Clock, RealClock
from .vmapi import DestinationVm, VmFactory


@dataclass
class DestinationResult:
    status: Literal["completed", "failed", "cancelled"]
    error: str | None = None
    error_type: str | None = None
    """Class name of the exception that ended the migration (MigrationError subclasses for
    anything the peer caused)."""
    layout: Layout | None = None
    iterations: int = 0
    pages_received: int = 0
    bytes_received: int = 0
    memory_hash: str | None = None
    counters_at_resume: list[int] = field(default_factory=list)
    counters_after: list[int] = field(default_factory=list)
    prepare_ms: float = 0.0
    vm: DestinationVm | None = None
    """The running VM after a completed migration (the caller owns it); None otherwise."""
    peer: str | None = None
    """The authenticated source's address (set by the receiver's accept loop)."""
    handshake_s: float | None = None
    """Seconds from accepting the source's connection to its authentication."""
    refused_peers: int = 0
    """Connections refused before the source authenticated."""
    trace: list[str] = field(default_factory=list)
    """The destination's steps of the migration spec, ``trigger@state``, in order (what
    :mod:`autoconverge.model.migration_tracecheck` validates)."""


class MigrationDestination:
    def __init__(self, channel: FrameChannel, vm_factory: VmFactory, limits: Limits | None = None,
                 clock: Clock | None = None, run_after_s: float = 0.2, verify: bool = True,
                 cancel_event: threading.Event | None = None,
                 data_channels: Sequence[FrameChannel] = ()) -> None:
        if not 0 <= run_after_s <= 3600:
            raise ValueError("run_after_s must be in 0..3600")
        self.channel = channel
        self.factory = vm_factory
        self.limits = limits or Limits()
        self.clock: Clock = clock or RealClock()
        self.run_after_s = run_after_s
        self.verify = verify
        self._cancel = cancel_event if cancel_event is not None else threading.Event()
        self.data_channels = data_channels
        """Connections 2..N (joined already): PAGES and PASS_END only (:mod:`.connections`)."""
        self._receivers: DataReceivers | None = None

    def cancel(self) -> None:
        self._cancel.set()

    def run(self) -> DestinationResult:
        res = DestinationResult(status="failed")
        vm: DestinationVm | None = None
        started = False
        commit_read = False
        failure: BaseException | None = None
        life = SideLifecycle("destination")
        res.trace = life.trace
        try:
            life.before(M.RECV_LAYOUT)
            lay = decode_layout(self.channel.expect(MsgType.LAYOUT).payload, self.limits)
            res.layout = lay
            check_fits(lay.memory_size, self.verify)
            try:
                vm = self.factory(lay)
                mem = vm.memory()
            except Exception as exc:
                raise VmSetupError(f"cannot create a VM for {lay.memory_size} bytes, "
                                   f"{lay.vcpu_count} vCPUs: {exc}") from exc
            if len(mem) != lay.memory_size:
                raise VmSetupError(f"the new VM has {len(mem)} bytes of memory, "
                                   f"{lay.memory_size} announced")
            # the integrity hash is taken after the guest resumed, over a mirror of guest memory
            # that receives every batch too (no copy during the downtime); fault it in now
            mirror = self._mirror(lay.memory_size) if self.verify else None
            life.fire(M.RECV_LAYOUT, sd=M.LAYOUT)  # accepted, VM created: READY
            self.channel.send(MsgType.READY, encode_ready(self.channel.max_pages_payload))
            states: list[bytes] | None = None
            touched = np.zeros(lay.page_count, dtype=np.bool_)  # new guest memory is zero
            counted = threading.Lock()

            def apply(payload: memoryview) -> None:
                """Validate a PAGES payload in full, then write it (any connection's thread)."""
                batch = decode_pages(payload, lay)
                apply_pages(mem, batch, lay.page_size, touched)
                if mirror is not None:
                    apply_pages(mirror.data, batch, lay.page_size)
                with counted:
                    res.pages_received += batch.pages

            kinds = [MsgType.PAGES, MsgType.ITERATION_END, MsgType.VCPU_STATE, MsgType.DONE]
            receivers = self._start_receivers(apply)
            if receivers is not None:
                kinds.append(MsgType.PASS_END)
            while True:
                f = self.channel.expect(*kinds)
                if f.type is MsgType.PAGES:
                    fault_points.hit("destination", "recv_pages")
                    if states is not None:
                        raise ProtocolError("PAGES after VCPU_STATE")
                    if receivers is not None and receivers.finished:
                        raise ProtocolError("PAGES after the final pass")
                    apply(f.payload)
                elif f.type is MsgType.PASS_END:
                    assert receivers is not None
                    receivers.pass_end(f.payload)  # every connection applied the pass
                elif f.type is MsgType.ITERATION_END:
                    res.iterations = decode_iteration_end(f.payload).iteration
                elif f.type is MsgType.VCPU_STATE:
                    if states is not None:
                        raise ProtocolError("duplicate VCPU_STATE")
                    if receivers is not None and not receivers.finished:
                        raise ProtocolError("VCPU_STATE before the final pass ended on every "
                                            "connection")
                    states = decode_vcpu_state(f.payload, lay)
                else:
                    life.before(M.RECV_DONE)
                    if states is None:
                        raise ProtocolError("DONE before VCPU_STATE")
                    decode_done(f.payload)
                    break
            t = self.clock.now()
            try:
                vm.load_vcpu_state(states)
            except Exception as exc:  # e.g. KvmError: registers this VM cannot take
                raise VmStateError(f"the VM cannot load the vCPU state the source sent: "
                                   f"{type(exc).__name__}: {exc}") from exc
            res.counters_at_resume = list(vm.progress())
            prepare_ns = int((self.clock.now() - t) * 1e9)
            res.prepare_ms = prepare_ns / 1e6
            life.fire(M.RECV_DONE, sd=M.DONE, done_clean=True)  # loaded: PREPARED
            self.channel.send(MsgType.PREPARED)
            life.before(M.RECV_COMMIT)
            expect_empty(self.channel.expect(MsgType.COMMIT))
            commit_read = True
            life.check(M.RECV_COMMIT, sd=M.COMMIT)  # refused: the guest must not start
            try:
                vm.start()
            except Exception as exc:
                raise VmStateError(f"the VM did not start from the vCPU state the source "
                                   f"sent: {type(exc).__name__}: {exc}") from exc
            started = True  # from here on the guest lives here, whatever happens
            life.fire(M.RECV_COMMIT, sd=M.COMMIT)  # the guest runs: RESUMED
            res.status = "completed"  # also if RESUMED cannot be sent: the guest runs here
            res.vm = vm
            self.channel.send(MsgType.RESUMED)
            self.clock.wait(self._cancel, self.run_after_s)
            res.counters_after = list(vm.progress())
            if mirror is not None:
                res.memory_hash = hashlib.sha256(mirror.data).hexdigest()
            life.fire(M.SEND_REPORT)
            self.channel.send(MsgType.REPORT, encode_report(Report(
                bytes.fromhex(res.memory_hash) if res.memory_hash else None,
                tuple(res.counters_at_resume), tuple(res.counters_after),
                int(self.run_after_s * 1e9), prepare_ns)))
        except Exception as exc:  # MigrationError subclasses for anything the peer caused
            exc = self._data_failure(exc)
            failure = exc
            self._fail(res, exc, started)
            if not started and life.violation is None:
                # the spec's step before the VM is discarded (then ERROR, when possible)
                try:
                    if commit_read:  # COMMIT came, the VM did not start
                        life.fire(M.START_FAILS, sd=M.COMMIT)
                    elif destination_refuses(exc):  # its own decision or failure
                        life.fire(M.REFUSE, **refusal_observation(life))
                    else:
                        life.fire(M.DISCARD, **destination_observation(exc))
                except MigrationSpecViolation:
                    pass  # raised below, once the VM is gone
        finally:
            if self._receivers is not None:
                self._receivers.close()  # its threads are done with guest memory
            res.bytes_received = self.channel.bytes_received + sum(
                ch.bytes_received for ch in self.data_channels)
            life.close()
            if vm is not None and not started:
                try:
                    vm.close()
                except Exception as exc:
                    res.error = f"{res.error}; discarding the VM failed: {exc}"
        if failure is not None and not started:
            self._tell_peer(failure)  # after the VM is gone
        if life.violation is not None:
            raise life.violation
        return res

    def _start_receivers(self, apply: Callable[[memoryview], None]) -> DataReceivers | None:
        """The data connections' threads (None: one connection)."""
        if not self.data_channels:
            return None

        def interrupt(exc: BaseException) -> None:  # the first connection's read ends
            self._cancel.set()

        self._receivers = DataReceivers(self.data_channels, apply, interrupt)
        self._receivers.start()
        return self._receivers

    def _data_failure(self, exc: Exception) -> Exception:
        """A data connection's failure, if one caused ``exc`` (which then only says that the
        first connection's read was interrupted); else ``exc``."""
        failure = self._receivers.failure if self._receivers is not None else None
        return failure if isinstance(failure, Exception) else exc

    @staticmethod
    def _mirror(size: int) -> np.ndarray:
        try:
            mirror = np.empty(size, dtype=np.uint8)
            mirror.fill(0)
        except MemoryError as exc:
            raise VmSetupError(f"no memory for the {size}-byte memory-hash mirror (receive "
                               f"--no-verify does without)") from exc
        return mirror

    @staticmethod
    def _text(exc: BaseException) -> str:
        return str(exc) if isinstance(exc, MigrationError) else f"{type(exc).__name__}: {exc}"

    def _fail(self, res: DestinationResult, exc: BaseException, started: bool) -> None:
        text = self._text(exc)
        res.error_type = type(exc).__name__
        if started:  # guest already runs here; only the report is missing
            res.error = f"guest resumed, but: {text}"
            return
        res.status = "cancelled" if isinstance(exc, MigrationCancelled) else "failed"
        res.error = text

    def _tell_peer(self, exc: BaseException) -> None:
        # a MigrationError carries its code (None: nothing to send); anything else is a
        # failure of this side, INTERNAL
        code = exc.code if isinstance(exc, MigrationError) else ErrorCode.INTERNAL
        if code is None or self.channel.broken:
            return
        self._cancel.clear()
        stream = self.channel.stream
        if hasattr(stream, "io_timeout_s"):
            stream.io_timeout_s = min(stream.io_timeout_s, 1.0)
        self.channel.send_error(code, f"destination aborted the migration: {self._text(exc)}")
