"""The lifecycle's named properties: a one-line statement, a formula, a kind, a fairness.

Kinds (what a checker must do with the predicate):

- ``invariant``: ``predicate(state)`` holds in every reachable state.
- ``step``: ``predicate(pre, transition, post)`` holds for every reachable step (a TLA+
  action property ``[][P]_vars``). ``transition`` is static data, so Python conditionals on
  its ``trigger``/``actor``/``calls`` are allowed.
- ``deadlock``: every reachable state that is not :func:`lifecycle.terminal` has an enabled
  transition (user calls included: a user may always call ``shutdown``).
- ``leadsto``: ``p ~> q`` (``[](p => <>q)``) on every behaviour that satisfies
  :data:`FAIRNESS`: the weak fairness of :data:`lifecycle.FAIRNESS_GROUPS` (per thread; user
  calls carry none), printed from those groups.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .expr import And, Eq, Implies, Not, Or, Value, chan_empty, chan_head, in_states, is_state
from .lifecycle import (
    ABORT_DONE,
    AWAITING_ABORT,
    AWAITING_EXIT,
    AWAITING_HANDOVER,
    DONE,
    EXIT,
    FAIRNESS_GROUPS,
    IDLE,
    MAX_PERCENT,
    MIN_PERCENT,
    PAUSE,
    PAUSE_ELAPSED,
    RUN,
    THROTTLING,
    WAITING,
    WEAK_FAIRNESS,
    State,
    Transition,
    is_valid_command,
    throttling,
)

Kind = Literal["invariant", "step", "deadlock", "leadsto"]

FAIRNESS = "; ".join((
    " /\\ ".join(g.formula for g in WEAK_FAIRNESS),
    *(g.formula for g in FAIRNESS_GROUPS if not g.weak),
))
"""The leads-to properties' fairness assumption, printed from :data:`FAIRNESS_GROUPS`."""


@dataclass(frozen=True)
class Property:
    name: str
    statement: str
    kind: Kind
    formula: str
    invariant: Callable[[State], Value] | None = None
    step: Callable[[State, Transition, State], Value] | None = None
    leads_from: Callable[[State], Value] | None = None
    leads_to: Callable[[State], Value] | None = None
    fairness: str = ""
    notes: str = ""


def _worker_step(t: Transition) -> bool:
    return t.machine == "worker"


def _pause_resume_alternate(pre: State, t: Transition, post: State) -> Value:
    conds: list[Value] = []
    paused = pre.paused
    for call in t.calls:
        conds.append(Not(paused) if call == "pause" else paused)
        paused = call == "pause"
    return And(*conds)


def _exit_absorbing(pre: State, t: Transition, post: State) -> Value:
    if not _worker_step(t):
        return True
    return Not(is_state(pre.w, EXIT))


def _worker_steps_only_on_input(pre: State, t: Transition, post: State) -> Value:
    if not _worker_step(t) or t.is_fault:
        return True
    if t.actor == "clock":
        return Not(is_state(pre.w, WAITING))
    return Or(Not(chan_empty(pre.chan)), pre.expired)


def _pause_served_in_full(pre: State, t: Transition, post: State) -> Value:
    if t.trigger == PAUSE_ELAPSED:
        return True
    return Not(And(is_state(pre.w, PAUSE), is_state(post.w, RUN)))


def _abort_returns_running(pre: State, t: Transition, post: State) -> Value:
    if t.trigger != ABORT_DONE:
        return True
    return And(Not(post.paused), Or(is_state(post.w, WAITING), post.failed))


PROPERTIES: tuple[Property, ...] = (
    Property(
        "PercentInRange",
        "While throttling the percent (held and applied) is within 1..99; otherwise it is 0.",
        "invariant",
        "w \\in Throttling => percent \\in 1..99 /\\ applied \\in 1..99; "
        "w \\notin Throttling => percent = 0",
        invariant=lambda s: And(
            Implies(
                throttling(s),
                And(
                    s.percent >= MIN_PERCENT, s.percent <= MAX_PERCENT,
                    s.applied >= MIN_PERCENT, s.applied <= MAX_PERCENT,
                ),
            ),
            Implies(Not(throttling(s)), s.percent == 0),
        ),
    ),
    Property(
        "WorkerAcceptsEveryCommand",
        "Every command that reaches the head of the queue is one the worker accepts.",
        "invariant",
        "Len(chan) > 0 => Head(chan) \\in 1..99 \\cup {ABORT, EXIT, HANDOVER}",
        invariant=lambda s: Implies(Not(chan_empty(s.chan)), is_valid_command(chan_head(s.chan))),
    ),
    Property(
        "PausedOnlyInPausePhase",
        "The vCPUs are paused only during a pause phase, or after a handover.",
        "invariant",
        "paused => w = throttling_pause \\/ handed",
        invariant=lambda s: Implies(s.paused, Or(is_state(s.w, PAUSE), s.handed)),
    ),
    Property(
        "HandoverKeepsVcpusPaused",
        "After a handover the vCPUs stay paused: the worker never restarts them.",
        "invariant",
        "handed => paused",
        invariant=lambda s: Implies(s.handed, s.paused),
    ),
    Property(
        "ReturnsOnlyAfterJoin",
        "shutdown()/handover() return only after the worker exited; vCPUs run unless handed over.",
        "invariant",
        "c = done => w = exit /\\ (paused <=> handed)",
        invariant=lambda s: Implies(
            is_state(s.c, DONE), And(is_state(s.w, EXIT), Eq(s.paused, s.handed))
        ),
    ),
    Property(
        "PauseResumeAlternate",
        "pause() and resume() are called strictly alternately, starting with pause().",
        "step",
        "[][\\A call in calls(t): pause => ~paused, resume => paused]_vars",
        step=_pause_resume_alternate,
    ),
    Property(
        "ExitIsAbsorbing",
        "Once the worker has exited it takes no step and runs no callback.",
        "step",
        "[][w = exit => ~(WorkerStep \\/ ClockStep)]_vars",
        step=_exit_absorbing,
    ),
    Property(
        "NoBusyWaiting",
        "The worker moves only when a command is queued or a phase deadline expired.",
        "step",
        "[][WorkerStep /\\ t # fault => Len(chan) > 0 \\/ expired]_vars "
        "/\\ [][ClockStep => w # waiting]_vars",
        step=_worker_steps_only_on_input,
        notes="In Waiting with an empty queue no worker transition is enabled: it blocks.",
    ),
    Property(
        "PauseServedInFull",
        "A pause phase turns into a run phase only when its full share has elapsed.",
        "step",
        "[][w = throttling_pause /\\ w' = throttling_run => t = pause_elapsed]_vars",
        step=_pause_served_in_full,
        notes=("Commands arriving during a pause do not cut it short (Cloud Hypervisor's "
               "throttle thread, the pull request this project starts from, did)."),
    ),
    Property(
        "AbortReturnsWithVcpusRunning",
        "set_throttle_percent(0) returns only when the worker is waiting and the vCPUs run.",
        "step",
        "[][t = abort_done => ~paused' /\\ (w' = waiting \\/ failed')]_vars",
        step=_abort_returns_running,
    ),
    Property(
        "NoDeadlock",
        "Every state but 'worker exited and controller done' can move on other than by a fault.",
        "deadlock",
        "~(w = exit /\\ c = done) => ENABLED (Next without fault)",
    ),
    Property(
        "ShutdownCompletes",
        "Every shutdown() returns (and then the worker has exited with the vCPUs running).",
        "leadsto",
        "c = awaiting_exit ~> c = done",
        leads_from=lambda s: is_state(s.c, AWAITING_EXIT),
        leads_to=lambda s: is_state(s.c, DONE),
        fairness=FAIRNESS,
    ),
    Property(
        "AbortCompletes",
        "Every abort (set_throttle_percent(0)) returns.",
        "leadsto",
        "c = awaiting_abort ~> c = idle",
        leads_from=lambda s: is_state(s.c, AWAITING_ABORT),
        leads_to=lambda s: is_state(s.c, IDLE),
        fairness=FAIRNESS,
    ),
    Property(
        "HandoverCompletes",
        "Every handover() returns.",
        "leadsto",
        "c = awaiting_handover ~> c = done",
        leads_from=lambda s: is_state(s.c, AWAITING_HANDOVER),
        leads_to=lambda s: is_state(s.c, DONE),
        fairness=FAIRNESS,
    ),
    Property(
        "PercentApplied",
        "Every accepted percent is applied at the next phase boundary (within one timeslice).",
        "leadsto",
        "w \\in Throttling /\\ percent # applied ~> percent = applied \\/ w \\notin Throttling",
        leads_from=lambda s: And(in_states(s.w, THROTTLING), s.percent != s.applied),
        leads_to=lambda s: Or(s.percent == s.applied, Not(in_states(s.w, THROTTLING))),
        fairness=FAIRNESS,
        notes="Within one timeslice: the boundary comes at most one phase later (timing).",
    ),
    Property(
        "VcpusResumed",
        "While throttling, paused vCPUs are always resumed again (infinitely often).",
        "leadsto",
        "paused /\\ ~handed ~> ~paused \\/ handed",
        leads_from=lambda s: And(s.paused, Not(s.handed)),
        leads_to=lambda s: Or(Not(s.paused), s.handed),
        fairness=FAIRNESS,
    ),
)

INVARIANTS = tuple(p for p in PROPERTIES if p.kind == "invariant")
STEP_PROPERTIES = tuple(p for p in PROPERTIES if p.kind == "step")
LIVENESS = tuple(p for p in PROPERTIES if p.kind == "leadsto")

