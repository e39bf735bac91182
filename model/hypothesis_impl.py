"""Hypothesis state machine: the real Throttler and the spec model, side by side.

Each rule applies one API operation to the real :class:`~autoconverge.impl.throttler.
Throttler` and the spec follows: the throttler's event log is replayed through the spec
(:class:`~autoconverge.model.tracecheck.SpecFollower`), so every step the implementation
took must be a spec transition whose guard held, with every invariant and step property
holding. Preconditions and expected outcomes come from the spec's guards (``call_set``,
``call_abort``, ``call_shutdown``, ``call_handover`` evaluated on the model state).
Invariants compare the implementation's variables with the model's.

Two backends, one machine (:class:`Session`):

- :class:`VirtualSession` (default): fake vCPUs on a seeded virtual-time runtime. The
  managed "main" thread executes the operations one at a time, so between rules the whole
  system is frozen and the comparison is exact. The seed is drawn by an ``initialize`` rule,
  so a failure prints as a program that replays it.
- a real-time session (e.g. KVM vCPUs, :func:`real_session_factory`): operations run on real
  threads; the model comparison is made only at quiescent points (worker blocked in Waiting
  or exited, no vCPU call in progress), trace validation after every rule.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.throttler import (
    Throttler,
    ThrottlerClosed,
    ThrottleWorkerError,
    TraceEvent,
)
from autoconverge.impl.vcpus import Vcpus
from autoconverge.impl.virtualtime import VirtualRuntime
from autoconverge.spec import SPEC, State
from autoconverge.spec import lifecycle as L
from autoconverge.spec.expr import is_state

from .tracecheck import SpecFollower, differences

MS = 1_000_000
INVALID_PERCENTS = st.one_of(
    st.integers(max_value=-1), st.integers(min_value=100), st.floats(allow_nan=True),
    st.booleans(), st.none(), st.text(max_size=3),
)


class Session:
    """One throttler under test; ``call(fn)`` runs ``fn(throttler)`` in the right thread."""

    throttler: Throttler
    quiescent_only: bool = False

    def call(self, fn: Callable[[Throttler], Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def wait(self, ms: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def inject_failure(self, action: str, after: int) -> bool:
        """Make a later pause()/resume() fail; False if this backend cannot."""
        return False

    def vcpus_paused(self) -> bool | None:
        """The vCPUs' own view (None if the backend cannot tell)."""
        return None

    def events(self) -> list[TraceEvent]:
        return list(self.throttler.events)

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class VirtualSession(Session):
    """Virtual time, fake vCPUs; operations execute in the managed main thread."""

    def __init__(self, seed: int, timeslice_ns: int = 100 * MS) -> None:
        self.rt = VirtualRuntime(seed=seed, stall_timeout_s=600)
        self._ops: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._timeslice_ns = timeslice_ns
        self._driver = threading.Thread(target=self._drive, name="virtual-session", daemon=True)
        self._driver.start()
        kind, value = self._results.get(timeout=60)
        if kind != "ok":
            raise value

    def _drive(self) -> None:
        try:
            self.rt.run(self._main, max_steps=50_000_000)
        except BaseException as exc:
            self._results.put(("crash", exc))

    def _main(self) -> None:
        self.vcpus = RecordingVcpus(self.rt, pause_cost_ns=150_000, resume_cost_ns=80_000)
        self.throttler = Throttler(self.vcpus, runtime=self.rt, timeslice_ns=self._timeslice_ns,
                                   trace=True)
        self._results.put(("ok", None))
        while True:
            op = self._ops.get()  # blocks this OS thread: virtual time is frozen meanwhile
            if op is None:
                break
            try:
                self._results.put(("ok", op()))
            except Exception as exc:
                self._results.put(("raised", exc))
        if not self.throttler.closed:
            try:
                self.throttler.shutdown()
            except ThrottleWorkerError:
                pass

    def call(self, fn: Callable[[Throttler], Any]) -> Any:
        self._ops.put(lambda: fn(self.throttler))
        kind, value = self._results.get(timeout=120)
        if kind != "ok":
            raise value
        return value

    def wait(self, ms: int) -> None:
        self._ops.put(lambda: self.rt.sleep_ns(ms * MS))
        kind, value = self._results.get(timeout=120)
        if kind != "ok":
            raise value

    def inject_failure(self, action: str, after: int) -> bool:
        number = self.vcpus.counts[action] + after  # type: ignore[index]
        self.vcpus._fail_on[(action, number)] = None  # type: ignore[index]
        return True

    def vcpus_paused(self) -> bool | None:
        return self.vcpus.paused

    def close(self) -> None:
        self._ops.put(None)
        self._driver.join(120)
        if self._driver.is_alive():
            raise RuntimeError("virtual session did not finish")
        while not self._results.empty():
            kind, value = self._results.get()
            if kind == "crash":
                raise value


class RealSession(Session):
    """Real threads and the wall clock, with any vCPU backend (e.g. KVM)."""

    quiescent_only = True

    def __init__(self, vcpus: Vcpus, *, on_close: Callable[[], None] | None = None,
                 timeslice_ns: int = 20 * MS, paused: Callable[[], bool] | None = None) -> None:
        self.throttler = Throttler(vcpus, runtime=RealRuntime(), timeslice_ns=timeslice_ns,
                                   trace=True)
        self._on_close = on_close
        self._paused = paused

    def call(self, fn: Callable[[Throttler], Any]) -> Any:
        return fn(self.throttler)

    def wait(self, ms: int) -> None:
        time.sleep(min(ms, 30) / 1000)

    def vcpus_paused(self) -> bool | None:
        return self._paused() if self._paused else None

    def close(self) -> None:
        try:
            if not self.throttler.closed:
                self.throttler.shutdown()
        finally:
            if self._on_close:
                self._on_close()


def real_session_factory(make_vcpus: Callable[[], tuple[Vcpus, Callable[[], None],
                                                         Callable[[], bool]]]
                         ) -> Callable[[int], Session]:
    """A session factory for a real vCPU backend: ``make_vcpus() -> (vcpus, close, paused)``."""

    def factory(seed: int) -> Session:
        vcpus, close, paused = make_vcpus()
        return RealSession(vcpus, on_close=close, paused=paused)

    return factory


class ThrottlerVsSpec(RuleBasedStateMachine):
    """Rules: API operations; invariants: the implementation follows the spec."""

    session_factory: ClassVar[Callable[[int], Session]] = VirtualSession

    def __init__(self) -> None:
        super().__init__()
        self.session: Session | None = None
        self.follower = SpecFollower(SPEC)
        self.seen = 0
        self.failure_injected = False

    # helpers ---------------------------------------------------------------------------------
    @property
    def s(self) -> Session:
        assert self.session is not None
        return self.session

    @property
    def model(self) -> State:
        return self.follower.state

    def _sync(self) -> None:
        events = self.s.events()
        self.follower.follow(events[self.seen:])
        self.seen = len(events)

    def _controller_steps(self) -> int:
        return sum(1 for e in self.s.events() if e.machine == "controller")

    def _enabled(self, trigger: str, **params: int) -> bool:
        """The spec's guard of a user call from ``idle`` for caller 1 (the rules call from the
        thread that created the throttler, which the throttler names caller 1)."""
        m = self.model
        return bool(is_state(m.c, L.IDLE)
                    and SPEC.find(trigger, L.IDLE).enabled(m, **{"k": 1, **params}))

    def _closed_to_calls(self) -> bool:
        """Only shutdown() is possible: closed, or after a timed-out or failed call."""
        return self.model.c in (L.DONE, L.STALLED, L.CLOSING)

    def _quiescent(self) -> bool:
        """Nothing moves: as :func:`~.conformance_run.quiescent` (no vCPU call in progress
        either: a fault's best-effort resume runs after the worker entered ``exit``)."""
        m = self.model
        return (m.w in (L.WAITING, L.EXIT) and m.call == L.NO_CALL
                and m.c in (L.IDLE, L.DONE) and not m.chan)

    # rules -------------------------------------------------------------------------------------
    @initialize(seed=st.integers(0, 2**32 - 1))
    def start(self, seed: int) -> None:
        self.session = type(self).session_factory(seed)

    @rule(ms=st.integers(0, 250))
    def wait(self, ms: int) -> None:
        """Always enabled: time passes, the worker throttles."""
        self.s.wait(ms)
        self._sync()

    @rule(p=st.integers(L.MIN_PERCENT, L.MAX_PERCENT))
    def set_percent(self, p: int) -> None:
        self._sync()
        m = self.model
        n = self._controller_steps()
        if self._closed_to_calls():
            self._expect_raise(ThrottlerClosed, lambda t: t.set_throttle_percent(p))
        elif m.failed:
            self._expect_raise(ThrottleWorkerError, lambda t: t.set_throttle_percent(p))
        elif p == m.requested:
            self.s.call(lambda t: t.set_throttle_percent(p))
            assert self._controller_steps() == n  # a no-op: the controller did not move
        else:
            assert self._enabled(L.CALL_SET, p=p)
            self.s.call(lambda t: t.set_throttle_percent(p))
        self._sync()

    @rule()
    def abort(self) -> None:
        self._sync()
        m = self.model
        if self._closed_to_calls():
            self._expect_raise(ThrottlerClosed, lambda t: t.set_throttle_percent(0))
        elif m.failed:
            self._expect_raise(ThrottleWorkerError, lambda t: t.set_throttle_percent(0))
        elif not self._enabled(L.CALL_ABORT):
            self.s.call(lambda t: t.set_throttle_percent(0))  # already not throttling: no-op
        else:
            try:
                self.s.call(lambda t: t.set_throttle_percent(0))
            except ThrottleWorkerError:
                assert self.failure_injected  # a vCPU call failed during the abort
            self._sync()
            # synchronous: when it returns the vCPUs run and the worker waits (or died)
            assert not self.model.paused
            assert self.model.w == L.WAITING or self.model.failed
            assert self.s.vcpus_paused() in (False, None)
        self._sync()

    @rule(bad=INVALID_PERCENTS)
    def bad_percent(self, bad: Any) -> None:
        self._sync()
        before, n = self.model, len(self.s.events())
        self._expect_raise((TypeError, ValueError, ThrottlerClosed, ThrottleWorkerError),
                           lambda t: t.set_throttle_percent(bad))
        if not self.s.quiescent_only:
            # rejected before any runtime operation: nothing else ran, nothing changed
            assert len(self.s.events()) == n and self.model == before

    @precondition(lambda self: self.session is not None
                  and self.model.c in L.SHUTDOWN_CALLABLE_IN)
    @rule()
    def shutdown(self) -> None:
        """Callable in every state the lock is free in; returns closed with the vCPUs running
        (unless a handover returned them earlier), or raises because a resume failed."""
        self._sync()
        try:
            self.s.call(lambda t: t.shutdown())
        except ThrottleWorkerError:
            assert self.failure_injected
        self._sync()
        assert is_state(self.model.w, L.EXIT)
        if is_state(self.model.c, L.DONE):
            if self.model.owner == 0:
                assert not self.model.paused and self.s.vcpus_paused() in (False, None)
        else:  # the final resume failed: the vCPUs may be paused, shutdown() may be retried
            assert self.failure_injected and self.model.c == L.CLOSING

    @precondition(lambda self: self.session is not None and self.model.c == L.IDLE)
    @rule()
    def handover(self) -> None:
        self._sync()
        assert self._enabled(L.CALL_HANDOVER)
        try:
            self.s.call(lambda t: t.handover())
        except ThrottleWorkerError:
            assert self.failure_injected
        self._sync()
        assert is_state(self.model.w, L.EXIT)
        if is_state(self.model.c, L.DONE):  # returned: the caller owns paused vCPUs
            assert self.model.paused and self.model.handed and self.model.owner != 0
            assert self.s.vcpus_paused() in (True, None)
        else:  # raised: nothing handed over, only shutdown() is possible
            assert self.model.failed and self.model.c == L.CLOSING

    @precondition(lambda self: self.session is not None and not self.failure_injected
                  and self.model.c == L.IDLE)
    @rule(action=st.sampled_from(["pause", "resume"]), after=st.integers(1, 3))
    def fail_a_vcpu_call(self, action: str, after: int) -> None:
        if self.s.inject_failure(action, after):
            self.failure_injected = True

    # invariants ----------------------------------------------------------------------------------
    @invariant()
    def implementation_follows_spec(self) -> None:
        if self.session is None:
            return
        self._sync()  # raises TraceMismatch on any step the spec does not allow

    @invariant()
    def implementation_state_equals_model_state(self) -> None:
        if self.session is None or (self.s.quiescent_only and not self._quiescent()):
            return
        diff = differences(self.model, self.s.throttler)
        assert diff == {}, f"impl and spec disagree: {diff}"
        vp = self.s.vcpus_paused()
        if vp is not None and not self.model.failed:
            assert vp == self.model.paused

    def teardown(self) -> None:
        if self.session is not None:
            self.session.close()

    # ---------------------------------------------------------------------------------------------
    def _expect_raise(self, errors: type[BaseException] | tuple[type[BaseException], ...],
                      fn: Callable[[Throttler], Any]) -> None:
        try:
            self.s.call(fn)
        except errors:
            return
        raise AssertionError(f"expected {errors} to be raised")


