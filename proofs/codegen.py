"""The spec's relation evaluated on syntax trees: what the Promela and TLA+ generators print.

Nothing here is a second copy of a lifecycle. Every guard, effect and property is the spec's
own function, called on the spec's state record (:attr:`Schema.record
<autoconverge.spec.Schema.record>`) whose fields are :func:`~autoconverge.spec.expr.var`
terms; the resulting :class:`~autoconverge.spec.expr.Term` trees are constant-folded
(:func:`simplify`) and handed to a printer. Everything about the lifecycle's shape - its
machines and their state variables, its variables and initial record, its fairness groups,
its terminal states, its parameters' domains, its FIFO (if any) - is read from the spec's
schema, so both lifecycles (the throttle, the migration) and their zoos go through here.

Both generators model the same *bounded* slice of the spec as the explicit-state explorer
(:mod:`autoconverge.model.graph`):

- a trigger's parameters range over :meth:`Spec.param_domains` of :attr:`Bounds.percents`
  (plus a variant's probes): the throttle's ``p`` and ``k``; the migration has none;
- a user call (a transition of the schema's user group, :attr:`Transition.user_call`) needs
  ``ncalls < MAX_CALLS`` and increments ``ncalls`` (an extra state variable, exactly like the
  explorer's node = (state, calls used));
- a step that would leave more than ``QUEUE_CAP`` commands in the schema's FIFO
  (:attr:`Schema.channel_var`; a lifecycle without one has no such bound) is cut;
- faults (:attr:`Transition.is_fault`) are left out when :attr:`Bounds.faults` is false;
- a *deadlock* is a non-terminal state in which no transition except a fault is enabled in
  the unbounded spec (bounds ignored): :func:`progress_enabled`;
- a state whose only successors were cut by a bound is a *bounded end* (neither terminal nor
  a deadlock): :func:`cut_by_bounds`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from autoconverge.model.bound import BoundTransition
from autoconverge.spec import Schema, Spec, Transition
from autoconverge.spec.expr import Term, Value, var
from autoconverge.spec.fold import const, is_term, simplify

CALLS = "ncalls"
"""The extra state variable counting user calls (the call bound)."""
MAX_CALLS = "MAX_CALLS"
"""Symbol of the call bound (a printer maps it to a macro or a TLA+ constant)."""
QUEUE_CAP = "QUEUE_CAP"
"""Symbol of the channel capacity."""
SYMBOLS = (MAX_CALLS, QUEUE_CAP)


def all_variables(spec: Spec) -> tuple[str, ...]:
    """The generated models' variables: the spec's record, then ``ncalls``."""
    return (*spec.variables, CALLS)


def channel_var(spec: Spec) -> str | None:
    """The spec's FIFO variable (None: the lifecycle has none)."""
    return spec.schema.channel_var


def variable_kinds(spec: Spec) -> dict[str, str]:
    """Each record field's kind, read from the initial record and the schema: ``machine``
    (a machine's state), ``chan`` (the FIFO), ``bool`` or ``int``."""
    machine_vars = set(spec.schema.machine_vars)
    chan = channel_var(spec)
    out: dict[str, str] = {}
    for name in spec.variables:
        v = getattr(spec.initial, name)
        if name in machine_vars:
            out[name] = "machine"
        elif name == chan:
            out[name] = "chan"
        elif isinstance(v, bool):
            out[name] = "bool"
        elif isinstance(v, int):
            out[name] = "int"
        else:
            raise NotImplementedError(
                f"{spec.name}: no generated type for field {name!r} = {v!r}")
    return out


@dataclass(frozen=True)
class Bounds:
    """The finite slice of the spec a checker explores (same meaning as the explorer's)."""

    percents: tuple[int, ...] = (1, 50, 99)
    max_calls: int = 4
    channel_capacity: int = 3
    faults: bool = True

    @classmethod
    def from_config(cls, cfg: Any) -> Bounds:
        """From an :class:`autoconverge.model.config.ExplorerConfig` (or anything alike)."""
        return cls(
            percents=tuple(int(p) for p in cfg.percents),
            max_calls=int(cfg.max_calls),
            channel_capacity=int(cfg.channel_capacity),
            faults=bool(getattr(cfg, "faults", True)),
        )

    def with_percents(self, extra: tuple[int, ...]) -> Bounds:
        return dataclasses.replace(self, percents=tuple(dict.fromkeys((*self.percents, *extra))))

    def as_dict(self) -> dict[str, Any]:
        return {"percents": list(self.percents), "max_calls": self.max_calls,
                "channel_capacity": self.channel_capacity, "faults": self.faults}


def symbolic_state(spec: Spec | Schema) -> Any:
    """The spec's (or schema's) record with every field the variable of the same name."""
    schema = spec.schema if isinstance(spec, Spec) else spec
    return schema.record(**{name: var(name) for name in schema.variables})


def is_var(x: object, name: str) -> bool:
    return isinstance(x, Term) and x.op == "var" and x.args[0] == name


def mentions(x: Value, names: set[str]) -> bool:
    """The term reads one of the variables ``names``."""
    if not isinstance(x, Term):
        return False
    if x.op == "var":
        return x.args[0] in names
    return any(mentions(a, names) for a in x.args if isinstance(a, Term))


def chan_delta(x: Value) -> tuple[int, tuple[Value, ...]]:
    """A channel value as (commands dropped from the head of the FIFO variable, commands
    appended).

    Supports what effects write: the variable, ``chan_tail(...)`` of it, ``chan_push(...)``
    onto either. Anything else (a tail taken after a push) raises ``NotImplementedError``.
    """
    if isinstance(x, Term) and x.op == "var":
        return 0, ()
    if isinstance(x, Term) and x.op == "chan_tail":
        d, pushed = chan_delta(x.args[0])
        if pushed:
            raise NotImplementedError("chan_tail after chan_push in one step is not supported")
        return d + 1, ()
    if isinstance(x, Term) and x.op == "chan_push":
        d, pushed = chan_delta(x.args[0])
        return d, (*pushed, simplify(x.args[1]))
    raise NotImplementedError(f"unsupported channel expression {x!r}")


def state_symbol(spec: Spec, name: str) -> str:
    """The variable of the machine a state name belongs to (``w``/``c``, ``src``/``dst``)."""
    return spec.schema.machine_of_state(name).var


@dataclass(frozen=True)
class Step(BoundTransition):
    """One transition of the relation with its parameters bound (concrete or symbolic), and
    what it is as syntax trees: its guard, what the bounds add, its updates."""

    enabled: Value
    """Source state and guard, simplified; the bounds are not included."""
    bound: Value
    """What the bounds add to the guard (``True`` when nothing)."""
    updates: Mapping[str, Value]
    """Every variable the step writes (machine state and ``ncalls`` included), simplified,
    as expressions over the pre-state; ``chan`` as written by the effect."""
    post: Any
    """The successor (the spec's record) as expressions over the pre-state."""

    @property
    def symbolic_params(self) -> tuple[str, ...]:
        return tuple(k for k, v in self.params if isinstance(v, Term))


def _bound_guard(t: Transition, chan_name: str | None, chan: Value) -> Value:
    conds: list[Value] = []
    if t.user_call:
        conds.append(Term("lt", (var(CALLS), var(MAX_CALLS))))
    if chan_name is not None:
        drops, pushed = chan_delta(chan)
        if len(pushed) > drops:
            grow = len(pushed) - drops
            conds.append(Term("le", (Term("add", (Term("chan_len", (var(chan_name),)),
                                                  const(grow))), var(QUEUE_CAP))))
    return True if not conds else conds[0] if len(conds) == 1 else Term("and", tuple(conds))


def steps(spec: Spec, bounds: Bounds, *, symbolic_params: bool = False) -> list[Step]:
    """The relation as steps, with the guard, the bound and the updates as terms.

    With ``symbolic_params`` a parameter stays a variable (TLA+ quantifies it over the
    domain); otherwise one step per value of the domain, dropping steps whose guard folds to
    false (e.g. ``call_set`` with an out-of-range percent).
    """
    s = symbolic_state(spec)
    chan = channel_var(spec)
    domains = spec.param_domains(bounds.percents)
    out: list[Step] = []
    for t in spec.relation():
        if t.is_fault and not bounds.faults:
            continue
        for params in _param_values(t.params, domains, symbolic_params):
            enabled = simplify(t.enabled(s, **params))
            if enabled is False:
                continue
            post = t.apply(s, **params)
            updates: dict[str, Value] = {}
            for k, v in t.updates(s, **params).items():
                updates[k] = v if k == chan else simplify(v)
            updates[t.machine_var] = t.dest
            if t.user_call:
                updates[CALLS] = Term("add", (var(CALLS), const(1)))
            if chan is not None and chan in updates and is_var(updates[chan], chan):
                del updates[chan]
            bound = _bound_guard(t, chan, updates.get(chan, var(chan)) if chan else None)
            out.append(Step(t, tuple(params.items()), enabled, bound, updates, post))
    return out


def _param_values(names: tuple[str, ...], domains: Mapping[str, tuple[int, ...]],
                  symbolic: bool) -> Iterator[dict[str, Value]]:
    if not names:
        yield {}
        return
    head, *rest = names
    if head not in domains:
        raise KeyError(f"no domain for transition parameter {head!r}")
    values: tuple[Value, ...] = (var(head),) if symbolic else domains[head]
    for v in values:
        for more in _param_values(tuple(rest), domains, symbolic):
            yield {head: v, **more}


def terminal_term(spec: Spec) -> Value:
    return simplify(spec.terminal(symbolic_state(spec)))


def progress_enabled(all_steps: list[Step]) -> Value:
    """Some transition other than a fault is enabled, bounds ignored (the explorer's notion)."""
    return simplify(Term("or", tuple(_quantified(st, st.enabled) for st in all_steps
                                     if not st.transition.is_fault)))


def cut_by_bounds(all_steps: list[Step]) -> Value:
    """Some step is enabled but cut by a bound (the state is a *bounded end* if nothing else
    can move)."""
    return simplify(Term("or", tuple(
        _quantified(st, Term("and", (const(st.enabled), Term("not", (const(st.bound),)))))
        for st in all_steps if st.bound is not True)))


def no_deadlock_term(spec: Spec, all_steps: list[Step]) -> Value:
    return simplify(Term("or", (const(terminal_term(spec)),
                                const(progress_enabled(all_steps)))))


def _quantified(st: Step, body: Value) -> Value:
    out = const(body)
    for name in reversed(st.symbolic_params):
        out = Term("exists", (name, f"{name}_domain", out))
    return out


def step_property_term(pred: Any, st: Step) -> Value:
    """A step property's predicate on this step, as a term over the pre-state, simplified with
    what the step's guard fixes (it is only asserted on steps taken: e.g. the source state)."""
    schema = st.transition.schema
    assert schema is not None, f"{st.transition.label} is not part of a spec"
    return simplify(_substitute(simplify(pred(symbolic_state(schema), st.transition, st.post)),
                                *_literals(st.enabled)))


def post_state_term(x: Value, st: Step) -> Value:
    """A state predicate (a term over the current state) on ``st``'s post-state, as a term
    over that post-state simplified with what the step fixes there: the variables it sets to
    constants (its machine's new state, flags, codes) and what its guard fixes of the
    variables it leaves alone. Equivalent to ``x`` in every post-state of the step."""
    facts, excluded = _literals(st.enabled)
    written = set(st.updates)
    post: dict[str, Value] = {k: v for k, v in facts.items() if k not in written}
    post.update({k: v for k, v in st.updates.items() if not is_term(v)})
    kept = frozenset(lit for lit in excluded if lit[0] not in written)
    return simplify(_substitute(x, post, kept))


def state_term(spec: Spec, pred: Any) -> Value:
    """A state predicate of ``spec`` (an invariant, a leads-to's ``p`` or ``q``) as a term."""
    return simplify(pred(symbolic_state(spec)))


def initial_values(spec: Spec) -> dict[str, Any]:
    vals: dict[str, Any] = {name: getattr(spec.initial, name) for name in spec.variables}
    vals[CALLS] = 0
    return vals


def _literals(enabled: Value) -> tuple[dict[str, Value], frozenset[tuple[str, Any]]]:
    """What a guard conjunction fixes: values (``x``/``~x`` for booleans, machine states,
    ``x = c`` for a constant ``c``) and exclusions (``x # c``)."""
    parts = enabled.args if is_term(enabled) and enabled.op == "and" else (enabled,)
    out: dict[str, Value] = {}
    excluded: set[tuple[str, Any]] = set()
    for p in parts:
        if is_term(p) and p.op == "var":
            out[p.args[0]] = True
        elif is_term(p) and p.op == "not" and is_term(p.args[0]) and p.args[0].op == "var":
            out[p.args[0].args[0]] = False
        elif is_term(p) and p.op == "is_state" and is_term(p.args[0]) and p.args[0].op == "var":
            out[p.args[0].args[0]] = p.args[1]
        elif is_term(p) and p.op in ("eq", "ne"):
            lit = _var_const(p)
            if lit is not None:
                if p.op == "eq":
                    out[lit[0]] = lit[1]
                else:
                    excluded.add(lit)
    return out, frozenset(excluded)


def _const_value(x: Value) -> tuple[bool, Any]:
    """(True, value) for a constant (plain or ``const`` term, not a term inside)."""
    if not is_term(x):
        return True, x
    if x.op == "const" and not is_term(x.args[0]):
        return True, x.args[0]
    return False, None


def _var_const(x: Term) -> tuple[str, Any] | None:
    """``(name, value)`` for a comparison of a variable with a constant, either way round."""
    a, b = x.args
    for v, c in ((a, b), (b, a)):
        ok, value = _const_value(c)
        if is_term(v) and v.op == "var" and ok:
            return v.args[0], value
    return None


def _substitute(x: Value, facts: Mapping[str, Value],
                excluded: frozenset[tuple[str, Any]] = frozenset()) -> Value:
    """``x`` with the variables ``facts`` fixes replaced, and comparisons ``v = c``/``v # c``
    that an exclusion decides replaced by their truth value."""
    if not isinstance(x, Term):
        return x
    if x.op == "var":
        return facts.get(x.args[0], x)
    if x.op in ("eq", "ne") and excluded:
        lit = _var_const(x)
        if lit is not None and lit[0] not in facts and lit in excluded:
            return x.op == "ne"
    return Term(x.op, tuple(_substitute(a, facts, excluded) if isinstance(a, Term) else a
                            for a in x.args))


def stutter_condition(st: Step) -> Value:
    """When the step leaves every variable unchanged (given its guard): such a step is a
    *stuttering* step in TLA+, invisible to an action property ``[][A]_vars``."""
    if st.user_call or st.transition.dest != st.transition.source:
        return False
    schema = st.transition.schema
    assert schema is not None
    conds: list[Value] = []
    for name, v in st.updates.items():
        if name == schema.channel_var:
            drops, pushed = chan_delta(v)
            if drops != len(pushed):
                return False
            conds.append(Term("eq", (v, var(name))))
        elif name in schema.machine_vars:
            continue
        else:
            conds.append(Term("eq", (const(v), var(name))))
    cond = simplify(Term("and", tuple(conds))) if conds else True
    return simplify(_substitute(cond, *_literals(st.enabled)))
