"""The throttle thread's lifecycle, declared once, as data.

Four actors share a small state record (:class:`State`):

- the **worker** thread, whose lifecycle is a ``transitions`` machine with the states
  ``waiting``, ``throttling_pause`` (vCPUs paused for the pause share of the timeslice),
  ``throttling_run`` (vCPUs running for the rest) and ``exit``;
- the **clock**, whose only event ``expire`` ends the current phase's sleep (it is the
  timeout of the worker's interruptible receive; declared on the worker machine, actor
  ``clock``);
- the **vCPU backend**: a transition that declares a vCPU call (``calls``) only *starts* it
  (``call``); the call ends later, in a step of actor ``vcpu`` (``call_return``, or
  ``fault`` / ``resume_failed`` when it raises), and meanwhile the callers keep calling,
  queueing commands and timing out. ``paused`` changes only when a call ends;
- the **controller** (the API: ``set_throttle_percent``, ``shutdown``, ``handover``), a
  second machine with the states ``idle``, ``awaiting_abort``, ``awaiting_exit``,
  ``awaiting_handover``, ``resuming`` (shutdown() resuming vCPUs the worker left paused),
  ``stalled`` (an abort timed out) and ``closing`` (an exit or handover timed out or failed:
  the exit is queued or done), where only shutdown() is possible, and ``done``. It is
  called by several caller threads (:data:`CALLERS`, the user calls' parameter ``k``)
  serialised by the API lock ``holder``, held for the whole of a blocking call; a blocked
  caller's wait may time out (``timeout``), after which the worker's late answer is
  reconciled by the next shutdown().

They talk through a FIFO ``chan`` of integer commands (1..99 set that percent, 0 abort,
``CMD_EXIT``, ``CMD_HANDOVER``) and a response flag ``resp`` for the synchronous commands.
Setting a percent is asynchronous (the API validates and enqueues); abort, shutdown and
handover wait for the worker's answer (and shutdown/handover join the thread).

The scheduling assumption is declared here too, as data: :data:`FAIRNESS_GROUPS` (weak
fairness per thread and for a vCPU call's end, none on user calls and timeouts), read per
transition as :attr:`Transition.fairness` and :attr:`Transition.user_call`;
:attr:`Transition.is_fault` says which steps model a failing vCPU call.

Everything else - the threaded implementation, the explorer, the Z3 encoder, the SPIN and
TLA+ generators - reads :data:`SPEC` (or a variant of it) and the relation introspected from
the machines it builds (:meth:`Spec.relation`). Guards and effects use only
:mod:`autoconverge.spec.expr` so they evaluate on concrete values, Z3 terms and syntax trees.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .core import FairnessGroup, MachineDecl, Schema, Transition
from .expr import (
    And,
    Not,
    Or,
    Value,
    chan_empty,
    chan_head,
    chan_push,
    chan_tail,
    in_states,
    is_state,
)

# --- constants ----------------------------------------------------------------------------

MIN_PERCENT = 1
"""Smallest throttle percent while throttling."""
MAX_PERCENT = 99
"""Largest throttle percent: 100 would never let the vCPUs run (Cloud Hypervisor's throttle
thread, the pull request this project starts from, accepted 100 and its worker crashed on it)."""
ABORT_PERCENT = 0
"""``set_throttle_percent(0)``: stop throttling and go back to waiting (synchronous)."""

CMD_ABORT = 0
CMD_EXIT = -1
CMD_HANDOVER = -2
COMMAND_NAMES: dict[int, str] = {CMD_ABORT: "ABORT", CMD_EXIT: "EXIT", CMD_HANDOVER: "HANDOVER"}
"""How traces print the queue's non-percent commands."""

# worker machine states
WAITING = "waiting"
PAUSE = "throttling_pause"
RUN = "throttling_run"
EXIT = "exit"
WORKER_STATES: tuple[str, ...] = (WAITING, PAUSE, RUN, EXIT)
THROTTLING: tuple[str, ...] = (PAUSE, RUN)

# controller machine states
IDLE = "idle"
AWAITING_ABORT = "awaiting_abort"
AWAITING_EXIT = "awaiting_exit"
AWAITING_HANDOVER = "awaiting_handover"
RESUMING = "resuming"
STALLED = "stalled"
CLOSING = "closing"
DONE = "done"
CONTROLLER_STATES: tuple[str, ...] = (
    IDLE, AWAITING_ABORT, AWAITING_EXIT, AWAITING_HANDOVER, RESUMING, STALLED, CLOSING, DONE,
)
AWAITING: tuple[str, ...] = (AWAITING_ABORT, AWAITING_EXIT, AWAITING_HANDOVER)
"""The controller states of a caller blocked until the worker answers (or the call times out)."""
IN_CALL: tuple[str, ...] = (*AWAITING, RESUMING)
"""The controller states in which a caller holds the API lock."""
SHUTDOWN_CALLABLE_IN: tuple[str, ...] = (IDLE, STALLED, CLOSING, DONE)
"""The controller states from which the spec declares ``call_shutdown`` (a test checks this
against the relation): with the API lock free, the controller is always in one of them."""

# vCPU calls in progress (the state record's ``call``)
NO_CALL = 0
PAUSE_CALL = 1
RESUME_CALL = 2
CALL_CODES: dict[str, int] = {"pause": PAUSE_CALL, "resume": RESUME_CALL}
"""A transition's vCPU call as the value of ``call`` while it is in progress."""

CALLERS: tuple[int, ...] = (1, 2)
"""The controller threads (API callers) the spec models: each user call names its caller
``k``; the API lock ``holder`` is 0 when free, else the caller inside a blocking call."""

# triggers
RECV_SET = "recv_set"
RECV_EXIT = "recv_exit"
RECV_HANDOVER = "recv_handover"
RECV_ABORT = "recv_abort"
EXPIRE = "expire"
FAULT = "fault"
PAUSE_ELAPSED = "pause_elapsed"
RUN_ELAPSED = "run_elapsed"
CALL_SET = "call_set"
CALL_ABORT = "call_abort"
ABORT_DONE = "abort_done"
CALL_SHUTDOWN = "call_shutdown"
SHUTDOWN_DONE = "shutdown_done"
CALL_HANDOVER = "call_handover"
HANDOVER_DONE = "handover_done"
HANDOVER_FAILED = "handover_failed"
TIMEOUT = "timeout"
SHUTDOWN_RESUME = "shutdown_resume"
RESUMED = "resumed"
RESUME_LEFT_PAUSED = "resume_left_paused"
CALL_RETURN = "call_return"
RESUME_FAILED = "resume_failed"
TRIGGERS: tuple[str, ...] = (
    RECV_SET,
    RECV_EXIT,
    RECV_HANDOVER,
    RECV_ABORT,
    EXPIRE,
    FAULT,
    PAUSE_ELAPSED,
    RUN_ELAPSED,
    CALL_SET,
    CALL_ABORT,
    ABORT_DONE,
    CALL_SHUTDOWN,
    SHUTDOWN_DONE,
    CALL_HANDOVER,
    HANDOVER_DONE,
    HANDOVER_FAILED,
    TIMEOUT,
    SHUTDOWN_RESUME,
    RESUMED,
    RESUME_LEFT_PAUSED,
    CALL_RETURN,
    RESUME_FAILED,
)
FAULT_TRIGGERS: tuple[str, ...] = (FAULT, RESUME_FAILED)
"""The steps that model a failing vCPU call."""

Actor = Literal["worker", "clock", "vcpu", "controller"]
Call = Literal["pause", "resume"]

USER_CALL_TRIGGERS: tuple[str, ...] = (CALL_SET, CALL_ABORT, CALL_SHUTDOWN, CALL_HANDOVER)
"""The controller's steps a user starts (no fairness: a user may stop calling at any time)."""


# --- fairness -------------------------------------------------------------------------------


WORKER_GROUP = FairnessGroup("worker", "worker thread (weakly fair)", "WF(worker)", "worker")
"""The worker thread, when it can move, eventually moves (an OS scheduler)."""
CLOCK_GROUP = FairnessGroup("clock", "clock (weakly fair)", "WF(clock)", "clock")
"""A phase deadline that can expire eventually expires (time diverges)."""
VCPU_GROUP = FairnessGroup(
    "vcpu", "a vCPU call in progress returns or fails (weakly fair)", "WF(vcpu)", "vcpu",
)
"""A pause()/resume() call may take any time, but it ends (a hang that never resolves is
outside what any throttler can recover from)."""
COMPLETION_GROUP = FairnessGroup(
    "completion", "controller completing a blocking call (weakly fair)",
    "WF(controller inside abort/shutdown/handover)", "controller",
    (ABORT_DONE, SHUTDOWN_DONE, HANDOVER_DONE, HANDOVER_FAILED, SHUTDOWN_RESUME, RESUMED,
     RESUME_LEFT_PAUSED),
)
"""A caller blocked in abort/shutdown/handover is eventually scheduled once its wait
condition holds."""
USER_CALL_GROUP = FairnessGroup(
    "user", "user calls (no fairness)", "no fairness on user calls", "controller",
    USER_CALL_TRIGGERS, weak=False,
)
"""A user may stop calling at any time, or call forever."""
TIMEOUT_GROUP = FairnessGroup(
    "timeout", "a caller's wait timing out (no fairness)", "no fairness on timeouts",
    "controller", (TIMEOUT,), weak=False,
)
"""A blocked caller may give up waiting at any moment (its call timeout), or never."""

WEAK_FAIRNESS: tuple[FairnessGroup, ...] = (
    WORKER_GROUP, CLOCK_GROUP, VCPU_GROUP, COMPLETION_GROUP,
)
"""Weak fairness per thread, never per worker action: per-action fairness would certify a
worker that, say, prefers its timer forever over a queued shutdown. In this order: checkers
number the groups by it (the explorer's fairness bits, the Z3 ranking proofs' group codes)."""
FAIRNESS_GROUPS: tuple[FairnessGroup, ...] = (*WEAK_FAIRNESS, USER_CALL_GROUP, TIMEOUT_GROUP)
"""Every group, the weakly fair ones first."""


# --- the state record -----------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One global state. Field values are concrete, Z3 terms or Terms (see expr)."""

    w: Value
    """worker machine state"""
    c: Value
    """controller machine state"""
    percent: Value
    """the throttle percent the worker holds: 0 when not throttling, else 1..99"""
    applied: Value
    """the percent the current phase's durations were computed from"""
    paused: Value
    """the vCPUs are paused (all of them: pause()/resume() are all-or-nothing here). Written
    only when a vCPU call ends (``call_return``: what the call did; ``resume_failed``: a
    failed best-effort resume leaves them paused as far as anyone knows), never by a
    transition's declared effect: it follows from the calls."""
    call: Value
    """the vCPU call in progress: NO_CALL, PAUSE_CALL or RESUME_CALL. A transition that
    declares a call starts it (the state change happens at the start), ``call_return`` or a
    fault ends it; nothing else steps the worker meanwhile"""
    handed: Value
    """the worker exited by handover, leaving the vCPUs paused for the caller"""
    failed: Value
    """a pause()/resume() call failed; the worker exited after a best-effort resume"""
    expired: Value
    """the current phase's deadline has passed (the clock fired)"""
    polled: Value
    """the worker has read the queue at least once in the current phase"""
    requested: Value
    """controller: the last percent the API accepted (0 after abort or at start)"""
    holder: Value
    """the API lock: 0 when free, else the caller (1..) inside a blocking call"""
    owner: Value
    """the caller whose handover() returned: it owns the paused vCPUs (0: nobody)"""
    chan: Value
    """FIFO of commands, controller -> worker"""
    resp: Value
    """the worker has answered a synchronous command, not yet consumed by the controller"""

    def replace(self, **changes: Value) -> State:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Value]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


VARIABLES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(State))
WORKER_VARIABLES = (
    "percent", "applied", "paused", "call", "handed", "failed", "expired", "polled",
)

INITIAL = State(
    w=WAITING,
    c=IDLE,
    percent=0,
    applied=0,
    paused=False,
    call=NO_CALL,
    handed=False,
    failed=False,
    expired=False,
    polled=False,
    requested=0,
    holder=0,
    owner=0,
    chan=(),
    resp=False,
)

# --- guard helpers ------------------------------------------------------------------------


def is_set_command(x: Value) -> Value:
    """A command that sets a percent the worker accepts."""
    return And(x >= MIN_PERCENT, x <= MAX_PERCENT)


def is_valid_command(x: Value) -> Value:
    """Every command the worker has a transition for in some state."""
    return Or(is_set_command(x), x == CMD_ABORT, x == CMD_EXIT, x == CMD_HANDOVER)


def api_accepts_percent(p: Value) -> Value:
    """The percents ``set_throttle_percent`` enqueues (0 is abort, handled separately)."""
    return And(p >= MIN_PERCENT, p <= MAX_PERCENT)


def head_is(s: State, cmd: int) -> Value:
    return And(Not(chan_empty(s.chan)), chan_head(s.chan) == cmd)


def head_is_set(s: State) -> Value:
    return And(Not(chan_empty(s.chan)), is_set_command(chan_head(s.chan)))


def throttling(s: State) -> Value:
    return in_states(s.w, THROTTLING)


def no_call(s: State) -> Value:
    """No vCPU call is in progress: the worker is free to take its next step."""
    return s.call == NO_CALL


def in_call(s: State) -> Value:
    return s.call != NO_CALL


def param_domains(percents: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """Finite domains of the triggers' parameters for a checker that enumerates them: the
    user's percent ``p`` (the checker's bound) and the caller ``k`` (:data:`CALLERS`)."""
    return {"p": tuple(percents), "k": CALLERS}


def is_caller(k: Value) -> Value:
    """``k`` names one of the modelled callers (:data:`CALLERS`)."""
    return Or(*(k == c for c in CALLERS))


def lock_free(s: State) -> Value:
    return s.holder == 0


# --- declarations ----------------------------------------------------------------------------

def _pop(s: State) -> Value:
    return chan_tail(s.chan)


def _leave_phase() -> dict[str, Value]:
    """Leaving throttling: nothing held, no deadline pending."""
    return {"percent": 0, "applied": 0, "expired": False, "polled": False}


def _worker_transitions() -> list[Transition]:
    ts: list[Transition] = []
    # -- waiting: blocked on the queue, no timeout
    ts.append(
        Transition(
            RECV_SET, WAITING, PAUSE, "worker",
            guard=lambda s: And(no_call(s), head_is_set(s)),
            effect=lambda s: {
                "chan": _pop(s), "percent": chan_head(s.chan), "applied": chan_head(s.chan),
                "expired": False, "polled": False,
            },
            calls=("pause",),
            doc="start throttling: pause the vCPUs and begin the first pause phase",
        )
    )
    ts.append(
        Transition(
            RECV_EXIT, WAITING, EXIT, "worker",
            guard=lambda s: And(no_call(s), head_is(s, CMD_EXIT)),
            effect=lambda s: {"chan": _pop(s), "resp": True},
            doc="shut down from waiting: nothing to resume",
        )
    )
    ts.append(
        Transition(
            RECV_HANDOVER, WAITING, EXIT, "worker",
            guard=lambda s: And(no_call(s), head_is(s, CMD_HANDOVER)),
            effect=lambda s: {"chan": _pop(s), "resp": True, "handed": True},
            calls=("pause",),
            doc="handover from waiting: pause the vCPUs and leave them to the caller",
        )
    )
    for phase in THROTTLING:
        in_pause = phase == PAUSE
        # the clock: the phase's deadline passes (only after the worker looked at the queue
        # once in this phase, or the queue is empty: phases have positive length)
        ts.append(
            Transition(
                EXPIRE, phase, phase, "clock",
                guard=lambda s: And(
                    no_call(s), Not(s.expired), Or(s.polled, chan_empty(s.chan))
                ),
                effect=lambda s: {"expired": True},
                doc="the phase's deadline passes",
            )
        )
        ts.append(
            Transition(
                RECV_SET, phase, phase, "worker",
                guard=lambda s: And(no_call(s), Not(s.expired), head_is_set(s)),
                effect=lambda s: {"chan": _pop(s), "percent": chan_head(s.chan), "polled": True},
                doc="a new percent: kept for the next phase; the current sleep is not cut short",
            )
        )
        ts.append(
            Transition(
                RECV_ABORT, phase, WAITING, "worker",
                guard=lambda s: And(no_call(s), Not(s.expired), head_is(s, CMD_ABORT)),
                effect=lambda s: {"chan": _pop(s), "resp": True, **_leave_phase()},
                calls=("resume",) if in_pause else (),
                doc="abort: resume if paused, answer, go back to waiting",
            )
        )
        ts.append(
            Transition(
                RECV_EXIT, phase, EXIT, "worker",
                guard=lambda s: And(no_call(s), Not(s.expired), head_is(s, CMD_EXIT)),
                effect=lambda s: {"chan": _pop(s), "resp": True, **_leave_phase()},
                calls=("resume",) if in_pause else (),
                doc="shut down: resume if paused, answer, exit",
            )
        )
        ts.append(
            Transition(
                RECV_HANDOVER, phase, EXIT, "worker",
                guard=lambda s: And(no_call(s), Not(s.expired), head_is(s, CMD_HANDOVER)),
                effect=lambda s: {
                    "chan": _pop(s), "resp": True, "handed": True, **_leave_phase(),
                },
                calls=() if in_pause else ("pause",),
                doc="handover: exit with the vCPUs paused (pausing them first if running)",
            )
        )
    ts.append(
        Transition(
            PAUSE_ELAPSED, PAUSE, RUN, "worker",
            guard=lambda s: And(no_call(s), s.expired),
            effect=lambda s: {"applied": s.percent, "expired": False, "polled": False},
            calls=("resume",),
            doc="the pause share is over: resume the vCPUs for the run share",
        )
    )
    ts.append(
        Transition(
            RUN_ELAPSED, RUN, PAUSE, "worker",
            guard=lambda s: And(no_call(s), s.expired),
            effect=lambda s: {"applied": s.percent, "expired": False, "polled": False},
            calls=("pause",),
            doc="the run share is over: pause the vCPUs for the next pause share",
        )
    )
    # -- the vCPU call in progress ends (actor ``vcpu``): in any worker state, since the
    # state changed when the call started
    for st in WORKER_STATES:
        ts.append(
            Transition(
                CALL_RETURN, st, st, "vcpu",
                guard=lambda s: in_call(s),
                effect=lambda s: {"paused": s.call == PAUSE_CALL, "call": NO_CALL},
                doc="the pause()/resume() in progress returns: the vCPUs are as it left them",
            )
        )
        ts.append(
            Transition(
                FAULT, st, EXIT, "vcpu",
                guard=lambda s: And(in_call(s), Not(s.failed)),
                effect=lambda s: {"failed": True, "handed": False, **_leave_phase()},
                calls=("resume",),
                doc=(
                    "the pause()/resume() in progress raised (an exception of any kind, a "
                    "KeyboardInterrupt included): start a best-effort resume, record the "
                    "error for the caller, exit"
                ),
            )
        )
    ts.append(
        Transition(
            RESUME_FAILED, EXIT, EXIT, "vcpu",
            guard=lambda s: And(in_call(s), s.failed),
            effect=lambda s: {"call": NO_CALL, "paused": True},
            doc="a resume() after a failure raised too: the vCPUs may be left paused",
        )
    )
    return ts


def _user_call(s: State, k: Value) -> Value:
    """Every user call: one of the modelled callers, holding the (free) API lock."""
    return And(is_caller(k), lock_free(s))


def _worker_gone(s: State) -> Value:
    """The worker thread has exited (joined): in ``exit`` with no vCPU call in progress."""
    return And(is_state(s.w, EXIT), no_call(s))


def _controller_transitions() -> list[Transition]:
    ts = [
        Transition(
            CALL_SET, IDLE, IDLE, "controller",
            guard=lambda s, p, k: And(
                _user_call(s, k), api_accepts_percent(p), p != s.requested, Not(s.failed)
            ),
            effect=lambda s, p, k: {"chan": chan_push(s.chan, p), "requested": p},
            params=("p", "k"),
            doc="set_throttle_percent(p), 1 <= p <= 99, p new: enqueue and return",
        ),
        Transition(
            CALL_ABORT, IDLE, AWAITING_ABORT, "controller",
            guard=lambda s, k: And(
                _user_call(s, k), s.requested != ABORT_PERCENT, Not(s.failed)
            ),
            effect=lambda s, k: {
                "chan": chan_push(s.chan, CMD_ABORT), "requested": 0, "holder": k,
            },
            params=("k",),
            doc="set_throttle_percent(0) while throttling: enqueue abort, wait for the answer",
        ),
        Transition(
            ABORT_DONE, AWAITING_ABORT, IDLE, "controller",
            guard=lambda s: And(no_call(s), Or(s.resp, is_state(s.w, EXIT))),
            effect=lambda s: {"resp": False, "holder": 0},
            doc="the worker answered (or died: the error is raised to the caller)",
        ),
        Transition(
            SHUTDOWN_DONE, AWAITING_EXIT, DONE, "controller",
            guard=lambda s: And(_worker_gone(s), Not(s.paused)),
            effect=lambda s: {"resp": False, "holder": 0},
            doc="the worker thread has exited (joined) and the vCPUs run",
        ),
        Transition(
            SHUTDOWN_RESUME, AWAITING_EXIT, RESUMING, "controller",
            guard=lambda s: And(_worker_gone(s), s.paused),
            effect=lambda s: {"handed": False},
            calls=("resume",),
            doc=(
                "the worker exited leaving the vCPUs paused (a handover whose caller timed "
                "out, or a failed resume): shutdown() resumes them itself"
            ),
        ),
        Transition(
            RESUMED, RESUMING, DONE, "controller",
            guard=lambda s: And(no_call(s), Not(s.paused)),
            effect=lambda s: {"resp": False, "holder": 0},
            doc="shutdown()'s own resume() returned: closed, vCPUs running",
        ),
        Transition(
            RESUME_LEFT_PAUSED, RESUMING, CLOSING, "controller",
            guard=lambda s: And(no_call(s), s.paused),
            effect=lambda s: {"holder": 0},
            doc="shutdown()'s own resume() failed: it raises; shutdown() may be called again",
        ),
        Transition(
            HANDOVER_DONE, AWAITING_HANDOVER, DONE, "controller",
            guard=lambda s: And(_worker_gone(s), s.handed),
            effect=lambda s: {"resp": False, "owner": s.holder, "holder": 0},
            doc="the worker thread has exited (joined), vCPUs left paused for the caller",
        ),
        Transition(
            HANDOVER_FAILED, AWAITING_HANDOVER, CLOSING, "controller",
            guard=lambda s: And(_worker_gone(s), Not(s.handed)),
            effect=lambda s: {"resp": False, "holder": 0},
            doc="the worker failed instead of handing over: handover() raises, owns nothing",
        ),
    ]
    for st in (IDLE, STALLED):
        ts.append(
            Transition(
                CALL_SHUTDOWN, st, AWAITING_EXIT, "controller",
                guard=_user_call,
                effect=lambda s, k: {"chan": chan_push(s.chan, CMD_EXIT), "holder": k},
                params=("k",),
                doc="shutdown(): enqueue exit, wait for the worker to exit, join it",
            )
        )
    ts.append(
        Transition(
            CALL_SHUTDOWN, CLOSING, AWAITING_EXIT, "controller",
            guard=_user_call,
            effect=lambda s, k: {"holder": k},
            params=("k",),
            doc="shutdown() after a timed-out or failed exit: the exit is queued or done, wait",
        )
    )
    ts.append(
        Transition(
            CALL_SHUTDOWN, DONE, DONE, "controller",
            guard=_user_call, params=("k",),
            doc="shutdown() again: already closed, returns at once",
        )
    )
    ts.append(
        Transition(
            CALL_HANDOVER, IDLE, AWAITING_HANDOVER, "controller",
            guard=_user_call,
            effect=lambda s, k: {"chan": chan_push(s.chan, CMD_HANDOVER), "holder": k},
            params=("k",),
            doc="handover(): enqueue handover, wait for the worker to exit, join it",
        )
    )
    for st in (STALLED, CLOSING, DONE):
        ts.append(
            Transition(
                CALL_HANDOVER, st, st, "controller",
                guard=_user_call, params=("k",),
                doc="handover() after a timeout, a failure or shutdown: raises ThrottlerClosed",
            )
        )
    for st, dest in ((AWAITING_ABORT, STALLED), (AWAITING_EXIT, CLOSING),
                     (AWAITING_HANDOVER, CLOSING)):
        ts.append(
            Transition(
                TIMEOUT, st, dest, "controller",
                effect=lambda s: {"holder": 0},
                doc=(
                    "the caller's wait times out (ThrottlerTimeout); a late answer may still "
                    "come. Only shutdown() is possible afterwards (stalled: an abort is "
                    "outstanding; closing: an exit or handover is already queued)"
                ),
            )
        )
    return ts


def declared_transitions() -> tuple[Transition, ...]:
    return (*_worker_transitions(), *_controller_transitions())


def terminal(s: State) -> Value:
    """The only legitimate end: the worker exited and the controller returned."""
    return And(is_state(s.w, EXIT), is_state(s.c, DONE), no_call(s))


THROTTLE_SCHEMA = Schema(
    name="throttle",
    record=State,
    initial=INITIAL,
    machines=(
        MachineDecl("worker", "w", WORKER_STATES, (EXIT,)),
        MachineDecl("controller", "c", CONTROLLER_STATES, (DONE,)),
    ),
    actors={"worker": "worker", "clock": "worker", "vcpu": "worker",
            "controller": "controller"},
    fairness_groups=FAIRNESS_GROUPS,
    terminal=terminal,
    fault_triggers=FAULT_TRIGGERS,
    param_domains=param_domains,
    call_codes=CALL_CODES,
    call_var="call",
    channel_var="chan",
    value_names={"chan": COMMAND_NAMES},
    abstracts="time is abstracted by the clock's expire event, the vCPUs are all-or-nothing",
)
"""The throttle lifecycle's schema: the record, the worker and controller machines (clock
and vCPU steps are declared on the worker machine), fairness, faults, parameters."""

