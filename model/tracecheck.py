"""Trace validation: replay the real throttler's event log against the spec's relation.

The throttler records every transition it fires (:class:`~autoconverge.impl.throttler.
TraceEvent`: machine, trigger, source, dest, params) in an order that is a valid
linearization of its two threads (it records a step before the step's effects reach the
other thread). :class:`SpecFollower` starts at ``spec.initial`` and, for each event, finds the
one transition of that machine, trigger and source that the spec enables *in the full global
state* (each thread of the implementation only sees its own part), checks that it reaches the
recorded destination, checks every step property on the step and every invariant on the new
state, and moves on. A step the spec does not allow raises :class:`TraceMismatch`.

What it guarantees: the implementation's recorded behaviour is a behaviour of the spec and
satisfies the spec's safety properties. What it does not: liveness (a log is finite), and
anything the implementation does without recording it (a vCPU call outside a transition -
only the best-effort resume after a failure, documented in the throttler).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from autoconverge.spec import Spec, State, Transition


class Event(Protocol):
    """What is needed of a recorded event (the throttler's TraceEvent has it)."""

    @property
    def machine(self) -> str: ...

    @property
    def trigger(self) -> str: ...

    @property
    def source(self) -> str: ...

    @property
    def dest(self) -> str: ...

    @property
    def params(self) -> Mapping[str, int]: ...


class TraceMismatch(AssertionError):
    """The implementation took a step the spec does not allow, or broke a property."""


@dataclass
class SpecFollower:
    """Follows an implementation's event log through the spec, one event at a time."""

    spec: Spec
    state: State = field(init=False)
    steps: int = 0
    history: list[tuple[str, State]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.spec.initial
        self._relation = self.spec.relation()

    def step(self, event: Event) -> State:
        pre = self.state
        params = dict(event.params)
        owner = pre.c if event.machine == "controller" else pre.w
        where = f"event #{self.steps} {event.machine}.{event.trigger}({params})"
        if owner != event.source:
            raise TraceMismatch(f"{where}: recorded source {event.source!r} but the spec's "
                                f"{event.machine} is in {owner!r}; state {pre}")
        candidates = [t for t in self._relation
                      if t.machine == event.machine and t.trigger == event.trigger
                      and t.source == event.source and t.enabled(pre, **params)]
        if len(candidates) != 1:
            raise TraceMismatch(
                f"{where}: the spec enables {len(candidates)} matching transitions in {pre}"
            )
        t = candidates[0]
        post: State = t.apply(pre, **params)
        if t.dest != event.dest:
            raise TraceMismatch(f"{where}: recorded dest {event.dest!r}, spec says {t.dest!r}")
        self._check(where, pre, t, post)
        self.state = post
        self.steps += 1
        self.history.append((f"{event.machine}.{event.trigger}", post))
        return post

    def follow(self, events: Iterable[Event]) -> State:
        for e in events:
            self.step(e)
        return self.state

    def _check(self, where: str, pre: State, t: Transition, post: State) -> None:
        for p in self.spec.properties:
            if p.kind == "step" and p.step is not None and not p.step(pre, t, post):
                raise TraceMismatch(f"{where}: step property {p.name} violated: {p.statement}")
            if p.kind == "invariant" and p.invariant is not None and not p.invariant(post):
                raise TraceMismatch(f"{where}: invariant {p.name} violated in {post}")


IMPL_FIELDS = ("w", "c", "percent", "applied", "paused", "call", "handed", "failed",
               "expired", "polled", "requested", "holder", "owner")


def impl_state(throttler: Any) -> dict[str, Any]:
    """The implementation's values of the spec's variables (channel and answer excluded)."""
    w = throttler._worker_model
    c = throttler._controller
    return {
        "w": w.state, "c": c.state, "percent": w.percent, "applied": w.applied,
        "paused": w.paused, "call": w.call, "handed": w.handed, "failed": w.failed,
        "expired": w.expired, "polled": w.polled, "requested": c.requested,
        "holder": c.holder, "owner": c.owner,
    }


def differences(model: State, throttler: Any) -> dict[str, tuple[Any, Any]]:
    """Fields where the spec model and the implementation disagree: {field: (spec, impl)}."""
    actual = impl_state(throttler)
    return {f: (getattr(model, f), actual[f]) for f in IMPL_FIELDS
            if getattr(model, f) != actual[f]}
