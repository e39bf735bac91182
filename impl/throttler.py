"""The threaded vCPU throttler, driven by the spec's ``transitions`` machines.

A :class:`Throttler` owns one worker thread. The worker is a model bound to
``spec.machine("worker")`` and the API side a model bound to ``spec.machine("controller")``;
every state change of either goes through its machine, so a step the spec does not allow
raises :class:`SpecViolation` instead of happening. Which transition to take is not decided
here either: each step builds the spec's view of the situation (the received command, whether
the deadline passed) and fires the one worker transition the spec enables in it.

Each step goes through the machine's transitions compiled once into a dispatch table
(:mod:`.spec_dispatch`, read from the ``transitions`` machine itself and proved equal to it by
``tests/test_spec_dispatch.py``): the first transition from the current state whose guard
holds gives the next state and its effect, as the machine's trigger would (measured: ~3 us
per step in a tight loop, 7-15 us p50 inside the running worker, against ~15 us for the same
trigger through ``transitions``); a step the machine refuses raises :class:`SpecViolation`.

The worker's run loop dispatches on the worker machine's state, once per step, through a
table from state to step method built once (``_Worker._STEP_BY_STATE``: ``waiting`` ->
``_wait_for_command``, both throttling phases -> ``_throttle_phase``); after each step the
loop reads the next state from the machine, which the step's transition set. A transition
that declares a vCPU call only starts it (the spec's ``call``); the worker then performs the
call and fires how it ended: ``call_return``, or ``fault`` (any exception, KeyboardInterrupt
included: a best-effort resume, then exit) and ``resume_failed``. Commands come in over a
channel; synchronous ones (abort, shutdown, handover) get an answer on a response channel
once the call in progress ended; a command the spec does not allow in the current state gets
an error answer instead of being ignored. All primitives (threads, channels, clock) come from
an injected :class:`~autoconverge.impl.runtime.Runtime`.

Priorities (``realtime``, default on): the worker thread runs SCHED_FIFO (priority 1) for its
whole life, and the caller of every call (abort, shutdown and handover, which wait for the
worker, and the asynchronous set_throttle_percent, whose command wakes the realtime worker)
runs SCHED_FIFO for the duration of the call, its previous policy restored 1 ms after it
returned by another
thread (:mod:`.policy_restorer`; lowering it as the call's last act let the runnable vCPU
threads preempt the caller right there, for a tick: abort p99 5.4 ms against 0.7 ms on a
quiet 2-core host, ``bench-kvm``) - where the runtime
offers it (``RealRuntime`` does) and the host permits it (CAP_SYS_NICE); otherwise both stay
at their normal priority, silently, and :attr:`Throttler.stats` says which was used. Why: on
a kernel that does not preempt a CPU-bound thread for a woken normal one (PREEMPT_NONE or
lazy preemption), the worker and the waiting caller otherwise wait behind a vCPU thread in
guest code for the next scheduler tick (4 ms at HZ=250). Measured on a 2-core host loaded by
other processes (load 5-7, ``bench-kvm --api-options``): abort p50 0.3-0.5 ms against 2-7 ms
with both at normal priority (p99 still several ms there: the vCPU threads, and the caller
once its policy is restored, compete with that load). The price: the worker preempts any
normal thread whenever it wakes (it uses < 1 % of a core: tens of microseconds per phase, and
it only ever blocks, never spins), and the caller runs its own code at SCHED_FIFO for up to
1 ms after the call returned (a call it makes meanwhile keeps the boost and restores the
original policy). An embedding VMM that runs its own realtime threads, or that cannot accept
that millisecond, should pass ``realtime=False`` or give its threads priorities above 1.

The API side holds one lock for the whole of a call (the spec's ``holder``). A blocking call
that times out fires the spec's ``timeout`` and raises :class:`ThrottlerTimeout`; afterwards
only ``shutdown()`` is possible, and it always ends with the vCPUs running: it waits for the
worker's late exit and resumes the vCPUs itself if the worker left them paused (a timed-out
handover's, a failed resume's). What each call raises:

- ``set_throttle_percent``: ``TypeError``/``ValueError`` (bad percent), ``ThrottlerClosed``
  (after shutdown/handover, or after a timeout or failure: only shutdown() is possible),
  ``ThrottleWorkerError`` (the worker failed in a vCPU call), ``ThrottlerTimeout`` (abort:
  no answer within the call timeout);
- ``shutdown``: ``ThrottleWorkerError`` (the worker had failed - reported once - or the final
  resume failed: call shutdown() again), ``ThrottlerTimeout`` (the worker did not exit in
  time: call shutdown() again once the vCPU call returns); idempotent once closed;
- ``handover``: ``ThrottlerClosed`` (after shutdown, a timeout or a failure),
  ``ThrottleWorkerError`` (the worker failed instead of handing over; the vCPUs are not
  owned: call shutdown()), ``ThrottlerTimeout``. A handover that returns always leaves the
  vCPUs paused, the worker joined, and the caller owning them.

Usage::

    with Throttler(vcpus, runtime=RealRuntime()) as t:
        t.set_throttle_percent(30)   # async: applied at the next phase boundary
        t.set_throttle_percent(0)    # abort: returns once vCPUs run and the worker waits
        t.handover()                 # or shutdown(): worker exits, vCPUs paused / running
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from autoconverge.spec import SPEC, Spec, State, timing
from autoconverge.spec import lifecycle as L

from .errors import AutoconvergeError
from .runtime import Channel, ChannelTimeout, Runtime, SupportsRealtime, Thread
from .spec_dispatch import CompiledMachine, CompiledTransition, NotDeclared, compiled
from .vcpus import Vcpus

DEFAULT_CALL_TIMEOUT_NS = 2_000_000_000
"""How long abort/shutdown/handover wait for the worker's answer before giving up."""
CALLER_RESTORE_DELAY_S = 0.001
"""A boosted caller gets its own policy back this long after its blocking call returned
(:mod:`.policy_restorer`: lowering it inside the call let the vCPU threads preempt it)."""
_LAG_SMOOTHING = 0.25
"""Weight of the newest observation in the running average of deadline lateness."""
_DEBT_LIMIT = 0.25
"""Most of a timeslice one pause is shortened or lengthened by to correct the parked share."""
_NO_PARAMS: Mapping[str, int] = {}
_CHAN_FIELD = L.VARIABLES.index("chan")
"""Where the queue is in a view key (the state record's fields in declaration order)."""
STEP_SAMPLES = 100_000
"""Most step costs a worker keeps (``Throttler(step_clock=...)``, benchmarks)."""


@contextmanager
def _boost(realtime: Callable[..., Any] | None, *, restore: bool = True,
           defer_restore_s: float | None = None) -> Iterator[bool]:
    """Inside the block the calling thread runs realtime if ``realtime`` (the runtime's
    :meth:`~autoconverge.impl.runtime.SupportsRealtime.realtime`) manages it; yields whether.
    ``restore=False``: the thread keeps the realtime policy after the block (a thread that
    ends right after it); ``defer_restore_s``: its policy comes back that long after the
    block, from another thread."""
    if realtime is None:
        yield False
        return
    if defer_restore_s is None:
        ctx = realtime(True, restore=restore)
    else:
        ctx = realtime(True, restore=restore, defer_restore_s=defer_restore_s)
    with ctx as boosted:
        yield bool(boosted)


class ThrottlerError(AutoconvergeError, RuntimeError):
    """Base class of the throttler's errors."""


class SpecViolation(ThrottlerError):
    """The implementation attempted a step the spec does not allow (a bug, never silent)."""


class ThrottlerClosed(ThrottlerError):
    """The throttler was shut down or handed over; no further calls are possible."""


class ThrottleWorkerError(ThrottlerError):
    """pause()/resume() failed in the worker; throttling stopped. ``__cause__`` has why."""


class ThrottlerTimeout(ThrottlerError):
    """The worker thread did not answer in time (it is stuck in a vCPU call)."""


@dataclass(frozen=True)
class ThrottlerStats:
    """What the throttle worker has measured so far: a read-only snapshot (``Throttler.stats``).

    Times are the injected runtime's nanoseconds (wall clock under ``RealRuntime``, virtual
    under ``VirtualRuntime``).
    """

    cycles: int
    """Pause phases started (one per timeslice while throttling)."""
    pause_cost_ns: int
    """How long the last ``pause()`` call took (compensated in the next pause share)."""
    resume_cost_ns: int
    """How long the last ``resume()`` call took (compensated likewise)."""
    paused_ns: int
    """Total time the throttler held the vCPUs paused, from each pause() returning to the
    next resume() starting: the guest CPU time taken from each vCPU (a handover's final pause,
    owned by the caller, is not counted)."""
    worker_realtime: bool | None = None
    """The worker thread runs SCHED_FIFO (None: not started yet; False: not asked, not
    permitted, or a runtime without realtime support)."""
    caller_realtime: bool | None = None
    """The last API call ran its caller SCHED_FIFO (None: no call yet)."""


@dataclass(frozen=True)
class TraceEvent:
    """One fired transition, as recorded for tests and trace validation."""

    time_ns: int
    machine: Literal["worker", "controller"]
    trigger: str
    source: str
    dest: str
    params: Mapping[str, int]
    view_before: State
    updates: Mapping[str, Any]


def validate_percent(percent: object) -> int:
    """The API's input check: an ``int`` in 0..99 (``bool`` is not a percent)."""
    if isinstance(percent, bool) or not isinstance(percent, int):
        raise TypeError(
            f"throttle percent must be an int in {L.ABORT_PERCENT}..{L.MAX_PERCENT}, "
            f"got {percent!r} ({type(percent).__name__})"
        )
    if not (percent == L.ABORT_PERCENT or L.api_accepts_percent(percent)):
        raise ValueError(
            f"throttle percent must be in {L.ABORT_PERCENT}..{L.MAX_PERCENT} "
            f"(0 stops throttling), got {percent!r}"
        )
    return percent


def validate_timeslice_ns(timeslice_ns: object) -> int:
    if isinstance(timeslice_ns, bool) or not isinstance(timeslice_ns, int):
        raise TypeError(f"timeslice must be an int number of ns, got {timeslice_ns!r}")
    if not timing.valid_timeslice(timeslice_ns):
        raise ValueError(
            f"timeslice must be within {timing.MIN_TIMESLICE_NS // timing.NS_PER_MS}.."
            f"{timing.MAX_TIMESLICE_NS // timing.NS_PER_MS} ms, got {timeslice_ns} ns"
        )
    return timeslice_ns


@dataclass
class _Recorder:
    runtime: Runtime
    enabled: bool
    events: list[TraceEvent] = field(default_factory=list)
    on_event: Callable[[TraceEvent], None] | None = None

    def record(self, ev: TraceEvent) -> None:
        if self.enabled:
            self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)


class _RuntimeLock:
    """A mutex made of a one-token runtime channel, so virtual time can interleave callers.

    Not reentrant: a thread that holds it and enters it again blocks forever.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._token: Channel[bool] = runtime.channel()
        self._token.put(True)

    def __enter__(self) -> None:
        self._token.get(None)

    def __exit__(self, *exc: object) -> None:
        self._token.put(True)


@dataclass
class _SharedVariables:
    """The spec's shared variable ``resp``, held once for both models.

    (The spec's other shared variable, the queue ``chan``, is the commands channel.) Only
    transition effects write it, as the spec declares: the worker's ``recv_abort`` /
    ``recv_exit`` / ``recv_handover`` set it (and send the answer that wakes the controller),
    the controller's ``abort_done`` / ``shutdown_done`` / ``handover_done`` clear it.
    """

    resp: bool = False
    """the worker has answered a synchronous command, not yet consumed by the controller"""


class _SpecModel:
    """Common glue between a model object and its spec machine."""

    state: str
    machine_name: Literal["worker", "controller"]
    trigger: Callable[..., bool]
    """Fire a trigger by name (bound by the spec's machine in ``add_model``)."""

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder,
                 linearization_lock: _RuntimeLock, shared: _SharedVariables) -> None:
        self._spec = spec
        self._runtime = runtime
        self._recorder = recorder
        # makes the event log a valid linearization of the two threads (see Throttler)
        self._linearization_lock = linearization_lock
        self._shared = shared
        self._pending: dict[str, Any] = {}
        self._attached = True
        machine = spec.machine(self.machine_name)
        # the machine's transitions as a dispatch table read from the machine (every step
        # goes through it: spec_dispatch checks it equals the machine's relation)
        self._compiled: CompiledMachine = compiled(machine, self.machine_name, State)
        machine.add_model(self)

    def view_key(self) -> tuple[Any, ...]:  # pragma: no cover - overridden
        """The spec's view as the state record's fields in declaration order."""
        raise NotImplementedError

    def spec_view(self) -> State:
        return State(*self.view_key())

    def apply_updates(self, updates: Mapping[str, Any]) -> None:
        self._pending = dict(updates)

    def detach(self) -> None:
        """Leave the shared machine (it would otherwise keep every model ever bound)."""
        if self._attached:
            self._attached = False
            self._spec.machine(self.machine_name).remove_model(self)

    def allows(self, trigger: str, **params: int) -> bool:
        """The spec allows ``trigger`` now: declared from this state, its guard true (the
        declaration's own guard evaluated on :meth:`spec_view`; nothing is fired)."""
        return self._compiled.allows(self.state, trigger, self.view_key(), params)

    def fire(self, trigger: str, **params: int) -> None:
        """Fire ``trigger`` through the machine's compiled table; anything the spec refuses
        raises (see :mod:`.spec_dispatch`: the same step the machine's trigger takes)."""
        # the event's time is read first: ``now_ns`` may be a scheduling point (virtual time),
        # and nothing between the state change and _store may let another thread run, or it
        # would see the new state with the old variables and no recorded event
        time_ns = self._runtime.now_ns()
        source = self.state
        key = self.view_key()
        try:
            taken = self._compiled.step(source, trigger, key, params)
        except NotDeclared as exc:
            raise SpecViolation(
                f"{self.machine_name}: {trigger!r} is not allowed in state {source!r}"
            ) from exc
        if taken is None:
            raise SpecViolation(
                f"{self.machine_name}: guard of {trigger!r} in state {source!r} is false "
                f"for {State(*key)}"
            )
        ct, updates = taken
        self.state = ct.dest
        # record before the step's effects reach the other thread (queue put, answer), so
        # the log's order is a valid linearization for trace validation
        recorder = self._recorder
        if recorder.enabled or recorder.on_event is not None:
            recorder.record(
                TraceEvent(time_ns, self.machine_name, trigger, source, ct.dest,
                           dict(params), State(*key), dict(updates))
            )
        self._store(updates, source, key)

    def _store(self, updates: Mapping[str, Any], source: str,
               before: tuple[Any, ...]) -> None:  # pragma: no cover
        """Store a step's updates; ``before`` is the view key the step was taken in."""
        raise NotImplementedError


class _Worker(_SpecModel):
    """The worker thread's model and run loop (one step method per state)."""

    machine_name = "worker"

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder,
                 linearization_lock: _RuntimeLock, shared: _SharedVariables,
                 vcpus: Vcpus, commands: Channel[int],
                 responses: Channel[BaseException | None], timeslice_ns: int,
                 controller_state: Callable[[], str],
                 realtime: Callable[[bool], Any] | None = None,
                 step_clock: Callable[[], int] | None = None) -> None:
        self._realtime = realtime
        self.runs_realtime: bool | None = None
        """Whether the worker thread runs SCHED_FIFO (None until it started)."""
        self._step_clock = step_clock
        self.step_costs_ns: deque[int] = deque(maxlen=STEP_SAMPLES)
        """Cost of each fired transition (only with a ``step_clock``), newest last."""
        self.percent = 0
        self.applied = 0
        self.paused = False
        self.call = L.NO_CALL
        self.handed = False
        self.failed = False
        self.expired = False
        self.polled = False
        self.error: BaseException | None = None
        self._vcpus = vcpus
        self._commands = commands
        self._responses = responses
        self._timeslice_ns = timeslice_ns
        self._controller_state = controller_state
        self._message: int | None = None
        self._answer_due = False
        self._deadline_ns = 0
        self.pause_cost_ns = 0
        self.resume_cost_ns = 0
        self.cycles = 0
        self.paused_ns = 0
        self._paused_since: int | None = None
        self._lag_ns: dict[str, float] = {L.PAUSE: 0.0, L.RUN: 0.0}
        parked_ns = getattr(vcpus, "parked_ns", None)
        self._parked_ns: Callable[[], int] | None = parked_ns if callable(parked_ns) else None
        self._share_origin: tuple[int, int, int] | None = None
        """(time, vCPUs' parked time, percent) when throttling at this percent began."""
        self._debt_ns = 0
        """The correction of the current cycle (see _share_debt_ns)."""
        self.detach_on_exit = False
        """Set when the handle was dropped: nobody will fire on this model after the thread."""
        self._holds_linearization_lock = False
        super().__init__(spec, runtime, recorder, linearization_lock, shared)
        # the machine's worker/clock transitions by (source state, actor), from its compiled
        # table: a step evaluates only the guards that can hold; how a vCPU call ends (actor
        # vcpu) is fired explicitly after the call
        self._candidates: dict[tuple[str, str], tuple[CompiledTransition, ...]] = {}
        for (source, _trigger), row in self._compiled.table.items():
            for ct in row:
                if ct.transition.actor in ("worker", "clock"):
                    key = (source, ct.transition.actor)
                    self._candidates[key] = (*self._candidates.get(key, ()), ct)

    def fire(self, trigger: str, **params: int) -> None:
        clock = self._step_clock
        if clock is None:
            self._fire_atomic(trigger, params)
            return
        start = clock()
        self._fire_atomic(trigger, params)
        self.step_costs_ns.append(clock() - start)

    def _fire_atomic(self, trigger: str, params: Mapping[str, int]) -> None:
        # atomic w.r.t. the controller's steps, whose guards read the worker's variables
        # (failed, call, paused, the machine state): the log is a valid linearization and a
        # guard the controller checked still holds when its transition fires
        if self._holds_linearization_lock:
            super().fire(trigger, **params)
            return
        with self._linearization_lock:
            self._holds_linearization_lock = True
            try:
                super().fire(trigger, **params)
            finally:
                self._holds_linearization_lock = False

    # the spec's view ------------------------------------------------------------------------
    def view_key(self) -> tuple[Any, ...]:
        # the worker's guards read neither the controller's ``requested``/``holder``/``owner``
        # nor ``resp``: its view (recorded as each worker event's view_before) leaves them at
        # their initial values, and shows the queue as the one command it has received.
        # The state record's fields in declaration order (State(*key) is the view).
        return (self.state, self._controller_state(), self.percent, self.applied,
                self.paused, self.call, self.handed, self.failed, self.expired, self.polled,
                0, 0, 0, () if self._message is None else (self._message,), False)

    def _store(self, updates: Mapping[str, Any], source: str,
               before: tuple[Any, ...]) -> None:
        for name in L.WORKER_VARIABLES:
            if name in updates:
                setattr(self, name, updates[name])
        if "chan" in updates:
            self._message = None  # the spec popped the command we received
        if "resp" in updates:
            self._shared.resp = bool(updates["resp"])
            if self._shared.resp:
                # the answer that wakes the waiting controller, once the call (if any) ended
                self._answer_due = True
                self._send_answer_if_due()
        if self.state not in L.THROTTLING:
            self._share_origin = None  # the next throttling starts its own account
            self._debt_ns = 0
        if self.state in L.THROTTLING and source != self.state and self.call == L.NO_CALL:
            self._start_phase()

    def _send_answer_if_due(self) -> None:
        if self._answer_due and self.call == L.NO_CALL:
            self._answer_due = False
            self._responses.put(None)

    # vCPU calls: started by a transition, ended by call_return / fault / resume_failed ---------
    def complete_call(self, *, answer_errors: bool = True) -> None:
        """Perform the vCPU call the last transition started and fire how it ended.

        Any exception (``BaseException``: a KeyboardInterrupt raised inside pause() too) is
        the spec's ``fault``: a best-effort resume, recorded and then exit; if that resume
        raises as well, ``resume_failed`` (the vCPUs may stay paused). ``answer_errors``: wake
        a waiting controller with the error (the worker thread's own calls).
        """
        call = self.call
        try:
            self._do_call(call)
        except BaseException as exc:
            self._call_failed(exc)
            if answer_errors:
                self._answer_due = False
                self._responses.put(exc)  # wakes a controller blocked in a call
            return
        self.fire(L.CALL_RETURN)
        if self.state in L.THROTTLING:
            self._start_phase()
        self._send_answer_if_due()

    def _call_failed(self, exc: BaseException) -> None:
        self.error = self.error or exc
        if not self.allows(L.FAULT):
            self.fire(L.RESUME_FAILED)
            return
        self.fire(L.FAULT)  # starts the best-effort resume
        try:
            self._do_call(self.call)
        except BaseException:
            self.fire(L.RESUME_FAILED)
        else:
            self.fire(L.CALL_RETURN)

    def _do_call(self, call: int) -> None:
        start = self._runtime.now_ns()
        if call == L.PAUSE_CALL:
            self._vcpus.pause()
            self._paused_since = self._runtime.now_ns()
            self.pause_cost_ns = max(0, self._paused_since - start)
        else:
            self._end_paused_interval(start)
            self._vcpus.resume()
            self.resume_cost_ns = max(0, self._runtime.now_ns() - start)

    def _end_paused_interval(self, now_ns: int) -> None:
        if self._paused_since is not None:
            self.paused_ns += max(0, now_ns - self._paused_since)
            self._paused_since = None

    # stepping: fire the one transition the spec enables --------------------------------------
    def _step(self, *, clock: bool = False) -> None:
        key = self.view_key()
        source = self.state
        actor = "clock" if clock else "worker"
        enabled = [ct for ct in self._candidates.get((source, actor), ())
                   if ct.outcome(key, _NO_PARAMS)[0]]
        if len(enabled) != 1:
            if self._message is not None and not enabled:
                self._reject(source)
                return
            raise SpecViolation(
                f"worker: {len(enabled)} transitions enabled in {State(*key)}: "
                f"{[ct.transition.label for ct in enabled]}"
            )
        self.fire(enabled[0].trigger)
        if enabled[0].transition.calls:
            self.complete_call()

    def _reject(self, state: str) -> None:
        """A command the spec does not allow here: answer with an error, change nothing."""
        message, self._message = self._message, None
        self._responses.put(
            SpecViolation(f"worker: command {message} is not allowed in state {state!r}")
        )

    def _crash(self, exc: BaseException) -> None:
        """An internal bug stopped the run loop: exit safely, report, never hang.

        The exit goes through the spec when it can: a vCPU call in progress fails through
        ``fault`` (best-effort resume, recorded). Only when the spec has no transition for the
        situation is the machine set to ``exit`` directly.
        """
        self.error = self.error or exc
        exited = False
        try:
            if self.call != L.NO_CALL:
                self._call_failed(exc)
                exited = self.state == L.EXIT and self.call == L.NO_CALL
        except Exception:
            pass  # the machinery itself failed: fall back below
        if not exited:
            # Not a spec transition, on purpose: no transition the spec declares covers
            # these cases (the crash came from the blocking receive, or after the exit
            # transition, or from the firing machinery itself: the recorder's on_event, a
            # guard or an effect), and a crashed worker must still exit and answer.
            self.failed = True
            self.call = L.NO_CALL
            self._resume_best_effort()
            self.paused = False
            if self.state != L.EXIT:
                self._spec.machine("worker").set_state(L.EXIT, model=self)
        self._responses.put(exc)

    def _resume_best_effort(self) -> None:
        self._end_paused_interval(self._runtime.now_ns())
        try:
            self._vcpus.resume()
        except Exception:
            pass

    def _start_phase(self) -> None:
        """Set the new phase's deadline from the spec's timing arithmetic.

        The overheads compensated are the measured cost of the last pause() and resume() and
        the average lateness with which this phase's deadline was observed (thread wake-up
        and sleep overshoot), so the achieved paused share matches the setpoint. Where the
        vCPUs report their own parked time (``parked_ns()``, from their stop and re-entry
        timestamps), what is left - e.g. a vCPU that re-enters the guest late because its
        thread waited for a busy CPU - is corrected too: the difference between the time
        they were actually parked and the setpoint's share of the time since throttling at
        this percent began (:meth:`_share_debt_ns`) shortens (or lengthens) this pause and
        lengthens (or shortens) the run phase after it by as much.
        """
        now = self._runtime.now_ns()
        if self.state == L.PAUSE:
            self.cycles += 1
            self._debt_ns = self._share_debt_ns(now)
            overhead = self.resume_cost_ns + int(self._lag_ns[L.PAUSE]) + self._debt_ns
            sleep = timing.pause_sleep_ns(
                self.applied, self._timeslice_ns, self.pause_cost_ns, max(0, overhead))
            if overhead < 0:  # paused less than the share so far: pause longer this time
                sleep = int(sleep) - overhead
        else:
            # the run phase gives back what the pause took off (and the reverse), so the
            # cycle keeps its length and the correction lands in this one cycle's share
            nominal = int(timing.run_sleep_ns(self.applied, self._timeslice_ns))
            sleep = nominal - int(self._lag_ns[L.RUN]) + self._debt_ns
            # never below 0; a shortened run (paused too little so far) keeps half its length
            sleep = max(0 if self._debt_ns >= 0 else nominal // 2, sleep)
        self._deadline_ns = now + int(sleep)

    def _share_debt_ns(self, now: int) -> int:
        """Parked time beyond the setpoint's share since throttling at this percent began,
        by the vCPUs' own clock (0 without ``parked_ns()``), bounded by :data:`_DEBT_LIMIT`
        of a timeslice either way so a saturated phase cannot wind it up."""
        if self._parked_ns is None:
            return 0
        parked = int(self._parked_ns())
        origin = self._share_origin
        if origin is None or origin[2] != self.applied:
            self._share_origin = (now, parked, self.applied)
            return 0
        start, parked_at_start, _ = origin
        debt = (parked - parked_at_start) - (now - start) * self.applied // 100
        limit = int(self._timeslice_ns * _DEBT_LIMIT)
        return max(-limit, min(limit, debt))

    def _observe_lag(self) -> None:
        lag = max(0, self._runtime.now_ns() - self._deadline_ns)
        old = self._lag_ns[self.state]
        self._lag_ns[self.state] = old + (lag - old) * _LAG_SMOOTHING

    # the run loop: one step method per worker state --------------------------------------------
    _STEP_BY_STATE: ClassVar[Mapping[str, Callable[[_Worker], None]]]
    """The step method for each worker state but ``exit`` (set below the class, built once)."""

    def run(self) -> None:
        """The worker thread's body: step in the machine's current state until ``exit``.

        At SCHED_FIFO for its whole life where the runtime offers it and the host permits
        (see :class:`Throttler`'s ``realtime``)."""
        # never lowered again: the thread ends at SCHED_FIFO (lowering it first would let
        # a busy normal thread delay its exit, and with it shutdown(), by a scheduler tick)
        with _boost(self._realtime, restore=False) as realtime:
            self.runs_realtime = realtime
            try:
                step_by_state = self._STEP_BY_STATE
                while (state := self.state) != L.EXIT:
                    step_by_state[state](self)  # fires at most one worker transition
            except BaseException as exc:
                self._crash(exc)
            finally:
                # the controller may still fire on this model (its own final resume) until
                # the handle is closed; a dropped handle's worker leaves the machine here
                if self.detach_on_exit:
                    self.detach()

    def _wait_for_command(self) -> None:
        """``waiting``: block on the queue (no polling), then take the received command."""
        self._message = self._commands.get(None)
        self._step()

    def _throttle_phase(self) -> None:
        """``throttling_pause`` and ``throttling_run``: one step of the current phase.

        The two phases differ only in what the spec declares for them (their transitions'
        vCPU calls) and in the deadline :meth:`_start_phase` computed, so one method serves
        both. A received command does not cut the sleep short: the deadline stays.
        """
        if self.expired:
            self._step()  # the phase is over: pause_elapsed / run_elapsed
            return
        if not self.polled:
            # look at the queue once per phase before the deadline can end it
            try:
                self._message = self._commands.get_nowait()
            except ChannelTimeout:
                self._message = None
            if self._message is not None:
                self._step()
                return
        remaining = self._deadline_ns - self._runtime.now_ns()
        if remaining > 0:
            try:
                self._message = self._commands.get(remaining)
            except ChannelTimeout:
                self._message = None
            if self._message is not None:
                self._step()  # a command does not cut the sleep short: same deadline
                return
        self._observe_lag()
        self._expire()

    def _expire(self) -> None:
        """The deadline passed: fire ``expire`` - unless a command arrived unseen.

        The spec lets a phase end only once the worker has looked at the queue in it, or the
        queue is empty. The last look and the recorded ``expire`` are made under the
        linearization lock, which the controller holds from recording a command to enqueuing
        it, so the log stays a valid linearization (a command that arrives meanwhile is
        received first, then expire). Without it a command recorded before the empty look but
        enqueued after it would be logged before an ``expire`` whose guard it falsifies (the
        race in README "The real code's interleavings").
        """
        with self._linearization_lock:
            self._holds_linearization_lock = True
            try:
                if not self.polled:
                    try:
                        self._message = self._commands.get_nowait()
                    except ChannelTimeout:
                        self._message = None
                if self._message is None:
                    self._step(clock=True)  # expire declares no vCPU call
                    return
            finally:
                self._holds_linearization_lock = False
        self._step()  # recv (the deadline stays: the phase ends right after)


_Worker._STEP_BY_STATE = {
    L.WAITING: _Worker._wait_for_command,
    L.PAUSE: _Worker._throttle_phase,
    L.RUN: _Worker._throttle_phase,
}


class _Controller(_SpecModel):
    """The API side's model."""

    machine_name = "controller"

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder,
                 linearization_lock: _RuntimeLock, shared: _SharedVariables,
                 commands: Channel[int], worker: Callable[[], _Worker | None]) -> None:
        self.requested = 0
        self.holder = 0
        self.owner = 0
        self._commands = commands
        self._worker = worker
        super().__init__(spec, runtime, recorder, linearization_lock, shared)

    def fire(self, trigger: str, **params: int) -> None:
        # record-then-enqueue is atomic w.r.t. the worker's steps (its empty-poll-then-expire
        # included)
        with self._linearization_lock:
            super().fire(trigger, **params)

    def fire_if_allowed(self, trigger: str, **params: int) -> bool:
        """Check the spec's guard and fire in one step (the worker cannot move in between:
        its failure, say, makes the guard false and nothing fires)."""
        with self._linearization_lock:
            if not self.allows(trigger, **params):
                return False
            super().fire(trigger, **params)
            return True

    def view_key(self) -> tuple[Any, ...]:
        # the state record's fields in declaration order (State(*key) is the view)
        w = self._worker()
        if w is None:
            return (L.WAITING, self.state, 0, 0, False, L.NO_CALL, False, False, False, False,
                    self.requested, self.holder, self.owner, (), self._shared.resp)
        return (w.state, self.state, 0, 0, w.paused, w.call, w.handed, w.failed, False, False,
                self.requested, self.holder, self.owner, (), self._shared.resp)

    def _store(self, updates: Mapping[str, Any], source: str,
               before: tuple[Any, ...]) -> None:
        for name in ("requested", "holder", "owner"):
            if name in updates:
                setattr(self, name, int(updates[name]))
        if "resp" in updates:
            self._shared.resp = bool(updates["resp"])
        w = self._worker()
        if w is not None:
            # the controller's own vCPU call (shutdown resuming what the exited worker left
            # paused) and what it clears: the worker's variables, the worker thread is gone
            for name in ("call", "handed"):
                if name in updates:
                    setattr(w, name, updates[name])
        if "chan" in updates:
            for command in tuple(updates["chan"])[len(before[_CHAN_FIELD]):]:
                self._commands.put(int(command))


def _abandon(commands: Channel[int], controller: _Controller) -> None:
    """Finalizer of a handle dropped without shutdown(): stop the worker, leave the machine."""
    if controller.state != L.DONE:
        # Enqueued without firing call_shutdown, on purpose: a finalizer runs in whichever
        # thread drops the last reference (or runs the cyclic GC), possibly one holding the
        # non-reentrant linearization lock that the controller's fire() takes, and the
        # controller may be mid-call (awaiting_*), where the spec has no call_shutdown. The
        # worker still exits through its spec transition recv_exit.
        commands.put(L.CMD_EXIT)
        controller.detach()
        worker = controller._worker()
        if worker is not None:
            worker.detach_on_exit = True


class Throttler:
    """Throttles a set of vCPUs from a dedicated thread (see the module docstring)."""

    def __init__(
        self,
        vcpus: Vcpus,
        *,
        runtime: Runtime,
        timeslice_ns: int = timing.DEFAULT_TIMESLICE_NS,
        call_timeout_ns: int = DEFAULT_CALL_TIMEOUT_NS,
        name: str = "vcpu-throttle",
        spec: Spec = SPEC,
        trace: bool = False,
        on_event: Callable[[TraceEvent], None] | None = None,
        realtime: bool = True,
        step_clock: Callable[[], int] | None = None,
    ) -> None:
        if not all(callable(getattr(vcpus, m, None)) for m in ("pause", "resume")):
            raise TypeError(f"vcpus must provide pause() and resume(), got {vcpus!r}")
        self.timeslice_ns = validate_timeslice_ns(timeslice_ns)
        if isinstance(call_timeout_ns, bool) or not isinstance(call_timeout_ns, int) \
                or call_timeout_ns <= 0:
            raise ValueError(f"call_timeout_ns must be a positive int, got {call_timeout_ns!r}")
        self.name = name
        self._runtime = runtime
        self.realtime = bool(realtime)
        """Asked for: the worker, and the caller of a blocking call, at SCHED_FIFO where the
        runtime offers it and the host permits (:attr:`stats` says what happened)."""
        self._boost = runtime.realtime if self.realtime and isinstance(runtime,
                                                                        SupportsRealtime) \
            else None
        self._caller_realtime: bool | None = None
        self._call_timeout_ns = call_timeout_ns
        # one API call at a time (the spec's ``holder``): a blocking call (abort, shutdown,
        # handover) holds it until it returns, answered or timed out
        self._api_lock = _RuntimeLock(runtime)
        self._creator = threading.get_ident()
        self._recorder = _Recorder(runtime, trace, on_event=on_event)
        commands: Channel[int] = runtime.channel()
        self._responses: Channel[BaseException | None] = runtime.channel()
        # the models refer to each other, never to this handle: a handle dropped without
        # shutdown() can be collected, and its finalizer then stops the worker
        worker_box: list[_Worker] = []
        # held by the controller from recording a step to enqueuing its command, and by the
        # worker from its last look at the queue to recording expire: the event log is a
        # valid linearization of the two threads (see _Worker._expire)
        linearization_lock = _RuntimeLock(runtime)
        shared = _SharedVariables()
        self._controller = _Controller(spec, runtime, self._recorder, linearization_lock,
                                       shared, commands,
                                       lambda: worker_box[0] if worker_box else None)
        controller = self._controller
        self._worker_model: _Worker | None = _Worker(
            spec, runtime, self._recorder, linearization_lock, shared, vcpus, commands,
            self._responses, self.timeslice_ns, lambda: controller.state,
            realtime=self._boost, step_clock=step_clock,
        )
        worker_box.append(self._worker_model)
        self._thread: Thread = runtime.spawn(name, self._worker_model.run)
        # a handle dropped without shutdown() still stops its worker (and resumes the vCPUs)
        weakref.finalize(self, _abandon, commands, self._controller)

    # introspection -----------------------------------------------------------------------
    @property
    def worker_state(self) -> str:
        assert self._worker_model is not None
        return self._worker_model.state

    @property
    def percent(self) -> int:
        """The last percent the API accepted (0: not throttling)."""
        return int(self._controller.requested)

    @property
    def closed(self) -> bool:
        """shutdown() or handover() completed: nothing more to do (see :attr:`owned`)."""
        return self._controller.state == L.DONE

    @property
    def owned(self) -> bool:
        """A handover() returned: the vCPUs are paused and belong to its caller."""
        return self._controller.owner != 0

    @property
    def events(self) -> list[TraceEvent]:
        return self._recorder.events

    @property
    def _worker(self) -> _Worker:
        assert self._worker_model is not None
        return self._worker_model

    @property
    def stats(self) -> ThrottlerStats:
        """What the worker measured so far (cycles, pause/resume cost, time held paused)."""
        w = self._worker
        assert w is not None
        return ThrottlerStats(cycles=w.cycles, pause_cost_ns=w.pause_cost_ns,
                              resume_cost_ns=w.resume_cost_ns, paused_ns=w.paused_ns,
                              worker_realtime=w.runs_realtime,
                              caller_realtime=self._caller_realtime)

    def step_costs_ns(self) -> list[int]:
        """How long each worker transition took (fired through the spec's compiled machine:
        guard, effect, state change, trace), oldest first; empty without ``step_clock``."""
        return list(self._worker.step_costs_ns)

    # the API ----------------------------------------------------------------------------------
    def set_throttle_percent(self, percent: int) -> None:
        """0 stops throttling (returns with vCPUs running); 1..99 throttles; same value: no-op.

        Raises TypeError/ValueError for anything but an int in 0..99 (the worker is not
        touched); ThrottlerClosed after shutdown/handover, and after a call timed out or
        failed (then only shutdown() is possible); ThrottleWorkerError if the worker failed in
        a vCPU call; ThrottlerTimeout if an abort got no answer within the call timeout.
        """
        validate_percent(percent)
        with self._blocking_call(percent == L.ABORT_PERCENT), self._api_lock:
            self._check_open("set the throttle percent")
            self._raise_worker_error()
            k = self._caller()
            call, params = ((L.CALL_ABORT, {"k": k}) if percent == L.ABORT_PERCENT
                            else (L.CALL_SET, {"p": percent, "k": k}))
            if not self._controller.fire_if_allowed(call, **params):
                # the spec's guard of call_abort / call_set refuses: the percent is the one
                # already requested (a no-op), or the worker failed since the check above
                self._raise_worker_error()
                return
            if call == L.CALL_ABORT:
                self._await_answer("abort")
                self._controller.fire(L.ABORT_DONE)
                self._raise_worker_error()

    def shutdown(self) -> None:
        """Stop throttling, leave the vCPUs running, join the worker. Idempotent.

        Works in every state: after a timed-out or failed call it waits for the worker's late
        exit and resumes the vCPUs itself if the worker left them paused. Raises
        ThrottleWorkerError (once) if the worker had failed in a vCPU call, or if the final
        resume() failed (the vCPUs may be paused: call shutdown() again); ThrottlerTimeout if
        the worker did not exit within the call timeout (stuck in a vCPU call: call shutdown()
        again once it returns).
        """
        with self._blocking_call(), self._api_lock:
            c = self._controller
            k = self._caller()
            c.fire(L.CALL_SHUTDOWN, k=k)
            if c.state == L.DONE:
                return  # already closed (after a handover, the caller owns the vCPUs)
            self._await_exit("shutdown")
            if c.allows(L.SHUTDOWN_RESUME):
                # the worker left the vCPUs paused (a handover whose caller timed out, a
                # failed resume): resume them here, through the spec
                c.fire(L.SHUTDOWN_RESUME)
                self._worker.complete_call(answer_errors=False)
                if c.allows(L.RESUME_LEFT_PAUSED):
                    c.fire(L.RESUME_LEFT_PAUSED)
                    error = self._worker.error
                    raise ThrottleWorkerError(
                        f"{self.name}: resume() failed; the vCPUs may be paused "
                        f"(call shutdown() again): {error}"
                    ) from error
                c.fire(L.RESUMED)
            else:
                c.fire(L.SHUTDOWN_DONE)
            self._close()

    def handover(self) -> None:
        """Stop throttling and exit leaving the vCPUs paused, now owned by the caller.

        Saves one resume+pause at a migration's switch-over. Afterwards the caller must
        resume (or discard) the vCPUs itself. Raises ThrottlerClosed after shutdown() or a
        handover, and after a call timed out or failed (nothing is handed over: call
        shutdown()); ThrottleWorkerError if the worker failed instead of handing over (the
        vCPUs are not owned: call shutdown()); ThrottlerTimeout if the worker did not exit in
        time (call shutdown()).
        """
        with self._blocking_call(), self._api_lock:
            c = self._controller
            k = self._caller()
            if c.state != L.IDLE:
                c.fire(L.CALL_HANDOVER, k=k)  # the spec's refusal: nothing changes
                raise ThrottlerClosed(
                    f"{self.name}: cannot hand over in state {c.state!r}"
                    + ("" if c.state == L.DONE else "; only shutdown() is possible")
                )
            c.fire(L.CALL_HANDOVER, k=k)
            self._await_exit("handover")
            if c.allows(L.HANDOVER_DONE):
                c.fire(L.HANDOVER_DONE)
                self._close()
                return
            c.fire(L.HANDOVER_FAILED)
            error = self._worker.error
            self._worker.error = None  # reported once
            raise ThrottleWorkerError(
                f"{self.name}: handover failed, the vCPUs are not handed over (call "
                f"shutdown()): {error}"
            ) from error

    def __enter__(self) -> Throttler:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.shutdown()
        except ThrottleWorkerError:
            if exc_type is None:
                raise

    # internals ----------------------------------------------------------------------------
    @contextmanager
    def _blocking_call(self, blocking: bool = True) -> Iterator[None]:
        """Every API call runs its caller SCHED_FIFO where asked and permitted (its previous
        policy comes back 1 ms after the return): a call that waits for the worker so that
        the worker's answer wakes it at once; an asynchronous one (``blocking`` False) so
        that the realtime worker its command wakes does not preempt it on its CPU, after
        which a normal caller would wait behind the vCPU threads for a tick (measured: p99
        5.1 ms instead of well under 1 ms)."""
        if self._boost is None:
            yield
            return
        with _boost(self._boost, defer_restore_s=CALLER_RESTORE_DELAY_S) as realtime:
            self._caller_realtime = realtime
            yield

    def _caller(self) -> int:
        """The spec's caller ``k`` of this call: the handle's creating thread is caller 1,
        any other thread caller 2 (callers differ only in who owns a handover's vCPUs)."""
        return 1 if threading.get_ident() == self._creator else 2

    def _close(self) -> None:
        """The controller reached ``done``: leave the machines, report a failure once."""
        self._controller.detach()
        self._worker.detach()
        error = self._worker.error
        self._worker.error = None  # reported once
        if error is not None and not self.owned:
            raise ThrottleWorkerError(f"{self.name}: throttling failed: {error}") from error

    def _timed_out(self, what: str, detail: str) -> ThrottlerTimeout:
        """The spec's ``timeout``: release the call, leave only shutdown() possible."""
        self._controller.fire(L.TIMEOUT)
        return ThrottlerTimeout(
            f"{self.name}: worker did not answer {what} within "
            f"{self._call_timeout_ns / 1e6:.1f} ms ({detail}); only shutdown() is possible now"
        )

    def _await_exit(self, what: str) -> None:
        """Wait (within the call timeout) until the worker thread is gone: ``exit`` and no
        vCPU call in progress. Its answers only wake us; an error answer from a command the
        spec did not allow is raised."""
        if not self._thread.join(self._call_timeout_ns):
            raise self._timed_out(what, f"thread {self.name!r} still running, stuck in a vCPU "
                                        "call?") from None
        while True:
            try:
                answer = self._responses.get_nowait()
            except ChannelTimeout:
                return
            if isinstance(answer, SpecViolation):
                raise answer

    def _await_answer(self, what: str) -> None:
        """Wait for the worker's answer to an abort; an exited (failed) worker counts as one."""
        deadline = self._runtime.now_ns() + self._call_timeout_ns
        while True:
            if self._controller.allows(L.ABORT_DONE) and not self._thread.is_alive():
                return  # the worker already exited (a fault): no answer will come
            remaining = deadline - self._runtime.now_ns()
            try:
                answer = self._responses.get(max(remaining, 0))
            except ChannelTimeout:
                if self._controller.allows(L.ABORT_DONE) and not self._thread.is_alive():
                    return
                raise self._timed_out(what, "stuck in a vCPU call?") from None
            if isinstance(answer, SpecViolation):
                raise answer
            # None: the worker's recv_abort set ``resp`` (shared with the controller) and its
            # call ended before it sent it. An exception: the worker failed and exited.
            if self._controller.allows(L.ABORT_DONE):
                return

    def _check_open(self, what: str) -> None:
        state = self._controller.state
        if state == L.DONE:
            raise ThrottlerClosed(f"{self.name}: shut down; cannot {what}")
        if state != L.IDLE:
            raise ThrottlerClosed(
                f"{self.name}: a previous call timed out or failed (state {state!r}); only "
                f"shutdown() is possible, cannot {what}"
            )

    def _raise_worker_error(self) -> None:
        w = self._worker
        if w.failed and w.error is not None:
            raise ThrottleWorkerError(f"{self.name}: throttling failed: {w.error}") from w.error
