"""The conformance kit's view of a backend: its properties, a checking wrapper, bounded calls.

:data:`PROPERTIES` are the kit's properties (the backend contract and what the throttler on it
must show), :class:`ContractViolation` names the one a check found broken, :class:`Probe`
stands between the throttler and the backend and checks every ``pause()``/``resume()`` as
it returns, and :func:`bounded` runs one of the kit's own backend calls on a helper thread
so a hanging backend fails :data:`CALLS_RETURN` instead of hanging the kit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from autoconverge.impl.vcpus import VcpuError

T = TypeVar("T")
Action = Literal["pause", "resume"]

FACTORY: Final = "FactoryMakesBackends"
CALLS_RETURN: Final = "CallsReturn"
PAUSE_STOPS: Final = "PauseStops"
RESUME_RUNS: Final = "ResumeRuns"
TRUTHFUL: Final = "IsPausedTruthful"
AGREES: Final = "AgreesWithSpec"
TRACE: Final = "TraceFollowsSpec"
LIFECYCLE: Final = "Lifecycle"
FAULTS: Final = "FaultRecovery"
DUTY: Final = "DutyCycle"

PROPERTIES: Final[dict[str, str]] = {
    FACTORY: "the factory returns a fresh, running backend with callable pause(), resume(), "
             "is_paused() (progress() optional, an int or a sequence of ints)",
    CALLS_RETURN: "pause() and resume() return normally within the bound, never hang or raise "
                  "on a healthy backend",
    PAUSE_STOPS: "pause() returns only once the vCPUs are stopped (is_paused() true), and "
                 "they stay stopped until resume()",
    RESUME_RUNS: "resume() returns only once the vCPUs run (is_paused() false), and they "
                 "keep running until pause()",
    TRUTHFUL: "is_paused() is the backend's truth: progress() stands still while it says "
              "paused and grows while it says running",
    AGREES: "at every quiescent step is_paused() equals the spec's paused: paused only in a "
            "pause phase or after handover, running after abort and shutdown",
    TRACE: "every run's recorded steps are spec transitions with every safety property "
           "holding (trace validation)",
    LIFECYCLE: "the API behaves as the spec says on this backend: set, change, abort, "
               "shutdown from every state, handover, repeated shutdown, bad input",
    FAULTS: "after a pause() or resume() fails (injected by the kit), the throttler reports "
            "ThrottleWorkerError and the backend ends running (resume() on running vCPUs "
            "is harmless)",
    DUTY: "throttled at 50 %, the vCPUs' progress drops by 50 % within 10 points",
}
"""Property name -> statement, in report order."""


class ContractViolation(AssertionError):
    """A kit check found ``prop`` broken."""

    def __init__(self, prop: str, message: str) -> None:
        super().__init__(f"{prop}: {message}")
        self.prop = prop
        self.message = message


class Hung(BaseException):
    """A backend call did not return: the run stops at once (no retry, no shrinking).

    A ``BaseException`` so that Hypothesis passes it through instead of shrinking a
    failure each of whose replays would hang for the whole bound again.
    """

    def __init__(self, violation: ContractViolation) -> None:
        super().__init__(str(violation))
        self.violation = violation


def bounded(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` on a daemon thread; :class:`Hung` (CallsReturn) if it does not return within
    ``timeout_s``, :class:`ContractViolation` (CallsReturn) if it raises."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("ok", fn()))
        except BaseException as exc:  # reported to the caller
            box.append(("raised", exc))

    t = threading.Thread(target=run, name=f"conformance-{what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if not box:
        raise Hung(ContractViolation(CALLS_RETURN,
                                     f"{what} did not return within {timeout_s:g} s"))
    kind, value = box[0]
    if kind == "raised":
        raise ContractViolation(CALLS_RETURN,
                                f"{what} raised {type(value).__name__}: {value}") from value
    return value  # type: ignore[no-any-return]


def progress_of(backend: Any) -> Callable[[], int] | None:
    """The backend's ``progress()`` as one int (a sequence is summed), or None without it."""
    fn = getattr(backend, "progress", None)
    if not callable(fn):
        return None

    def read() -> int:
        value = fn()
        if isinstance(value, Sequence):
            return sum(int(v) for v in value)
        return int(value)

    return read


@dataclass
class Call:
    """One backend call as the probe saw it (monotonic ns)."""

    action: Action
    number: int
    start_ns: int
    end_ns: int | None = None
    outcome: Literal["running", "ok", "raised", "injected"] = "running"


@dataclass
class Probe:
    """Wraps a backend for the throttler: checks each call as it returns, injects failures.

    After ``pause()`` returns, ``is_paused()`` must be true (else :data:`PAUSE_STOPS`); after
    ``resume()``, false (else :data:`RESUME_RUNS`); a call that raises breaks
    :data:`CALLS_RETURN`. The first violation is kept in :attr:`violation` (the call itself
    returns normally, so the throttler goes on as it would). ``fail_on`` holds
    ``(action, number)`` calls that raise :class:`VcpuError` instead of reaching the backend.
    Between calls, :meth:`check_between_calls` reads ``is_paused()`` under the same lock.
    """

    backend: Any
    calls: list[Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"pause": 0, "resume": 0})
    fail_on: set[tuple[str, int]] = field(default_factory=set)
    violation: ContractViolation | None = None
    checked: int = 0
    """pause()/resume() returns checked against is_paused()."""
    where: str = ""
    """The check running now (for the violation's message)."""
    progress: Callable[[], int] | None = None
    """If set, read as each pause() returns and as each resume() starts (duty cycle)."""
    marks: list[tuple[Action, int, int]] = field(default_factory=list)
    """(action, time ns, progress) at each pause() end and resume() start, with progress."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._expected: bool | None = None  # what the last completed call left

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def is_paused(self) -> bool:
        return bool(self.backend.is_paused())

    @property
    def in_progress(self) -> Call | None:
        return self.calls[-1] if self.calls and self.calls[-1].outcome == "running" else None

    def _violate(self, prop: str, message: str) -> None:
        if self.violation is None:
            self.violation = ContractViolation(prop, message)

    def _call(self, action: Action) -> None:
        with self._lock:
            self.counts[action] += 1
            number = self.counts[action]
            call = Call(action, number, time.monotonic_ns())
            self.calls.append(call)
            if (action, number) in self.fail_on:
                call.end_ns, call.outcome = call.start_ns, "injected"
                self._expected = None
                raise VcpuError(f"{action}() #{number}: failure injected by the conformance kit")
            if action == "resume" and self.progress is not None:
                self.marks.append(("resume", time.monotonic_ns(), self.progress()))
            try:
                getattr(self.backend, action)()
            except Exception as exc:
                call.end_ns, call.outcome = time.monotonic_ns(), "raised"
                self._expected = None
                self._violate(CALLS_RETURN, f"{action}() #{number} raised "
                                            f"{type(exc).__name__}: {exc}{self.where}")
                raise
            call.end_ns, call.outcome = time.monotonic_ns(), "ok"
            paused = bool(self.backend.is_paused())
            if action == "pause" and self.progress is not None:
                self.marks.append(("pause", time.monotonic_ns(), self.progress()))
            self.checked += 1
            want = action == "pause"
            self._expected = want
            if paused != want:
                self._violate(
                    PAUSE_STOPS if want else RESUME_RUNS,
                    f"{action}() #{number} returned but is_paused() is {paused}{self.where}")

    def check_between_calls(self, timeout_s: float) -> bool | None:
        """Read ``is_paused()`` while no call runs; a state the last call did not leave breaks
        PauseStops / ResumeRuns. Returns the state read (None: no call completed yet).
        :class:`Hung` if a call has been running longer than ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            call = self.in_progress
            what = f"{call.action}() #{call.number}" if call else "a backend call"
            raise Hung(ContractViolation(
                CALLS_RETURN, f"{what} did not return within {timeout_s:g} s{self.where}"))
        try:
            paused = bool(self.backend.is_paused())
            if self._expected is not None and paused != self._expected:
                last = self.calls[-1]
                self._violate(
                    PAUSE_STOPS if self._expected else RESUME_RUNS,
                    f"after {last.action}() #{last.number} returned, is_paused() turned "
                    f"{paused} with no call{self.where}")
            return paused
        finally:
            self._lock.release()

    def hung_call(self, timeout_s: float) -> ContractViolation | None:
        """A call running for longer than ``timeout_s``, as a violation (else None)."""
        call = self.in_progress
        if call is None or time.monotonic_ns() - call.start_ns < timeout_s * 1e9:
            return None
        return ContractViolation(
            CALLS_RETURN,
            f"{call.action}() #{call.number} did not return within {timeout_s:g} s{self.where}")

    def progress_while_paused(self, start_ns: int, end_ns: int) -> int:
        """Progress made between each pause() returning and the next resume() starting,
        for the paused intervals that start in ``[start_ns, end_ns]`` (needs ``progress``)."""
        total = 0
        since: tuple[int, int] | None = None
        for action, at, value in self.marks:
            if action == "pause":
                since = (at, value) if start_ns <= at <= end_ns else None
            elif since is not None:
                total += max(0, value - since[1])
                since = None
        return total

    def paused_share(self, start_ns: int, end_ns: int) -> float:
        """Share of ``[start_ns, end_ns]`` the calls held the backend paused: from each
        pause() returning to the next resume() starting (the throttler's convention)."""
        held = 0
        since: int | None = None
        for c in self.calls:
            if c.outcome != "ok" or c.end_ns is None:
                continue
            if c.action == "pause" and since is None:
                since = c.end_ns
            elif c.action == "resume" and since is not None:
                held += max(0, min(c.start_ns, end_ns) - max(since, start_ns))
                since = None
        if since is not None:
            held += max(0, end_ns - max(since, start_ns))
        return held / (end_ns - start_ns) if end_ns > start_ns else 0.0
