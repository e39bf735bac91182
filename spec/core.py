"""What every lifecycle specification is made of: a schema, transitions, fairness, the machines.

One job: the spec-independent vocabulary. A lifecycle (the throttle thread in
:mod:`.lifecycle`, the migration in :mod:`.migration`) declares

- a :class:`Schema`: its state record (a frozen dataclass), its ``transitions`` machines
  (:class:`MachineDecl`: which record field holds each machine's state), which machine each
  actor steps, its fairness groups, which triggers model faults, the finite domains of the
  triggers' parameters, and its terminal states;
- its :class:`Transition` s (guards and effects over the record, written with
  :mod:`.expr` only, so they evaluate on concrete values, Z3 terms and syntax trees);
- a :class:`Spec`: the transitions plus named properties. The ``transitions`` machines are
  built from the declaration and the relation is introspected from them
  (:meth:`Spec.relation`), which is what every checker iterates.

Nothing here knows a particular lifecycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from transitions import Machine

from .expr import And, Value, is_state

Guard = Callable[..., Value]
Effect = Callable[..., Mapping[str, Value]]


@dataclass(frozen=True)
class FairnessGroup:
    """Transitions a scheduler treats as one: weakly fair together, or not at all.

    A transition belongs to the first group of its schema's ``fairness_groups`` whose
    ``actor`` is its actor and whose ``triggers`` include its trigger (empty ``triggers``:
    every transition of the actor), so a bug-zoo variant's added transitions fall into their
    actor's group.
    """

    name: str
    """The group's identifier in every checker (fairness bits, Z3 group codes, reports)."""
    statement: str
    """One line: what the group is and its fairness."""
    formula: str
    """The assumption in the properties' notation, e.g. ``WF(worker)``."""
    actor: str
    triggers: tuple[str, ...] = ()
    weak: bool = True
    """Weakly fair: if the group stays enabled, one of its transitions is eventually taken."""

    def covers(self, actor: str, trigger: str) -> bool:
        return actor == self.actor and (not self.triggers or trigger in self.triggers)


@dataclass(frozen=True)
class MachineDecl:
    """One ``transitions`` machine of a lifecycle: its name, the record field holding its
    state, its states (the first is not necessarily initial: the record's initial value is)
    and the states a finished run may end in."""

    name: str
    var: str
    states: tuple[str, ...]
    final: tuple[str, ...]


def _no_params(percents: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {}


@dataclass(frozen=True, eq=False)
class Schema:
    """Everything about a lifecycle that is not a transition or a property."""

    name: str
    """The lifecycle's name (``throttle``, ``migration``): what ``verify --spec`` selects."""
    record: type
    """The state record: a frozen dataclass whose fields are the variables."""
    initial: Any
    """The initial record."""
    machines: tuple[MachineDecl, ...]
    actors: Mapping[str, str]
    """Each actor and the machine whose state its transitions read and change."""
    fairness_groups: tuple[FairnessGroup, ...]
    """Every group, the weakly fair ones first, in the order checkers number them."""
    terminal: Callable[[Any], Value]
    """The legitimate ends: no deadlock there."""
    fault_triggers: tuple[str, ...] = ()
    """Triggers that model a failure (not progress; left out of a bound without faults)."""
    param_domains: Callable[[tuple[int, ...]], dict[str, tuple[int, ...]]] = _no_params
    """Finite domains of the triggers' parameters for a checker that enumerates them (the
    argument is the bound's percents, for a lifecycle with a percent parameter)."""
    call_codes: Mapping[str, int] = field(default_factory=dict)
    """For a lifecycle whose transitions start calls (``Transition.calls``): each call's code,
    written to the ``call_var`` field by the step that starts it."""
    call_var: str | None = None
    channel_var: str | None = None
    """The FIFO field a checker bounds by its channel capacity (None: no FIFO)."""
    value_names: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    """Names of integer codes per field (a FIFO's elements included), for readable traces."""
    abstracts: str = ""
    """One sentence: what the lifecycle's model leaves out or abstracts (for the scope notes
    every verdict is printed with)."""

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.record))

    @property
    def machine_vars(self) -> tuple[str, ...]:
        return tuple(m.var for m in self.machines)

    @property
    def weak_fairness(self) -> tuple[FairnessGroup, ...]:
        return tuple(g for g in self.fairness_groups if g.weak)

    def machine(self, name: str) -> MachineDecl:
        for m in self.machines:
            if m.name == name:
                return m
        raise KeyError(f"no machine {name!r} in {self.name!r}")

    def machine_of_actor(self, actor: str) -> MachineDecl:
        try:
            return self.machine(self.actors[actor])
        except KeyError:
            raise KeyError(f"actor {actor!r} is not declared in {self.name!r}") from None

    def machine_of_state(self, state: str) -> MachineDecl:
        """The machine a state name belongs to (state names are unique across machines)."""
        for m in self.machines:
            if state in m.states:
                return m
        raise KeyError(f"no machine of {self.name!r} has a state {state!r}")

    def group_of(self, actor: str, trigger: str) -> FairnessGroup | None:
        return next((g for g in self.fairness_groups if g.covers(actor, trigger)), None)

    @property
    def user_group(self) -> FairnessGroup:
        """The group of user calls: the unfair group that transitions no group declares
        fall into (the first unfair group)."""
        return next(g for g in self.fairness_groups if not g.weak)


def _true(s: Any, **_: Value) -> Value:
    return True


def _nothing(s: Any, **_: Value) -> Mapping[str, Value]:
    return {}


@dataclass(frozen=True)
class Transition:
    """One declared transition: a trigger from ``source`` to ``dest`` of one machine.

    ``guard(state, **params)`` and ``effect(state, **params)`` (updates to the record's
    non-machine-state fields) use only :mod:`.expr`. ``calls`` (a lifecycle with a
    ``call_var``) is the call the transition starts: the step writes its code to that field
    (derived here, never written by an effect) and the call ends in a later, separate step.
    ``params`` name the trigger's arguments (finite domains: :attr:`Schema.param_domains`).
    ``schema`` is set when the transition is put into a :class:`Spec`.
    """

    trigger: str
    source: str
    dest: str
    actor: str
    guard: Guard = _true
    effect: Effect = _nothing
    calls: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    doc: str = ""
    schema: Schema | None = field(default=None, compare=False, repr=False)

    def _schema(self) -> Schema:
        if self.schema is None:
            raise ValueError(f"transition {self.label} is not part of a spec yet")
        return self.schema

    @property
    def machine(self) -> str:
        """The name of the machine this transition belongs to (by its actor)."""
        return self._schema().actors[self.actor]

    @property
    def machine_var(self) -> str:
        """The record field holding that machine's state."""
        return self._schema().machine(self.machine).var

    @property
    def fairness_group(self) -> FairnessGroup:
        """Its group; a transition no group declares is scheduled like a user call (no
        fairness)."""
        schema = self._schema()
        return schema.group_of(self.actor, self.trigger) or schema.user_group

    @property
    def user_call(self) -> bool:
        """Started by a user (an API call or an operator), as opposed to a thread's step."""
        return self.fairness_group is self._schema().user_group

    @property
    def fairness(self) -> str | None:
        """The name of its weakly fair group; None for unfair groups."""
        group = self.fairness_group
        return group.name if group.weak else None

    @property
    def is_fault(self) -> bool:
        """A failure (:attr:`Schema.fault_triggers`): not progress (a state that can only
        move by failing is stuck) and left out of a bound without faults."""
        return self.trigger in self._schema().fault_triggers

    @property
    def label(self) -> str:
        return f"{self.trigger}@{self.source}"

    def enabled(self, s: Any, **params: Value) -> Value:
        """Guard plus 'the owning machine is in the source state'."""
        return And(is_state(getattr(s, self.machine_var), self.source), self.guard(s, **params))

    def updates(self, s: Any, **params: Value) -> dict[str, Value]:
        """The step's changes to the record's non-machine fields: the declared effect, plus
        the call the transition starts (derived from ``calls``)."""
        updates = dict(self.effect(s, **params))
        if self.calls:
            schema = self._schema()
            assert schema.call_var is not None, f"{self.label}: calls without a call_var"
            updates[schema.call_var] = schema.call_codes[self.calls[-1]]
        return updates

    def apply(self, s: Any, **params: Value) -> Any:
        """The successor state (the guard is not checked here)."""
        updates = self.updates(s, **params)
        updates[self.machine_var] = self.dest
        return dataclasses.replace(s, **updates)


Kind = Literal["invariant", "step", "deadlock", "leadsto"]


@dataclass(frozen=True)
class Property:
    """A named property: a one-line statement, its formula, its kind and, for ``leadsto``,
    the fairness it assumes (the spec's fairness groups, printed)."""

    name: str
    statement: str
    kind: Kind
    formula: str
    invariant: Callable[[Any], Value] | None = None
    step: Callable[[Any, Transition, Any], Value] | None = None
    leads_from: Callable[[Any], Value] | None = None
    leads_to: Callable[[Any], Value] | None = None
    fairness: str = ""
    notes: str = ""


def fairness_formula(groups: tuple[FairnessGroup, ...]) -> str:
    """The leads-to properties' fairness assumption, printed from the groups."""
    return "; ".join((
        " /\\ ".join(g.formula for g in groups if g.weak),
        *(g.formula for g in groups if not g.weak),
    ))


# --- machines built from the declaration --------------------------------------------------


class SpecModel(Protocol):
    """What a model bound to a spec machine provides to the spec's callbacks."""

    def spec_view(self) -> Any:
        """The current global state as the model sees it (concrete values)."""
        ...

    def apply_updates(self, updates: Mapping[str, Value]) -> None:
        """Store the effect's updates of the model's own variables."""
        ...


class GuardCondition:
    """A ``transitions`` condition that evaluates a spec transition's guard."""

    def __init__(self, transition: Transition) -> None:
        self.transition = transition

    def __call__(self, event: Any) -> bool:
        model: SpecModel = event.model
        return bool(self.transition.guard(model.spec_view(), **event.kwargs))


class EffectCallback:
    """``after`` callback: store the transition's effect (computed on the pre-state)."""

    def __init__(self, transition: Transition) -> None:
        self.transition = transition

    def __call__(self, event: Any) -> None:
        # effects read only the record's non-machine fields, which the state change in
        # between did not touch: the model's view here equals the pre-state for them
        event.model.apply_updates(
            self.transition.updates(event.model.spec_view(), **event.kwargs)
        )


@dataclass(frozen=True)
class Spec:
    """A lifecycle specification: its schema, the declared transitions and named properties.

    Bug-zoo variants (``variants``, ``migration_variants``) are copies with a few
    transitions overridden.
    """

    name: str
    transitions: tuple[Transition, ...]
    schema: Schema
    properties: tuple[Any, ...] = ()
    description: str = ""
    _machines: dict[str, Machine] = field(default_factory=dict, compare=False, repr=False)
    _relation: list[Transition] = field(default_factory=list, compare=False, repr=False)
    """The relation once introspected (filled on first use)."""

    def __post_init__(self) -> None:
        bound = tuple(t if t.schema is self.schema else dataclasses.replace(t, schema=self.schema)
                      for t in self.transitions)
        object.__setattr__(self, "transitions", bound)
        for t in bound:
            if t.actor not in self.schema.actors:
                raise ValueError(f"{self.name}: {t.label} has an undeclared actor {t.actor!r}")
            states = self.schema.machine(t.machine).states
            for st in (t.source, t.dest):
                if st not in states:
                    raise ValueError(f"{self.name}: {t.label}: {st!r} is not a state of "
                                     f"machine {t.machine!r}")

    # what the schema says, for checkers ---------------------------------------------------
    @property
    def family(self) -> str:
        """The lifecycle this spec (or variant) declares: its schema's name."""
        return self.schema.name

    @property
    def initial(self) -> Any:
        return self.schema.initial

    @property
    def variables(self) -> tuple[str, ...]:
        return self.schema.variables

    @property
    def fairness_groups(self) -> tuple[FairnessGroup, ...]:
        return self.schema.fairness_groups

    @property
    def weak_fairness(self) -> tuple[FairnessGroup, ...]:
        return self.schema.weak_fairness

    def terminal(self, s: Any) -> Value:
        return self.schema.terminal(s)

    def param_domains(self, percents: tuple[int, ...] = ()) -> dict[str, tuple[int, ...]]:
        return self.schema.param_domains(percents)

    # building ------------------------------------------------------------------------------
    def machine(self, which: str, **kwargs: Any) -> Machine:
        """The ``transitions`` machine for one actor (built once, shared by many models)."""
        if which in self._machines and not kwargs:
            return self._machines[which]
        decl = self.schema.machine(which)
        declared = [
            {
                "trigger": t.trigger,
                "source": t.source,
                "dest": t.dest,
                "conditions": [GuardCondition(t)],
                "after": [EffectCallback(t)],
            }
            for t in self.transitions
            if t.machine == which
        ]
        m = Machine(
            model=None,
            states=list(decl.states),
            transitions=declared,
            initial=getattr(self.initial, decl.var),
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
            **kwargs,
        )
        if not kwargs:
            self._machines[which] = m
        return m

    def relation(self) -> tuple[Transition, ...]:
        """The transition relation, introspected from the machines' ``events``.

        This is what every consumer (explorer, encoders, generators, the implementation's
        trigger checks) iterates: the ``transitions`` machines are the single source.
        """
        if not self._relation:
            for decl in self.schema.machines:
                for event in self.machine(decl.name).events.values():
                    for transitions in event.transitions.values():
                        for tr in transitions:
                            guard = tr.conditions[0].func
                            assert isinstance(guard, GuardCondition)
                            t = guard.transition
                            assert (t.trigger, t.source, t.dest) == (event.name, tr.source,
                                                                     tr.dest)
                            self._relation.append(t)
        return tuple(self._relation)

    def triggers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.trigger for t in self.relation()))

    def find(self, trigger: str, source: str) -> Transition:
        for t in self.relation():
            if t.trigger == trigger and t.source == source:
                return t
        raise KeyError(f"no transition {trigger!r} from {source!r} in spec {self.name!r}")

    def property(self, name: str) -> Any:
        for p in self.properties:
            if p.name == name:
                return p
        raise KeyError(f"no property {name!r} in spec {self.name!r}")

    # deriving variants ---------------------------------------------------------------------
    def with_transitions(
        self,
        *,
        replace: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
        add: tuple[Transition, ...] = (),
        remove: tuple[tuple[str, str], ...] = (),
        name: str | None = None,
        description: str | None = None,
    ) -> Spec:
        """A copy with transitions (keyed by (trigger, source)) replaced, added or removed."""
        replace = dict(replace or {})
        new: list[Transition] = []
        for t in self.transitions:
            key = (t.trigger, t.source)
            if key in remove:
                continue
            if key in replace:
                t = dataclasses.replace(t, **replace.pop(key))
            new.append(t)
        if replace:
            raise KeyError(f"no transitions to replace: {sorted(replace)}")
        return Spec(
            name=name or self.name,
            transitions=(*new, *add),
            schema=self.schema,
            properties=self.properties,
            description=description if description is not None else self.description,
        )

    # convenience for checkers ----------------------------------------------------------------
    def successors(
        self, s: Any, param_domain: Mapping[str, tuple[int, ...]]
    ) -> Iterator[tuple[Transition, Mapping[str, int], Any]]:
        """Concrete successors: every enabled (transition, params) and the next state."""
        for t in self.relation():
            for params in param_combinations(t.params, param_domain):
                if t.enabled(s, **params):
                    yield t, params, t.apply(s, **params)


def param_combinations(
    names: tuple[str, ...], domain: Mapping[str, tuple[int, ...]]
) -> Iterator[dict[str, int]]:
    """Every assignment of ``domain`` values to the parameters ``names``."""
    if not names:
        yield {}
        return
    head, *rest = names
    for v in domain[head]:
        for more in param_combinations(tuple(rest), domain):
            yield {head: v, **more}
