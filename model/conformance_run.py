"""One throttler run on a user's backend, checked after every step; and where backends come from.

:class:`Backends` makes fresh backends from the user's factory (checking
``FactoryMakesBackends``) and closes them, every call bounded. :class:`Run` is one
:class:`~autoconverge.impl.throttler.Throttler` on a :class:`~.conformance_probe.Probe`d
backend, on real threads: each API call goes through :meth:`Run.call`, after which the event
log is replayed through the spec (``TraceFollowsSpec``), the probe's findings are raised, and
the backend's own ``is_paused()`` is compared with the spec's ``paused`` whenever the run is
quiescent (``AgreesWithSpec``: worker waiting or exited, no API call, vCPU call or
command pending).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.throttler import (
    SpecViolation,
    Throttler,
    ThrottlerTimeout,
    ThrottleWorkerError,
)
from autoconverge.spec import SPEC, State
from autoconverge.spec import lifecycle as L

from .conformance_probe import (
    AGREES,
    CALLS_RETURN,
    FACTORY,
    LIFECYCLE,
    RESUME_RUNS,
    TRACE,
    ContractViolation,
    Hung,
    Probe,
    bounded,
)
from .tracecheck import SpecFollower, TraceMismatch

MS = 1_000_000


@dataclass(frozen=True)
class KitConfig:
    """The kit's knobs (the CLI sets ``examples`` and ``seed``; tests shrink the rest)."""

    examples: int = 20
    """Hypothesis programs (API sequences) run on real threads."""
    steps: int = 15
    """Most API steps per program."""
    seed: int | None = None
    """Hypothesis seed (None: drawn at random and reported)."""
    timeslice_ns: int = 20 * MS
    """Timeslice of the lifecycle, fault and Hypothesis runs (the throttler's minimum)."""
    call_timeout_s: float = 2.0
    """The bound on each backend call (and the throttler's call timeout)."""
    cycles: int = 3
    """Direct pause/resume cycles of the contract check."""
    window_s: float = 0.05
    """How long progress() is sampled in each state."""
    grow_timeout_s: float = 1.0
    """How long running vCPUs may take to show progress."""
    duty_percent: int = 50
    duty_seconds: float = 1.0
    duty_timeslice_ns: int = 100 * MS
    duty_tolerance_pp: float = 10.0


@dataclass
class Tally:
    """What the kit checked, for the report; and the probes it used."""

    counts: Counter[str] = field(default_factory=Counter)
    probes: list[Probe] = field(default_factory=list)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def probe_total(self, what: str) -> int:
        if what == "checked":
            return sum(p.checked for p in self.probes)
        return sum(p.counts[what] for p in self.probes)


class Backends:
    """Fresh backends from the user's factory; every call into them bounded."""

    def __init__(self, factory: Callable[[], Any], cfg: KitConfig, tally: Tally) -> None:
        self.factory = factory
        self.cfg = cfg
        self.tally = tally
        self.description: str | None = None

    def make(self) -> Any:
        # on the calling thread: a factory may need the main thread (GuestVm installs its
        # signal handler there)
        try:
            backend = self.factory()
        except Exception as exc:
            raise ContractViolation(FACTORY, f"the factory raised {type(exc).__name__}: "
                                             f"{exc}") from exc
        missing = [m for m in ("pause", "resume", "is_paused")
                   if not callable(getattr(backend, m, None))]
        if missing:
            raise ContractViolation(FACTORY, f"the factory returned {type(backend).__name__} "
                                             f"without callable {', '.join(missing)}()")
        if self.description is None:
            self.description = _describe(backend)
        self.tally.add("backends")
        try:
            paused = bounded(backend.is_paused, self.cfg.call_timeout_s, "is_paused()")
            if paused:
                raise ContractViolation(FACTORY, "a fresh backend reports is_paused() true: "
                                                 "the factory must return running vCPUs")
        except BaseException:
            self.close(backend)
            raise
        return backend

    def close(self, backend: Any) -> None:
        close = getattr(backend, "close", None)
        if callable(close):
            bounded(close, max(self.cfg.call_timeout_s, 10.0), "close()")

    @contextmanager
    def fresh(self) -> Iterator[Any]:
        """A fresh backend, closed afterwards (quietly if the check already failed)."""
        backend = self.make()
        try:
            yield backend
        except BaseException:
            with contextlib.suppress(Exception, Hung):
                self.close(backend)
            raise
        self.close(backend)


def _describe(backend: Any) -> str:
    try:
        text = repr(backend)
    except Exception:
        text = f"<{type(backend).__name__}>"
    return text if len(text) <= 120 else text[:117] + "..."


def quiescent(m: State) -> bool:
    """Nothing moves: the worker waits or exited, no vCPU call is in progress (the spec's
    ``paused`` changes only when one ends: a fault's best-effort resume runs after the worker
    entered ``exit``), the controller is idle or done, no command is queued (the controller
    records a command before the worker can receive it)."""
    return (m.w in (L.WAITING, L.EXIT) and m.call == L.NO_CALL and m.c in (L.IDLE, L.DONE)
            and not m.chan)


class Run:
    """A throttler on a probed backend, checked after every step (see the module docstring).

    ``prop``: the property a failed expectation or disagreement counts against
    (``Lifecycle``/``AgreesWithSpec`` in the lifecycle scenarios, ``FaultRecovery`` in the
    fault scenarios).
    """

    def __init__(self, backend: Any, cfg: KitConfig, tally: Tally, where: str,
                 prop: str | None = None) -> None:
        self.backend = backend
        self.cfg = cfg
        self.tally = tally
        self.where = where
        self.expect_prop = prop or LIFECYCLE
        self.agree_prop = prop or AGREES
        self.probe = Probe(backend, where=f" (in {where})")
        tally.probes.append(self.probe)
        self.throttler = Throttler(self.probe, runtime=RealRuntime(),
                                   timeslice_ns=cfg.timeslice_ns,
                                   call_timeout_ns=int(cfg.call_timeout_s * 1e9),
                                   trace=True, name=f"conformance-{where}")
        self.follower = SpecFollower(SPEC)
        self._seen = 0
        tally.add("runs")

    @property
    def model(self) -> State:
        return self.follower.state

    # checks --------------------------------------------------------------------------------
    def raise_probe(self) -> None:
        if self.probe.violation is not None:
            raise self.probe.violation

    def sync(self) -> None:
        """Replay the new events through the spec (TraceFollowsSpec)."""
        events = self.throttler.events
        try:
            self.follower.follow(events[self._seen:])
        except TraceMismatch as exc:
            raise ContractViolation(TRACE, f"{exc} (in {self.where})") from exc
        self.tally.add("events", len(events) - self._seen)
        self._seen = len(events)

    def check(self, after: str) -> None:
        """After a step: the probe's findings, the trace, and is_paused() against the spec."""
        self.raise_probe()
        for _ in range(100):  # until no event was recorded during the read
            self.sync()
            seen = self._seen
            paused = self.probe.check_between_calls(self.cfg.call_timeout_s)
            self.raise_probe()
            self.sync()
            if self._seen == seen:
                break
        m = self.model
        if quiescent(m) and self._seen == seen:
            self.tally.add("quiescent")
            if paused != m.paused:
                raise ContractViolation(
                    self.agree_prop,
                    f"after {after}: the spec says the vCPUs are "
                    f"{'paused' if m.paused else 'running'} (worker {m.w}), the backend's "
                    f"is_paused() is {paused} (in {self.where})")

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            raise ContractViolation(self.expect_prop, f"{what} (in {self.where})")

    # steps ---------------------------------------------------------------------------------
    def call(self, label: str, fn: Callable[[Throttler], object],
             raises: type[BaseException] | tuple[type[BaseException], ...] | None = None,
             may_raise: type[BaseException] | tuple[type[BaseException], ...] = ()) -> None:
        """One API call, then :meth:`check`. ``raises``: it must raise that; ``may_raise``:
        it may."""
        self.tally.add("api_calls")
        try:
            fn(self.throttler)
        except ContractViolation:
            raise
        except Exception as exc:
            expected = (raises is not None and isinstance(exc, raises)) or (
                bool(may_raise) and isinstance(exc, may_raise))
            if not expected:
                raise self._explain(label, exc) from exc
        else:
            self.expect(raises is None, f"{label} returned; it must raise {_names(raises)}")
        self.check(label)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)
        self.check(f"waiting {seconds * 1e3:.0f} ms")

    def wait_for(self, state: str, timeout_s: float = 1.0) -> None:
        """Poll until the worker is in ``state`` (a throttling phase or exit)."""
        deadline = time.monotonic() + timeout_s
        while self.throttler.worker_state != state:
            if time.monotonic() > deadline:
                hung = self.probe.hung_call(self.cfg.call_timeout_s)
                if hung is not None:
                    raise Hung(hung)
                self.expect(False, f"the worker did not reach {state} within {timeout_s:g} s "
                                   f"(it is in {self.throttler.worker_state})")
            time.sleep(0.0005)

    def received_in(self, trigger: str) -> str | None:
        """The worker state in which the last ``trigger`` (e.g. recv_exit) was taken."""
        for e in reversed(self.throttler.events):
            if e.machine == "worker" and e.trigger == trigger:
                return e.source
        return None

    def _explain(self, label: str, exc: BaseException) -> BaseException:
        """An unexpected exception from the API, as the property it breaks."""
        if self.probe.violation is not None:
            return self.probe.violation
        if isinstance(exc, ThrottlerTimeout):
            hung = self.probe.hung_call(0)
            if hung is not None:
                return Hung(hung)
        if isinstance(exc, SpecViolation):
            return ContractViolation(TRACE, f"{label}: {exc} (in {self.where})")
        if isinstance(exc, ThrottleWorkerError) and exc.__cause__ is not None:
            return ContractViolation(CALLS_RETURN, f"{label} raised ThrottleWorkerError: a "
                                                   f"backend call failed: {exc.__cause__}")
        return ContractViolation(self.expect_prop, f"{label} raised {type(exc).__name__}: "
                                                   f"{exc} (in {self.where})")

    def close(self) -> None:
        """Shut down (checked), then resume the backend if a handover left it paused."""
        if not self.throttler.closed:
            self.call("shutdown()", lambda t: t.shutdown(), may_raise=ThrottleWorkerError)
        # the vCPUs stay as the throttler left them (running, or paused after a handover)
        time.sleep(self.cfg.timeslice_ns / 1e9)
        self.check("the run's end, one timeslice later")
        if self.probe.check_between_calls(self.cfg.call_timeout_s):
            # the caller owns the vCPUs after a handover: resume them, as a migration that
            # is cancelled at the switch-over would
            bounded(self.probe.resume, self.cfg.call_timeout_s, "resume() after handover")
            self.raise_probe()
            self.tally.add("handover_resumes")
            if self.probe.check_between_calls(self.cfg.call_timeout_s):
                raise ContractViolation(RESUME_RUNS, "resume() after a handover returned but "
                                                     "is_paused() is true")


def _names(errors: type[BaseException] | tuple[type[BaseException], ...] | None) -> str:
    if errors is None:
        return "nothing"
    if isinstance(errors, tuple):
        return " or ".join(e.__name__ for e in errors)
    return errors.__name__
