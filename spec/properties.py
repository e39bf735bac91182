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

from .core import Property, Transition, fairness_formula
from .expr import And, Eq, Implies, Not, Or, Value, chan_empty, chan_head, in_states, is_state
from .lifecycle import (
    ABORT_DONE,
    AWAITING_ABORT,
    AWAITING_EXIT,
    AWAITING_HANDOVER,
    CALL_RETURN,
    CLOSING,
    DONE,
    EXIT,
    EXPIRE,
    FAIRNESS_GROUPS,
    IDLE,
    IN_CALL,
    MAX_PERCENT,
    MIN_PERCENT,
    PAUSE,
    PAUSE_CALL,
    PAUSE_ELAPSED,
    RESUME_CALL,
    RESUME_FAILED,
    RUN,
    RUN_ELAPSED,
    SHUTDOWN_CALLABLE_IN,
    STALLED,
    THROTTLING,
    WAITING,
    State,
    is_valid_command,
    no_call,
    throttling,
)

FAIRNESS = fairness_formula(FAIRNESS_GROUPS)
"""The leads-to properties' fairness assumption, printed from :data:`FAIRNESS_GROUPS`."""


def _worker_step(t: Transition) -> bool:
    """A step of the worker thread or its clock (not a vCPU call ending, not the controller)."""
    return t.actor in ("worker", "clock")


def _pause_resume_alternate(pre: State, t: Transition, post: State) -> Value:
    if t.is_fault:
        return True  # the best-effort resume after a failure: the vCPUs' state is unknown
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
    if not _worker_step(t):
        return True
    if t.actor == "clock":
        return Not(is_state(pre.w, WAITING))
    return Or(Not(chan_empty(pre.chan)), pre.expired)


def _pause_served_in_full(pre: State, t: Transition, post: State) -> Value:
    if t.trigger == PAUSE_ELAPSED:
        return True
    return Not(And(is_state(pre.w, PAUSE), is_state(post.w, RUN)))


def _run_served_in_full(pre: State, t: Transition, post: State) -> Value:
    if t.trigger == RUN_ELAPSED:
        return True
    return Not(And(is_state(pre.w, RUN), is_state(post.w, PAUSE)))


def _queue_read_every_phase(pre: State, t: Transition, post: State) -> Value:
    if t.trigger != EXPIRE:
        return True
    return Or(pre.polled, chan_empty(pre.chan))


def _paused_follows_calls(pre: State, t: Transition, post: State) -> Value:
    if t.trigger == CALL_RETURN:
        return Eq(post.paused, pre.call == PAUSE_CALL)
    if t.trigger == RESUME_FAILED:
        return post.paused
    return Eq(post.paused, pre.paused)


def _abort_returns_running(pre: State, t: Transition, post: State) -> Value:
    if t.trigger != ABORT_DONE:
        return True
    return Or(post.failed, And(Not(post.paused), is_state(post.w, WAITING)))


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
        "The vCPUs are paused only in a pause phase, after a handover, while being resumed, "
        "or after a failure.",
        "invariant",
        "paused => w = throttling_pause \\/ handed \\/ call = RESUME \\/ failed",
        invariant=lambda s: Implies(
            s.paused, Or(is_state(s.w, PAUSE), s.handed, s.call == RESUME_CALL, s.failed)
        ),
    ),
    Property(
        "HandoverKeepsVcpusPaused",
        "After a handover the vCPUs stay paused: only shutdown() may resume them.",
        "invariant",
        "handed /\\ call = NONE => paused",
        invariant=lambda s: Implies(And(s.handed, no_call(s)), s.paused),
    ),
    Property(
        "ReturnsOnlyAfterJoin",
        "shutdown()/handover() close the throttler only after the worker exited; vCPUs run "
        "unless a handover returned.",
        "invariant",
        "c = done => w = exit /\\ call = NONE /\\ (paused <=> owner # 0)",
        invariant=lambda s: Implies(
            is_state(s.c, DONE),
            And(is_state(s.w, EXIT), no_call(s), Eq(s.paused, s.owner != 0)),
        ),
    ),
    Property(
        "HandoverMeansOwnedPause",
        "A handover() that returned leaves the vCPUs paused, the worker joined, and its "
        "caller the owner.",
        "invariant",
        "owner # 0 => paused /\\ handed /\\ w = exit /\\ call = NONE /\\ c = done",
        invariant=lambda s: Implies(
            s.owner != 0,
            And(s.paused, s.handed, is_state(s.w, EXIT), no_call(s), is_state(s.c, DONE)),
        ),
        notes="Defect 2 of issue 15: a handover racing shutdown() returned with vCPUs running.",
    ),
    Property(
        "ShutdownAlwaysCallable",
        "Whenever no call is in progress, shutdown() is callable: after timeouts and faults "
        "too.",
        "invariant",
        "holder = 0 => c \\in {idle, stalled, closing, done}",
        invariant=lambda s: Implies(s.holder == 0, in_states(s.c, SHUTDOWN_CALLABLE_IN)),
        notes=("With ShutdownCompletes and ReturnsOnlyAfterJoin: after any sequence of calls, "
               "timeouts and faults, a shutdown() returns with the vCPUs running (or raises "
               "because resume() itself failed, and may be retried). Defect 1 of issue 15."),
    ),
    Property(
        "LockHeldOnlyInCall",
        "The API lock is held exactly while a caller is inside a blocking call.",
        "invariant",
        "holder # 0 <=> c \\in {awaiting_abort, awaiting_exit, awaiting_handover, resuming}",
        invariant=lambda s: Eq(s.holder != 0, in_states(s.c, IN_CALL)),
    ),
    Property(
        "PauseResumeAlternate",
        "pause() and resume() are called strictly alternately, starting with pause() (a "
        "best-effort resume after a failure aside).",
        "step",
        "[][t \\notin Faults => \\A call in calls(t): pause => ~paused, resume => paused]_vars",
        step=_pause_resume_alternate,
    ),
    Property(
        "PausedFollowsCalls",
        "paused changes only when a vCPU call ends, and then as the call says.",
        "step",
        "[][(t = call_return => paused' = (call = PAUSE)) /\\ (t = resume_failed => paused') "
        "/\\ (t \\notin {call_return, resume_failed} => paused' = paused)]_vars",
        step=_paused_follows_calls,
    ),
    Property(
        "ExitIsAbsorbing",
        "Once the worker has exited it takes no step (a vCPU call it started may still end).",
        "step",
        "[][w = exit => ~(WorkerStep \\/ ClockStep)]_vars",
        step=_exit_absorbing,
    ),
    Property(
        "NoBusyWaiting",
        "The worker moves only when a command is queued or a phase deadline expired.",
        "step",
        "[][WorkerStep => Len(chan) > 0 \\/ expired]_vars "
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
        "RunServedInFull",
        "A run phase turns into a pause phase only when its full share has elapsed.",
        "step",
        "[][w = throttling_run /\\ w' = throttling_pause => t = run_elapsed]_vars",
        step=_run_served_in_full,
        notes="A new percent waits for the phase boundary: it never takes guest time early.",
    ),
    Property(
        "QueueReadEveryPhase",
        "A phase ends only after the worker read the queue in it: a command waits at most "
        "one phase.",
        "step",
        "[][t = expire => polled \\/ Len(chan) = 0]_vars",
        step=_queue_read_every_phase,
        notes="Bounded response: with PauseServedInFull/RunServedInFull, within one timeslice.",
    ),
    Property(
        "AbortReturnsWithVcpusRunning",
        "set_throttle_percent(0) returns normally only when the worker waits and the vCPUs run.",
        "step",
        "[][t = abort_done => failed' \\/ (~paused' /\\ w' = waiting)]_vars",
        step=_abort_returns_running,
    ),
    Property(
        "NoDeadlock",
        "Every state but 'worker exited and controller done' can move on other than by a fault.",
        "deadlock",
        "~(w = exit /\\ c = done /\\ call = NONE) => ENABLED (Next without faults)",
    ),
    Property(
        "ShutdownCompletes",
        "Every shutdown() returns (closed, or raising because a resume failed).",
        "leadsto",
        "c = awaiting_exit ~> c \\in {done, closing}",
        leads_from=lambda s: is_state(s.c, AWAITING_EXIT),
        leads_to=lambda s: in_states(s.c, (DONE, CLOSING)),
        fairness=FAIRNESS,
    ),
    Property(
        "AbortCompletes",
        "Every abort (set_throttle_percent(0)) returns.",
        "leadsto",
        "c = awaiting_abort ~> c \\in {idle, stalled}",
        leads_from=lambda s: is_state(s.c, AWAITING_ABORT),
        leads_to=lambda s: in_states(s.c, (IDLE, STALLED)),
        fairness=FAIRNESS,
    ),
    Property(
        "HandoverCompletes",
        "Every handover() returns.",
        "leadsto",
        "c = awaiting_handover ~> c \\in {done, closing}",
        leads_from=lambda s: is_state(s.c, AWAITING_HANDOVER),
        leads_to=lambda s: in_states(s.c, (DONE, CLOSING)),
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
        "paused /\\ ~handed /\\ ~failed ~> ~paused \\/ handed \\/ failed",
        leads_from=lambda s: And(s.paused, Not(s.handed), Not(s.failed)),
        leads_to=lambda s: Or(Not(s.paused), s.handed, s.failed),
        fairness=FAIRNESS,
    ),
)

INVARIANTS = tuple(p for p in PROPERTIES if p.kind == "invariant")
STEP_PROPERTIES = tuple(p for p in PROPERTIES if p.kind == "step")
LIVENESS = tuple(p for p in PROPERTIES if p.kind == "leadsto")

