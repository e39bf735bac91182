"""The conformance kit's fixed checks: the backend alone, lifecycle scenarios, fault scenarios.

- :func:`check_contract`: the backend without a throttler, ``cycles`` direct pause/resume
  cycles, each call bounded: ``is_paused()`` right after each return, and with
  ``progress()`` whether it stands still while paused and grows while running. A mismatch is
  told apart: a state that comes true a moment later is a call that returned early
  (``PauseStops``/``ResumeRuns``), a state ``progress()`` contradicts is a lying
  ``is_paused()`` (``IsPausedTruthful``).
- :data:`LIFECYCLE_SCENARIOS`: set, change, abort, shutdown from every worker state,
  handover from every worker state, repeated shutdown, bad input; each on a fresh backend,
  checked after every step (:class:`~.conformance_run.Run`).
- :data:`FAULT_SCENARIOS`: a pause() or resume() failing (the probe raises instead of calling
  the backend) in each place the worker makes one; the throttler must report it and the
  backend end running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autoconverge.impl.throttler import ThrottlerClosed, ThrottleWorkerError
from autoconverge.spec import lifecycle as L

from .conformance_probe import (
    FAULTS,
    PAUSE_STOPS,
    RESUME_RUNS,
    TRUTHFUL,
    ContractViolation,
    bounded,
    progress_of,
)
from .conformance_run import KitConfig, Run, Tally

Scenario = Callable[[Run], None]


# the backend alone ----------------------------------------------------------------------------
def check_contract(backend: Any, cfg: KitConfig, tally: Tally) -> None:
    """Direct pause/resume cycles (see the module docstring)."""
    bound = cfg.call_timeout_s
    progress = progress_of(backend)

    def is_paused() -> bool:
        return bool(bounded(backend.is_paused, bound, "is_paused()"))

    def read() -> int:
        assert progress is not None
        return bounded(progress, bound, "progress()")

    def growth(seconds: float) -> int:
        p0 = read()
        time.sleep(seconds)
        return read() - p0

    def grows_within(seconds: float) -> bool:
        p0 = read()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.002)
            if read() > p0:
                return True
        return False

    for i in range(1, cfg.cycles + 1):
        bounded(backend.pause, bound, f"pause() #{i}")
        tally.add("direct_calls")
        if not is_paused():
            later = _settled(is_paused, cfg.window_s)
            if later:
                raise ContractViolation(PAUSE_STOPS, f"pause() #{i} returned while the vCPUs "
                                        f"still ran: is_paused() false at the return, true "
                                        f"{cfg.window_s * 1e3:.0f} ms later")
            if progress is not None and growth(cfg.window_s) == 0:
                raise ContractViolation(TRUTHFUL, f"after pause() #{i} is_paused() says "
                                        "running but progress() stands still")
            raise ContractViolation(PAUSE_STOPS, f"pause() #{i} returned but the vCPUs run: "
                                    "is_paused() stays false")
        paused_growth = growth(cfg.window_s) if progress is not None else 0
        bounded(backend.resume, bound, f"resume() #{i}")
        tally.add("direct_calls")
        if is_paused():
            later = not _settled(is_paused, cfg.window_s)
            if later:
                raise ContractViolation(RESUME_RUNS, f"resume() #{i} returned before the "
                                        "vCPUs ran: is_paused() true at the return, false "
                                        f"{cfg.window_s * 1e3:.0f} ms later")
            if progress is not None and growth(cfg.window_s) > 0:
                raise ContractViolation(TRUTHFUL, f"after resume() #{i} is_paused() says "
                                        "paused but progress() grows")
            raise ContractViolation(RESUME_RUNS, f"resume() #{i} returned but the vCPUs stay "
                                    "stopped: is_paused() stays true")
        if progress is None:
            continue
        if not grows_within(cfg.grow_timeout_s):
            raise ContractViolation(TRUTHFUL, f"after resume() #{i} is_paused() says running "
                                    f"but progress() did not grow in {cfg.grow_timeout_s:g} s")
        running_growth = growth(cfg.window_s)
        tally.add("truthful_cycles")
        # a counter in coarse units (CPU ticks) may tick once as the vCPUs stop
        if paused_growth > 1 + 0.1 * running_growth:
            raise ContractViolation(TRUTHFUL, f"after pause() #{i} is_paused() says paused but "
                                    f"progress() grew by {paused_growth} in "
                                    f"{cfg.window_s * 1e3:.0f} ms (running: {running_growth})")


def _settled(read: Callable[[], bool], seconds: float) -> bool:
    time.sleep(seconds)
    return read()


# lifecycle scenarios ----------------------------------------------------------------------------
def _set(p: int) -> tuple[str, Callable[[Any], None]]:
    return f"set_throttle_percent({p})", lambda t: t.set_throttle_percent(p)


def set_change_abort(r: Run) -> None:
    r.call(*_set(30))
    r.wait(0.05)
    r.call(*_set(60))
    r.wait(0.05)
    r.call(*_set(60))  # the same value again: a no-op
    r.call("abort: set_throttle_percent(0)", lambda t: t.set_throttle_percent(0))
    r.expect(r.model.w == L.WAITING and not r.model.paused,
             f"abort returned with the worker in {r.model.w}, paused={r.model.paused}")
    r.call("abort again (no-op)", lambda t: t.set_throttle_percent(0))
    r.call(*_set(45))
    r.wait(0.03)
    r.call("shutdown()", lambda t: t.shutdown())


def _from_state(state: str, percent: int) -> Callable[[Run], None]:
    """Get the worker into ``state``: waiting (never set), or a throttling phase."""

    def reach(r: Run) -> None:
        if state == L.WAITING:
            return
        r.call(*_set(percent))
        r.wait_for(state)

    return reach


PHASES = {L.WAITING: 0, L.PAUSE: 99, L.RUN: 1}
"""Worker state -> the percent that keeps the worker there most of the time."""


def shutdown_from(state: str) -> Scenario:
    def scenario(r: Run) -> None:
        _from_state(state, PHASES[state])(r)
        r.call("shutdown()", lambda t: t.shutdown())
        r.expect(r.model.w == L.EXIT and not r.model.paused,
                 f"shutdown returned with the worker in {r.model.w}, paused={r.model.paused}")

    return scenario


def handover_from(state: str) -> Scenario:
    def scenario(r: Run) -> None:
        _from_state(state, PHASES[state])(r)
        r.call("handover()", lambda t: t.handover())
        r.expect(r.model.w == L.EXIT and r.model.paused and r.model.handed,
                 f"handover returned with the worker in {r.model.w}, paused={r.model.paused}")
        r.expect(r.model.owner != 0 and r.throttler.owned,
                 "handover returned but the caller does not own the vCPUs")
        r.call("shutdown() after handover (no-op)", lambda t: t.shutdown())
        r.call(*_set(20), raises=ThrottlerClosed)

    return scenario


def abort_from(state: str) -> Scenario:
    def scenario(r: Run) -> None:
        _from_state(state, PHASES[state])(r)
        r.call("abort: set_throttle_percent(0)", lambda t: t.set_throttle_percent(0))
        r.expect(r.model.w == L.WAITING and not r.model.paused,
                 f"abort returned with the worker in {r.model.w}, paused={r.model.paused}")
        r.call("shutdown()", lambda t: t.shutdown())

    return scenario


def repeated_shutdown(r: Run) -> None:
    r.call(*_set(40))
    r.wait(0.03)
    for i in range(3):
        r.call(f"shutdown() #{i + 1}", lambda t: t.shutdown())
    r.call(*_set(10), raises=ThrottlerClosed)
    r.call("handover() after shutdown", lambda t: t.handover(), raises=ThrottlerClosed)


BAD_INPUT: tuple[tuple[object, type[Exception]], ...] = (
    (100, ValueError), (-1, ValueError), (50.0, TypeError), (True, TypeError),
    (None, TypeError), ("50", TypeError))


def bad_input(r: Run) -> None:
    r.call(*_set(30))
    for bad, error in BAD_INPUT:
        r.call(f"set_throttle_percent({bad!r})",
               lambda t, bad=bad: t.set_throttle_percent(bad),  # type: ignore[misc]
               raises=error)
        r.expect(r.throttler.percent == 30, f"a rejected {bad!r} changed the percent")
    r.call("shutdown()", lambda t: t.shutdown())


LIFECYCLE_SCENARIOS: dict[str, tuple[Scenario, str | None]] = {
    "set, change, abort": (set_change_abort, None),
    "shutdown from waiting": (shutdown_from(L.WAITING), None),
    "shutdown from throttling_pause": (shutdown_from(L.PAUSE), L.PAUSE),
    "shutdown from throttling_run": (shutdown_from(L.RUN), L.RUN),
    "abort from throttling_pause": (abort_from(L.PAUSE), L.PAUSE),
    "abort from throttling_run": (abort_from(L.RUN), L.RUN),
    "handover from waiting": (handover_from(L.WAITING), None),
    "handover from throttling_pause": (handover_from(L.PAUSE), L.PAUSE),
    "handover from throttling_run": (handover_from(L.RUN), L.RUN),
    "repeated shutdown": (repeated_shutdown, None),
    "bad input": (bad_input, None),
}
"""name -> (scenario, the worker state its final command must be received in, if any)."""

TRIGGER_OF = {"shutdown": L.RECV_EXIT, "abort": L.RECV_ABORT, "handover": L.RECV_HANDOVER}


def landed_in(name: str, r: Run) -> str | None:
    """The worker state the scenario's final command was received in."""
    return r.received_in(TRIGGER_OF[name.split()[0]])


# fault scenarios ----------------------------------------------------------------------------------
def _fails(r: Run, action: str, after: int = 1) -> None:
    r.probe.fail_on.add((action, r.probe.counts[action] + after))
    r.tally.add("injected")


def _wait_exit(r: Run) -> None:
    r.wait_for(L.EXIT)
    r.check("the worker's fault")
    r.expect(r.model.failed, "the worker exited without the spec's fault")


def pause_fails_on_set(r: Run) -> None:
    _fails(r, "pause")
    r.call(*_set(30))
    _wait_exit(r)
    r.call(*_set(40), raises=ThrottleWorkerError)
    r.call("shutdown()", lambda t: t.shutdown(), may_raise=ThrottleWorkerError)


def resume_fails_at_phase_end(r: Run) -> None:
    _fails(r, "resume")
    r.call(*_set(50))
    _wait_exit(r)
    r.call("shutdown()", lambda t: t.shutdown(), raises=ThrottleWorkerError)


def resume_fails_on_abort(r: Run) -> None:
    r.call(*_set(99))
    r.wait_for(L.PAUSE)
    _fails(r, "resume")
    r.call("abort: set_throttle_percent(0)", lambda t: t.set_throttle_percent(0),
           may_raise=ThrottleWorkerError)
    r.call("shutdown()", lambda t: t.shutdown(), may_raise=ThrottleWorkerError)


def pause_fails_on_handover(r: Run) -> None:
    r.call(*_set(1))
    r.wait_for(L.RUN)
    _fails(r, "pause")
    # the next pause() fails, whether the handover's or an earlier phase change's: either
    # way nothing is handed over and only shutdown() is possible
    r.call("handover()", lambda t: t.handover(), raises=ThrottleWorkerError)
    r.expect(not r.throttler.owned and r.model.owner == 0 and r.model.c == L.CLOSING,
             f"a handover whose pause() failed left the controller in {r.model.c}, "
             f"owned={r.throttler.owned}")
    r.call("shutdown()", lambda t: t.shutdown(), may_raise=ThrottleWorkerError)


FAULT_SCENARIOS: dict[str, Scenario] = {
    "pause() fails on the first set": pause_fails_on_set,
    "resume() fails at a pause phase's end": resume_fails_at_phase_end,
    "resume() fails on abort": resume_fails_on_abort,
    "pause() fails on handover": pause_fails_on_handover,
}
"""Each on a fresh backend, with ``FaultRecovery`` as the property its checks count against."""
FAULT_PROP = FAULTS
