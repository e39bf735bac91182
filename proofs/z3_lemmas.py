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
    DONE,
    EXIT,
    IDLE,
    PAUSE,
    THROTTLING,
    WAITING,
    is_set_command,
    is_valid_command,
)

from .encoding import as_bool


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
        n = z3.Length(s.chan)
        return z3.Implies(z3.And(i >= 0, i < n), as_bool(self.each(s, i, s.chan[i])))

    def z3(self, s: State) -> z3.BoolRef:
        """The lemma as one Z3 formula (a ForAll for element lemmas)."""
        if self.holds is not None:
            return as_bool(self.holds(s))
        i = z3.Int("i")
        return z3.ForAll([i], self.instance(s, i))

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


def _last_matches(s: State, x: Value) -> Value:
    """The last queued command is asynchronous (controller idle) or the one it waits for."""
    return Or(
        And(is_state(s.c, IDLE), Not(is_sync_command(x))),
        And(is_state(s.c, AWAITING_ABORT), x == CMD_ABORT),
        And(is_state(s.c, AWAITING_EXIT), x == CMD_EXIT),
        And(is_state(s.c, AWAITING_HANDOVER), x == CMD_HANDOVER),
    )


def _last_is(s: State, cmds: tuple[int, ...]) -> Value:
    """The queue is not empty and its newest element is one of ``cmds``."""
    n = chan_len(s.chan)
    if isinstance(n, int):  # concrete evaluation (checking a counterexample)
        return n > 0 and s.chan[n - 1] in cmds
    return And(n > 0, Or(*(s.chan[n - 1] == c for c in cmds)))

LEMMAS: tuple[Lemma, ...] = (
    Lemma(
        "HandedMeansExitedPaused",
        "A handed-over worker has exited and left the vCPUs paused.",
        "handed => w = exit /\\ paused",
        holds=lambda s: Implies(s.handed, And(is_state(s.w, EXIT), s.paused)),
    ),
    Lemma(
        "PausedIffPausePhase",
        "The vCPUs are paused exactly in a pause phase or after a handover.",
        "paused <=> w = throttling_pause \\/ handed",
        holds=lambda s: s.paused == Or(is_state(s.w, PAUSE), s.handed),
        needs=("HandedMeansExitedPaused",),
    ),
    Lemma(
        "FailedMeansExited",
        "A failed pause()/resume() made the worker exit.",
        "failed => w = exit",
        holds=lambda s: Implies(s.failed, is_state(s.w, EXIT)),
    ),
    Lemma(
        "DoneMeansExited",
        "The controller is done only after the worker exited.",
        "c = done => w = exit",
        holds=lambda s: Implies(is_state(s.c, DONE), is_state(s.w, EXIT)),
    ),
    Lemma(
        "QueueValid",
        "Every queued element is a command the worker accepts.",
        "\\A i \\in 1..Len(chan): chan[i] \\in 1..99 \\cup {ABORT, EXIT, HANDOVER}",
        each=lambda s, i, x: is_valid_command(x),
    ),
    Lemma(
        "QueueShape",
        "Until the controller is done, and unless a call failed, at most one synchronous "
        "command (abort, exit, handover) is queued, it is last, and it is the one the blocked "
        "controller waits for.",
        "c # done /\\ ~failed => \\A i \\in 1..Len(chan): (i < Len(chan) => chan[i] "
        "\\notin Sync) /\\ (i = Len(chan) => (c = idle /\\ chan[i] \\notin Sync \\/ "
        "c = awaiting_abort /\\ chan[i] = ABORT \\/ ...))",
        each=lambda s, i, x: Implies(
            And(Not(s.failed), Not(is_state(s.c, DONE))),
            And(
                Implies(i < chan_len(s.chan) - 1, Not(is_sync_command(x))),
                Implies(i == chan_len(s.chan) - 1, _last_matches(s, x)),
            ),
        ),
        needs=("FailedMeansExited", "RespMeansAnswered", "ActiveControllerWorkerAlive"),
    ),
    Lemma(
        "SentCommandQueued",
        "Until the worker has exited, the synchronous command the controller sent is still "
        "the last one queued (for an abort: until the worker answered).",
        "w # exit => (c = awaiting_exit => Last(chan) = EXIT) /\\ (c = awaiting_handover "
        "=> Last(chan) = HANDOVER) /\\ (c = awaiting_abort /\\ ~resp => Last(chan) = ABORT) "
        "/\\ (c = done => Last(chan) \\in {EXIT, HANDOVER})  (Last requires Len(chan) > 0)",
        holds=lambda s: Implies(Not(is_state(s.w, EXIT)), And(
            Implies(is_state(s.c, AWAITING_EXIT), _last_is(s, (CMD_EXIT,))),
            Implies(is_state(s.c, AWAITING_HANDOVER), _last_is(s, (CMD_HANDOVER,))),
            Implies(And(is_state(s.c, AWAITING_ABORT), Not(s.resp)),
                    _last_is(s, (CMD_ABORT,))),
            Implies(is_state(s.c, DONE), _last_is(s, (CMD_EXIT, CMD_HANDOVER))),
        )),
    ),
    Lemma(
        "RespMeansAnswered",
        "Until the controller is done, an unconsumed answer means the queue is drained and "
        "the worker is where the command sent it.",
        "resp /\\ c # done => ~failed /\\ Len(chan) = 0 /\\ (c = awaiting_abort /\\ "
        "w = waiting \\/ c \\in {awaiting_exit, awaiting_handover} /\\ w = exit)",
        holds=lambda s: Implies(
            And(s.resp, Not(is_state(s.c, DONE))),
            And(
                Not(s.failed), chan_len(s.chan) == 0,
                Or(
                    And(is_state(s.c, AWAITING_ABORT), is_state(s.w, WAITING)),
                    And(in_states(s.c, (AWAITING_EXIT, AWAITING_HANDOVER)),
                        is_state(s.w, EXIT)),
                ),
            ),
        ),
        needs=("QueueShape", "FailedMeansExited"),
    ),
    Lemma(
        "ActiveControllerWorkerAlive",
        "Before shutdown()/handover() the worker is not handed over and exits only by failing.",
        "c \\in {idle, awaiting_abort} => ~handed /\\ (w = exit => failed)",
        holds=lambda s: Implies(
            in_states(s.c, (IDLE, AWAITING_ABORT)),
            And(Not(s.handed), Implies(is_state(s.w, EXIT), s.failed)),
        ),
        needs=("QueueShape", "FailedMeansExited"),
    ),
    Lemma(
        "RequestedMeansWork",
        "Until something fails: with no percent requested the idle controller's worker waits "
        "on an empty queue; with one requested, or an abort outstanding, the worker throttles "
        "or a set command heads its queue.",
        "~failed => (c = awaiting_abort => requested = 0) /\\ "
        "(c = idle /\\ requested = 0 => w = waiting /\\ Len(chan) = 0) /\\ "
        "((c = idle /\\ requested # 0 \\/ c = awaiting_abort /\\ ~resp) => "
        "w \\in Throttling \\/ w = waiting /\\ Len(chan) > 0 /\\ Head(chan) \\in 1..99)",
        holds=lambda s: Implies(Not(s.failed), And(
            Implies(is_state(s.c, AWAITING_ABORT), s.requested == 0),
            Implies(And(is_state(s.c, IDLE), s.requested == 0),
                    And(is_state(s.w, WAITING), chan_len(s.chan) == 0)),
            Implies(Or(And(is_state(s.c, IDLE), s.requested != 0),
                       And(is_state(s.c, AWAITING_ABORT), Not(s.resp))),
                    Or(in_states(s.w, THROTTLING),
                       And(is_state(s.w, WAITING), chan_len(s.chan) > 0,
                           is_set_command(chan_head(s.chan))))),
        )),
        needs=("QueueShape", "RespMeansAnswered", "ActiveControllerWorkerAlive",
               "FailedMeansExited"),
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
