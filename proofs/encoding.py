"""Z3 encoding of a spec's transition relation, built from the declaration itself.

Nothing here restates a lifecycle: :class:`Encoding` iterates :meth:`Spec.relation` (the
relation introspected from the ``transitions`` machines) and evaluates each declared
transition's own ``guard`` and ``effect`` functions on a state record (the spec's
:attr:`Schema.record`) whose fields are Z3 terms (see :mod:`autoconverge.spec.expr`). The
sorts come from the spec's :class:`~autoconverge.spec.core.Schema`:

- each machine's state field (:class:`~autoconverge.spec.core.MachineDecl`: ``w`` and ``c``
  of the throttle, ``src`` and ``dst`` of the migration) is a value of a Z3 enumeration sort
  of its own whose constructors are named after the machine's states;
- the FIFO field (:attr:`Schema.channel_var`, the throttle's ``chan``), if the schema has one,
  is an unbounded ``Seq(Int)``;
- every other field is an unbounded ``Int`` or a ``Bool``, after its initial value;
- every step has its own free ``Int`` per trigger parameter (the throttle user's percent
  ``p``), so a proof covers every value a caller can pass, not a sampled domain.

It also converts Z3 models back to concrete records (so counterexamples can be replayed
through :meth:`Spec.successors`) and groups transitions by the spec's fairness groups
(:attr:`Spec.fairness_groups`).

Each lifecycle's terms live in one Z3 context (:func:`context_of`, :attr:`Encoding.ctx`): the
throttle's in Z3's main context, every other lifecycle's in a context of its own, so that
proving one never changes how Z3 answers the other's queries.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.model import trace as _trace
from autoconverge.spec import THROTTLE_SCHEMA, Spec, Transition
from autoconverge.spec.core import MachineDecl, Schema
from autoconverge.spec.expr import Value

CHAN_SORT = z3.SeqSort(z3.IntSort())

MAIN_CONTEXT: tuple[str, ...] = ("throttle",)
"""The lifecycles encoded in Z3's main context: the throttle, whose hand-written proofs'
resource limits were measured there. Every other lifecycle is encoded in a Z3 context of its
own (:func:`context_of`): what Z3 does with a query depends on the terms its context created
before (measured: an obligation of the throttle that needs 0.85 M of its 10 M resource limit
needs 9.1 M after the migration's proofs ran in the same context), so proving one lifecycle
never changes a verdict of another."""
_CONTEXTS: dict[str, z3.Context] = {}
_SORTS: dict[tuple[str, str], tuple[z3.DatatypeSortRef, dict[str, z3.ExprRef]]] = {}
"""Enumeration sorts by (lifecycle, machine): the sort and state name -> constructor. A sort
is declared once per process (Z3 would otherwise hold two sorts of one name)."""
_SCHEMAS: dict[type, Schema] = {}
"""Every schema an encoding was built for, by its record type (a record knows its schema)."""


def context_of(schema: Schema) -> z3.Context:
    """The Z3 context a lifecycle is encoded in (:data:`MAIN_CONTEXT`)."""
    if schema.name in MAIN_CONTEXT:
        return z3.main_ctx()
    if schema.name not in _CONTEXTS:
        _CONTEXTS[schema.name] = z3.Context()
    return _CONTEXTS[schema.name]


def machine_sort(schema: Schema, decl: MachineDecl) -> z3.DatatypeSortRef:
    """The enumeration sort of one machine's states (``WorkerState``, ``SourceState``, ...)."""
    return _machine_enum(schema, decl)[0]


def _machine_enum(schema: Schema, decl: MachineDecl
                  ) -> tuple[z3.DatatypeSortRef, dict[str, z3.ExprRef]]:
    key = (schema.name, decl.name)
    if key not in _SORTS:
        sort, consts = z3.EnumSort(f"{decl.name.capitalize()}State", list(decl.states),
                                   ctx=context_of(schema))
        _SORTS[key] = (sort, dict(zip(decl.states, consts, strict=True)))
    return _SORTS[key]


def register(schema: Schema) -> Schema:
    """Make ``schema`` known by its record type (for :func:`lifted_state` and friends)."""
    _SCHEMAS.setdefault(schema.record, schema)
    return schema


def schema_of(record: Any) -> Schema:
    """The schema of a state record (or of a record type)."""
    kind = record if isinstance(record, type) else type(record)
    found = _SCHEMAS.get(kind)
    if found is None:
        from autoconverge.spec.specs import SPECS

        for spec in SPECS.values():
            register(spec.schema)
        found = _SCHEMAS.get(kind)
    if found is None:
        raise TypeError(f"no schema known for the record type {kind.__name__}")
    return found


register(THROTTLE_SCHEMA)
WORKER_SORT = machine_sort(THROTTLE_SCHEMA, THROTTLE_SCHEMA.machine("worker"))
"""The throttle worker's states as a Z3 sort."""
CONTROLLER_SORT = machine_sort(THROTTLE_SCHEMA, THROTTLE_SCHEMA.machine("controller"))
"""The throttle controller's states as a Z3 sort."""


def enum_values(schema: Schema) -> dict[str, dict[str, z3.ExprRef]]:
    """Machine state field -> (state name -> Z3 constant)."""
    return {m.var: _machine_enum(schema, m)[1] for m in schema.machines}


def field_sort(schema: Schema, name: str) -> z3.SortRef:
    """The Z3 sort of the record field ``name``."""
    for m in schema.machines:
        if m.var == name:
            return machine_sort(schema, m)
    ctx = context_of(schema)
    if name == schema.channel_var:
        return CHAN_SORT if ctx == z3.main_ctx() else z3.SeqSort(z3.IntSort(ctx))
    example = getattr(schema.initial, name)
    if isinstance(example, bool):
        return z3.BoolSort(ctx)
    if isinstance(example, int):
        return z3.IntSort(ctx)
    raise TypeError(f"no Z3 sort for field {name!r} = {example!r} of {schema.name!r}")


def state_vars(spec: Spec, tag: str) -> Any:
    """A state record whose fields are fresh Z3 constants ``<field>@<tag>``."""
    schema = register(spec.schema)
    return schema.record(**{name: z3.Const(f"{name}@{tag}", field_sort(schema, name))
                            for name in schema.variables})


def lift(name: str, value: Value, schema: Schema | None = None) -> z3.ExprRef:
    """A concrete field value (or a Z3 term already) as a Z3 term of the field's sort
    (``schema``: the record's; default the throttle's)."""
    if isinstance(value, z3.ExprRef):
        return value
    schema = schema or THROTTLE_SCHEMA
    machines = enum_values(schema)
    if name in machines:
        return machines[name][value]
    ctx = context_of(schema)
    if isinstance(value, bool):
        return z3.BoolVal(value, ctx)
    if isinstance(value, int):
        return z3.IntVal(value, ctx)
    if isinstance(value, tuple) and name == schema.channel_var:
        if not value:
            return z3.Empty(field_sort(schema, name))
        units = [z3.Unit(z3.IntVal(x, ctx)) for x in value]
        return units[0] if len(units) == 1 else z3.Concat(*units)
    raise TypeError(f"cannot lift {name}={value!r}")


def as_bool(v: Value, ctx: z3.Context | None = None) -> z3.BoolRef:
    """A guard/property value (a Python bool or a Z3 Boolean) as a Z3 Boolean (a Python
    bool in ``ctx``, default Z3's main context: the encoding's :attr:`Encoding.ctx`)."""
    if isinstance(v, z3.BoolRef):
        return v
    if isinstance(v, bool):
        return z3.BoolVal(v, ctx)
    raise TypeError(f"expected a Boolean, got {v!r}")


def _fields(s: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(s))


def lifted_state(s: Any) -> Any:
    """A state as Z3 terms (concrete fields lifted to constants, Z3 terms kept)."""
    schema = schema_of(s)
    return schema.record(**{n: lift(n, getattr(s, n), schema) for n in _fields(s)})


def states_equal(a: Any, b: Any) -> z3.BoolRef:
    schema = schema_of(a)
    return z3.And(*(lift(n, getattr(a, n), schema) == lift(n, getattr(b, n), schema)
                    for n in _fields(a)))


def seq_value(v: z3.ExprRef) -> tuple[int, ...]:
    """A Z3 model value of sort Seq(Int) as a tuple."""
    v = z3.simplify(v)
    if z3.is_app(v):
        k = v.decl().kind()
        if k == z3.Z3_OP_SEQ_EMPTY:
            return ()
        if k == z3.Z3_OP_SEQ_UNIT:
            return (z3.simplify(v.arg(0)).as_long(),)
        if k == z3.Z3_OP_SEQ_CONCAT:
            out: list[int] = []
            for i in range(v.num_args()):
                out.extend(seq_value(v.arg(i)))
            return tuple(out)
    raise ValueError(f"not a sequence value: {v}")


def concrete_value(name: str, v: z3.ExprRef, schema: Schema | None = None) -> Any:
    schema = schema or THROTTLE_SCHEMA
    if name in schema.machine_vars:  # a constructor's name (str() runs Z3's printer)
        return v.decl().name() if z3.is_app(v) and v.num_args() == 0 else str(v)
    if z3.is_bool(v):
        return z3.is_true(v)
    if z3.is_int(v):
        return v.as_long()
    return seq_value(v)


def concrete_state(model: z3.ModelRef, s: Any) -> Any:
    """The concrete record a model assigns to a record of Z3 terms."""
    schema = schema_of(s)
    return schema.record(**{
        n: concrete_value(n, model.eval(getattr(s, n), model_completion=True), schema)
        for n in _fields(s)
    })


@dataclass
class Encoding:
    """The transition relation of one spec (shipped or a variant) over Z3 terms."""

    spec: Spec
    relation: tuple[Transition, ...] = field(init=False)
    _fresh: itertools.count[int] = field(init=False, default_factory=itertools.count)
    _steps: dict[tuple[Any, ...], tuple[Any, Any, Any, z3.BoolRef]] = field(
        init=False, default_factory=dict, repr=False)
    _states: dict[str, Any] = field(init=False, default_factory=dict, repr=False)
    _params: dict[str, dict[str, z3.ArithRef]] = field(init=False, default_factory=dict,
                                                       repr=False)

    def __post_init__(self) -> None:
        register(self.spec.schema)
        self.relation = self.spec.relation()
        self.ctx = context_of(self.spec.schema)
        """The Z3 context of every term of this encoding (:func:`context_of`)."""

    # variables ----------------------------------------------------------------------------
    def state(self, tag: str) -> Any:
        """The state record of Z3 constants ``<field>@<tag>`` (one record per tag: the same
        constants are the same record, so formulas built over it are cached by it)."""
        if tag not in self._states:
            self._states[tag] = state_vars(self.spec, tag)
        return self._states[tag]

    def params(self, tag: str) -> dict[str, z3.ArithRef]:
        """One free Int per parameter name used by any trigger, for one step (one dict per
        tag, as :meth:`state`; not to be changed)."""
        if tag not in self._params:
            names = sorted({p for t in self.relation for p in t.params})
            self._params[tag] = {n: z3.Int(f"{n}@{tag}", self.ctx) for n in names}
        return self._params[tag]

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._fresh)}"

    # formulas -----------------------------------------------------------------------------
    def init(self, s: Any) -> z3.BoolRef:
        return states_equal(s, self.spec.initial)

    def enabled(self, t: Transition, s: Any,
                params: Mapping[str, z3.ArithRef] | None = None) -> z3.BoolRef:
        ps = {p: (params or {})[p] for p in t.params}
        return as_bool(t.enabled(s, **ps), self.ctx)

    def post(self, t: Transition, s: Any,
             params: Mapping[str, z3.ArithRef] | None = None) -> Any:
        ps = {p: (params or {})[p] for p in t.params}
        return lifted_state(t.apply(s, **ps))

    def step(self, t: Transition, s: Any, s2: Any,
             params: Mapping[str, z3.ArithRef] | None = None) -> z3.BoolRef:
        """T_t(s, s2): t is enabled in s and s2 is its effect (every other field unchanged).
        Built once per (transition, records, parameters): the provers ask it of the same
        pre- and post-state in many queries."""
        key = (t, id(s), id(s2), id(params))
        hit = self._steps.get(key)
        if hit is None:
            formula = z3.And(self.enabled(t, s, params),
                             states_equal(s2, self.post(t, s, params)))
            hit = self._steps[key] = (s, s2, params, formula)  # kept alive: ids stay theirs
        return hit[3]

    def next(self, s: Any, s2: Any, params: Mapping[str, z3.ArithRef],
             transitions: Sequence[Transition] | None = None) -> z3.BoolRef:
        ts = self.relation if transitions is None else transitions
        key = ("next", tuple(ts), id(s), id(s2), id(params))
        hit = self._steps.get(key)
        if hit is None:
            formula = (z3.Or(*(self.step(t, s, s2, params) for t in ts)) if ts
                       else z3.BoolVal(False, self.ctx))
            hit = self._steps[key] = (s, s2, params, formula)
        return hit[3]

    def group(self, name: str) -> tuple[Transition, ...]:
        """The transitions of the fairness group ``name`` (:attr:`Transition.fairness_group`)."""
        return tuple(t for t in self.relation if t.fairness_group.name == name)

    def group_enabled(self, name: str, s: Any, changing: bool = True) -> z3.BoolRef:
        """ENABLED <<G>>_vars: some transition of the group can fire (and change the state).

        Parameters of a group's triggers are existentially quantified.
        """
        out: list[z3.BoolRef] = []
        for t in self.group(name):
            ps = {p: z3.Int(self.fresh(f"{p}_en"), self.ctx) for p in t.params}
            en = self.enabled(t, s, ps)
            if changing:
                en = z3.And(en, z3.Not(states_equal(self.post(t, s, ps), s)))
            out.append(z3.Exists(list(ps.values()), en) if ps else en)
        return z3.Or(*out) if out else z3.BoolVal(False, self.ctx)

    def progress_enabled(self, s: Any) -> z3.BoolRef:
        """Some transition other than a fault is enabled (failing is no way on)."""
        out: list[z3.BoolRef] = []
        for t in self.relation:
            if t.is_fault:
                continue
            ps = {p: z3.Int(self.fresh(f"{p}_en"), self.ctx) for p in t.params}
            en = self.enabled(t, s, ps)
            out.append(z3.Exists(list(ps.values()), en) if ps else en)
        return z3.Or(*out)

    # models -------------------------------------------------------------------------------
    def which(self, model: z3.ModelRef, s: Any, s2: Any,
              params: Mapping[str, z3.ArithRef],
              transitions: Sequence[Transition] | None = None) -> Transition | None:
        """The (first) transition whose step formula the model satisfies."""
        for t in self.relation if transitions is None else transitions:
            if z3.is_true(model.eval(self.step(t, s, s2, params), model_completion=True)):
                return t
        return None

    def concrete(self, model: z3.ModelRef, s: Any) -> Any:
        return concrete_state(model, s)

    def param_values(self, model: z3.ModelRef, t: Transition,
                     params: Mapping[str, z3.ArithRef]) -> dict[str, int]:
        return {p: model.eval(params[p], model_completion=True).as_long()
                for p in t.params}


# --- readable output: the explorer's (one counterexample format for every checker) ---------

fmt_chan = _trace.fmt_chan
fmt_state = _trace.fmt_state
state_dict = _trace.state_dict


_OPS = {
    z3.Z3_OP_LE: "<=", z3.Z3_OP_GE: ">=", z3.Z3_OP_LT: "<", z3.Z3_OP_GT: ">",
    z3.Z3_OP_ADD: "+", z3.Z3_OP_SUB: "-", z3.Z3_OP_MUL: "*",
}


def _is_atom(e: z3.ExprRef) -> bool:
    """Printed without parentheses inside /\\, \\/ and =>."""
    if not z3.is_app(e) or e.num_args() == 0:
        return True
    k = e.decl().kind()
    if k == z3.Z3_OP_NOT:
        return _is_atom(e.arg(0))
    if k == z3.Z3_OP_EQ:
        return not z3.is_bool(e.arg(0))
    return k in (z3.Z3_OP_LE, z3.Z3_OP_GE, z3.Z3_OP_LT, z3.Z3_OP_GT, z3.Z3_OP_DT_IS,
                 z3.Z3_OP_SEQ_LENGTH)


def fmt_expr(e: z3.ExprRef) -> str:
    """A Z3 formula over state variables in TLA+-like notation (for invariants found)."""
    if not z3.is_app(e):
        return str(e)
    k = e.decl().kind()
    args = [e.arg(i) for i in range(e.num_args())]

    def sub(x: z3.ExprRef) -> str:
        s = fmt_expr(x)
        return s if _is_atom(x) else f"({s})"

    if k == z3.Z3_OP_AND:
        return " /\\ ".join(sub(a) for a in args)
    if k == z3.Z3_OP_OR:
        return " \\/ ".join(sub(a) for a in args)
    if k == z3.Z3_OP_NOT:
        a = args[0]
        neg = {z3.Z3_OP_LE: ">", z3.Z3_OP_GE: "<", z3.Z3_OP_LT: ">=", z3.Z3_OP_GT: "<="}
        if z3.is_app(a) and a.decl().kind() in neg:
            return f"{fmt_expr(a.arg(0))} {neg[a.decl().kind()]} {fmt_expr(a.arg(1))}"
        if z3.is_app(a) and a.decl().kind() == z3.Z3_OP_DT_IS:
            return f"{fmt_expr(a.arg(0))} # {_ctor_name(a)}"
        if z3.is_eq(a) and not z3.is_bool(a.arg(0)):
            return f"{fmt_expr(a.arg(0))} # {fmt_expr(a.arg(1))}"
        return f"~{sub(a)}"
    if k == z3.Z3_OP_IMPLIES:
        return f"{sub(args[0])} => {sub(args[1])}"
    if k == z3.Z3_OP_EQ:
        op = "<=>" if z3.is_bool(args[0]) else "="
        return f"{sub(args[0])} {op} {sub(args[1])}"
    if k in _OPS:
        return f" {_OPS[k]} ".join(sub(a) for a in args)
    if k == z3.Z3_OP_DT_IS:
        return f"{fmt_expr(args[0])} = {_ctor_name(e)}"
    if k == z3.Z3_OP_SEQ_LENGTH:
        return f"Len({fmt_expr(args[0])})"
    if k == z3.Z3_OP_UNINTERPRETED and not args:
        return str(e.decl().name()).split("@")[0]
    return str(e)


def _ctor_name(recognizer: z3.ExprRef) -> str:
    """The constructor a recognizer ``is(ctor, x)`` tests for."""
    text = str(recognizer)
    if text.startswith("is(") and "," in text:
        return text[3:text.index(",")]
    return str(recognizer.decl().name()).removeprefix("is-")


def fmt_clause(e: z3.ExprRef) -> str:
    """A disjunction with negated literals as an implication: ``a /\\ b => c \\/ d``."""
    if not z3.is_or(e):
        return fmt_expr(e)
    args = [e.arg(i) for i in range(e.num_args())]
    neg = [a.arg(0) for a in args if z3.is_not(a)]
    pos = [a for a in args if not z3.is_not(a)]
    if not neg:
        return fmt_expr(e)
    if not pos:
        neg, pos = neg[:1], [z3.Not(a) for a in neg[1:]]
    lhs = neg[0] if len(neg) == 1 else z3.And(*neg)
    rhs = pos[0] if len(pos) == 1 else z3.Or(*pos)

    def par(x: z3.ExprRef) -> str:
        text = fmt_expr(x)
        return text if _is_atom(x) or z3.is_and(x) or z3.is_or(x) else f"({text})"

    return f"{par(lhs)} => {par(rhs)}"
