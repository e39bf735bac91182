"""Test doubles: :class:`RecordingVcpus`, a :class:`~autoconverge.impl.vcpus.Vcpus` that records,
:class:`ClockVcpus`, a backend on the wall clock whose progress is the time it ran, and
:class:`PartialVcpus`, several vCPUs whose pause()/resume() fail or hang part-way.

It keeps every ``pause()``/``resume()`` call with its start and end time (from the injected
runtime's clock, so virtual time under :class:`~autoconverge.impl.virtualtime.VirtualRuntime`),
models the call's cost with ``runtime.sleep_ns``, and can fail (raise) or hang on the k-th
pause or resume. It records; it never asserts. The functions below turn a record into pause
and run intervals, per-cycle duty cycles and an alternation check, for tests to assert on.

Conventions (as in :mod:`autoconverge.spec.timing`): the vCPUs count as paused from the start
of a successful ``pause()`` to the end of the next successful ``resume()``.

Both fakes keep the conformance kit's backend contract (:mod:`autoconverge.model.conformance`);
:func:`recording_backend` and :func:`clock_backend` are factories for it
(``autoconverge conformance autoconverge.impl.fakes:clock_backend``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Literal

from .runtime import Channel, Runtime
from .vcpus import VcpuError

Action = Literal["pause", "resume"]
Outcome = Literal["running", "ok", "error"]
Cost = int | Callable[[int], int]
"""A call's cost in ns: fixed, or a function of the call's 1-based number."""

HANG_NS = 3_600 * 1_000_000_000
"""How long a hanging call sleeps by default (one hour)."""


@dataclass
class VcpuCall:
    """One ``pause()`` or ``resume()`` call. ``end_ns`` is None while it is in progress."""

    action: Action
    number: int
    """1-based count of this action (the 3rd pause has number 3)."""
    start_ns: int
    end_ns: int | None = None
    outcome: Outcome = "running"
    error: BaseException | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True)
class Cycle:
    """One throttle cycle: from a pause's start to the next pause's start."""

    start_ns: int
    paused_ns: int
    period_ns: int

    @property
    def run_ns(self) -> int:
        return self.period_ns - self.paused_ns

    @property
    def paused_percent(self) -> float:
        return 100.0 * self.paused_ns / self.period_ns if self.period_ns else 100.0


class _CallCounts:
    """How many pause() and resume() calls a double has seen (failed ones included)."""

    counts: dict[Action, int]

    @property
    def pause_count(self) -> int:
        return self.counts["pause"]

    @property
    def resume_count(self) -> int:
        return self.counts["resume"]


class RecordingVcpus(_CallCounts):
    """Records pause/resume calls; optional cost, failure and hang injection.

    ``fail_on``: calls that raise after their cost, as ``(action, number)`` pairs (raising
    :class:`VcpuError`) or a mapping from such pairs to the exception to raise (for example
    a :class:`~autoconverge.impl.vcpus.VcpuTimeout`). ``hang_on``: calls that sleep
    ``hang_ns`` (default one hour; ``None``: forever) instead of their cost, then complete.
    A failed call leaves :attr:`paused` unchanged.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        pause_cost_ns: Cost = 0,
        resume_cost_ns: Cost = 0,
        fail_on: Collection[tuple[Action, int]] | Mapping[tuple[Action, int], BaseException] = (),
        hang_on: Collection[tuple[Action, int]] = (),
        hang_ns: int | None = HANG_NS,
    ) -> None:
        self._runtime = runtime
        self._costs: dict[Action, Cost] = {"pause": pause_cost_ns, "resume": resume_cost_ns}
        if isinstance(fail_on, Mapping):
            self._fail_on: dict[tuple[Action, int], BaseException | None] = dict(fail_on)
        else:
            self._fail_on = dict.fromkeys(fail_on)
        self._hang_on = frozenset(hang_on)
        self._hang_ns = hang_ns
        self.calls: list[VcpuCall] = []
        self.paused = False
        self.counts: dict[Action, int] = {"pause": 0, "resume": 0}

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def is_paused(self) -> bool:
        """The record's own view: the last successful call was a pause."""
        return self.paused

    @property
    def in_progress(self) -> VcpuCall | None:
        """The call currently running (a hanging one, say), if any."""
        return self.calls[-1] if self.calls and self.calls[-1].end_ns is None else None

    def _call(self, action: Action) -> None:
        rt = self._runtime
        number = self.counts[action] + 1
        self.counts[action] = number
        call = VcpuCall(action, number, rt.now_ns())
        self.calls.append(call)
        key = (action, number)
        if key in self._hang_on:
            if self._hang_ns is None:
                never: Channel[None] = rt.channel()
                never.get()  # nothing ever arrives: blocks until the runtime gives up
            else:
                rt.sleep_ns(self._hang_ns)
        else:
            cost = self._costs[action]
            duration = cost(number) if callable(cost) else cost
            if duration > 0:
                rt.sleep_ns(duration)
        call.end_ns = rt.now_ns()
        if key in self._fail_on:
            exc = self._fail_on[key] or VcpuError(f"injected failure of {action} #{number}")
            call.outcome = "error"
            call.error = exc
            raise exc
        call.outcome = "ok"
        self.paused = action == "pause"

    # views of the record -----------------------------------------------------------------
    def pause_intervals(self, end_ns: int | None = None) -> list[tuple[int, int]]:
        return pause_intervals(self.calls, end_ns)

    def run_intervals(self, end_ns: int | None = None) -> list[tuple[int, int]]:
        return run_intervals(self.calls, end_ns)

    def cycles(self) -> list[Cycle]:
        return cycles(self.calls)

    def alternation_error(self) -> str | None:
        return alternation_error(self.calls)


def pause_intervals(calls: Sequence[VcpuCall], end_ns: int | None = None) -> list[tuple[int, int]]:
    """``[start of pause, end of resume]`` for each successful pause; a pause still open at
    the end of the record closes at ``end_ns`` (or is left out if ``end_ns`` is None)."""
    out: list[tuple[int, int]] = []
    since: int | None = None
    for c in calls:
        if not c.ok or c.end_ns is None:
            continue
        if c.action == "pause" and since is None:
            since = c.start_ns
        elif c.action == "resume" and since is not None:
            out.append((since, c.end_ns))
            since = None
    if since is not None and end_ns is not None:
        out.append((since, end_ns))
    return out


def run_intervals(calls: Sequence[VcpuCall], end_ns: int | None = None) -> list[tuple[int, int]]:
    """The gaps between pause intervals: ``[end of resume, start of next pause]``; the last
    one runs to ``end_ns`` if given. Time before the first pause is not included."""
    paused = pause_intervals(calls, end_ns)
    out = [(a[1], b[0]) for a, b in pairwise(paused)]
    if paused and end_ns is not None and paused[-1][1] < end_ns:
        out.append((paused[-1][1], end_ns))
    return out


def cycles(calls: Sequence[VcpuCall]) -> list[Cycle]:
    """One :class:`Cycle` per pause interval that is followed by another pause."""
    paused = pause_intervals(calls)
    return [Cycle(a[0], a[1] - a[0], b[0] - a[0]) for a, b in pairwise(paused)]


def alternation_error(calls: Sequence[VcpuCall]) -> str | None:
    """None if the calls are pause, resume, pause, ... without overlap; else what is wrong.

    A failed call still counts as a call in the sequence (the throttler must not retry it
    as if nothing happened).
    """
    expected: Action = "pause"
    prev_end: int | None = None
    for i, c in enumerate(calls):
        if c.action != expected:
            return f"call {i}: {c.action} #{c.number} at t={c.start_ns}, expected {expected}"
        if prev_end is None and i > 0:
            return f"call {i}: {c.action} #{c.number} started before call {i - 1} returned"
        if prev_end is not None and c.start_ns < prev_end:
            return (
                f"call {i}: {c.action} #{c.number} started at t={c.start_ns} before the "
                f"previous call ended (t={prev_end})"
            )
        prev_end = c.end_ns
        expected = "resume" if expected == "pause" else "pause"
    return None


class ClockVcpus:
    """A conformant backend without vCPUs: ``progress()`` is the nanoseconds it ran.

    ``pause()`` and ``resume()`` take effect at once (after an optional cost, slept on the
    wall clock) and are idempotent; ``is_paused()`` is the state they set; ``progress()``
    grows by exactly the wall-clock time spent running, so a duty-cycle measurement on it
    measures the throttler's timing alone.
    """

    def __init__(self, *, pause_cost_s: float = 0.0, resume_cost_s: float = 0.0,
                 clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pause_cost_s = pause_cost_s
        self._resume_cost_s = resume_cost_s
        self._paused = False
        self._ran_ns = 0
        self._since_ns = clock()

    def pause(self) -> None:
        if self._pause_cost_s:
            time.sleep(self._pause_cost_s)
        self._stop()

    def resume(self) -> None:
        if self._resume_cost_s:
            time.sleep(self._resume_cost_s)
        self._start()

    def is_paused(self) -> bool:
        with self._lock:
            return self._paused

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {'paused' if self._paused else 'running'}>"

    def progress(self) -> int:
        with self._lock:
            return self._ran_ns + (0 if self._paused else self._clock() - self._since_ns)

    # the state changes, for subclasses (the broken backends) ---------------------------------
    def _stop(self) -> None:
        with self._lock:
            if not self._paused:
                self._ran_ns += self._clock() - self._since_ns
                self._paused = True

    def _start(self) -> None:
        with self._lock:
            if self._paused:
                self._since_ns = self._clock()
                self._paused = False


class PartialVcpus(_CallCounts):
    """Several vCPUs, paused and resumed one at a time, that fail the way real backends fail.

    A real backend pauses its vCPUs one by one (a kick and an acknowledgement each), so a
    ``pause()`` that fails on the third vCPU leaves the first two paused, and a ``resume()``
    that fails part-way leaves the rest paused: the all-or-nothing view of
    :class:`RecordingVcpus` (a failed call changes nothing) cannot show what a throttler
    must clean up after such a failure. Here each call walks vCPUs ``0..n-1`` in order
    (``vcpu_cost_ns`` each), changing the state of each; pausing a paused vCPU or resuming a
    running one is a no-op (the calls are idempotent, as the contract requires).

    ``fail_on``: calls that raise part-way, as a mapping from ``(action, number)`` (the
    1-based count of that action, as in :class:`RecordingVcpus`) to how many vCPUs the call
    handles before it raises (0: none, fails at once). The exception is :class:`VcpuError`
    unless ``errors`` maps the same key to another (a
    :class:`~autoconverge.impl.vcpus.VcpuTimeout`, or a ``KeyboardInterrupt``: any
    ``BaseException``). ``hang_on``: calls that block part-way until :meth:`release` is
    called, as a collection of keys (blocking before the first vCPU) or a mapping from key to
    how many vCPUs the call handles before it blocks; after the release the call carries on
    (and fails if ``fail_on`` says so). A :meth:`release` with no call blocked lets the next
    hanging call through at once.

    :meth:`is_paused` is the backend's truth: any vCPU paused (the throttler promised running
    vCPUs only if none is); :attr:`vcpu_paused` has each vCPU's state. :attr:`calls` records
    each call like :class:`RecordingVcpus` does, so the interval and alternation helpers of
    this module apply; :attr:`log` records each vCPU change as ``(time, action, vcpu)``.
    """

    def __init__(
        self,
        runtime: Runtime,
        n_vcpus: int = 4,
        *,
        vcpu_cost_ns: int = 0,
        fail_on: Mapping[tuple[Action, int], int] | None = None,
        errors: Mapping[tuple[Action, int], BaseException] | None = None,
        hang_on: Collection[tuple[Action, int]] | Mapping[tuple[Action, int], int] = (),
    ) -> None:
        if n_vcpus < 1:
            raise ValueError(f"need at least one vCPU, got {n_vcpus}")
        self._runtime = runtime
        self.n_vcpus = n_vcpus
        self._cost_ns = vcpu_cost_ns
        self._fail_on = dict(fail_on or {})
        self._errors = dict(errors or {})
        if isinstance(hang_on, Mapping):
            self._hang_on: dict[tuple[Action, int], int] = dict(hang_on)
        else:
            self._hang_on = dict.fromkeys(hang_on, 0)
        for what, table in (("fail_on", self._fail_on), ("hang_on", self._hang_on)):
            for key, k in table.items():
                if not 0 <= k <= n_vcpus:
                    raise ValueError(f"{what}[{key}] = {k}: not in 0..{n_vcpus}")
        if not self._errors.keys() <= self._fail_on.keys():
            raise ValueError("errors: every key must also be a key of fail_on")
        self._gate: Channel[None] = runtime.channel()
        self.vcpu_paused: list[bool] = [False] * n_vcpus
        self.calls: list[VcpuCall] = []
        self.log: list[tuple[int, Action, int]] = []
        self.counts: dict[Action, int] = {"pause": 0, "resume": 0}
        self.hanging: VcpuCall | None = None
        """The call blocked in a hang right now, if any."""

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def is_paused(self) -> bool:
        """The backend's truth: some vCPU is paused."""
        return any(self.vcpu_paused)

    @property
    def paused(self) -> bool:
        """Same as :meth:`is_paused` (the attribute tests read on :class:`RecordingVcpus`)."""
        return self.is_paused()

    def all_paused(self) -> bool:
        return all(self.vcpu_paused)

    @property
    def paused_vcpus(self) -> list[int]:
        return [i for i, p in enumerate(self.vcpu_paused) if p]

    def release(self) -> None:
        """Let the hanging call (or the next one to hang) carry on."""
        self._gate.put(None)

    def _call(self, action: Action) -> None:
        rt = self._runtime
        number = self.counts[action] + 1
        self.counts[action] = number
        call = VcpuCall(action, number, rt.now_ns())
        self.calls.append(call)
        key = (action, number)
        hang_at = self._hang_on.get(key)
        fail_at = self._fail_on.get(key)
        try:
            for i in range(self.n_vcpus):
                if i == hang_at:
                    self.hanging = call
                    try:
                        self._gate.get(None)
                    finally:
                        self.hanging = None
                if i == fail_at:
                    break
                if self._cost_ns > 0:
                    rt.sleep_ns(self._cost_ns)
                if self.vcpu_paused[i] != (action == "pause"):
                    self.vcpu_paused[i] = action == "pause"
                    self.log.append((rt.now_ns(), action, i))
            if hang_at == self.n_vcpus:
                self.hanging = call
                try:
                    self._gate.get(None)
                finally:
                    self.hanging = None
        except BaseException as killed:  # the runtime killed the thread while it hung
            call.outcome = "error"  # end_ns stays None: the call never returned
            call.error = killed
            raise
        call.end_ns = rt.now_ns()
        if fail_at is not None:
            exc = self._errors.get(key) or VcpuError(
                f"injected failure of {action} #{number} after {fail_at} of "
                f"{self.n_vcpus} vCPUs"
            )
            call.outcome = "error"
            call.error = exc
            raise exc
        call.outcome = "ok"

    def __repr__(self) -> str:
        states = "".join("P" if p else "r" for p in self.vcpu_paused)
        return f"<{type(self).__name__} [{states}]>"


def recording_backend() -> RecordingVcpus:
    """A conformance-kit factory: a fresh :class:`RecordingVcpus` on the wall clock (no
    ``progress()``: the kit skips its progress checks)."""
    from .realtime import RealRuntime

    return RecordingVcpus(RealRuntime())


def clock_backend() -> ClockVcpus:
    """A conformance-kit factory: a fresh :class:`ClockVcpus` (every check, duty cycle too)."""
    return ClockVcpus()
