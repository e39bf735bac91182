"""The bug zoo: deliberately broken variants of the spec, each caught by a named property.

Each variant is a small override of :data:`autoconverge.spec.SPEC` that reproduces a defect
seen in the reference system or its prototypes. Every checker (explorer, Hypothesis machine,
Z3, SPIN, TLC) must find each one; tests assert it, which is how the checkers are shown able
to fail. ``violates`` names the properties a checker is expected to report violated (at least
one of them), ``max_trace`` the longest shortest counterexample the explorer should need
(steps, prefix + cycle for liveness).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .expr import And, Not, ch_empty, ch_head, ch_tail
from .lifecycle import (
    PAUSE,
    RUN,
    THROTTLING,
    WAITING,
    Spec,
    Transition,
    head_is_set,
)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    violates: tuple[str, ...]
    max_trace: int
    build: Callable[[Spec], Spec]
    probe_percents: tuple[int, ...] = ()
    """Extra percents the controller should try (e.g. 100) for this variant to show."""


def _api_accepts_100(spec: Spec) -> Spec:
    return spec.with_transitions(
        name="api_accepts_100",
        replace={
            ("call_set", "idle"): {
                "guard": lambda s, p: And(p >= 1, p <= 100, p != s.requested, Not(s.failed)),
            }
        },
    )


def _sleeps_with_shutdown_queued(spec: Spec) -> Spec:
    return spec.with_transitions(
        name="sleeps_with_shutdown_queued",
        replace={
            ("expire", phase): {"guard": lambda s: Not(s.expired)} for phase in THROTTLING
        },
    )


def _spinning_handshake(spec: Spec) -> Spec:
    spin = Transition(
        "poll", WAITING, WAITING, "worker",
        guard=lambda s: ch_empty(s.chan),
        doc="the prototype's wait loop: re-check a flag without blocking",
    )
    return spec.with_transitions(
        name="spinning_handshake",
        add=(spin,),
        replace={("abort_done", "awaiting_abort"): {"guard": lambda s: True}},
    )


def _no_resume_on_leave(spec: Spec) -> Spec:
    keep_paused = {"calls": (), "effect": lambda s: {
        "chan": ch_tail(s.chan), "resp": True, "percent": 0, "applied": 0,
        "expired": False, "polled": False,
    }}
    return spec.with_transitions(
        name="no_resume_on_leave",
        replace={("recv_abort", PAUSE): keep_paused, ("recv_exit", PAUSE): keep_paused},
    )


def _two_step_update(spec: Spec) -> Spec:
    adopt = Transition(
        "adopt_percent", PAUSE, PAUSE, "worker",
        guard=lambda s: And(s.percent == 0, head_is_set(s)),
        effect=lambda s: {"chan": ch_tail(s.chan), "percent": ch_head(s.chan),
                          "applied": ch_head(s.chan)},
        doc="second half of a split update: the percent arrives after the state",
    )
    return spec.with_transitions(
        name="two_step_update",
        replace={("recv_set", WAITING): {"effect": lambda s: {
            "paused": True, "expired": False, "polled": False,
        }}},
        add=(adopt,),
    )


def _command_cuts_sleep(spec: Spec) -> Spec:
    return spec.with_transitions(
        name="command_cuts_sleep",
        replace={("recv_set", PAUSE): {
            "dest": RUN,
            "calls": ("resume",),
            "effect": lambda s: {"chan": ch_tail(s.chan), "percent": ch_head(s.chan),
                                 "applied": ch_head(s.chan), "paused": False,
                                 "expired": False, "polled": False},
        }},
    )


def _shutdown_without_join(spec: Spec) -> Spec:
    return spec.with_transitions(
        name="shutdown_without_join",
        replace={("shutdown_done", "awaiting_exit"): {"guard": lambda s: True}},
    )


def _resume_after_handover(spec: Spec) -> Spec:
    return spec.with_transitions(
        name="resume_after_handover",
        replace={("recv_handover", PAUSE): {
            "calls": ("resume",),
            "effect": lambda s: {"chan": ch_tail(s.chan), "resp": True, "percent": 0,
                                 "applied": 0, "paused": False, "handed": True,
                                 "expired": False, "polled": False},
        }},
    )


VARIANTS: tuple[Variant, ...] = (
    Variant("api_accepts_100",
            "The API accepts 100 while the worker only handles 1..99 (the reference code).",
            ("WorkerAcceptsEveryCommand", "NoDeadlock"), 1, _api_accepts_100,
            probe_percents=(100,)),
    Variant("sleeps_with_shutdown_queued",
            "The worker starts its next sleep without looking at the queue, so a queued "
            "shutdown can wait forever.",
            ("ShutdownCompletes", "AbortCompletes", "HandoverCompletes"), 8,
            _sleeps_with_shutdown_queued),
    Variant("spinning_handshake",
            "The first prototype's flag handshake: the worker spins in Waiting and "
            "set-state returns before the worker acknowledged.",
            ("NoBusyWaiting", "AbortReturnsWithVcpusRunning"), 4, _spinning_handshake),
    Variant("no_resume_on_leave",
            "Abort or shutdown during a pause phase leaves without resume(): vCPUs stay paused.",
            ("PausedOnlyInPausePhase", "ReturnsOnlyAfterJoin", "AbortReturnsWithVcpusRunning",
             "PauseResumeAlternate", "VcpusResumed"), 5, _no_resume_on_leave),
    Variant("two_step_update",
            "State and percent are updated in two steps: Throttling is visible with percent 0.",
            ("PercentInRange",), 2, _two_step_update),
    Variant("command_cuts_sleep",
            "Every received command cuts the current sleep short, so a burst of commands "
            "starves the pause phase.",
            ("PauseServedInFull",), 4, _command_cuts_sleep),
    Variant("shutdown_without_join",
            "shutdown() returns without joining the worker.",
            ("ReturnsOnlyAfterJoin",), 2, _shutdown_without_join),
    Variant("resume_after_handover",
            "The worker resumes the vCPUs after a handover (restarts them during switch-over).",
            ("HandoverKeepsVcpusPaused", "ReturnsOnlyAfterJoin"), 4, _resume_after_handover),
)


def variant(name: str) -> Variant:
    for v in VARIANTS:
        if v.name == name:
            return v
    known = ", ".join(v.name for v in VARIANTS)
    raise KeyError(f"unknown variant {name!r}; known: {known}")


