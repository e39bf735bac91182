"""The spec's ``transitions`` machines compiled into dispatch tables, read from the machines.

One job: make one spec-checked step cheap without leaving the spec. :func:`compile_machine`
reads a machine built by :meth:`autoconverge.spec.Spec.machine` once - for every event
(trigger) and source state, the machine's transitions in the machine's own order, each with
its dest, its condition (the spec's ``GuardCondition``, which carries the declared
transition) and its ``after`` callback (the spec's ``EffectCallback``) - into a table from
``(source, trigger)`` to those transitions. Anything else on the machine (other callbacks,
``unless`` conditions, state callbacks, machine-wide callbacks) is refused with
:class:`UncompilableMachine`: the table would not be exact.

A step through the table does what the machine's trigger does on a model: the first
transition from the model's state whose guard holds gives the dest and its effect's updates;
no transition from that state is the machine's ``MachineError`` (:meth:`CompiledMachine.step`
raises :class:`NotDeclared`); all guards false is the machine's ``False`` (it returns None).

Guards and effects are pure functions of the spec's state record (the proofs evaluate the same
functions symbolically), so each compiled transition memoizes them per concrete state (the
record's fields as a tuple, in declaration order) and parameters: a step in a state seen
before costs a dictionary lookup. ``tests/test_spec_dispatch.py`` checks that the table equals
each machine's relation and that every step agrees with firing the machine itself.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final

from transitions import Machine

from autoconverge.spec.core import EffectCallback, GuardCondition, Transition

from .errors import AutoconvergeError

MEMO_LIMIT: Final = 1 << 14
"""Most (state, params) outcomes one compiled transition keeps; beyond it, computed each time
(the throttler's reachable states are far fewer)."""

Outcome = tuple[bool, Mapping[str, Any]]
"""(the guard holds, the effect's updates - empty when it does not hold)."""


class UncompilableMachine(AutoconvergeError, ValueError):
    """The machine has something a dispatch table cannot reproduce exactly."""


class NotDeclared(AutoconvergeError, LookupError):
    """The machine declares no transition for this trigger from this state."""


class CompiledTransition:
    """One machine transition: source, trigger, dest and the declaration whose guard and
    effect the machine's callbacks evaluate, memoized per concrete state."""

    __slots__ = ("_memo", "_state_type", "dest", "source", "transition", "trigger")

    def __init__(self, trigger: str, source: str, dest: str, transition: Transition,
                 state_type: Callable[..., Any]) -> None:
        self.trigger = trigger
        self.source = source
        self.dest = dest
        self.transition = transition
        self._state_type = state_type
        self._memo: dict[tuple[tuple[Any, ...], tuple[tuple[str, int], ...]], Outcome] = {}

    def outcome(self, key: tuple[Any, ...], params: Mapping[str, int]) -> Outcome:
        """Guard and updates in the state whose fields are ``key`` (in declaration order)."""
        memo_key = (key, tuple(params.items()) if params else ())
        found = self._memo.get(memo_key)
        if found is not None:
            return found
        view = self._state_type(*key)
        t = self.transition
        result: Outcome = ((True, t.updates(view, **params)) if t.guard(view, **params)
                           else (False, {}))
        if len(self._memo) < MEMO_LIMIT:
            self._memo[memo_key] = result
        return result

    def __repr__(self) -> str:
        return f"<CompiledTransition {self.trigger}: {self.source} -> {self.dest}>"


class CompiledMachine:
    """A machine's transitions as a table from (source, trigger); see the module docstring."""

    def __init__(self, name: str, states: tuple[str, ...], triggers: tuple[str, ...],
                 table: Mapping[tuple[str, str], tuple[CompiledTransition, ...]]) -> None:
        self.name = name
        self.states = states
        self.triggers = triggers
        self.table = table

    def candidates(self, source: str, trigger: str) -> tuple[CompiledTransition, ...]:
        return self.table.get((source, trigger), ())

    def step(self, source: str, trigger: str, key: tuple[Any, ...],
             params: Mapping[str, int]) -> tuple[CompiledTransition, Mapping[str, Any]] | None:
        """The transition the machine would take and its updates; None when every guard is
        false; raises :class:`NotDeclared` when the machine declares none from ``source``."""
        candidates = self.table.get((source, trigger))
        if candidates is None:
            raise NotDeclared(f"{self.name}: no {trigger!r} from {source!r}")
        for ct in candidates:
            ok, updates = ct.outcome(key, params)
            if ok:
                return ct, updates
        return None

    def allows(self, source: str, trigger: str, key: tuple[Any, ...],
               params: Mapping[str, int]) -> bool:
        return any(ct.outcome(key, params)[0] for ct in self.table.get((source, trigger), ()))


def _check_bare(what: str, callbacks: object) -> None:
    if callbacks:
        raise UncompilableMachine(f"{what} has callbacks {callbacks!r}: not compiled")


def compile_machine(machine: Machine, name: str, state_type: Callable[..., Any]) -> \
        CompiledMachine:
    """Read ``machine``'s transitions into a :class:`CompiledMachine` (see the module doc).

    ``state_type`` builds the spec's state record from its fields in declaration order.
    """
    for attr in ("before_state_change", "after_state_change", "prepare_event",
                 "finalize_event", "on_exception"):
        _check_bare(f"machine {name} {attr}", getattr(machine, attr))
    for st in machine.states.values():
        _check_bare(f"state {st.name}", [*st.on_enter, *st.on_exit])
    table: dict[tuple[str, str], tuple[CompiledTransition, ...]] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            row: list[CompiledTransition] = []
            for tr in transitions:
                what = f"{name}: {trigger}@{source}"
                _check_bare(f"{what} prepare/before", [*tr.prepare, *tr.before])
                if len(tr.conditions) != 1 or not tr.conditions[0].target \
                        or not isinstance(tr.conditions[0].func, GuardCondition):
                    raise UncompilableMachine(f"{what}: expected one spec guard condition, "
                                              f"got {tr.conditions!r}")
                if len(tr.after) != 1 or not isinstance(tr.after[0], EffectCallback):
                    raise UncompilableMachine(f"{what}: expected one spec effect, "
                                              f"got {tr.after!r}")
                declared = tr.conditions[0].func.transition
                if tr.after[0].transition is not declared or tr.dest is None:
                    raise UncompilableMachine(f"{what}: guard and effect disagree")
                row.append(CompiledTransition(trigger, tr.source, tr.dest, declared,
                                              state_type))
            table[(source, trigger)] = tuple(row)
    return CompiledMachine(name, tuple(machine.states), tuple(machine.events), table)


_COMPILED: weakref.WeakKeyDictionary[Machine, CompiledMachine] = weakref.WeakKeyDictionary()


def compiled(machine: Machine, name: str, state_type: Callable[..., Any]) -> CompiledMachine:
    """:func:`compile_machine`, once per machine object (its memo shared by every model)."""
    found = _COMPILED.get(machine)
    if found is None:
        found = _COMPILED[machine] = compile_machine(machine, name, state_type)
    return found
