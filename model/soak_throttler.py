"""Soak the throttler: random API programs from several caller threads against one
:class:`~autoconverge.impl.throttler.Throttler` whose vCPU backend fails or hangs at random
calls, and counters of what went wrong.

One job: the soak harness behind ``autoconverge soak-throttler``. Each *run* is one seed:

- the seed draws a :class:`Program`: how many vCPUs, the timeslice, a fault plan (which
  ``pause()``/``resume()`` calls, by their 1-based number, raise a :class:`VcpuError`
  part-way, raise :class:`InjectedInterrupt` - a ``KeyboardInterrupt`` - part-way, or hang
  until the harness releases them after a delay shorter or longer than the throttler's call
  timeout), and one list of operations per caller thread (``set_throttle_percent(0..99)``,
  bad input, ``shutdown()``, ``handover()``, waits);
- the callers run against one throttler (``trace=True``). The documented exceptions
  (:data:`EXPECTED`; ``TypeError``/``ValueError`` for bad input, and only for it) are
  outcomes, anything else a failure. A caller whose ``handover()`` returned owns the vCPUs:
  it checks they are all paused and the worker thread is gone, then resumes them itself;
- then the harness disarms the plan's hangs, releases any hang in progress, calls a final
  ``shutdown()`` (retried after ``ThrottleWorkerError``/``ThrottlerTimeout``, at most
  :data:`FINAL_SHUTDOWN_ATTEMPTS` calls), checks the end state and
  validates the trace against the spec (:class:`~.tracecheck.SpecFollower`).

Counters (:data:`COUNTERS`), each the number of runs in which the problem was seen (one run
may count under several): ``failures`` (an unexpected exception in a caller or the final
shutdown, an exception that killed the worker other than the injected interrupt, a trace the
spec does not accept), ``hangs`` (a caller stuck past the watchdog, the virtual runtime's
deadlock or livelock, a backend call still hanging after the harness released it, a final
shutdown that timed out with no earlier timeout), ``vcpus_left_paused`` (after the final
shutdown some vCPU is paused and no caller owns them), ``false_handover`` (a ``handover()``
returned while some vCPU ran, the worker thread was alive, or the handle did not report the
vCPUs ``owned``), ``unusable_after_timeout`` (after a ``ThrottlerTimeout``, with the hang
released, the final shutdown raised anything but ``ThrottleWorkerError`` or left the handle
open), ``leaked_threads`` (the worker thread alive
after the final shutdown; on KVM also more live threads after the run than before),
``leaked_fds`` (KVM: more open file descriptors after the run than before).

Two backends:

- ``fake``: :class:`~autoconverge.impl.fakes.PartialVcpus` (its own part-way failures and
  hangs) on a :class:`~autoconverge.impl.virtualtime.VirtualRuntime` seeded with the run's
  seed: deterministic, so :func:`run_fake` with the same seed reproduces a run exactly;
- ``kvm``: one real KVM guest (:func:`autoconverge.impl.kvm.backend.small_guest`, built once
  and reused, rebuilt only after a run left it stuck) behind :class:`SoakVcpus`, which injects
  the faults itself (part-way is before or after the real call), on
  :class:`~autoconverge.impl.realtime.RealRuntime` threads. The program and fault plan replay
  from the seed; the thread schedule does not. The KVM modules are imported only here.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from autoconverge.impl.fakes import Action, PartialVcpus
from autoconverge.impl.realtime import RealRuntime, RealThread
from autoconverge.impl.runtime import Channel, Runtime, Thread
from autoconverge.impl.throttler import (
    Throttler,
    ThrottlerClosed,
    ThrottlerTimeout,
    ThrottleWorkerError,
    TraceEvent,
)
from autoconverge.impl.vcpus import VcpuError
from autoconverge.impl.virtualtime import (
    ThreadKilled,
    VirtualDeadlock,
    VirtualRuntime,
    VirtualRuntimeError,
    VirtualThread,
)
from autoconverge.spec import SPEC

from .tracecheck import SpecFollower, TraceMismatch

if TYPE_CHECKING:  # the KVM modules (and numpy) are imported only when a KVM soak runs
    from autoconverge.impl.kvm.guest_vm import GuestVm

MS: Final = 1_000_000
COUNTERS: Final = ("failures", "hangs", "vcpus_left_paused", "false_handover",
                   "unusable_after_timeout", "leaked_threads", "leaked_fds")
"""Every counter of a soak but ``runs``; a soak passes when all are zero."""
FAULT_KINDS: Final = ("raise", "hang")
"""What ``faults`` may name: ``raise`` (a VcpuError or a KeyboardInterrupt part-way),
``hang`` (block until released)."""
EXPECTED: Final = (ThrottlerClosed, ThrottlerTimeout, ThrottleWorkerError)
FINAL_SHUTDOWN_ATTEMPTS: Final = 4
"""The final shutdown() is retried after ThrottleWorkerError or ThrottlerTimeout, as the API
documents, at most this many calls in all (each bounded by the call timeout)."""
"""The exceptions a valid call may raise (the API's documented outcomes; shutdown() and
handover() report a worker that did not exit in time as ThrottlerTimeout)."""
BAD_INPUT: Final = (TypeError, ValueError)
"""What bad input must raise."""
BAD_PERCENTS: Final[tuple[object, ...]] = (100, -1, 150, 50.0, True, "50", None)
"""Bad input for ``set_throttle_percent``."""
WAIT_GRID_NS: Final = 10 * MS
"""Waits are multiples of this, so that calls of different callers often coincide."""
SETTLE_POLLS: Final = 20
SETTLE_POLL_NS: Final = 5 * MS
"""A hang the harness released must be gone within 20 x 5 ms."""
FIRST_FAILURES: Final = 20
"""How many failing runs a report lists in full."""

Backend = Literal["fake", "kvm"]
FaultKind = Literal["raise", "interrupt", "hang"]
OpKind = Literal["set", "bad", "shutdown", "handover", "wait"]


class InjectedInterrupt(KeyboardInterrupt):
    """The ``KeyboardInterrupt`` a soak injects into ``pause()``/``resume()``: the throttler
    sees a ``KeyboardInterrupt``; the harness tells it apart from a real Ctrl-C."""


@dataclass(frozen=True)
class Fault:
    """What one planned ``pause()``/``resume()`` call does."""

    kind: FaultKind
    after: int
    """vCPUs the call handles before it strikes (KVM: 0 strikes before the real call, more
    after it)."""
    delay_ns: int = 0
    """``hang``: the harness releases it this long after the call started."""
    then_raise: bool = False
    """``hang``: once released, the call fails (a VcpuError)."""


@dataclass(frozen=True)
class Op:
    """One caller operation: ``set`` (0..99; 0 is the abort), ``bad`` (a bad percent),
    ``shutdown``, ``handover``, ``wait`` (``arg`` ns)."""

    kind: OpKind
    arg: object = None

    @property
    def label(self) -> str:
        if self.kind == "set":
            return "abort" if self.arg == 0 else "set"
        return self.kind


@dataclass(frozen=True)
class Scale:
    """The time scale of the programs a backend runs."""

    timeslices_ns: tuple[int, ...]
    call_timeout_ns: int
    max_wait_ns: int
    short_hang_ns: tuple[int, int]
    long_hang_ns: tuple[int, int]
    max_vcpus: int
    watchdog_ns: int
    """A caller still running this long after the program started is stuck (a hang)."""


FAKE_SCALE: Final = Scale(timeslices_ns=(20 * MS, 50 * MS, 100 * MS), call_timeout_ns=50 * MS,
                          max_wait_ns=150 * MS, short_hang_ns=(5 * MS, 40 * MS),
                          long_hang_ns=(60 * MS, 200 * MS), max_vcpus=4,
                          watchdog_ns=5_000 * MS)
KVM_SCALE: Final = Scale(timeslices_ns=(20 * MS,), call_timeout_ns=50 * MS,
                         max_wait_ns=60 * MS, short_hang_ns=(5 * MS, 40 * MS),
                         long_hang_ns=(60 * MS, 120 * MS), max_vcpus=1,
                         watchdog_ns=15_000 * MS)


@dataclass(frozen=True)
class Program:
    """Everything a run does, drawn from its seed (:func:`make_program`)."""

    seed: int
    n_vcpus: int
    timeslice_ns: int
    call_timeout_ns: int
    faults: Mapping[tuple[Action, int], Fault]
    callers: tuple[tuple[Op, ...], ...]


def make_program(seed: int, callers: int, faults: frozenset[str], scale: Scale) -> Program:
    """The run's program: same seed, same arguments -> same program."""
    rng = random.Random(seed)
    n_vcpus = rng.randint(1, scale.max_vcpus)
    timeslice = rng.choice(scale.timeslices_ns)
    kinds: list[FaultKind] = []
    if "raise" in faults:
        kinds += ["raise", "raise", "interrupt"]
    if "hang" in faults:
        kinds += ["hang", "hang", "hang"]
    plan: dict[tuple[Action, int], Fault] = {}
    for _ in range(rng.choice((0, 1, 2, 2, 3)) if kinds else 0):
        action: Action = rng.choice(("pause", "resume"))
        key = (action, rng.randint(1, 4))
        kind = rng.choice(kinds)
        after = rng.randint(0, n_vcpus)
        if kind == "hang":
            lo, hi = scale.short_hang_ns if rng.random() < 0.5 else scale.long_hang_ns
            plan[key] = Fault("hang", after, rng.randint(lo, hi),
                              then_raise="raise" in faults and rng.random() < 0.15)
        else:
            plan[key] = Fault(kind, after)
    programs = tuple(tuple(_ops(rng, scale)) for _ in range(callers))
    return Program(seed, n_vcpus, timeslice, scale.call_timeout_ns, plan, programs)


def _ops(rng: random.Random, scale: Scale) -> Iterator[Op]:
    """A caller's operations. Waits are whole multiples of :data:`WAIT_GRID_NS`, so calls
    of different callers often fall on the same instant and race."""
    grid = scale.max_wait_ns // WAIT_GRID_NS
    yield Op("wait", rng.randint(0, grid // 4) * WAIT_GRID_NS)
    for _ in range(rng.randint(2, 6)):
        r = rng.random()
        if r < 0.32:
            yield Op("set", rng.randint(1, 99))
        elif r < 0.45:
            yield Op("set", 0)
        elif r < 0.51:
            yield Op("bad", rng.choice(BAD_PERCENTS))
        elif r < 0.89:
            yield Op("wait", rng.randint(0, grid) * WAIT_GRID_NS)
        elif r < 0.945:
            yield Op("shutdown")
        else:
            yield Op("handover")


# --- the backend as the throttler sees it ---------------------------------------------------


class _Inner(Protocol):
    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def is_paused(self) -> bool: ...


class SoakVcpus:
    """The backend between the throttler (and handover owners) and the real one.

    Counts calls by action; for each call the plan makes a hang it starts a *release timer*
    (a runtime thread that sleeps the planned delay, then calls :meth:`release`). With
    ``inject`` (KVM) it performs the plan's faults itself around the real call (``after``
    0: before it, else after it); without (:class:`PartialVcpus`) the backend was built with
    the same plan and strikes part-way itself. :meth:`disarm` ends the plan's hangs: a
    later planned hang is released at once. Subclasses may break it on purpose (the tests'
    wrapper that hides the release).
    """

    def __init__(self, inner: _Inner, runtime: Runtime,
                 faults: Mapping[tuple[Action, int], Fault], *, inject: bool) -> None:
        self.inner = inner
        self._rt = runtime
        self._faults = dict(faults)
        self._inject = inject
        self._gate: Channel[None] = runtime.channel()
        self._hanging = False
        self.armed = True
        self.counts: dict[Action, int] = {"pause": 0, "resume": 0}
        self.timers: list[Thread] = []
        self.struck: Counter[str] = Counter()
        """Planned faults reached, by kind."""
        self._unreleased = 0
        """Hangs started whose release timer has not fired yet."""

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def is_paused(self) -> bool:
        return bool(self.inner.is_paused())

    @property
    def hanging(self) -> bool:
        """A call is blocked in a planned hang right now (the backend's truth)."""
        if self._inject:
            return self._hanging
        assert isinstance(self.inner, PartialVcpus)
        return self.inner.hanging is not None

    def release(self) -> None:
        """Let the hanging call (or the next one to hang) carry on."""
        if self._inject:
            self._gate.put(None)
        else:
            assert isinstance(self.inner, PartialVcpus)
            self.inner.release()

    def disarm(self) -> None:
        """No more planned hangs: release the hangs started so far now (also those still on
        their way to the point where they block), and let later ones through at once."""
        self.armed = False
        for _ in range(self._unreleased):
            self.release()
        self._unreleased = 0

    def _call(self, action: Action) -> None:
        number = self.counts[action] = self.counts[action] + 1
        fault = self._faults.get((action, number))
        if fault is not None:
            self.struck[fault.kind] += 1
        if fault is not None and fault.kind == "hang":
            if self.armed:
                self._start_timer(f"release-{action}{number}", fault.delay_ns)
            else:
                self.release()
        call = self.inner.pause if action == "pause" else self.inner.resume
        if not self._inject or fault is None:
            call()
            return
        if fault.after == 0:
            self._strike(fault, action, number)
            call()
        else:
            call()
            self._strike(fault, action, number)

    def _strike(self, fault: Fault, action: Action, number: int) -> None:
        if fault.kind == "hang":
            self._hanging = True
            try:
                self._gate.get(None)
            finally:
                self._hanging = False
            if not fault.then_raise:
                return
        raise _error(fault, action, number)

    def _start_timer(self, name: str, delay_ns: int) -> None:
        rt = self._rt

        def timer() -> None:
            rt.sleep_ns(delay_ns)
            if self.armed:  # else disarm() released it
                self._unreleased -= 1
                self.release()

        self._unreleased += 1
        self.timers.append(rt.spawn(name, timer))


def _error(fault: Fault, action: Action, number: int) -> BaseException:
    what = f"soak: injected failure of {action} #{number}"
    return InjectedInterrupt(what) if fault.kind == "interrupt" else VcpuError(what)


def partial_vcpus(rt: Runtime, program: Program) -> PartialVcpus:
    """A :class:`PartialVcpus` that strikes where ``program``'s plan says (50 us a vCPU)."""
    fail_on: dict[tuple[Action, int], int] = {}
    errors: dict[tuple[Action, int], BaseException] = {}
    hang_on: dict[tuple[Action, int], int] = {}
    for key, f in program.faults.items():
        if f.kind == "hang":
            hang_on[key] = f.after
            if f.then_raise:
                fail_on[key] = f.after
        else:
            fail_on[key] = f.after
            if f.kind == "interrupt":
                errors[key] = _error(f, *key)
    return PartialVcpus(rt, program.n_vcpus, vcpu_cost_ns=50_000, fail_on=fail_on,
                        errors=errors, hang_on=hang_on)


# --- one run -------------------------------------------------------------------------------


AdapterFactory = Callable[..., SoakVcpus]
"""Builds the backend wrapper: ``(inner, runtime, faults, inject=...)`` (:class:`SoakVcpus`
or a subclass)."""
ThrottlerFactory = Callable[..., Throttler]
"""Builds the throttler: ``(vcpus, runtime=..., timeslice_ns=..., call_timeout_ns=...,
trace=True, name=...)`` (:class:`Throttler` or a subclass)."""


@dataclass(frozen=True)
class RunResult:
    """What one run found. ``counters`` holds the :data:`COUNTERS` this run counts under
    (each once); ``fingerprint`` digests the trace and the clock, so two runs of one seed
    on the fake backend can be compared."""

    seed: int
    counters: tuple[str, ...]
    details: tuple[tuple[str, str], ...]
    """(counter, what was seen), in the order seen."""
    outcomes: tuple[tuple[str, int], ...]
    """``op:Outcome`` -> how many times, sorted."""
    events: int
    fingerprint: str

    @property
    def ok(self) -> bool:
        return not self.counters


class _Run:
    """The state of one run while it runs: the callers' bodies, the end phase, the checks."""

    def __init__(self, program: Program, rt: Runtime, adapter: SoakVcpus,
                 throttler_factory: ThrottlerFactory) -> None:
        self.program = program
        self.rt = rt
        self.adapter = adapter
        self.throttler_factory = throttler_factory
        self.t: Throttler | None = None
        self.events: list[TraceEvent] = []
        self.details: list[tuple[str, str]] = []
        self.outcomes: Counter[str] = Counter()
        self.saw_timeout = False
        self.owned_paused = False
        self.stuck: list[str] = []

    def found(self, counter: str, detail: str) -> None:
        self.details.append((counter, detail))

    # the program ---------------------------------------------------------------------------
    def start(self, *, inline_first: bool = False) -> list[Thread]:
        """Create the throttler and start the callers; with ``inline_first`` the calling
        thread is caller 0 (one thread fewer to start: the fake backend's runs are
        dominated by thread starts) and returns after its operations."""
        p = self.program
        self.t = self.throttler_factory(
            self.adapter, runtime=self.rt, timeslice_ns=p.timeslice_ns,
            call_timeout_ns=p.call_timeout_ns, trace=True, name=f"soak-{p.seed}")
        first = 1 if inline_first else 0
        threads = [self.rt.spawn(f"caller{i}", self._caller_body(i, p.callers[i]))
                   for i in range(first, len(p.callers))]
        if inline_first and p.callers:
            self._caller_body(0, p.callers[0])()
        return threads

    def _caller_body(self, index: int, ops: Sequence[Op]) -> Callable[[], None]:
        def body() -> None:
            for op in ops:
                if op.kind == "wait":
                    assert isinstance(op.arg, int)
                    self.rt.sleep_ns(op.arg)
                else:
                    self._call(index, op)

        return body

    def _call(self, index: int, op: Op) -> None:
        t = self.t
        assert t is not None
        try:
            if op.kind in ("set", "bad"):
                t.set_throttle_percent(op.arg)  # type: ignore[arg-type]
            elif op.kind == "shutdown":
                t.shutdown()
            else:
                t.handover()
                self._own_after_handover(index, t)
        except ThreadKilled:
            raise
        except BaseException as exc:  # sorted below; a real Ctrl-C cannot reach a caller
            self.outcomes[f"{op.label}:{type(exc).__name__}"] += 1
            if isinstance(exc, ThrottlerTimeout):
                self.saw_timeout = True
            expected = BAD_INPUT if op.kind == "bad" else EXPECTED
            if not isinstance(exc, expected):
                self.found("failures", f"caller{index}: {_call_text(op)} raised {exc!r}")
            return
        self.outcomes[f"{op.label}:ok"] += 1
        if op.kind == "bad":
            self.found("failures", f"caller{index}: {_call_text(op)} returned normally")

    def _own_after_handover(self, index: int, t: Throttler) -> None:
        """handover() returned: the vCPUs must be paused, the worker gone and the handle
        must say they are owned; this caller owns them now and resumes them through the
        backend."""
        all_paused = _all_paused(self.adapter)
        alive = _alive(t._thread)
        owned = t.owned
        if not all_paused or alive or not owned:
            self.found("false_handover",
                       f"caller{index}: handover() returned with "
                       + ("not every vCPU paused" if not all_paused else "vCPUs paused")
                       + (" and the worker thread alive" if alive else "")
                       + (" and the handle not owned" if not owned else ""))
        for _ in range(3):
            try:
                self.adapter.resume()
                return
            except ThreadKilled:
                raise
            except BaseException:  # an injected fault: the owner tries again
                continue
        self.owned_paused = self.adapter.is_paused()

    # the end phase -------------------------------------------------------------------------
    def join_callers(self, callers: Sequence[Thread], start_ns: int) -> None:
        for c in callers:
            left = start_ns + _watchdog(self) - self.rt.now_ns()
            if not c.join(max(left, 0)):
                self.stuck.append(c.name)
        if self.stuck:
            self.found("hangs", f"{', '.join(self.stuck)} still in a call after "
                                f"{_watchdog(self) / 1e9:g} s")

    def finish(self) -> None:
        """Release any hang, final shutdown (retried as documented), checks."""
        t = self.t
        assert t is not None
        self.adapter.disarm()
        if self.adapter.hanging:
            self.adapter.release()
        error: BaseException | None = None
        # the documented recovery: shutdown() again after ThrottleWorkerError (a failed final
        # resume) or ThrottlerTimeout (the released call has not returned yet: on a real
        # backend under load it may take longer than the call timeout), a few times
        for _attempt in range(FINAL_SHUTDOWN_ATTEMPTS):
            try:
                t.shutdown()
                error = None
                break
            except ThreadKilled:
                raise
            except (ThrottleWorkerError, ThrottlerTimeout) as exc:
                error = exc if isinstance(exc, ThrottlerTimeout) else None
            except BaseException as exc:
                error = exc
                break
        worker_alive = _alive(t._thread)
        paused = self.adapter.is_paused()
        backend = repr(self.adapter.inner)
        still_hanging = self._still_hanging()
        if still_hanging:
            self.found("hangs", "a backend call still hangs after the harness released it")
        if (error is not None or not t.closed) and not still_hanging:
            what = (f"final shutdown() raised {error!r}" if error is not None
                    else "final shutdown() left the handle open")
            if self.saw_timeout:
                self.found("unusable_after_timeout", what + " after a ThrottlerTimeout")
            elif isinstance(error, ThrottlerTimeout):
                self.found("hangs", what + " (no hang pending, no earlier timeout)")
            else:
                self.found("failures", what)
        if worker_alive:
            self.found("leaked_threads", f"worker thread {t._thread.name!r} alive after the "
                                         f"final shutdown()")
        if paused and not self.owned_paused:
            self.found("vcpus_left_paused",
                       f"vCPUs paused after the final shutdown(), no caller owns them "
                       f"({backend})")

    def _still_hanging(self) -> bool:
        """A backend call still blocked in a hang once the released one had time to go on
        (a shutdown that fails at once leaves the released thread no turn before it)."""
        for _ in range(SETTLE_POLLS):
            if not self.adapter.hanging:
                return False
            self.rt.sleep_ns(SETTLE_POLL_NS)
        return self.adapter.hanging

    def drop_throttler(self) -> None:
        """Let the throttler go (its finalizer stops a worker left behind); keep its trace."""
        if self.t is not None:
            self.events = list(self.t.events)
            self.t = None

    def check_trace(self) -> None:
        if self.t is None:
            return
        try:
            SpecFollower(SPEC).follow(list(self.t.events))
        except TraceMismatch as exc:
            self.found("failures", f"trace: {exc}")

    def result(self, extra: str = "") -> RunResult:
        for kind, n in self.adapter.struck.items():
            self.outcomes[f"fault:{kind}"] += n
        counters = tuple(dict.fromkeys(c for c, _ in self.details))
        events = list(self.t.events) if self.t is not None else self.events
        digest = hashlib.sha256(repr(
            ([(e.machine, e.trigger, e.source, e.dest, e.time_ns) for e in events],
             sorted(self.outcomes.items()), self.details, extra)).encode()).hexdigest()[:16]
        return RunResult(self.program.seed, counters, tuple(self.details),
                         tuple(sorted(self.outcomes.items())), len(events), digest)


def _watchdog(run: _Run) -> int:
    return FAKE_SCALE.watchdog_ns if isinstance(run.rt, VirtualRuntime) else \
        KVM_SCALE.watchdog_ns


def _call_text(op: Op) -> str:
    if op.kind in ("set", "bad"):
        return f"set_throttle_percent({op.arg!r})"
    return f"{op.kind}()"


def _alive(thread: Thread) -> bool:
    """Whether a thread is alive, without a scheduling point for a virtual one (the check
    must see the moment the call returned)."""
    if isinstance(thread, VirtualThread):
        return not thread.done
    return thread.is_alive()


def _all_paused(adapter: SoakVcpus) -> bool:
    inner = adapter.inner
    if isinstance(inner, PartialVcpus):
        return inner.all_paused()
    return adapter.is_paused()  # GuestVm.is_paused(): every vCPU parked


def run_fake(seed: int, callers: int = 3, faults: frozenset[str] = frozenset(FAULT_KINDS),
             *, throttler_factory: ThrottlerFactory = Throttler,
             adapter_factory: AdapterFactory = SoakVcpus) -> RunResult:
    """One run on :class:`PartialVcpus` in virtual time: deterministic per seed."""
    program = make_program(seed, callers, faults, FAKE_SCALE)
    rt = VirtualRuntime(seed, trace=False)
    adapter = adapter_factory(partial_vcpus(rt, program), rt, program.faults, inject=False)
    run = _Run(program, rt, adapter, throttler_factory)

    def main() -> None:
        start = rt.now_ns()
        threads = run.start(inline_first=True)
        run.join_callers(threads, start)
        if not run.stuck:
            run.finish()

    try:
        # caller 0 is the main thread: a call stuck there is caught by the time limit
        rt.run(main, kill_leftover=True, max_virtual_ns=2 * FAKE_SCALE.watchdog_ns)
    except VirtualDeadlock as exc:
        run.found("hangs", f"deadlock: {_first_line(exc)}")
    except VirtualRuntimeError as exc:
        run.found("hangs", f"{type(exc).__name__}: {_first_line(exc)}")
    except InjectedInterrupt:
        pass  # it ended the worker thread: sorted below with the other uncaught errors
    except Exception as exc:
        if not any(e is exc for _, e in rt.errors):
            run.found("failures", f"the harness's main thread raised {exc!r}")
    for thread, died_of in rt.errors:
        _uncaught(run, thread, died_of)
    run.check_trace()
    result = run.result(extra=f"t={rt.now_ns()} steps={rt.steps}")
    # The runtime keeps its threads, whose targets reach the handle; the backend reaches the
    # runtime, and the handle's finalizer holds the backend through the worker: without this
    # the handle of a run that did not close it would never be collected (nor its model
    # leave the spec's shared machine).
    run.drop_throttler()
    return result


def _uncaught(run: _Run, thread: str, exc: BaseException) -> None:
    """An exception that ended a thread: the injected interrupt ending the worker is an
    outcome (its consequences are counted elsewhere); anything else is a failure."""
    if isinstance(exc, InjectedInterrupt):
        run.outcomes["worker:InjectedInterrupt"] += 1
    else:
        run.found("failures", f"thread {thread!r} died of {exc!r}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- KVM --------------------------------------------------------------------------------------


DEV_KVM = "/dev/kvm"
"""The KVM device the ``kvm`` backend needs (the guest itself opens the default one)."""


class KvmUnavailable(Exception):
    """The KVM backend cannot run here (no usable /dev/kvm, numpy missing, KVM refused)."""


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


@contextlib.contextmanager
def _quiet_injected_interrupts() -> Iterator[None]:
    """An injected interrupt ending a real worker thread is an outcome, not a traceback on
    stderr: ``threading.excepthook`` stays quiet for it (the thread keeps it in ``error``)."""
    original = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, InjectedInterrupt):
            original(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = original


class KvmSoak:
    """Runs programs on one real KVM guest, reused across runs (rebuilt when a run left it
    stuck). Use as a context manager; raises :class:`KvmUnavailable` when KVM cannot run."""

    def __init__(self) -> None:
        if not os.path.exists(DEV_KVM):
            raise KvmUnavailable(f"{DEV_KVM} is absent on this machine")
        if not os.access(DEV_KVM, os.R_OK | os.W_OK):
            raise KvmUnavailable(f"{DEV_KVM} is not readable and writable by this user")
        try:
            from autoconverge.impl.kvm.backend import small_guest
        except ImportError as exc:
            raise KvmUnavailable(f"the KVM backend needs {exc.name or 'numpy'!r}: "
                                 f"pip install 'autoconverge[kvm]'") from None
        self._make = small_guest
        self.vm_builds = 0
        self.fd_growth = 0
        self.thread_growth = 0
        self.rebuilt: list[str] = []
        """Why the guest was rebuilt, once per rebuild."""
        self._vm: GuestVm = self._build()
        self._exit = contextlib.ExitStack()

    def _build(self) -> GuestVm:
        from autoconverge.impl.kvm.bindings import KvmError

        try:
            vm = self._make()
        except (KvmError, OSError, ValueError) as exc:
            raise KvmUnavailable(f"cannot create a KVM guest: {exc}") from None
        self.vm_builds += 1
        return vm

    def __enter__(self) -> KvmSoak:
        self._exit.enter_context(_quiet_injected_interrupts())
        return self

    def __exit__(self, *exc: object) -> None:
        self._exit.close()
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._vm.close()  # idempotent

    def run(self, seed: int, callers: int = 3,
            faults: frozenset[str] = frozenset(FAULT_KINDS), *,
            throttler_factory: ThrottlerFactory = Throttler,
            adapter_factory: AdapterFactory = SoakVcpus) -> RunResult:
        """One run on the guest with real threads; the fd and thread counts are compared
        before and after it."""
        vm = self._vm
        program = make_program(seed, callers, faults, KVM_SCALE)
        rt = RealRuntime()
        fds0, threads0 = _fd_count(), threading.active_count()
        adapter = adapter_factory(vm, rt, program.faults, inject=True)
        run = _Run(program, rt, adapter, throttler_factory)
        try:
            threads = run.start()
            run.join_callers(threads, rt.now_ns())
            if not run.stuck:
                run.finish()
        except Exception as exc:
            run.found("failures", f"the harness raised {exc!r}")
        worker = run.t._thread if run.t is not None else None
        if isinstance(worker, RealThread) and worker.error is not None:
            _uncaught(run, worker.name, worker.error)
        run.check_trace()
        self._clean_up(run, adapter, worker, threads0, fds0)
        return run.result()

    def _clean_up(self, run: _Run, adapter: SoakVcpus, worker: Thread | None,
                  threads0: int, fds0: int) -> None:
        """Leave nothing to the next run: release hangs, let timers end, drop the throttler
        (its finalizer stops a worker left behind), resume the guest; count what grew."""
        adapter.disarm()
        for _ in range(8):
            if not adapter.hanging:
                break
            adapter.release()
            time.sleep(0.01)
        for timer in adapter.timers:
            timer.join(5 * 10**9)
        run.drop_throttler()
        gc.collect()
        if worker is not None and not worker.join(5 * 10**9):
            self._replace_vm("the worker thread did not exit after the run")
        if run.stuck:
            self._replace_vm("a caller is stuck in a call")
        with contextlib.suppress(Exception):
            if self._vm.is_paused():
                self._vm.resume()
        grown = threading.active_count() - threads0
        if grown > 0:
            self.thread_growth += grown
            run.found("leaked_threads", f"{grown} more live threads after the run")
        fds = _fd_count() - fds0
        if fds > 0:
            self.fd_growth += fds
            run.found("leaked_fds", f"{fds} more open file descriptors after the run")

    def _replace_vm(self, why: str) -> None:
        self.rebuilt.append(why)
        with contextlib.suppress(Exception):
            self._vm.close()
        self._vm = self._build()


# --- a soak: many runs ---------------------------------------------------------------------


@dataclass
class SoakReport:
    """The counters of a soak and what it saw (``as_dict``: the JSON the CLI prints)."""

    backend: Backend
    seed: int
    callers: int
    faults: tuple[str, ...]
    runs: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    outcomes: Counter[str] = field(default_factory=Counter)
    first_failures: list[dict[str, object]] = field(default_factory=list)
    failing_seeds: int = 0
    elapsed_s: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.counters.values())

    def add(self, result: RunResult) -> None:
        self.runs += 1
        self.outcomes.update(dict(result.outcomes))
        for c in result.counters:
            self.counters[c] += 1
        if result.counters:
            self.failing_seeds += 1
        for counter, detail in result.details:
            if len(self.first_failures) < FIRST_FAILURES:
                self.first_failures.append(
                    {"seed": result.seed, "counter": counter, "detail": detail})

    def as_dict(self) -> dict[str, object]:
        return {
            "runs": self.runs, **self.counters,
            "ok": self.ok, "backend": self.backend, "seed": self.seed,
            "callers": self.callers, "faults": list(self.faults),
            "elapsed_s": round(self.elapsed_s, 3),
            "runs_per_s": round(self.runs / self.elapsed_s, 1) if self.elapsed_s else None,
            "failing_runs": self.failing_seeds,
            "outcomes": dict(sorted(self.outcomes.items())),
            "first_failures": self.first_failures,
            **self.extra,
        }


def soak(runs: int, *, callers: int = 3, faults: frozenset[str] = frozenset(FAULT_KINDS),
         backend: Backend = "fake", seed: int = 0,
         throttler_factory: ThrottlerFactory = Throttler,
         adapter_factory: AdapterFactory = SoakVcpus,
         on_run: Callable[[RunResult, SoakReport], None] | None = None) -> SoakReport:
    """``runs`` runs with seeds ``seed``, ``seed + 1``, ...; ``on_run`` sees each result.

    Raises :class:`KvmUnavailable` for ``backend="kvm"`` where KVM cannot run.
    """
    report = SoakReport(backend, seed, callers, tuple(k for k in FAULT_KINDS if k in faults))
    start = time.perf_counter()
    kw: dict[str, Any] = {"throttler_factory": throttler_factory,
                          "adapter_factory": adapter_factory}
    if backend == "kvm":
        with KvmSoak() as kvm:
            threads0, fds0 = threading.active_count(), _fd_count()
            for i in range(runs):
                _record(report, kvm.run(seed + i, callers, faults, **kw), on_run)
            report.extra.update(vm_builds=kvm.vm_builds, vm_rebuilt=kvm.rebuilt[:5],
                                fd_growth=kvm.fd_growth,
                                thread_growth=kvm.thread_growth,
                                threads_end_minus_start=threading.active_count() - threads0,
                                fds_end_minus_start=_fd_count() - fds0)
    else:
        for i in range(runs):
            _record(report, run_fake(seed + i, callers, faults, **kw), on_run)
    report.elapsed_s = time.perf_counter() - start
    return report


def _record(report: SoakReport, result: RunResult,
            on_run: Callable[[RunResult, SoakReport], None] | None) -> None:
    report.add(result)
    if on_run is not None:
        on_run(result, report)
