"""The threaded vCPU throttler, driven by the spec's ``transitions`` machines.

A :class:`Throttler` owns one worker thread. The worker is a model bound to
``spec.machine("worker")`` and the API side a model bound to ``spec.machine("controller")``;
every state change of either goes through its machine, so a step the spec does not allow
raises :class:`SpecViolation` instead of happening. Which transition to take is not decided
here either: each step builds the spec's view of the situation (the received command, whether
the deadline passed) and fires the one worker transition the spec enables in it.

The worker's run loop is one method per state (``_wait_for_command``, ``_pause_phase``,
``_run_phase``). Commands come in over a channel; synchronous ones (abort, shutdown,
handover) get an answer on a response channel; a command the spec does not allow in the
current state gets an error answer instead of being ignored. All primitives (threads,
channels, clock) come from an injected :class:`~autoconverge.impl.runtime.Runtime`.

Usage::

    with Throttler(vcpus, runtime=RealRuntime()) as t:
        t.set_throttle_percent(30)   # async: applied at the next phase boundary
        t.set_throttle_percent(0)    # abort: returns once vCPUs run and the worker waits
        t.handover()                 # or shutdown(): worker exits, vCPUs paused / running
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from transitions import MachineError

from autoconverge.spec import SPEC, Spec, State, timing
from autoconverge.spec import lifecycle as L

from .runtime import Channel, ChannelTimeout, JoinTimeout, Runtime, Thread
from .vcpus import Vcpus

DEFAULT_CALL_TIMEOUT_NS = 2_000_000_000
"""How long abort/shutdown/handover wait for the worker's answer before giving up."""
_LAG_SMOOTHING = 0.25
"""Weight of the newest observation in the running average of deadline lateness."""


class ThrottlerError(RuntimeError):
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
    """A mutex made of a one-token runtime channel, so virtual time can interleave callers."""

    def __init__(self, runtime: Runtime) -> None:
        self._token: Channel[bool] = runtime.channel()
        self._token.put(True)

    def __enter__(self) -> None:
        self._token.get(None)

    def __exit__(self, *exc: object) -> None:
        self._token.put(True)


class _SpecModel:
    """Common glue between a model object and its spec machine."""

    state: str
    machine_name: Literal["worker", "controller"]

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder,
                 order: _RuntimeLock) -> None:
        self._spec = spec
        self._runtime = runtime
        self._recorder = recorder
        self._order = order
        self._pending: dict[str, Any] = {}
        spec.machine(self.machine_name).add_model(self)

    def spec_view(self) -> State:  # pragma: no cover - overridden
        raise NotImplementedError

    def perform_calls(self, calls: tuple[L.Call, ...]) -> None:  # pragma: no cover
        raise NotImplementedError(f"{self.machine_name} performs no vCPU calls")

    def apply_updates(self, updates: Mapping[str, Any]) -> None:
        self._pending = dict(updates)

    def detach(self) -> None:
        """Leave the shared machine (it would otherwise keep every model ever bound)."""
        self._spec.machine(self.machine_name).remove_model(self)

    def fire(self, trigger: str, **params: int) -> None:
        """Fire ``trigger`` through the machine; anything the spec refuses raises."""
        source = self.state
        before = self.spec_view()
        self._pending = {}
        try:
            ok = self.trigger(trigger, **params)  # type: ignore[attr-defined]
        except MachineError as exc:
            raise SpecViolation(
                f"{self.machine_name}: {trigger!r} is not allowed in state {source!r}"
            ) from exc
        if not ok:
            raise SpecViolation(
                f"{self.machine_name}: guard of {trigger!r} in state {source!r} is false "
                f"for {before}"
            )
        updates, self._pending = self._pending, {}
        # record before the step's effects reach the other thread (queue put, answer), so
        # the log's order is a valid linearization for trace validation
        self._recorder.record(
            TraceEvent(self._runtime.now_ns(), self.machine_name, trigger, source, self.state,
                       dict(params), before, updates)
        )
        self._store(updates, before)

    def _store(self, updates: Mapping[str, Any], before: State) -> None:  # pragma: no cover
        raise NotImplementedError


class _Worker(_SpecModel):
    """The worker thread's model and run loop (one method per state)."""

    machine_name = "worker"

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder, order: _RuntimeLock,
                 vcpus: Vcpus, commands: Channel[int],
                 responses: Channel[BaseException | None], timeslice_ns: int,
                 controller_state: Callable[[], str]) -> None:
        self.percent = 0
        self.applied = 0
        self.paused = False
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
        self._deadline_ns = 0
        self.pause_cost_ns = 0
        self.resume_cost_ns = 0
        self.cycles = 0
        self._best_effort = False
        self._lag_ns: dict[str, float] = {L.PAUSE: 0.0, L.RUN: 0.0}
        super().__init__(spec, runtime, recorder, order)
        self._worker_relation = tuple(t for t in spec.relation() if t.machine == "worker")
        # the spec's worker transitions by (source state, actor), fault excluded: a step
        # evaluates only the guards that can hold (enabled() also requires the source state)
        self._candidates: dict[tuple[str, str], tuple[L.Transition, ...]] = {}
        for t in self._worker_relation:
            if t.trigger != L.FAULT:
                key = (t.source, t.actor)
                self._candidates[key] = (*self._candidates.get(key, ()), t)

    # the spec's view ------------------------------------------------------------------------
    def spec_view(self) -> State:
        return State(
            w=self.state, c=self._controller_state(), percent=self.percent,
            applied=self.applied, paused=self.paused, handed=self.handed,
            failed=self.failed, expired=self.expired, polled=self.polled, requested=0,
            chan=() if self._message is None else (self._message,), resp=False,
        )

    def perform_calls(self, calls: tuple[L.Call, ...]) -> None:
        if self._best_effort:
            for _ in calls:
                self._resume_best_effort()
            return
        for call in calls:
            start = self._runtime.now_ns()
            if call == "pause":
                self._vcpus.pause()
                self.pause_cost_ns = max(0, self._runtime.now_ns() - start)
            else:
                self._vcpus.resume()
                self.resume_cost_ns = max(0, self._runtime.now_ns() - start)

    def _store(self, updates: Mapping[str, Any], before: State) -> None:
        for name in L.WORKER_VARIABLES:
            if name in updates:
                setattr(self, name, updates[name])
        if "chan" in updates:
            self._message = None  # the spec popped the command we received
        if updates.get("resp"):
            self._responses.put(None)
        if self.state in L.THROTTLING and before.w != self.state:
            self._start_phase()

    # stepping: fire the one transition the spec enables --------------------------------------
    def _step(self, *, clock: bool = False) -> None:
        view = self.spec_view()
        actor = "clock" if clock else "worker"
        enabled = [t for t in self._candidates.get((view.w, actor), ()) if t.enabled(view)]
        if len(enabled) != 1:
            if self._message is not None and not enabled:
                self._reject(view)
                return
            raise SpecViolation(
                f"worker: {len(enabled)} transitions enabled in {view}: "
                f"{[t.label for t in enabled]}"
            )
        try:
            self.fire(enabled[0].trigger)
        except SpecViolation:
            raise
        except Exception as exc:  # a vCPU call failed (the state did not change)
            self._fault(exc)

    def _reject(self, view: State) -> None:
        """A command the spec does not allow here: answer with an error, change nothing."""
        message, self._message = self._message, None
        self._responses.put(
            SpecViolation(f"worker: command {message} is not allowed in state {view.w!r}")
        )

    def _fault(self, exc: BaseException) -> None:
        """A vCPU call failed: resume what can be resumed, exit, wake a waiting caller."""
        self.error = exc
        fault = self._spec.find(L.FAULT, self.state)
        if "resume" not in fault.calls:
            # pause() failed part-way: some vCPUs may be paused although the spec's
            # all-or-nothing view says running. Resume them outside the spec's accounting.
            self._resume_best_effort()
        self._best_effort = True
        try:
            self.fire(L.FAULT)
        finally:
            self._best_effort = False
        self._responses.put(exc)  # wakes a controller blocked in abort/shutdown/handover

    def _resume_best_effort(self) -> None:
        try:
            self._vcpus.resume()
        except Exception:
            pass

    def _start_phase(self) -> None:
        """Set the new phase's deadline from the spec's timing arithmetic.

        The overheads compensated are the measured cost of the last pause() and resume() and
        the average lateness with which this phase's deadline was observed (thread wake-up
        and sleep overshoot), so the achieved paused share matches the setpoint.
        """
        now = self._runtime.now_ns()
        if self.state == L.PAUSE:
            self.cycles += 1
            sleep = timing.pause_sleep_ns(
                self.applied, self._timeslice_ns, self.pause_cost_ns,
                self.resume_cost_ns + int(self._lag_ns[L.PAUSE]),
            )
        else:
            sleep = timing.run_sleep_ns(self.applied, self._timeslice_ns)
            sleep = max(0, int(sleep) - int(self._lag_ns[L.RUN]))
        self._deadline_ns = now + int(sleep)

    def _observe_lag(self) -> None:
        lag = max(0, self._runtime.now_ns() - self._deadline_ns)
        old = self._lag_ns[self.state]
        self._lag_ns[self.state] = old + (lag - old) * _LAG_SMOOTHING

    # the run loop -----------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._loop()
        finally:
            self._spec.machine("worker").remove_model(self)

    def _loop(self) -> None:
        try:
            handlers = {L.WAITING: self._wait_for_command, L.PAUSE: self._pause_phase,
                        L.RUN: self._run_phase}
            while self.state != L.EXIT:
                handlers[self.state]()
        except Exception as exc:  # an internal bug: stop safely, report, never hang
            self.error = self.error or exc
            self.failed = True
            self._resume_best_effort()
            self.paused = False
            self._spec.machine("worker").set_state(L.EXIT, model=self)
            self._responses.put(exc)

    def _wait_for_command(self) -> None:
        self._message = self._commands.get(None)  # blocks: no polling while waiting
        self._step()

    def _pause_phase(self) -> None:
        self._in_phase()

    def _run_phase(self) -> None:
        self._in_phase()

    def _in_phase(self) -> None:
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
        queue is empty. The last look and the recorded ``expire`` are made under the lock the
        controller holds from recording a command to enqueuing it, so the log stays a valid
        linearization (a command that arrives meanwhile is received first, then expire).
        """
        with self._order:
            if not self.polled:
                try:
                    self._message = self._commands.get_nowait()
                except ChannelTimeout:
                    self._message = None
            if self._message is None:
                self._step(clock=True)
                return
        self._step()  # recv (the deadline stays: the phase ends right after)


class _Controller(_SpecModel):
    """The API side's model."""

    machine_name = "controller"

    def __init__(self, spec: Spec, runtime: Runtime, recorder: _Recorder, order: _RuntimeLock,
                 commands: Channel[int], worker: Callable[[], _Worker | None]) -> None:
        self.requested = 0
        self.resp = False
        self._commands = commands
        self._worker = worker
        super().__init__(spec, runtime, recorder, order)

    def fire(self, trigger: str, **params: int) -> None:
        # record-then-enqueue is atomic w.r.t. the worker's empty-poll-then-expire
        with self._order:
            super().fire(trigger, **params)

    def spec_view(self) -> State:
        w = self._worker()
        return State(
            w=w.state if w else L.WAITING, c=self.state, percent=0, applied=0, paused=False,
            handed=False, failed=w.failed if w else False, expired=False, polled=False,
            requested=self.requested, chan=(), resp=self.resp,
        )

    def _store(self, updates: Mapping[str, Any], before: State) -> None:
        if "requested" in updates:
            self.requested = updates["requested"]
        if "resp" in updates:
            self.resp = bool(updates["resp"])
        if "chan" in updates:
            for command in tuple(updates["chan"])[len(before.chan):]:
                self._commands.put(int(command))


def _abandon(commands: Channel[int], controller: _Controller) -> None:
    """Finalizer of a handle dropped without shutdown(): stop the worker, leave the machine."""
    if controller.state != L.DONE:
        commands.put(L.CMD_EXIT)
        controller.detach()


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
    ) -> None:
        if not all(callable(getattr(vcpus, m, None)) for m in ("pause", "resume")):
            raise TypeError(f"vcpus must provide pause() and resume(), got {vcpus!r}")
        self.timeslice_ns = validate_timeslice_ns(timeslice_ns)
        if isinstance(call_timeout_ns, bool) or not isinstance(call_timeout_ns, int) \
                or call_timeout_ns <= 0:
            raise ValueError(f"call_timeout_ns must be a positive int, got {call_timeout_ns!r}")
        self.name = name
        self._runtime = runtime
        self._call_timeout_ns = call_timeout_ns
        self._lock = _RuntimeLock(runtime)
        self._recorder = _Recorder(runtime, trace, on_event=on_event)
        commands: Channel[int] = runtime.channel()
        self._responses: Channel[BaseException | None] = runtime.channel()
        # the models refer to each other, never to this handle: a handle dropped without
        # shutdown() can be collected, and its finalizer then stops the worker
        worker_box: list[_Worker] = []
        order = _RuntimeLock(runtime)
        self._controller = _Controller(spec, runtime, self._recorder, order, commands,
                                       lambda: worker_box[0] if worker_box else None)
        controller = self._controller
        self._worker_model: _Worker | None = _Worker(
            spec, runtime, self._recorder, order, vcpus, commands, self._responses,
            self.timeslice_ns, lambda: controller.state,
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
        return self._controller.state == L.DONE

    @property
    def events(self) -> list[TraceEvent]:
        return self._recorder.events

    @property
    def worker(self) -> _Worker:
        assert self._worker_model is not None
        return self._worker_model

    # the API ----------------------------------------------------------------------------------
    def set_throttle_percent(self, percent: int) -> None:
        """0 stops throttling (returns with vCPUs running); 1..99 throttles; same value: no-op.

        Raises TypeError/ValueError for anything but an int in 0..99 (the worker is not
        touched), ThrottlerClosed after shutdown/handover, ThrottleWorkerError if the worker
        failed in a vCPU call.
        """
        validate_percent(percent)
        with self._lock:
            self._check_usable()
            if percent == self._controller.requested:
                return
            if percent == L.ABORT_PERCENT:
                self._controller.fire(L.CALL_ABORT)
                self._await_answer("abort")
                self._controller.fire(L.ABORT_DONE)
                self._raise_worker_error()
            else:
                self._controller.fire(L.CALL_SET, p=percent)

    def shutdown(self) -> None:
        """Stop throttling, resume the vCPUs, join the worker. Idempotent.

        Raises ThrottleWorkerError (once) if the worker had failed in a vCPU call, and
        JoinTimeout naming the thread if it does not exit in time.
        """
        self._finish(L.CALL_SHUTDOWN, L.SHUTDOWN_DONE, "shutdown")

    def handover(self) -> None:
        """Stop throttling and exit leaving the vCPUs paused, now owned by the caller.

        Saves one resume+pause at a migration's switch-over. Afterwards the caller must
        resume (or discard) the vCPUs itself.
        """
        if self.closed:
            raise ThrottlerClosed(f"{self.name}: already shut down; cannot hand over")
        self._finish(L.CALL_HANDOVER, L.HANDOVER_DONE, "handover")

    def __enter__(self) -> Throttler:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.shutdown()
        except ThrottleWorkerError:
            if exc_type is None:
                raise

    # internals ----------------------------------------------------------------------------
    def _finish(self, call: str, done: str, what: str) -> None:
        with self._lock:
            if self._controller.state == L.DONE:
                return
            if self._controller.state != L.IDLE:
                raise ThrottlerError(
                    f"{self.name}: a previous call did not complete "
                    f"(controller state {self._controller.state})"
                )
            self._controller.fire(call)
            self._await_answer(what)
            if not self._thread.join(self._call_timeout_ns):
                raise JoinTimeout(self.name, self._call_timeout_ns)
            self._controller.fire(done)
            self._controller.detach()
            error = self.worker.error
            self.worker.error = None  # reported once
            if error is not None:
                raise ThrottleWorkerError(f"{self.name}: throttling failed: {error}") from error

    def _await_answer(self, what: str) -> None:
        """Wait for the worker's answer; an exited (failed) worker counts as an answer."""
        deadline = self._runtime.now_ns() + self._call_timeout_ns
        while True:
            remaining = deadline - self._runtime.now_ns()
            try:
                answer = self._responses.get(max(remaining, 0))
            except ChannelTimeout:
                if self.worker.state == L.EXIT:
                    return  # the worker died (fault): the guard accepts an exited worker
                raise ThrottlerTimeout(
                    f"{self.name}: worker did not answer {what} within "
                    f"{self._call_timeout_ns / 1e6:.1f} ms (stuck in a vCPU call?)"
                ) from None
            if isinstance(answer, SpecViolation):
                raise answer
            if isinstance(answer, BaseException):
                return  # the worker failed and exited; the caller raises its error
            self._controller.resp = True
            return

    def _check_usable(self) -> None:
        if self._controller.state == L.DONE:
            raise ThrottlerClosed(f"{self.name}: shut down; no further calls are possible")
        if self._controller.state != L.IDLE:
            raise ThrottlerError(
                f"{self.name}: a previous call did not complete "
                f"(controller state {self._controller.state})"
            )
        self._raise_worker_error()

    def _raise_worker_error(self) -> None:
        w = self.worker
        if w.failed and w.error is not None:
            raise ThrottleWorkerError(f"{self.name}: throttling failed: {w.error}") from w.error
