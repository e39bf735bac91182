"""Trace validation for the migration: do the two sides' recorded steps fit one spec behaviour?

One job. Each side of a real migration records the steps it fired on its machine of the
migration spec (``MigrationResult.trace``, ``DestinationResult.trace``: ``trigger@state``,
see :mod:`autoconverge.impl.migration.lifecycle`). Each side sees only its own steps; the
environment's - the throttler handing over, the guest writing, the user cancelling, the
clock, the network breaking, the operator, the destination dying - and the other side's are
not in its trace. :func:`check_traces` decides whether some behaviour of the spec has both
traces as its projections: the source's observed steps in the source trace's order, the
destination's in the destination trace's, any number of unobserved environment steps
interleaved. Either trace may be empty or end early (that side died, or was killed mid-run):
a finite path of the spec is enough, nothing is required of what comes after it.
:func:`check_side` validates one side's trace alone (the other side's steps are then free,
as the environment's are).

How: a breadth-first search over (spec state, steps of the source trace matched, steps of
the destination trace matched), with the spec's concrete successors (cached per spec state:
the migration spec has about a thousand reachable states). A step of a side is
*observed* by it (:func:`observed_by`): its own actor's transitions, plus the clock's
``handover_timeout`` (the source's handover() raising) for the source and the crash's
``start_fails`` (its VM's start raising) for the destination.

What it guarantees: an ``ok`` result comes with a witness, one interleaving of spec steps
whose projections are the traces. What it does not: liveness (a trace is finite), and
nothing about what a side did without firing a step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autoconverge.spec import migration as M
from autoconverge.spec.core import Spec, Transition
from autoconverge.spec.specs import MIGRATION_SPEC

Side = Literal["source", "destination"]
SIDES: tuple[Side, ...] = ("source", "destination")

SEEN_FROM_ENVIRONMENT: dict[Side, frozenset[str]] = {
    "source": frozenset({M.HANDOVER_TIMEOUT, M.SOURCE_ERROR}),
    "destination": frozenset({M.START_FAILS, M.REFUSE}),
}
"""Environment steps a side takes part in (and records): the source's handover() raising on
the clock's timeout, the source failing itself; the destination's VM failing to start, the
destination refusing."""


def observed_by(t: Transition) -> Side | None:
    """The side whose trace records ``t`` (None: an environment step no side records)."""
    for side in SIDES:
        if t.machine == side and (t.actor == side or t.trigger in SEEN_FROM_ENVIRONMENT[side]):
            return side
    return None


@dataclass(frozen=True)
class Unmatched:
    """A step of a trace that no behaviour of the spec could take after the matched ones."""

    side: Side
    index: int
    """Its position in that side's trace (0-based)."""
    step: str

    def __str__(self) -> str:
        return f"{self.side} step #{self.index} {self.step!r}"


@dataclass(frozen=True)
class TraceCheck:
    """The verdict: ``ok``, how far each trace was matched, what could not be."""

    ok: bool
    source_matched: int
    """Steps of the source trace matched (all of them when ok; else at the furthest point
    the search reached, counted as source plus destination steps)."""
    destination_matched: int
    source_steps: int
    destination_steps: int
    unmatched: tuple[Unmatched, ...]
    """The next step of each side at that furthest point that could not be matched (empty
    when ok)."""
    state: Any
    """The spec state at that point (at the end of the witness when ok)."""
    possible: tuple[str, ...]
    """What the sides could record next there instead (``side: trigger@state``), for the
    report."""
    witness: tuple[str, ...] = ()
    """When ok: the interleaving found, each step as ``actor.trigger@state``."""

    def __bool__(self) -> bool:
        return self.ok

    @property
    def first_unmatched(self) -> Unmatched | None:
        return self.unmatched[0] if self.unmatched else None

    def explain(self) -> str:
        if self.ok:
            return (f"ok: source {self.source_steps} and destination {self.destination_steps} "
                    f"steps fit one behaviour of the spec ({len(self.witness)} steps in all)")
        which = " / ".join(str(u) for u in self.unmatched) or "nothing"
        return (f"not a behaviour of the spec: matched source {self.source_matched}/"
                f"{self.source_steps}, destination {self.destination_matched}/"
                f"{self.destination_steps}; cannot match {which}; possible next: "
                f"{', '.join(self.possible) or 'nothing'}")


Node = tuple[Any, int, int]
_Succ = tuple[Transition, Side | None, str, Any]


class _Successors:
    """The spec's concrete successors of a state, computed once per state."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._cache: dict[Any, tuple[_Succ, ...]] = {}

    def __call__(self, s: Any) -> tuple[_Succ, ...]:
        got = self._cache.get(s)
        if got is None:
            got = tuple((t, observed_by(t), t.label, nxt)
                        for t, _, nxt in self.spec.successors(s, self.spec.param_domains()))
            self._cache[s] = got
        return got


def check_traces(source: Sequence[str] | None, destination: Sequence[str] | None,
                 spec: Spec = MIGRATION_SPEC) -> TraceCheck:
    """Do ``source`` and ``destination`` (``trigger@state`` each) fit one behaviour of
    ``spec`` as its projections? None for a side: that side is not constrained (its steps
    are free, as the environment's are; :func:`check_side`) - what to pass for a side whose
    trace was lost (a SIGKILLed receiver prints none); an empty trace says the side took no
    step at all."""
    traces: dict[Side, tuple[str, ...] | None] = {
        "source": None if source is None else tuple(source),
        "destination": None if destination is None else tuple(destination),
    }
    n_src = len(traces["source"] or ())
    n_dst = len(traces["destination"] or ())
    succ = _Successors(spec)
    start: Node = (spec.initial, 0, 0)
    parent: dict[Node, tuple[Node, str] | None] = {start: None}
    queue: deque[Node] = deque([start])
    best = start
    while queue:
        node = queue.popleft()
        s, i, j = node
        if i == n_src and j == n_dst:
            return _verdict(True, node, traces, succ, parent)
        if i + j > best[1] + best[2]:
            best = node
        for t, side, label, nxt in succ(s):
            if side is None or traces[side] is None:
                ni, nj = i, j
            elif side == "source":
                if i >= n_src or traces["source"][i] != label:  # type: ignore[index]
                    continue
                ni, nj = i + 1, j
            else:
                if j >= n_dst or traces["destination"][j] != label:  # type: ignore[index]
                    continue
                ni, nj = i, j + 1
            child = (nxt, ni, nj)
            if child not in parent:
                parent[child] = (node, f"{t.actor}.{label}")
                queue.append(child)
    return _verdict(False, best, traces, succ, parent)


def check_side(side: Side, trace: Sequence[str], spec: Spec = MIGRATION_SPEC) -> TraceCheck:
    """Does one side's trace fit some behaviour of ``spec`` (the other side unconstrained)?"""
    if side == "source":
        return check_traces(trace, None, spec)
    if side == "destination":
        return check_traces(None, trace, spec)
    raise ValueError(f"a side is 'source' or 'destination', not {side!r}")


def _verdict(ok: bool, node: Node, traces: dict[Side, tuple[str, ...] | None],
             succ: _Successors, parent: dict[Node, tuple[Node, str] | None]) -> TraceCheck:
    s, i, j = node
    src, dst = traces["source"] or (), traces["destination"] or ()
    witness: list[str] = []
    if ok:
        at: Node | None = node
        while at is not None and parent[at] is not None:
            prev, step = parent[at]  # type: ignore[misc]
            witness.append(step)
            at = prev
        witness.reverse()
    unmatched: list[Unmatched] = []
    if not ok:
        if i < len(src):
            unmatched.append(Unmatched("source", i, src[i]))
        if j < len(dst):
            unmatched.append(Unmatched("destination", j, dst[j]))
    possible = () if ok else _next_observed(s, traces, succ)
    return TraceCheck(ok, i, j, len(src), len(dst), tuple(unmatched), s, possible,
                      tuple(witness))


def _next_observed(s: Any, traces: dict[Side, tuple[str, ...] | None],
                   succ: _Successors) -> tuple[str, ...]:
    """The steps the constrained sides could record next from ``s``, after any number of
    environment (and unconstrained) steps."""
    seen, todo, out = {s}, [s], dict[str, None]()
    while todo:
        for _, side, label, nxt in succ(todo.pop()):
            if side is not None and traces[side] is not None:
                out[f"{side}: {label}"] = None
            elif nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return tuple(out)
