"""The named lemmas that strengthen the spec's properties into inductive invariants.

Each lemma is a small claim about every reachable state, written with the spec's own
:mod:`autoconverge.spec.expr` helpers over a :class:`State` (so it evaluates on Z3 terms for
the proofs and on concrete values to check a counterexample-to-induction). A lemma is either

- quantifier-free (``holds(s)``), or
- an *element* lemma over the unbounded channel: ``forall i in 0..Len(chan)-1:
  each(s, i, chan[i])``.

``needs`` names the lemmas its own induction step relies on; a property's strengthening is
the closure of the lemmas it names (:func:`closure`). The lemmas are claims too: for a
bug-zoo variant a lemma may stop being inductive, and the proofs then report exactly which
lemma, under which transition, failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import z3

from autoconverge.spec import CMD_ABORT, CMD_EXIT, CMD_HANDOVER, State
from autoconverge.spec.expr import (
    And,
    Implies,
    Not,
    Or,
    Value,
    chan_head,
    chan_len,
    in_states,
    is_state,
)
from autoconverge.spec.lifecycle import (
    AWAITING_ABORT,
    AWAITING_EXIT,
    AWAITING_HANDOVER,
    CLOSING,
    DONE,
    EXIT,
    IDLE,
    IN_CALL,
    NO_CALL,
    PAUSE,
    PAUSE_CALL,
    RESUME_CALL,
    RESUMING,
    THROTTLING,
    WAITING,
    is_set_command,
    is_valid_command,
    no_call,
)

from .encoding import as_bool

_TERMS: dict[tuple[int, int, int], tuple[Any, Any, Any, z3.BoolRef]] = {}
"""Each lemma's formula (index -1) and element instances (index: the term's Z3 id) by
(lemma, state record): a prover asks the same lemma of the same pre- or post-state in
hundreds of queries, and building the term is most of a query's cost in Python. Z3 terms
are hash-consed, so the cached term is the very term built again would be: no query
changes. Each entry keeps the lemma, record and index it was built from alive, so their
ids stay theirs."""


@dataclass(frozen=True)
class Lemma:
    name: str
    statement: str
    formula: str
    holds: Callable[[State], Value] | None = None
    each: Callable[[State, Value, Value], Value] | None = None
    needs: tuple[str, ...] = ()

    @property
    def quantified(self) -> bool:
        return self.each is not None

    def instance(self, s: State, i: z3.ArithRef) -> z3.BoolRef:
        """The element lemma's body at index ``i`` (guarded by ``0 <= i < Len(chan)``)."""
        assert self.each is not None
        key = (id(self), id(s), i.get_id())
        hit = _TERMS.get(key)
        if hit is None:
            n = z3.Length(s.chan)
            hit = _TERMS[key] = (self, s, i, z3.Implies(z3.And(i >= 0, i < n),
                                                        as_bool(self.each(s, i, s.chan[i]))))
        return hit[3]

    def z3(self, s: State) -> z3.BoolRef:
        """The lemma as one Z3 formula (a ForAll for element lemmas)."""
        key = (id(self), id(s), -1)
        hit = _TERMS.get(key)
        if hit is None:
            if self.holds is not None:
                term = as_bool(self.holds(s))
            else:
                i = z3.Int("i")
                term = z3.ForAll([i], self.instance(s, i))
            hit = _TERMS[key] = (self, s, None, term)
        return hit[3]

    def concrete(self, s: State) -> bool:
        """The lemma on a concrete state (Python values)."""
        if self.holds is not None:
            return bool(self.holds(s))
        assert self.each is not None
        return all(bool(self.each(s, i, x)) for i, x in enumerate(s.chan))

    def violations(self, s: State) -> list[int]:
        """Indices where a concrete state breaks an element lemma."""
        assert self.each is not None
        return [i for i, x in enumerate(s.chan) if not bool(self.each(s, i, x))]


def is_sync_command(x: Value) -> Value:
    """A command the controller waits for an answer to."""
    return Or(x == CMD_ABORT, x == CMD_EXIT, x == CMD_HANDOVER)


def _last_is(s: State, cmds: tuple[int, ...]) -> Value:
    """The queue is not empty and its newest element is one of ``cmds``."""
    n = chan_len(s.chan)
    if isinstance(n, int):  # concrete evaluation (checking a counterexample)
        return n > 0 and s.chan[n - 1] in cmds
    return And(n > 0, Or(*(s.chan[n - 1] == c for c in cmds)))


CLOSED_OR_CLOSING: tuple[str, ...] = (
    AWAITING_EXIT, AWAITING_HANDOVER, RESUMING, CLOSING, DONE,
)
"""The controller states after an exit or handover was sent."""


def _alive(s: State) -> Value:
    return Not(s.failed)


LEMMAS: tuple[Lemma, ...] = (
    Lemma(
        "CallInRange",
        "The vCPU call in progress is none, pause or resume.",
        "call \\in {NONE, PAUSE, RESUME}",
        holds=lambda s: Or(s.call == NO_CALL, s.call == PAUSE_CALL, s.call == RESUME_CALL),
    ),
    Lemma(
        "FailedMeansExited",
        "A failed pause()/resume() made the worker exit; it was not handed over, and only a "
        "resume may still be in progress.",
        "failed => w = exit /\\ ~handed /\\ call # PAUSE",
        holds=lambda s: Implies(
            s.failed, And(is_state(s.w, EXIT), Not(s.handed), s.call != PAUSE_CALL)
        ),
    ),
    Lemma(
        "HandedMeansExitedPaused",
        "A handed-over worker has exited; the vCPUs are paused once its pause() returned.",
        "handed => w = exit /\\ ~failed /\\ call # RESUME /\\ (call = NONE => paused)",
        holds=lambda s: Implies(s.handed, And(
            is_state(s.w, EXIT), Not(s.failed), s.call != RESUME_CALL,
            Implies(s.call == NO_CALL, s.paused),
        )),
        needs=("FailedMeansExited", "VcpusMatchState"),
    ),
    Lemma(
        "VcpusMatchState",
        "Unless a call failed, the vCPUs are paused exactly in a pause phase or after a "
        "handover, a pause() in progress is entering one, a resume() in progress leaving one.",
        "~failed => (call = NONE => (paused <=> w = throttling_pause \\/ handed)) /\\ "
        "(call = PAUSE => ~paused /\\ (w = throttling_pause \\/ handed)) /\\ "
        "(call = RESUME => paused /\\ w # throttling_pause /\\ ~handed)",
        holds=lambda s: Implies(_alive(s), And(
            Implies(s.call == NO_CALL, s.paused == Or(is_state(s.w, PAUSE), s.handed)),
            Implies(s.call == PAUSE_CALL,
                    And(Not(s.paused), Or(is_state(s.w, PAUSE), s.handed))),
            Implies(s.call == RESUME_CALL,
                    And(s.paused, Not(is_state(s.w, PAUSE)), Not(s.handed))),
        )),
        needs=("CallInRange", "FailedMeansExited", "HandedMeansExitedPaused"),
    ),
    Lemma(
        "CallOnlyAtPhaseStart",
        "A vCPU call in progress while throttling is the one that started the phase.",
        "w \\in Throttling /\\ call # NONE => ~expired /\\ ~polled /\\ percent = applied",
        holds=lambda s: Implies(
            And(in_states(s.w, THROTTLING), s.call != NO_CALL),
            And(Not(s.expired), Not(s.polled), s.percent == s.applied),
        ),
    ),
    Lemma(
        "PhaseFlagsOnlyInPhase",
        "Outside a throttling phase no deadline is pending and nothing was polled.",
        "w \\notin Throttling => ~expired /\\ ~polled",
        holds=lambda s: Implies(
            Not(in_states(s.w, THROTTLING)), And(Not(s.expired), Not(s.polled))
        ),
    ),
    Lemma(
        "LockMatchesCall",
        "The API lock is held exactly while a caller is inside a blocking call.",
        "holder # 0 <=> c \\in {awaiting_abort, awaiting_exit, awaiting_handover, resuming}",
        holds=lambda s: (s.holder != 0) == in_states(s.c, IN_CALL),
    ),
    Lemma(
        "ClosedMeansGone",
        "The controller is done, or resuming the vCPUs itself, only after the worker exited "
        "(and, done, with no call in progress).",
        "c = done => w = exit /\\ call = NONE; c = resuming => w = exit /\\ ~handed",
        holds=lambda s: And(
            Implies(is_state(s.c, DONE), And(is_state(s.w, EXIT), no_call(s))),
            Implies(is_state(s.c, RESUMING), And(is_state(s.w, EXIT), Not(s.handed))),
        ),
    ),
    Lemma(
        "OwnerOnlyAfterHandover",
        "A caller owns the vCPUs exactly when its handover() returned them paused.",
        "(owner # 0 => c = done /\\ handed /\\ paused /\\ call = NONE) /\\ "
        "(c = done /\\ handed => owner # 0)",
        holds=lambda s: And(
            Implies(s.owner != 0,
                    And(is_state(s.c, DONE), s.handed, s.paused, no_call(s))),
            Implies(And(is_state(s.c, DONE), s.handed), s.owner != 0),
        ),
        needs=("ClosedMeansGone", "HandedMeansExitedPaused", "LockMatchesCall"),
    ),
    Lemma(
        "ClosedRunningUnlessOwned",
        "Once closed, the vCPUs are paused exactly when a caller owns them (its handover "
        "returned).",
        "c = done => (paused <=> owner # 0)",
        holds=lambda s: Implies(is_state(s.c, DONE), s.paused == (s.owner != 0)),
        needs=("OwnerOnlyAfterHandover", "HandedMeansExitedPaused", "ClosedMeansGone",
               "LockMatchesCall"),
    ),
    Lemma(
        "QueueValid",
        "Every queued element is a command the worker accepts.",
        "\\A i \\in 1..Len(chan): chan[i] \\in 1..99 \\cup {ABORT, EXIT, HANDOVER}",
        each=lambda s, i, x: is_valid_command(x),
    ),
    Lemma(
        "ExitCommandLast",
        "Unless a call failed, an exit or handover is the last command queued, and only once a "
        "blocking call sent it.",
        "~failed => \\A i \\in 1..Len(chan): chan[i] \\in {EXIT, HANDOVER} => i = Len(chan) "
        "/\\ c \\in {awaiting_exit, awaiting_handover, resuming, closing, done}",
        each=lambda s, i, x: Implies(
            And(_alive(s), Or(x == CMD_EXIT, x == CMD_HANDOVER)),
            And(i == chan_len(s.chan) - 1, in_states(s.c, CLOSED_OR_CLOSING)),
        ),
        needs=("QueueShape", "FailedMeansExited"),
    ),
    Lemma(
        "AbortCommandLast",
        "Unless a call failed, a queued abort is the last command, or the last but an exit "
        "(a shutdown() after the abort timed out).",
        "~failed => \\A i \\in 1..Len(chan): chan[i] = ABORT => i = Len(chan) \\/ "
        "i = Len(chan) - 1 /\\ Last(chan) = EXIT",
        each=lambda s, i, x: Implies(
            And(_alive(s), x == CMD_ABORT),
            Or(i == chan_len(s.chan) - 1,
               And(i == chan_len(s.chan) - 2, _last_is(s, (CMD_EXIT,)))),
        ),
        needs=("QueueShape", "ExitCommandLast", "FailedMeansExited"),
    ),
    Lemma(
        "QueueShape",
        "Unless a call failed: an idle controller's queue holds only percents; one blocked "
        "in abort/handover has its command last (an abort until it is answered).",
        "~failed => \\A i \\in 1..Len(chan): (c = idle => chan[i] \\in 1..99) /\\ "
        "(c = awaiting_abort => chan[i] \\in 1..99 \\/ chan[i] = ABORT /\\ i = Len(chan) "
        "/\\ ~resp) /\\ (c = awaiting_handover => chan[i] \\in 1..99 \\/ chan[i] = HANDOVER "
        "/\\ i = Len(chan))",
        each=lambda s, i, x: Implies(_alive(s), And(
            Implies(is_state(s.c, IDLE), is_set_command(x)),
            Implies(is_state(s.c, AWAITING_ABORT), Or(
                is_set_command(x),
                And(x == CMD_ABORT, i == chan_len(s.chan) - 1, Not(s.resp)),
            )),
            Implies(is_state(s.c, AWAITING_HANDOVER), Or(
                is_set_command(x), And(x == CMD_HANDOVER, i == chan_len(s.chan) - 1),
            )),
        )),
        needs=("FailedMeansExited", "AliveBeforeClose", "RespMeansAnswered"),
    ),
    Lemma(
        "NoAbortHeadWhileWaiting",
        "Unless a call failed, a waiting worker finds a percent before any queued abort.",
        "~failed /\\ w = waiting => \\A i \\in 1..Len(chan): chan[i] = ABORT => i > 1 "
        "/\\ Head(chan) \\in 1..99",
        each=lambda s, i, x: Implies(
            And(_alive(s), is_state(s.w, WAITING), x == CMD_ABORT),
            And(i >= 1, is_set_command(chan_head(s.chan))),
        ),
        needs=("AbortCommandLast", "ExitCommandLast", "RequestedMeansWork", "FailedMeansExited"),
    ),
    Lemma(
        "AliveBeforeClose",
        "Before shutdown()/handover() the worker is not handed over and exits only by failing.",
        "~failed /\\ c \\in {idle, awaiting_abort} => w # exit /\\ ~handed",
        holds=lambda s: Implies(
            And(_alive(s), in_states(s.c, (IDLE, AWAITING_ABORT))),
            And(Not(is_state(s.w, EXIT)), Not(s.handed)),
        ),
        needs=("QueueShape", "FailedMeansExited"),
    ),
    Lemma(
        "RespMeansAnswered",
        "Unless a call failed, an answer reaches an idle or aborting controller only as the "
        "abort's: the worker is waiting on a drained queue.",
        "~failed /\\ resp /\\ c \\in {idle, awaiting_abort} => c = awaiting_abort /\\ "
        "w = waiting /\\ Len(chan) = 0",
        holds=lambda s: Implies(
            And(_alive(s), s.resp, in_states(s.c, (IDLE, AWAITING_ABORT))),
            And(is_state(s.c, AWAITING_ABORT), is_state(s.w, WAITING), chan_len(s.chan) == 0),
        ),
        needs=("QueueShape", "FailedMeansExited", "AliveBeforeClose"),
    ),
    Lemma(
        "SentCommandQueued",
        "Until the worker has exited, the exit or handover a caller sent is still the last "
        "command queued, and a blocked abort's command too until it is answered.",
        "w # exit => (c \\in {awaiting_exit, closing} => Last(chan) \\in {EXIT, HANDOVER}) "
        "/\\ (c = awaiting_handover => Last(chan) = HANDOVER) /\\ (c = awaiting_abort /\\ "
        "~resp => Last(chan) = ABORT)",
        holds=lambda s: Implies(Not(is_state(s.w, EXIT)), And(
            Implies(in_states(s.c, (AWAITING_EXIT, CLOSING)),
                    _last_is(s, (CMD_EXIT, CMD_HANDOVER))),
            Implies(is_state(s.c, AWAITING_HANDOVER), _last_is(s, (CMD_HANDOVER,))),
            Implies(And(is_state(s.c, AWAITING_ABORT), Not(s.resp)),
                    _last_is(s, (CMD_ABORT,))),
        )),
        needs=("FailedMeansExited", "AbortCommandLast", "ExitCommandLast", "ClosedMeansGone"),
    ),
    Lemma(
        "RequestedMeansWork",
        "Until something fails: with no percent requested the idle controller's worker waits "
        "on an empty queue; with one requested, or an abort outstanding, the worker throttles "
        "or a percent heads its queue.",
        "~failed => (c = awaiting_abort => requested = 0) /\\ "
        "(c = idle /\\ requested = 0 => w = waiting /\\ Len(chan) = 0) /\\ "
        "((c = idle /\\ requested # 0 \\/ c = awaiting_abort /\\ ~resp) => "
        "w \\in Throttling \\/ w = waiting /\\ Len(chan) > 0 /\\ Head(chan) \\in 1..99)",
        holds=lambda s: Implies(_alive(s), And(
            Implies(is_state(s.c, AWAITING_ABORT), s.requested == 0),
            Implies(And(is_state(s.c, IDLE), s.requested == 0),
                    And(is_state(s.w, WAITING), chan_len(s.chan) == 0)),
            Implies(Or(And(is_state(s.c, IDLE), s.requested != 0),
                       And(is_state(s.c, AWAITING_ABORT), Not(s.resp))),
                    Or(in_states(s.w, THROTTLING),
                       And(is_state(s.w, WAITING), chan_len(s.chan) > 0,
                           is_set_command(chan_head(s.chan))))),
        )),
        needs=("QueueShape", "RespMeansAnswered", "AliveBeforeClose", "FailedMeansExited"),
    ),
)


def lemma(name: str) -> Lemma:
    for lem in LEMMAS:
        if lem.name == name:
            return lem
    raise KeyError(f"no lemma {name!r}")


def closure(names: Iterable[str], extra: Iterable[Lemma] = ()) -> tuple[Lemma, ...]:
    """The named lemmas plus everything their induction steps need (stable order)."""
    known = {lem.name: lem for lem in (*LEMMAS, *extra)}
    out: dict[str, Lemma] = {}
    todo = list(names)
    while todo:
        n = todo.pop(0)
        if n in out:
            continue
        out[n] = known[n]
        todo.extend(known[n].needs)
    order = [lem.name for lem in (*extra, *LEMMAS)]
    return tuple(out[n] for n in order if n in out)
