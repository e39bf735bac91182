"""A Hypothesis state machine over the abstract model alone: long random runs of the spec.

:func:`make_abstract_machine` builds a ``RuleBasedStateMachine`` class for a spec (the shipped
one or a bug-zoo variant). Each spec trigger is one rule; its precondition is "some
transition with this trigger is enabled" (:meth:`Transition.enabled`, the spec's guards), and
the rule fires the first enabled one in relation order, as ``transitions`` would. Parameters
(``call_set``'s percent ``p``, every user call's caller ``k``) are drawn from the enabled
values of their domains (:meth:`Spec.param_domains` over the configured percents). There
is no call bound and no channel bound: runs go far beyond the explorer's bound
(``stateful_step_count`` steps, user calls and timeouts included).

Checked after every step (each step of a fair schedule too): every ``invariant`` property,
the ``deadlock`` property (a non-terminal state has an enabled transition other than a
fault), and every ``step`` property on the step just taken; a failure names every property
the state (or step) violates. ``stutter`` is always enabled, so a run that reaches exit
does not end in ``InvalidDefinition``.

Liveness, bounded: the rule ``fair_schedule`` is enabled while a leads-to property is
pending (its ``p`` holds, its ``q`` does not: for the throttle, a caller blocked in
abort/shutdown/handover, a percent not yet applied, paused vCPUs). It runs the spec's weakly
fair groups (the throttle's: worker, clock, a vCPU call ending, blocking-call completions;
never a timeout or a user call) under a round-robin scheduler (each enabled group moves
within one rotation; which transition a group takes, and the rotation's order, are drawn)
and requires every pending ``q`` within :func:`fair_bound` steps (the throttle:
``4 * len(chan) + 8``; a lifecycle without a FIFO: 64). The scheduler
never picks a fault (unless it is a group's only move): the bound is about calls returning
when nothing fails, and a failure only shortens the way to exit. Why that bound holds for
the shipped spec: every phase consumes at least one queued command (the clock cannot expire
before the worker has looked at a non-empty queue), a phase costs at most four steps
(receive, expire, boundary, the boundary's pause()/resume() returning), and returning takes
at most three (the worker's receive, its vCPU call returning, the controller's completion),
plus slack for a phase already expired when the schedule starts. A worker that sleeps again
with a command queued (variant ``sleeps_with_shutdown_queued``) never returns under a
rotation in which the clock follows the vCPU before the worker does (the clock expires the
phase the moment the boundary's call returns, before the worker looks at the queue), so the
bound is exceeded and the machine fails with the violated leads-to properties (unless a step
property, ``QueueReadEveryPhase``, names the bad sleep first). This is a *bounded* check of
``~>``: the explorer's fair-cycle search is the complete one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from autoconverge.spec import Property, Spec, State, Transition
from autoconverge.spec.specs import probe_percents

from .bound import BoundTransition
from .config import default_section, load_config
from .trace import fmt_state


class PropertyViolation(AssertionError):
    """A spec property failed on a Hypothesis run; ``prop`` names it (or them)."""

    def __init__(self, prop: str, message: str, trace: list[str]) -> None:
        self.prop = prop
        self.trace = trace
        steps = "\n".join(f"  {i:3}  {line}" for i, line in enumerate(trace))
        super().__init__(f"{prop} violated: {message}\n{steps}")


def fair_bound(spec: Spec, s: Any) -> int:
    """Fair-scheduler steps within which a leads-to's ``q`` must follow (see module doc): a
    blocking call waits for at most the queued commands ahead of it (4 steps each) plus 8;
    a lifecycle without a FIFO gets a fixed 64 (each of its protocol steps is at most one
    fair step of some actor)."""
    chan = spec.schema.channel_var
    return 4 * len(getattr(s, chan)) + 8 if chan is not None else 64


class AbstractModelMachine(RuleBasedStateMachine):
    """Base class; :func:`make_abstract_machine` fills the class variables and the rules."""

    spec: ClassVar[Spec]
    relation: ClassVar[tuple[Transition, ...]]
    percents: ClassVar[tuple[int, ...]]
    faults: ClassVar[bool]
    unfair_triggers: ClassVar[frozenset[str]]
    """Triggers with no weakly fair transition (user calls, timeouts, failures)."""
    _enabled_cache: ClassVar[dict[State, dict[str, list[BoundTransition]]]]

    def __init__(self) -> None:
        super().__init__()
        self.state: State = self.spec.initial
        self.trace: list[str] = [fmt_state(self.state, None, self.spec.schema.value_names)]
        self.steps = 0
        self.swarm: frozenset[str] = self.unfair_triggers

    @initialize(data=st.data())
    def choose_swarm(self, data: st.DataObject) -> None:
        """Swarm testing: each run allows a drawn subset of the unfair triggers (user calls,
        timeouts, failures). A run where, say, only the link may break goes deeper than one
        where every interruption competes (the migration's commit window); every subset,
        all of them included, is possible."""
        if self.unfair_triggers:
            self.swarm = frozenset(data.draw(
                st.sets(st.sampled_from(sorted(self.unfair_triggers)), min_size=1),
                label="swarm"))

    def allowed(self, trigger: str) -> bool:
        return trigger not in self.unfair_triggers or trigger in self.swarm

    # -- spec evaluation (memoized per state record) ---------------------------------------
    @classmethod
    def enabled(cls, s: State) -> dict[str, list[BoundTransition]]:
        """trigger -> the transitions with parameters enabled in ``s`` (first per params wins)."""
        hit = cls._enabled_cache.get(s)
        if hit is not None:
            return hit
        out: dict[str, list[BoundTransition]] = {}
        taken: set[tuple[str, tuple[tuple[str, int], ...]]] = set()
        for t in cls.relation:
            if t.is_fault and not cls.faults:
                continue
            for params in _combos(t.params, cls.spec.param_domains(cls.percents)):
                key = (t.trigger, tuple(sorted(params.items())))
                if key in taken:
                    continue  # transitions fires the first enabled one of a trigger
                if t.enabled(s, **params):
                    taken.add(key)
                    out.setdefault(t.trigger, []).append(
                        BoundTransition(t, tuple(params.items())))
        if len(cls._enabled_cache) < 200_000:
            cls._enabled_cache[s] = out
        return out

    def fire(self, step: BoundTransition) -> None:
        pre, t = self.state, step.transition
        post = t.apply(pre, **step.params_dict)
        args = ", ".join(f"{k}={v}" for k, v in step.params)
        self.trace.append(f"{t.actor}: {t.trigger}({args}) -> "
                          f"{fmt_state(post, None, self.spec.schema.value_names)}")
        self.state = post
        self.steps += 1
        # every state reached is checked, inside a fair schedule's run of steps too
        self.check_state([p for p in self.spec.properties
                          if p.kind == "step" and not p.step(pre, t, post)])

    def fire_trigger(self, trigger: str, data: st.DataObject) -> None:
        choices = self.enabled(self.state)[trigger]
        step = choices[0]
        if len(choices) > 1:
            by_name = {c.label: c for c in choices}
            step = by_name[data.draw(st.sampled_from(sorted(by_name)), label=trigger)]
        self.fire(step)

    # -- always-enabled rule -----------------------------------------------------------------
    @rule()
    def stutter(self) -> None:
        """Nothing happens (keeps a rule enabled after exit)."""

    # -- bounded liveness ----------------------------------------------------------------------
    def pending(self) -> list[Property]:
        """The leads-to properties whose ``p`` holds now and ``q`` does not."""
        s = self.state
        return [p for p in self.spec.properties
                if p.kind == "leadsto" and _holds(p.leads_from, s)
                and not _holds(p.leads_to, s)]

    @precondition(lambda self: bool(self.pending()))
    @rule(data=st.data())
    def fair_schedule(self, data: st.DataObject) -> None:
        bound = fair_bound(self.spec, self.state)
        pending = self.pending()
        # the rotation (its order, hence where it starts) is drawn: a fixed order would
        # only try the schedules in which, e.g., the worker always follows the vCPU
        order = data.draw(st.permutations([g.name for g in self.spec.weak_fairness]),
                          label="rotation")
        pos = 0
        for _ in range(bound):
            if not pending:
                break
            en = self.enabled(self.state)
            moved = False
            for k in range(len(order)):
                group = order[(pos + k) % len(order)]
                cands = [b for bs in en.values() for b in bs if b.fairness == group]
                if not cands:
                    continue
                if len(cands) > 1:  # a failure is no way to make progress: see module doc
                    cands = [c for c in cands if not c.transition.is_fault] or cands
                step = cands[0]
                if len(cands) > 1:
                    by_name = {c.label: c for c in cands}
                    pick = data.draw(st.sampled_from(list(by_name)), label="fair step")
                    step = by_name[pick]
                self.fire(step)
                pos = (pos + k + 1) % len(order)
                moved = True
                break
            if not moved:
                break  # no fair thread can move: a stutter (deadlock is checked separately)
            pending = [p for p in pending if not _holds(p.leads_to, self.state)]
        if pending:
            names = ", ".join(p.name for p in pending)
            raise PropertyViolation(
                names, f"q did not follow p within {bound} fair steps", self.trace)

    @rule(data=st.data(), n=st.integers(min_value=1, max_value=24))
    def fair_burst(self, data: st.DataObject, n: int) -> None:
        """Up to ``n`` steps, mostly of the weakly fair groups (which step each takes is drawn),
        with an occasional drawn interruption (any enabled step: a user call, a timeout, a
        failure): runs of progress that reach deep protocol states (a migration's commit)
        and get interrupted anywhere along them."""
        for _ in range(n):
            en = self.enabled(self.state)
            every = [b for k, bs in en.items() if self.allowed(k) for b in bs]
            cands = [b for b in every
                     if b.fairness is not None and not b.transition.is_fault]
            if every and data.draw(st.integers(0, 7), label="interrupt?") == 0:
                cands = every
            if not cands:
                return
            by_name = {c.label: c for c in cands}
            self.fire(by_name[data.draw(st.sampled_from(sorted(by_name)), label="fair")])

    # -- invariants ----------------------------------------------------------------------------
    @invariant()
    def spec_invariants(self) -> None:
        self.check_state()

    def check_state(self, violated: list[Property] | None = None) -> None:
        """Fail if the current state violates an invariant or is deadlocked, naming those
        and any step properties ``violated`` by the step into it."""
        s = self.state
        bad = [*(violated or ()), *(p for p in self.spec.properties
                                    if p.kind == "invariant" and not p.invariant(s))]
        if not self.spec.terminal(s):
            en = self.enabled(s)
            if not any(not b.transition.is_fault for bs in en.values() for b in bs):
                bad += [p for p in self.spec.properties if p.kind == "deadlock"]
        _raise_violated(bad, self.trace)


def _holds(pred: Any, s: Any) -> bool:
    """A leads-to property's ``p`` or ``q`` on ``s`` (declared for every leads-to)."""
    assert pred is not None
    return bool(pred(s))


def _raise_violated(violated: list[Property], trace: list[str]) -> None:
    """Fail naming every property the state (or step) violates, not only the first: one
    defect often breaks several, and a checker should report what the explorer reports."""
    if violated:
        raise PropertyViolation(", ".join(p.name for p in violated),
                                "; ".join(p.statement for p in violated), trace)


def _combos(names: tuple[str, ...], domain: Mapping[str, tuple[int, ...]]
            ) -> list[dict[str, int]]:
    out: list[dict[str, int]] = [{}]
    for n in names:
        out = [{**d, n: v} for d in out for v in domain[n]]
    return out


def _trigger_rule(trigger: str) -> Any:
    def fire(self: AbstractModelMachine, data: st.DataObject) -> None:
        self.fire_trigger(trigger, data)

    fire.__name__ = trigger
    fire.__qualname__ = trigger
    as_rule = rule(data=st.data())(fire)
    return precondition(
        lambda self: self.allowed(trigger) and trigger in self.enabled(self.state))(as_rule)


def make_abstract_machine(
    spec: Spec,
    percents: tuple[int, ...] | None = None,
    faults: bool = True,
) -> type[AbstractModelMachine]:
    """A state-machine class for ``spec`` (default percents: the explorer's ``[ci]`` domain,
    plus the probes of the variant ``spec`` was built as)."""
    if percents is None:
        percents = load_config(section=default_section(spec),
                               probe_percents=probe_percents(spec)).percents
    relation = spec.relation()
    ns: dict[str, Any] = {
        "spec": spec,
        "relation": relation,
        "unfair_triggers": frozenset(
            t.trigger for t in relation
            if not any(u.fairness for u in relation if u.trigger == t.trigger)),
        "percents": tuple(percents),
        "faults": faults,
        "_enabled_cache": {},
    }
    for trigger in dict.fromkeys(t.trigger for t in relation if faults or not t.is_fault):
        if trigger in ns or hasattr(AbstractModelMachine, trigger):
            raise ValueError(f"trigger {trigger!r} clashes with a machine attribute")
        ns[trigger] = _trigger_rule(trigger)
    name = "Abstract_" + "".join(c if c.isalnum() else "_" for c in spec.name)
    return type(name, (AbstractModelMachine,), ns)
