"""The bug zoo: deliberately broken variants of the spec, each caught by a named property.

Each variant is a small override of :data:`autoconverge.spec.SPEC` that reproduces a defect
seen in Cloud Hypervisor's throttle thread (the pull request this project starts from) or in
this project's own prototypes. Every checker (explorer, Hypothesis machine, Z3, SPIN, TLC)
must find each one; tests assert it, which is how the checkers are shown able to fail.
``violates`` names the properties a checker is expected to report violated (at least one of
them), ``max_trace`` the longest shortest counterexample the explorer should need (steps,
prefix + cycle for liveness). A built variant is a :class:`Spec` named like its variant;
:func:`variant_of` finds the variant back from the spec (its probe percents, what it
violates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .core import Spec, Transition
from .expr import And, Not, Value, chan_empty, chan_head, chan_tail, is_state
from .lifecycle import (
    ABORT_DONE,
    AWAITING,
    AWAITING_ABORT,
    AWAITING_EXIT,
    CALL_HANDOVER,
    CALL_SET,
    DONE,
    EXIT,
    EXPIRE,
    FAULT,
    IDLE,
    NO_CALL,
    PAUSE,
    RECV_ABORT,
    RECV_EXIT,
    RECV_HANDOVER,
    RECV_SET,
    RUN,
    SHUTDOWN_DONE,
    SHUTDOWN_RESUME,
    THROTTLING,
    TIMEOUT,
    WAITING,
    WORKER_STATES,
    Call,
    State,
    head_is_set,
    is_caller,
    lock_free,
    no_call,
)


@dataclass(frozen=True)
class Variant:
    """One broken copy of a spec: its name, the defect, what catches it, how to build it."""

    name: str
    description: str
    violates: tuple[str, ...]
    max_trace: int
    change: Callable[[Spec], Spec]
    """The override: ``spec`` with some transitions replaced or added."""
    probe_percents: tuple[int, ...] = ()
    """Extra percents the controller should try (e.g. 100) for this variant to show."""

    def build(self, spec: Spec) -> Spec:
        """``spec`` with this variant's change, named after the variant."""
        return self.change(spec).with_transitions(name=self.name)


def _api_accepts_100(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={
            (CALL_SET, IDLE): {
                "guard": lambda s, p, k: And(
                    is_caller(k), lock_free(s), p >= 1, p <= 100, p != s.requested,
                    Not(s.failed),
                ),
            }
        },
    )


def _sleeps_with_shutdown_queued(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={
            (EXPIRE, phase): {"guard": lambda s: And(no_call(s), Not(s.expired))}
            for phase in THROTTLING
        },
    )


def _spinning_handshake(spec: Spec) -> Spec:
    spin = Transition(
        "poll", WAITING, WAITING, "worker",
        guard=lambda s: And(no_call(s), chan_empty(s.chan)),
        doc="the prototype's wait loop: re-check a flag without blocking",
    )
    return spec.with_transitions(
        add=(spin,),
        replace={(ABORT_DONE, AWAITING_ABORT): {"guard": lambda s: True}},
    )


def _no_resume_on_leave(spec: Spec) -> Spec:
    keep_paused = {"calls": (), "effect": lambda s: {
        "chan": chan_tail(s.chan), "resp": True, "percent": 0, "applied": 0,
        "expired": False, "polled": False,
    }}
    return spec.with_transitions(
        replace={(RECV_ABORT, PAUSE): keep_paused, (RECV_EXIT, PAUSE): keep_paused},
    )


def _two_step_update(spec: Spec) -> Spec:
    adopt = Transition(
        "adopt_percent", PAUSE, PAUSE, "worker",
        guard=lambda s: And(no_call(s), s.percent == 0, head_is_set(s)),
        effect=lambda s: {"chan": chan_tail(s.chan), "percent": chan_head(s.chan),
                          "applied": chan_head(s.chan)},
        doc="second half of a split update: the percent arrives after the state",
    )
    return spec.with_transitions(
        replace={(RECV_SET, WAITING): {"effect": lambda s: {
            "expired": False, "polled": False,
        }}},
        add=(adopt,),
    )


def _set_starts_next_phase(spec: Spec, phase: str, dest: str, call: Call) -> Spec:
    """A percent received in ``phase`` ends it at once: the next phase starts with it."""
    return spec.with_transitions(
        replace={(RECV_SET, phase): {
            "dest": dest,
            "calls": (call,),
            "effect": lambda s: {"chan": chan_tail(s.chan), "percent": chan_head(s.chan),
                                 "applied": chan_head(s.chan),
                                 "expired": False, "polled": False},
        }},
    )


def _command_cuts_sleep(spec: Spec) -> Spec:
    return _set_starts_next_phase(spec, PAUSE, RUN, "resume")


def _shutdown_without_join(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(SHUTDOWN_DONE, AWAITING_EXIT): {"guard": lambda s: True}},
    )


def _resume_after_handover(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(RECV_HANDOVER, PAUSE): {
            "calls": ("resume",),
            "effect": lambda s: {"chan": chan_tail(s.chan), "resp": True, "percent": 0,
                                 "applied": 0, "handed": True,
                                 "expired": False, "polled": False},
        }},
    )


def _timeout_leaves_call_pending(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(TIMEOUT, st): {"dest": st} for st in AWAITING},
    )


def _handover_after_shutdown_returns(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(CALL_HANDOVER, DONE): {"effect": lambda s, k: {"owner": k}}},
    )


def _shutdown_ignores_paused_vcpus(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(SHUTDOWN_DONE, AWAITING_EXIT): {
            "guard": lambda s: And(is_state(s.w, EXIT), no_call(s)),
        }},
        remove=((SHUTDOWN_RESUME, AWAITING_EXIT),),
    )


def _worker_dies_silently(spec: Spec) -> Spec:
    def die(s: State) -> dict[str, Value]:
        return {"call": NO_CALL, "percent": 0, "applied": 0, "expired": False,
                "polled": False}
    return spec.with_transitions(
        replace={(FAULT, st): {"calls": (), "effect": die} for st in WORKER_STATES},
    )


def _set_cuts_run_phase(spec: Spec) -> Spec:
    return _set_starts_next_phase(spec, RUN, PAUSE, "pause")


def _paused_without_pause_call(spec: Spec) -> Spec:
    return spec.with_transitions(
        replace={(RECV_HANDOVER, RUN): {
            "calls": (),
            "effect": lambda s: {"chan": chan_tail(s.chan), "resp": True, "percent": 0,
                                 "applied": 0, "paused": True, "handed": True,
                                 "expired": False, "polled": False},
        }},
    )


VARIANTS: tuple[Variant, ...] = (
    Variant("api_accepts_100",
            "The API accepts 100 while the worker only handles 1..99 (Cloud Hypervisor's "
            "throttle thread, the pull request this project starts from).",
            ("WorkerAcceptsEveryCommand", "ShutdownCompletes"), 1, _api_accepts_100,
            probe_percents=(100,)),
    Variant("sleeps_with_shutdown_queued",
            "The worker starts its next sleep without looking at the queue, so a queued "
            "shutdown can wait forever.",
            ("ShutdownCompletes", "AbortCompletes", "HandoverCompletes",
             "QueueReadEveryPhase"), 8,
            _sleeps_with_shutdown_queued),
    Variant("spinning_handshake",
            "The first prototype's flag handshake: the worker spins in Waiting and "
            "set-state returns before the worker acknowledged.",
            ("NoBusyWaiting", "AbortReturnsWithVcpusRunning"), 4, _spinning_handshake),
    Variant("no_resume_on_leave",
            "Abort or shutdown during a pause phase leaves without resume(): vCPUs stay paused.",
            ("PausedOnlyInPausePhase", "AbortReturnsWithVcpusRunning",
             "PauseResumeAlternate", "VcpusResumed"), 5, _no_resume_on_leave),
    Variant("two_step_update",
            "State and percent are updated in two steps: Throttling is visible with percent 0.",
            ("PercentInRange",), 2, _two_step_update),
    Variant("command_cuts_sleep",
            "Every received command cuts the current sleep short, so a burst of commands "
            "starves the pause phase.",
            ("PauseServedInFull",), 5, _command_cuts_sleep),
    Variant("shutdown_without_join",
            "shutdown() returns without joining the worker.",
            ("ReturnsOnlyAfterJoin",), 2, _shutdown_without_join),
    Variant("resume_after_handover",
            "The worker resumes the vCPUs after a handover (restarts them during switch-over).",
            ("HandoverKeepsVcpusPaused", "ReturnsOnlyAfterJoin"), 6, _resume_after_handover),
    Variant("timeout_leaves_call_pending",
            "A timed-out abort/shutdown/handover leaves the controller waiting: every later "
            "call, shutdown() included, is refused (issue 15, defect 1).",
            ("ShutdownAlwaysCallable", "LockHeldOnlyInCall"), 2, _timeout_leaves_call_pending),
    Variant("handover_after_shutdown_returns",
            "handover() after (or racing) shutdown() returns normally although the vCPUs run "
            "(issue 15, defect 2).",
            ("HandoverMeansOwnedPause",), 4, _handover_after_shutdown_returns),
    Variant("shutdown_ignores_paused_vcpus",
            "shutdown() returns once the worker exited, without resuming vCPUs it left paused "
            "(a timed-out handover's, a failed resume's; issue 15, defect 3).",
            ("ReturnsOnlyAfterJoin",), 6, _shutdown_ignores_paused_vcpus),
    Variant("worker_dies_silently",
            "A failing vCPU call (e.g. a KeyboardInterrupt) ends the worker without the "
            "best-effort resume and without recording the failure (issue 15, defect 4).",
            ("AbortReturnsWithVcpusRunning", "ReturnsOnlyAfterJoin", "VcpusResumed",
             "HandoverKeepsVcpusPaused", "PausedOnlyInPausePhase", "HandoverMeansOwnedPause"),
            4,
            _worker_dies_silently),
    Variant("set_cuts_run_phase",
            "A new percent received in a run phase starts the next pause at once, taking "
            "guest time early.",
            ("RunServedInFull",), 8, _set_cuts_run_phase),
    Variant("paused_without_pause_call",
            "A handover from a run phase marks the vCPUs paused without calling pause().",
            ("PausedFollowsCalls",), 8, _paused_without_pause_call),
)


def variant_of(spec: Spec) -> Variant | None:
    """The bug-zoo variant ``spec`` was built as (None for the shipped spec and others)."""
    return next((v for v in VARIANTS if v.name == spec.name), None)


def probe_percents(spec: Spec) -> tuple[int, ...]:
    """The extra percents a checker should offer ``spec`` (its variant's probes, if any)."""
    v = variant_of(spec)
    return v.probe_percents if v is not None else ()


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    known = ", ".join(v.name for v in VARIANTS)
    raise KeyError(f"unknown variant {name!r}; known: {known}")


