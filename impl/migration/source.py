"""The migration source: the pre-copy loop, convergence check, switch-over and clean abort.

Sequence: LAYOUT -> READY; start the dirty log; pass 0 sends every page; then delta passes
send the pages the dirty log reported, until the switch-over estimate (:mod:`.downtime`:
the remaining dirty bytes at the measured bandwidth, the final sync, the vCPU state and a
learnt fixed part) fits the downtime limit. Between frames, at least every ``tick_s``, the loop
syncs the dirty log into a pending set, measures dirty rate and bandwidth, and asks the
policy for a throttle percentage (applied through the throttler). Switch-over:
``throttle.handover()`` leaves the vCPUs paused; the last dirty pages, the vCPU states and
DONE go out; the destination answers PREPARED; COMMIT; it resumes the guest and answers
RESUMED, then REPORT (its memory hash and counters).

The commit point is the moment the whole COMMIT frame has been handed to the kernel (the
destination authenticates a frame by the MAC at its end, so it cannot act on a COMMIT that did
not leave whole). Before it, every failure aborts - cancel, timeout with strategy ``cancel``, a
dead or misbehaving peer (one whose EOF, ERROR or any frame is waiting after PREPARED never
got COMMIT), a VM or throttler error, a COMMIT send that failed: throttling stops, the source
guest runs on unthrottled (it is resumed if the switch-over had paused it), the dirty log is
stopped, the peer gets an ERROR (best effort) and discards its VM. From the commit point on a
cancel is ignored (also by the socket layer) and the source never resumes on its own: RESUMED
makes the migration ``completed``; an ERROR in answer to COMMIT (the destination discarded its
VM without running the guest) aborts as above; anything else - EOF, reset, silence past the
I/O timeout, garbage - leaves it ``in_doubt``: the source guest stays paused, is kept, and the
result says the destination may be running it (``dest_running`` None). ``outcome`` is the
verdict: ``completed``, ``unverified`` (moved, but verification asked for and not done),
``mismatch`` (moved, memory hashes differ), ``in_doubt`` or ``aborted`` (the guest did not
move; ``source_running`` says whether it runs).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from autoconverge.impl.throttler import ThrottlerTimeout, ThrottleWorkerError, validate_percent
from autoconverge.spec import migration as M

from .connections import PageStreams, check_connections
from .downtime import PROCESS_HISTORY, DowntimeHistory, SwitchoverInputs, transfer_s
from .errors import (
    ErrorCode,
    MigrationCancelled,
    MigrationError,
    PeerError,
    ProtocolError,
    TransportError,
)
from .framing import FrameChannel, MsgType, decode_error
from .lifecycle import (
    MigrationSpecViolation,
    SideLifecycle,
    own_failure,
    source_observation,
)
from .macs import MAC_NAMES
from .messages import (
    IterationEnd,
    Report,
    decode_ready,
    decode_report,
    encode_done,
    encode_iteration_end,
    encode_layout,
    encode_vcpu_state,
    expect_empty,
)
from .pages import FrameBuilder, bitmap_to_bool, zero_copy_safe
from .policy import Observation, Policy
from .throttling import ThrottleControl, ThrottleFactory
from .transport import Clock, RealClock
from .vmapi import MigratableVm, layout_of

TimeoutStrategy = Literal["cancel", "ignore"]
Status = Literal["completed", "cancelled", "timeout", "failed", "in_doubt"]
Outcome = Literal["completed", "unverified", "mismatch", "in_doubt", "aborted"]
MIN_BANDWIDTH_BYTES = 256 * 1024
MIN_BANDWIDTH_WINDOW_S = 0.02
MIN_RATE_WINDOW_S = 0.05


class LinkProbe(Protocol):
    """What the source asks the connection (``CancellableSocket`` implements it)."""

    def readable(self) -> bool:
        """Data or EOF from the peer is waiting."""
        ...

    def unsent_bytes(self) -> int:
        """Bytes handed to the connection that the peer has not acknowledged yet."""
        ...


class MigrationTimeout(MigrationCancelled):
    """The timeout passed and the strategy is ``cancel``."""

    code = ErrorCode.TIMEOUT


class CommitInDoubt(MigrationError):
    """COMMIT left, but neither RESUMED nor a refusal came back: the destination may be
    running the guest. Nothing is sent (the connection is what failed)."""

    code = None


@dataclass(frozen=True)
class MigrationConfig:
    downtime_limit_s: float = 0.3
    max_bandwidth_bps: float | None = None
    """Cap on wire bytes per second (None: as fast as the link goes)."""
    timeout_s: float = 3600.0
    timeout_strategy: TimeoutStrategy = "cancel"
    tick_s: float = 0.25
    """Policy re-evaluation interval during a pass (<= 1 s)."""
    sync_s: float = 0.05
    """Dirty-log sync interval during a pass (short, so the dirty rate is not saturated)."""
    rate_window_s: float = 0.25
    """The dirty rate is averaged over the syncs of at least this window."""
    frame_bytes: int = 4 * 1024 * 1024
    zero_page_detection: bool = True
    copy_pages: bool = False
    """Copy pages into a private buffer before sending even where nothing can write them
    (by default such frames go out zero-copy, see :mod:`.pages`; the benchmark uses this to
    measure the path a running KVM guest's pre-copy takes)."""
    connections: int = 1
    """Connections to the receiver, 1..128 (``--connections``): the first carries the
    control messages, all carry a share of each pass's pages (:mod:`.connections`)."""
    mac: str = "gmac"
    """Session MAC: ``gmac`` (AES-256-GMAC) or ``hmac`` (HMAC-SHA256, slower; a baseline)."""
    verify: bool = True
    """Compare a hash of guest memory at both ends after the switch-over."""
    deadline_s: float | None = None
    """Finish within this many seconds (``--deadline``): the policy gets the time left; when
    it reports the deadline infeasible, or it passes, ``timeout_strategy`` applies."""
    cleanup_timeout_s: float = 30.0
    """How long the clean-up keeps asking the throttler to shut down while one of its vCPU
    calls is stuck (a slow pause()); after that the source guest's state is reported
    unknown (``source_running`` None)."""

    def __post_init__(self) -> None:
        if not 0 < self.downtime_limit_s <= 3600:
            raise ValueError(f"downtime limit must be in (0, 3600] s, got "
                             f"{self.downtime_limit_s}")
        if self.max_bandwidth_bps is not None and not self.max_bandwidth_bps >= 4096:
            raise ValueError(f"max bandwidth must be at least 4096 bytes/s, got "
                             f"{self.max_bandwidth_bps}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s}")
        if self.timeout_strategy not in ("cancel", "ignore"):
            raise ValueError(f"timeout strategy must be cancel or ignore, got "
                             f"{self.timeout_strategy!r}")
        if not 0 < self.tick_s <= 1.0:
            raise ValueError(f"tick must be in (0, 1] s, got {self.tick_s}")
        if not 0 < self.sync_s <= self.tick_s or not 0 < self.rate_window_s <= 10:
            raise ValueError("sync interval must be in (0, tick]; rate window in (0, 10] s")
        if self.mac not in MAC_NAMES:
            raise ValueError(f"mac must be one of {', '.join(MAC_NAMES)}, got {self.mac!r}")
        if not 4096 <= self.frame_bytes <= 64 * 1024 * 1024:
            raise ValueError(f"frame size must be 4 KiB..64 MiB, got {self.frame_bytes}")
        check_connections(self.connections)
        if self.deadline_s is not None and not 0 < self.deadline_s <= 7 * 86400:
            raise ValueError(f"deadline must be in (0, 604800] s, got {self.deadline_s}")
        if not 0 < self.cleanup_timeout_s <= 3600:
            raise ValueError(f"cleanup timeout must be in (0, 3600] s, got "
                             f"{self.cleanup_timeout_s}")


@dataclass(frozen=True)
class Sample:
    """One point of the progress timeline (also what the progress display shows)."""

    time_s: float
    kind: str
    iteration: int
    remaining_bytes: int
    throttle_percent: int
    bandwidth_bps: float
    dirty_rate_bps: float
    est_downtime_s: float | None
    bytes_sent: int
    guest_cpu_stolen_s: float = 0.0
    """vCPU time taken from the guest by throttling so far."""
    throttle_ms_per_round: float | None = None
    """How long each vCPU was paused per throttle round since the previous sample (QEMU's
    dirty-limit-throttle-time-per-round); None: no round since."""
    note: str | None = None
    """Something the user must see now (an infeasible deadline)."""


@dataclass
class MigrationResult:
    status: Status
    """How the run ended: ``completed`` (RESUMED came back), ``cancelled``, ``timeout``,
    ``failed`` (all three before the commit point, or COMMIT refused), ``in_doubt``."""
    policy: str
    error: str | None = None
    total_time_s: float = 0.0
    iterations: int = 0
    """Delta iterations (passes after the first full one)."""
    downtime_ms: float | None = None
    est_downtime_ms: float | None = None
    downtime_limit_ms: float = 300.0
    downtime_estimate_error_ms: float | None = None
    """Actual minus estimated downtime (positive: the estimate was short)."""
    switchover_fixed_ms: float | None = None
    """The estimate's learnt fixed part when the switch-over was decided."""
    deadline_s: float | None = None
    deadline_infeasible: bool = False
    """The policy found the deadline infeasible even at the highest throttle."""
    deadline_note: str | None = None
    throttle_rounds: int = 0
    """Throttle rounds (pauses) over the run."""
    throttle_ms_per_round: float | None = None
    """Mean pause per vCPU per throttle round over the run (None: no round)."""
    bytes_sent: int = 0
    pages_sent: int = 0
    zero_pages_sent: int = 0
    memory_bytes: int = 0
    guest_cpu_stolen_s: float = 0.0
    max_throttle_percent: int = 0
    final_throttle_percent: int = 0
    bandwidth_bps: float = 0.0
    first_pass_s: float | None = None
    timeout_exceeded: bool = False
    source_hash: str | None = None
    dest_hash: str | None = None
    memory_hash_match: bool | None = None
    counters_at_stop: list[int] = field(default_factory=list)
    dest_counters_at_resume: list[int] = field(default_factory=list)
    dest_counters_after: list[int] = field(default_factory=list)
    guest_continued: bool | None = None
    outcome: Outcome = "aborted"
    """The verdict: ``completed`` (the destination runs the guest; memory hashes match, or
    verification was not asked for), ``unverified`` (it runs there, verification was asked
    for but no hash came back), ``mismatch`` (it runs there, the hashes differ),
    ``in_doubt`` (COMMIT left, no answer: the destination may be running the guest, the
    source copy is kept paused), ``aborted`` (the guest did not move)."""
    source_running: bool | None = None
    """After the run: True if the source guest runs, False if it is paused (moved, in doubt,
    or a failed resume), None if unknown (a vCPU call of the throttler is stuck)."""
    dest_running: bool | None = False
    """As far as the source knows: True if the destination resumed the guest (RESUMED),
    False if it provably does not run it (it never got COMMIT, or refused it after
    discarding its VM), None if in doubt."""
    dirty_log_stopped: bool = False
    handshake_s: float | None = None
    """Seconds from starting to connect to being authenticated by the receiver."""
    trace: list[str] = field(default_factory=list)
    """The source's steps of the migration spec, ``trigger@state``, in order (what
    :mod:`autoconverge.model.migration_tracecheck` validates)."""
    timeline: list[Sample] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return self.status == "completed"

    def to_dict(self, timeline: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["converged"] = self.converged
        if not timeline:
            d.pop("timeline")
        return d


def memory_hash(mem: memoryview) -> str:
    return hashlib.sha256(mem).hexdigest()


class MigrationSource:
    """Runs one migration of ``vm`` over an authenticated ``channel``; ``cancel()`` anytime."""

    _life: SideLifecycle
    _streams: PageStreams | None = None
    """The page stream over the connections (:mod:`.connections`), made once READY came."""
    """This run's model of the spec's source machine (bound for the length of run())."""

    def __init__(self, vm: MigratableVm, channel: FrameChannel, policy: Policy,
                 throttle_factory: ThrottleFactory, config: MigrationConfig | None = None,
                 clock: Clock | None = None,
                 on_progress: Callable[[Sample], None] | None = None,
                 link: LinkProbe | None = None,
                 cancel_event: threading.Event | None = None,
                 downtime_history: DowntimeHistory | None = None,
                 data_channels: Sequence[FrameChannel] = ()) -> None:
        self.data_channels = data_channels
        """Connections 2..N (``--connections``), joined already; PAGES frames only."""
        self.vm = vm
        self.downtime_history = downtime_history or PROCESS_HISTORY
        self.channel = channel
        self.policy = policy
        self.throttle_factory = throttle_factory
        self.cfg = config or MigrationConfig()
        self.clock: Clock = clock or RealClock()
        self.on_progress = on_progress
        self._link = link
        self._cancel = cancel_event if cancel_event is not None else threading.Event()
        self._cancel_reason = "migration cancelled"
        self._committed = False
        """The commit point passed: COMMIT was handed to the kernel whole (cancel ignored)."""
        self._dest_may_run = False
        """The destination may run the guest: from the start of the COMMIT send, unless
        the send failed or the destination refused COMMIT. The source never resumes then."""
        self._dirty_logging = False
        self._thr = M.THR_NONE
        """The throttler through its API contract (the spec's ``thr``), as this side drives it."""
        self._throttled_up = False
        self._got_report = False
        self._cleanup_failed = False
        """A clean-up action failed (the source's end state is not reached: no finish step)."""
        self._ps = vm.page_size
        self._pages = vm.memory_size // vm.page_size
        self._pending = np.zeros(self._pages, dtype=np.bool_)
        self._throttle: ThrottleControl | None = None
        self._percent = 0
        self._t0 = 0.0
        self.result = MigrationResult(status="failed", policy=policy.name,
                                      downtime_limit_ms=self.cfg.downtime_limit_s * 1e3,
                                      memory_bytes=vm.memory_size,
                                      deadline_s=self.cfg.deadline_s)
        self._infeasible_seen = 0
        self._round_mark: tuple[float, int] = (0.0, 0)
        """(stolen vCPU-seconds, throttle rounds) at the previous sample."""
        self._decided_transfer_s: float | None = None
        # measurements
        self._last_sync = 0.0
        self._syncs: deque[tuple[float, int, float]] = deque()
        """(time, pages the sync reported, stolen vCPU-seconds so far) of recent syncs."""
        self._rate_percent = 0
        self._rate_run_share: float | None = None
        self._pass_idx: np.ndarray = np.zeros(0, dtype=np.int64)
        self._pass_pos = 0
        self._link_accounted = 0
        self._dirty_rate = 0.0
        self._bw = 0.0
        self._bw_mark_t = 0.0
        self._bw_mark_bytes = 0
        self._obs_t = 0.0
        self._obs_sent = 0
        self._obs_dirty_new = 0
        self._last_tick = 0.0
        self._link_free_at = 0.0

    # ------------------------------------------------------------------------------ control
    @property
    def cancel_event(self) -> threading.Event:
        return self._cancel

    @property
    def committed(self) -> bool:
        """The commit point passed (COMMIT handed to the kernel whole): cancel is ignored."""
        return self._committed

    def cancel(self, reason: str = "migration cancelled") -> bool:
        """Thread-safe; takes effect at the next frame or I/O slice. Ignored (returns False)
        once the commit point passed; a cancel that wins the race with the COMMIT send
        stops it before the frame left whole. (One landing in the instant between the frame
        leaving and this side noting it returns True and is ignored all the same.)"""
        if self._committed:
            return False
        self._cancel_reason = reason
        stream = self.channel.stream
        if hasattr(stream, "cancel_reason"):
            stream.cancel_reason = reason
        self._cancel.set()
        return True

    def _check_cancel(self) -> None:
        if self._cancel.is_set() and not self._committed:
            raise MigrationCancelled(self._cancel_reason)

    def _now(self) -> float:
        return self.clock.now() - self._t0

    # ------------------------------------------------------------------------------ main
    def run(self) -> MigrationResult:
        r = self.result
        self._t0 = self.clock.now()
        err: BaseException | None = None
        self._life = life = SideLifecycle("source", self._spec_real)
        r.trace = life.trace
        try:
            self._check_cancel()
            life.fire(M.SEND_LAYOUT)
            self.channel.send(MsgType.LAYOUT, encode_layout(layout_of(self.vm)))
            life.before(M.RECV_READY)
            limit = decode_ready(self.channel.expect(MsgType.READY).payload)
            life.fire(M.RECV_READY, ds=M.READY)
            frame_pages = FrameBuilder.frame_pages_for(limit, self._ps, self._frame_bytes())
            self._streams = PageStreams(self.channel, self.data_channels, lambda: FrameBuilder(
                self.vm.memory(), self._ps, frame_pages, self.cfg.zero_page_detection))
            self.vm.start_dirty_log()
            self._dirty_logging = True
            self._throttle = self.throttle_factory(self.vm)
            self._thr = M.THR_RUNNING
            self._last_sync = self._bw_mark_t = self._obs_t = self._last_tick = self._now()
            self._syncs.append((self._last_sync, 0, 0.0))
            self._link_free_at = self.clock.now()

            it = 0
            t_pass = self.clock.now()
            life.fire(M.SEND_PASS, dirty=self._pages > 0)
            self._send_pass(np.arange(self._pages, dtype=np.int64), it, ticks=True)
            r.first_pass_s = self.clock.now() - t_pass
            self._end_pass(it)
            while True:
                remaining = int(np.count_nonzero(self._pending)) * self._ps
                est = self._estimate(remaining)
                self._sample("check", it, remaining, est)
                if remaining == 0 or (est is not None and est <= self.cfg.downtime_limit_s):
                    r.est_downtime_ms = (est or 0.0) * 1e3
                    r.switchover_fixed_ms = self.downtime_history.fixed_s(
                        self.cfg.downtime_limit_s) * 1e3
                    self._decided_transfer_s = transfer_s(self._switchover_inputs(remaining))
                    t_decided = self.clock.now()
                    break
                self._check_timeout()
                it += 1
                r.iterations = it
                idx = np.flatnonzero(self._pending)
                life.fire(M.SEND_PASS, dirty=len(idx) > 0)
                self._send_pass(idx, it, ticks=True)
                self._end_pass(it)
            r.iterations = it

            # ---- switch-over
            self._check_cancel()
            t_stop = self.clock.now()
            assert self._throttle is not None
            life.fire(M.START_HANDOVER)
            self._thr = M.THR_HANDING
            self._throttle.handover()  # raising: nothing handed over (handover_timeout)
            self.downtime_history.record_pause_delay(self.clock.now() - t_decided)
            self._thr = M.THR_HANDED
            life.fire(M.HANDOVER_RETURNED, throttled=False)
            r.guest_cpu_stolen_s = self._throttle.stolen_vcpu_seconds()
            life.before(M.SEND_STATE)
            self._final_sync()
            self._send_pass(np.flatnonzero(self._pending), it + 1, ticks=False)
            self.channel.send(MsgType.VCPU_STATE, *encode_vcpu_state(self.vm.save_vcpu_state()))
            r.counters_at_stop = list(self.vm.progress())
            self.channel.send(MsgType.DONE, encode_done(r.pages_sent, it))
            life.fire(M.SEND_STATE)  # DONE left: the final sync, the vCPU state, DONE
            life.before(M.RECV_PREPARED)
            expect_empty(self.channel.expect(MsgType.PREPARED))
            life.fire(M.RECV_PREPARED, ds=M.PREPARED)
            life.before(M.SEND_COMMIT)
            self._commit()
            life.before(M.RECV_RESUMED)
            self._await_resumed()
            r.downtime_ms = (self.clock.now() - t_stop) * 1e3
            r.status = "completed"
            self._learn_downtime(r.downtime_ms / 1e3)
            self._after_resumed()
        except MigrationSpecViolation as exc:  # a bug: cleaned up below, then raised
            err = exc
            r.status, r.error = "failed", f"{type(exc).__name__}: {exc}"
        except CommitInDoubt as exc:
            err = exc
            r.status, r.error = "in_doubt", str(exc)
        except MigrationTimeout as exc:
            err = exc
            r.status, r.error = "timeout", str(exc)
        except MigrationCancelled as exc:
            err = exc
            r.status, r.error = "cancelled", str(exc)
        except MigrationError as exc:
            err = exc
            r.status, r.error = "failed", str(exc)
        except Exception as exc:
            err = exc
            r.status, r.error = "failed", f"{type(exc).__name__}: {exc}"
        finally:
            try:
                self._cleanup(err)
            finally:
                life.close()
        if life.violation is not None:
            raise life.violation
        return r

    def _spec_real(self) -> dict[str, Any]:
        """The source's own variables of the migration spec, from its real state (read by
        the lifecycle at every step). The VM's pause state is read only while no throttler
        call can be pausing it (none started, shut down, or handed over); otherwise it is
        the contract's (the throttler's pauses are its ``throttled``)."""
        own: dict[str, Any] = {"thr": self._thr, "dlog": self._dirty_logging,
                               "committed": self._committed, "may_run": self._dest_may_run}
        if self._thr in (M.THR_NONE, M.THR_SHUT, M.THR_HANDED):
            try:
                own["vm"] = M.VM_PAUSED if self.vm.is_paused() else M.VM_RUNNING
            except Exception:
                pass  # the VM cannot say: its last known state stands
        return own

    # ------------------------------------------------------------------------------ commit
    def _commit(self) -> None:
        """Send COMMIT. The commit point is the whole frame handed to the kernel.

        Before it everything aborts: a cancel (checked here, and by the socket layer while
        the frame is written), a destination that is gone or spoke since PREPARED (it waits
        silently for COMMIT: its EOF, ERROR or any frame means it never got COMMIT), a send
        that failed (the frame did not leave whole; the destination authenticates COMMIT by
        the MAC at its end, so it cannot have acted on it).
        """
        self._check_cancel()
        self._check_peer_before_commit()
        self._dest_may_run = True  # from the first byte on (an interruption: in doubt)
        try:
            self.channel.send(MsgType.COMMIT)
        except MigrationError:
            self._dest_may_run = False  # it did not leave whole: never authenticated
            raise
        self._life.fire(M.SEND_COMMIT)  # the spec's commit point: the frame left whole
        self._committed = True
        ignore_cancel = getattr(self.channel.stream, "ignore_cancel", None)
        if ignore_cancel is not None:
            ignore_cancel()  # a Ctrl-C from here on must not end the wait for the answer

    def _check_peer_before_commit(self) -> None:
        if self._link is None or not self._link.readable():
            return
        try:
            frame = self.channel.recv()
        except TransportError as exc:
            raise TransportError(f"the destination closed the connection after PREPARED, "
                                 f"so it never got COMMIT ({exc})") from exc
        if frame.type is MsgType.ERROR:
            raise PeerError(*decode_error(frame.payload))
        raise ProtocolError(f"unexpected {frame.type.name} from the destination after "
                            f"PREPARED (COMMIT not sent)")

    def _await_resumed(self) -> None:
        """RESUMED: the guest runs at the destination. ERROR: the destination refused COMMIT
        (it sends ERROR only before it started the guest, after discarding its VM): the
        guest is still only here. Anything else: in doubt."""
        try:
            expect_empty(self.channel.expect(MsgType.RESUMED))
        except PeerError:
            self._dest_may_run = False
            raise
        except MigrationError as exc:
            raise CommitInDoubt(self._in_doubt_text(str(exc))) from exc
        self._life.fire(M.RECV_RESUMED, ds=M.RESUMED)

    @staticmethod
    def _in_doubt_text(why: str) -> str:
        return (f"in doubt: COMMIT was sent but the destination did not confirm it ({why}); "
                f"the destination runs the guest if COMMIT reached it and it started the "
                f"guest. The source guest is kept paused (resuming it here could run the "
                f"guest twice): resume it only once the destination is known not to run it")

    def _after_resumed(self) -> None:
        """The guest runs at the destination: hash, read the REPORT (the dirty log is stopped
        in the clean-up, after it, as the spec orders). Nothing here changes where the guest
        runs; a failure is a note in ``error``."""
        r = self.result
        notes: list[str] = []
        if self.cfg.verify:
            try:
                r.source_hash = memory_hash(self.vm.memory())
            except Exception as exc:
                notes.append(f"verification failed: {type(exc).__name__}: {exc}")
        rep: Report | None = None
        try:
            self._life.before(M.RECV_REPORT)
            rep = decode_report(self.channel.expect(MsgType.REPORT).payload, layout_of(self.vm))
        except MigrationError as exc:
            notes.append(f"the destination's report failed: {exc}")
        except Exception as exc:
            notes.append(f"verification failed: {type(exc).__name__}: {exc}")
        if rep is None:
            # no usable REPORT: the source is done with the connection (EOF, garbage, an
            # ERROR the destination may not send once it resumed the guest)
            self._life.fire(M.REPORT_MISSING, ds=M.NO_MSG, ds_err=False, link=False)
        else:
            self._life.fire(M.RECV_REPORT, ds=M.REPORT)
            self._got_report = True
            try:
                self._use_report(rep)
            except Exception as exc:
                notes.append(f"verification failed: {type(exc).__name__}: {exc}")
        if notes:
            r.error = "migration completed, but " + "; ".join(notes)

    def _frame_bytes(self) -> int:
        want = self.cfg.frame_bytes
        if self.cfg.max_bandwidth_bps is not None:
            # keep each frame's share of the link short so ticks and cancel stay prompt
            want = min(want, max(64 * 1024, int(self.cfg.max_bandwidth_bps * 0.05)))
        return want

    # ------------------------------------------------------------------------------ cleanup
    def _cleanup(self, err: BaseException | None) -> None:
        """End the run as the spec's source does: the step that ends the protocol part
        (:meth:`_spec_end`), then shut the throttler down, resume the guest (before the commit
        point only), stop the dirty log, and the finish step of the state reached. A step the
        spec refuses is not taken (the guest is never resumed on one); run() raises it."""
        r = self.result
        r.total_time_s = self._now()
        problems: list[str] = []
        if self._streams is not None:
            self._streams.close()  # data connections' senders stop (before ERROR is sent)
        self._spec_end(err)
        if self._dest_may_run and r.status != "completed":
            # after the first byte of COMMIT, however the run ended (a KeyboardInterrupt too)
            if r.status != "in_doubt":
                r.status = "in_doubt"
                r.error = self._in_doubt_text(r.error or "interrupted")
        elif not self._dest_may_run and err is not None:
            self._tell_peer(err)  # first: the destination discards at once
        source_known = True
        if self._throttle is not None:
            if r.guest_cpu_stolen_s == 0.0:
                try:
                    r.guest_cpu_stolen_s = self._throttle.stolen_vcpu_seconds()
                except Exception as exc:
                    problems.append(f"stolen-time query failed: {exc}")
            source_known = self._shutdown_throttle(problems)
            if source_known and self._thr not in M.THR_CLOSED:
                self._spec_step(M.STOP_THROTTLER)
                self._thr = M.THR_SHUT
        if not self._dest_may_run and source_known:
            self._resume_source(problems)
        self._stop_dirty_log(problems)
        r.dirty_log_stopped = not self._dirty_logging
        r.source_running = None
        if source_known:
            try:
                r.source_running = not self.vm.is_paused()
            except Exception:
                r.source_running = None
        r.dest_running = (True if r.status == "completed" else
                          None if self._dest_may_run else False)
        r.outcome = self._outcome()
        if problems:
            r.error = "; ".join(([r.error] if r.error else []) + problems)
        if source_known and not self._cleanup_failed:
            self._spec_finish()
        # else: a stuck throttler or a failed VM call left the spec's end state out of reach;
        # the trace ends before the finish step and the result says why

    def _spec_step(self, trigger: str, **observed: Any) -> bool:
        """A clean-up step through the lifecycle: False if the spec refused it (kept for
        run() to raise; the clean-up goes on without that step's action where it has one)."""
        try:
            self._life.fire(trigger, **observed)
        except MigrationSpecViolation:
            return False
        return True

    def _spec_end(self, err: BaseException | None) -> None:
        """The step that ends the protocol part of the run, by the state it ended in."""
        life = self._life
        st = life.state
        if life.violation is not None or st in (M.ABORTING, M.CLOSING, M.DOUBT_CLOSING,
                                                *M.SOURCE_ENDED):
            return
        if st == M.HANDING_OVER:
            # handover() timed out (or, a spec gap, failed): nothing was handed over and a
            # late pause may still land; shutdown() resumes whatever it paused
            self._spec_step(M.HANDOVER_TIMEOUT)
            self._thr = M.THR_LATE
        elif st == M.AWAITING_RESUMED:
            seen = source_observation(err)
            if self._dest_may_run:
                self._spec_step(M.COMMIT_UNANSWERED, ds=M.NO_MSG, ds_err=False, link=False)
            else:  # refused: the destination's ERROR (it discarded its VM first)
                self._spec_step(M.COMMIT_REFUSED, **seen)
        elif st == M.VERIFYING:  # interrupted while waiting for the REPORT
            self._spec_step(M.REPORT_MISSING, ds=M.NO_MSG, ds_err=False, link=False)
        elif st == M.PREPARED_STATE and self._dest_may_run:
            # interrupted while COMMIT was being written: it may have left whole
            if self._spec_step(M.SEND_COMMIT):
                self._spec_step(M.COMMIT_UNANSWERED, ds=M.NO_MSG, ds_err=False, link=False)
        else:  # before the commit point: a cancel, its own failure, an ERROR or EOF
            if own_failure(err) and not self._spec_step(M.SOURCE_ERROR):
                return
            self._spec_step(M.ABORT, **source_observation(err))

    def _resume_source(self, problems: list[str]) -> None:
        """The guest is the source's again: resume it if paused (only if the spec allows)."""
        try:
            paused = self.vm.is_paused()
        except Exception as exc:
            problems.append(f"resuming the source guest failed: {exc}")
            self._cleanup_failed = True
            return
        if not paused or not self._spec_step(M.RESUME_GUEST):
            return
        try:
            self.vm.resume()
        except Exception as exc:
            problems.append(f"resuming the source guest failed: {exc}")
            self._cleanup_failed = True

    def _stop_dirty_log(self, problems: list[str]) -> None:
        if not self._dirty_logging:
            return
        try:
            self.vm.stop_dirty_log()
        except Exception as exc:
            problems.append(f"stopping the dirty log failed: {exc}")
            self._cleanup_failed = True
        else:
            self._spec_step(M.STOP_DIRTY_LOG)
            self._dirty_logging = False

    def _spec_finish(self) -> None:
        """The finish step of the closing state the run reached."""
        st = self._life.state
        if st == M.CLOSING:
            self._spec_step(M.FINISH if self._got_report else M.FINISH_UNVERIFIED)
        elif st == M.DOUBT_CLOSING:
            self._spec_step(M.FINISH_IN_DOUBT)
        else:  # aborting (anything else is refused: a run that ended in no closing state)
            self._spec_step(M.FINISH_ABORT)

    def _shutdown_throttle(self, problems: list[str]) -> bool:
        """Shut the throttler down (it resumes the vCPUs unless they were handed over); retry
        while a vCPU call is stuck, up to ``cleanup_timeout_s``. False: still stuck, the
        source guest's state is unknown (a late pause may still land)."""
        assert self._throttle is not None
        deadline = time.monotonic() + self.cfg.cleanup_timeout_s  # the throttler's real time
        failures = 0
        while True:
            try:
                self._throttle.shutdown()
                return True
            except ThrottlerTimeout as exc:  # each attempt waited up to the call timeout
                if time.monotonic() >= deadline:
                    problems.append(
                        f"a vCPU call of the throttler is stuck ({exc}); gave up after "
                        f"{self.cfg.cleanup_timeout_s:g} s: the source guest's state is "
                        f"unknown")
                    return False
                time.sleep(0.01)
            except ThrottleWorkerError as exc:  # reported once, or the final resume failed
                failures += 1
                if failures == 1:
                    problems.append(f"throttler shutdown: {exc}")
                if failures >= 2:
                    return True
            except Exception as exc:
                problems.append(f"throttler shutdown failed: {exc}")
                return True

    def _outcome(self) -> Outcome:
        r = self.result
        if r.status == "completed":
            if r.memory_hash_match is False:
                return "mismatch"
            if self.cfg.verify and r.memory_hash_match is not True:
                return "unverified"
            return "completed"
        return "in_doubt" if r.status == "in_doubt" else "aborted"

    def _tell_peer(self, err: BaseException) -> None:
        """Send ERROR if the stream is intact (not mid-frame, not broken); short deadline."""
        code = err.code if isinstance(err, MigrationError) else ErrorCode.INTERNAL
        if code is None or self.channel.broken:
            return
        self._cancel.clear()  # the stream shares this event: let the ERROR frame out
        stream = self.channel.stream
        if hasattr(stream, "io_timeout_s"):
            stream.io_timeout_s = min(stream.io_timeout_s, 1.0)
        self.channel.send_error(code, f"source aborted the migration: {err}")

    # ------------------------------------------------------------------------------ passes
    def _send_pass(self, idx: np.ndarray, it: int, *, ticks: bool) -> None:
        """One pass's pages over the connections (``ticks`` False: the final pass, the vCPUs
        handed over and paused). Frames go out zero-copy where nothing can write guest memory
        while they are in flight (:func:`~.pages.zero_copy_safe`)."""
        streams = self._streams
        assert streams is not None
        # once a throttle percent was set, the throttler's own thread calls the VM (pause,
        # resume): a simulated guest then writes memory outside the source's calls too
        streams.zero_copy = (not self.cfg.copy_pages and zero_copy_safe(self.vm, not ticks)
                             and (not ticks or not self._throttled_up))
        fp = streams.frame_pages
        total = len(idx)
        r = self.result
        for start in range(0, total, fp):
            self._check_cancel()
            chunk = idx[start:start + fp]
            # read now (or by the connection's sender): content at least as new as every
            # write the log reported so far
            self._pending[chunk] = False
            streams.send(chunk)
            r.pages_sent, r.zero_pages_sent = streams.pages_sent, streams.zero_pages_sent
            r.bytes_sent = self.channel.bytes_sent  # all connections' (they share the count)
            self._pass_idx, self._pass_pos = idx, start + len(chunk)
            self._limit_link()
            if ticks:
                now = self._now()
                if now - self._last_tick >= self.cfg.tick_s:
                    streams.before_vm_call()
                    self._tick(it)
                elif now - self._last_sync >= self.cfg.sync_s:
                    streams.before_vm_call()
                    self._sync()
        streams.end_pass(final=not ticks)
        r.zero_pages_sent = streams.zero_pages_sent
        r.bytes_sent = self.channel.bytes_sent
        self._pass_idx, self._pass_pos = idx[:0], 0

    def _limit_link(self) -> None:
        cap = self.cfg.max_bandwidth_bps
        if cap is None:
            return
        sent = self.channel.bytes_sent
        delta = sent - self._link_accounted
        self._link_accounted = sent
        now = self.clock.now()
        self._link_free_at = max(self._link_free_at, now - 0.01) + delta / cap
        wait = self._link_free_at - now
        if wait > 0 and self.clock.wait(self._cancel, wait):
            self._check_cancel()

    def _end_pass(self, it: int) -> None:
        self._measure_bandwidth(force=True)
        self._sync()
        dirty = int(np.count_nonzero(self._pending))
        self.channel.send(MsgType.ITERATION_END, encode_iteration_end(IterationEnd(
            it, self._percent, dirty, self.result.pages_sent)))
        self._observe("iteration", it, dirty * self._ps)
        self._check_timeout()

    # ------------------------------------------------------------------------------ measuring
    def _final_sync(self) -> None:
        """The vCPUs are stopped: fetch the pages written since the last sync (they go out in
        the final pass). Without it a page dirtied after the last pass is never re-sent."""
        self._sync()

    def _sync(self) -> None:
        """Fetch-and-clear the dirty log into the pending set; measure the dirty rate."""
        bits = bitmap_to_bool(self.vm.fetch_dirty_bitmap(), self._pages)
        raw = int(np.count_nonzero(bits))
        new = int(np.count_nonzero(bits & ~self._pending))
        self._pending |= bits
        now = self._now()
        self._last_sync = now
        syncs = self._syncs
        syncs.append((now, raw, self._stolen()))
        while len(syncs) >= 3 and syncs[1][0] <= now - self.cfg.rate_window_s:
            syncs.popleft()
        dt = now - syncs[0][0]
        if dt >= MIN_RATE_WINDOW_S:
            self._dirty_rate = sum(e[1] for e in list(syncs)[1:]) * self._ps / dt
            self._rate_percent = self._percent
            # the guest's measured share of vCPU time in the window (the throttle's real effect)
            paused = (syncs[-1][2] - syncs[0][2]) / self.vm.vcpu_count
            self._rate_run_share = min(max(1.0 - paused / dt, 0.0), 1.0)
        self._obs_dirty_new += new * self._ps

    def _stolen(self) -> float:
        t = self._throttle
        return t.stolen_vcpu_seconds() if t is not None else 0.0

    def _unsent(self) -> int:
        return self._link.unsent_bytes() if self._link is not None else 0

    def _measure_bandwidth(self, force: bool = False) -> None:
        """Rate of bytes that left this host (not merely entered the socket buffer)."""
        now = self._now()
        sent = self.channel.bytes_sent - self._unsent()
        db, dt = sent - self._bw_mark_bytes, now - self._bw_mark_t
        if dt >= MIN_BANDWIDTH_WINDOW_S and (db >= MIN_BANDWIDTH_BYTES or
                                             (force and self._bw == 0.0 and db > 0)):
            self._bw = db / dt
        if force or dt >= MIN_BANDWIDTH_WINDOW_S:
            self._bw_mark_t, self._bw_mark_bytes = now, sent
        self.result.bandwidth_bps = self._bw

    def _switchover_inputs(self, remaining: int) -> SwitchoverInputs:
        backlog = 0.0
        if self.cfg.max_bandwidth_bps is not None:
            backlog = max(0.0, self._link_free_at - self.clock.now())
        return SwitchoverInputs(
            remaining_bytes=remaining, queued_bytes=self._unsent(), backlog_s=backlog,
            dirty_rate_bps=self._dirty_rate, since_sync_s=self._now() - self._last_sync,
            pause_delay_s=self.downtime_history.pause_delay_s(),
            vcpu_state_bytes=self.vm.vcpu_state_size * self.vm.vcpu_count,
            bandwidth_bps=self._bw)

    def _estimate(self, remaining: int) -> float | None:
        """The switch-over's duration if it started now (:mod:`.downtime`)."""
        return self.downtime_history.estimate_s(self._switchover_inputs(remaining),
                                                self.cfg.downtime_limit_s)

    def _learn_downtime(self, actual_s: float) -> None:
        r = self.result
        if r.est_downtime_ms is not None:
            r.downtime_estimate_error_ms = actual_s * 1e3 - r.est_downtime_ms
        if self._decided_transfer_s is not None:
            self.downtime_history.record(self._decided_transfer_s, actual_s)

    def _tick(self, it: int) -> None:
        self._last_tick = self._now()
        self._measure_bandwidth()
        self._sync()
        self._poll_peer()
        rest = self._pass_idx[self._pass_pos:]
        # pages still to send in this pass, plus pending ones not among them
        pending = int(np.count_nonzero(self._pending)) - int(np.count_nonzero(
            self._pending[rest]))
        remaining = (len(rest) + pending) * self._ps
        self._observe("tick", it, remaining)
        self._check_timeout()

    def _observe(self, kind: Literal["iteration", "tick"], it: int, remaining: int) -> None:
        now = self._now()
        obs = Observation(
            kind=kind, time_s=now, iteration=it, throttle_percent=self._percent,
            period_s=now - self._obs_t, dirty_bytes_period=self._obs_dirty_new,
            dirty_rate_bps=self._dirty_rate, rate_throttle_percent=self._rate_percent,
            rate_run_share=self._rate_run_share,
            sent_bytes_period=self.channel.bytes_sent - self._obs_sent,
            bandwidth_bps=self._bw, remaining_bytes=remaining,
            downtime_limit_s=self.cfg.downtime_limit_s,
            deadline_left_s=None if self.cfg.deadline_s is None else self.cfg.deadline_s - now,
            timeout_left_s=self.cfg.timeout_s - now,
            switchover_fixed_s=self.downtime_history.fixed_s(self.cfg.downtime_limit_s))
        self._obs_t, self._obs_sent, self._obs_dirty_new = now, self.channel.bytes_sent, 0
        want = int(self.policy.observe(obs))
        note = self._deadline_verdict()
        try:
            validate_percent(want)
        except ValueError:
            raise MigrationError(f"policy {self.policy.name} asked for {want} %") from None
        if want != self._percent and self._throttle is not None:
            if want > 0 and not self._throttled_up:
                # the spec's one throttle_up (later changes are not steps of the abstraction)
                self._life.fire(M.THROTTLE_UP)
                self._throttled_up = True
            if want > 0 and self._streams is not None:
                self._streams.zero_copy = False  # see _send_pass: the throttler calls the VM
            self._throttle.set_throttle_percent(want)
            self._percent = want
            # the dirty rate is measured afresh at the new throttle
            self._syncs.clear()
            self._syncs.append((now, 0, self._stolen()))
            self.result.max_throttle_percent = max(self.result.max_throttle_percent, want)
        self.result.final_throttle_percent = self._percent
        self._sample(kind, it, remaining, self._estimate(remaining), note)
        if note is not None and self.cfg.timeout_strategy == "cancel":
            raise MigrationTimeout(f"{note} (strategy cancel)")

    def _deadline_verdict(self) -> str | None:
        """The policy's word on the deadline: once it said "infeasible" at two observations
        in a row (one noisy estimate is not enough), the result says so; the note is
        returned the first time (for the progress line and the timeout strategy)."""
        why = getattr(self.policy, "infeasible", None)
        if self.cfg.deadline_s is None or not why:
            self._infeasible_seen = 0
            return None
        self._infeasible_seen += 1
        r = self.result
        if self._infeasible_seen < 2 or r.deadline_infeasible:
            return None
        r.deadline_infeasible, r.deadline_note = True, str(why)
        return str(why)

    def _throttle_rounds(self) -> int:
        count = getattr(self._throttle, "pause_rounds", None)
        return int(count()) if callable(count) else 0

    def _sample(self, kind: str, it: int, remaining: int, est: float | None,
                note: str | None = None) -> None:
        stolen, rounds = self._stolen(), self._throttle_rounds()
        mark_stolen, mark_rounds = self._round_mark
        per_round = None
        if rounds > mark_rounds:
            per_round = (stolen - mark_stolen) / self.vm.vcpu_count / (rounds - mark_rounds) * 1e3
            self._round_mark = (stolen, rounds)
        r = self.result
        r.throttle_rounds = rounds
        if rounds:
            r.throttle_ms_per_round = stolen / self.vm.vcpu_count / rounds * 1e3
        s = Sample(self._now(), kind, it, remaining, self._percent, self._bw, self._dirty_rate,
                   est, self.channel.bytes_sent, stolen, per_round, note)
        r.timeline.append(s)
        if self.on_progress is not None:
            self.on_progress(s)

    def _check_timeout(self) -> None:
        now, deadline = self._now(), self.cfg.deadline_s
        if deadline is not None and now > deadline and now <= self.cfg.timeout_s:
            if self.cfg.timeout_strategy == "cancel":
                raise MigrationTimeout(f"not converged by the deadline of {deadline:g} s "
                                       f"(strategy cancel)")
            self.result.timeout_exceeded = True
            return
        if now <= self.cfg.timeout_s:
            return
        if self.cfg.timeout_strategy == "cancel":
            raise MigrationTimeout(f"no convergence within the timeout of "
                                   f"{self.cfg.timeout_s:g} s (strategy cancel)")
        self.result.timeout_exceeded = True

    def _poll_peer(self) -> None:
        """The destination only talks during pre-copy to report an error: look for it."""
        if self._link is None or not self._link.readable():
            return
        frame = self.channel.recv()
        if frame.type is MsgType.ERROR:
            raise PeerError(*decode_error(frame.payload))
        raise ProtocolError(f"unexpected {frame.type.name} from the destination during "
                            f"pre-copy")

    def _use_report(self, rep: Report) -> None:
        r = self.result
        r.dest_counters_at_resume = list(rep.counters_at_resume)
        r.dest_counters_after = list(rep.counters_after)
        if rep.memory_hash is not None:
            r.dest_hash = rep.memory_hash.hex()
        if r.source_hash is not None and r.dest_hash is not None:
            r.memory_hash_match = r.source_hash == r.dest_hash
        if r.counters_at_stop and r.dest_counters_after:
            r.guest_continued = all(
                a >= s for a, s in zip(r.dest_counters_at_resume, r.counters_at_stop,
                                       strict=True)) and sum(r.dest_counters_after) > sum(
                r.counters_at_stop)
