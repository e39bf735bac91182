"""Z3 encoding of a spec's transition relation, built from the declaration itself.

Nothing here restates the lifecycle: :class:`Encoding` iterates :meth:`Spec.relation` (the
relation introspected from the ``transitions`` machines) and evaluates each declared
transition's own ``guard`` and ``effect`` functions on a :class:`State` whose fields are Z3
terms (see :mod:`autoconverge.spec.expr`):

- ``w`` and ``c`` (the worker's and the controller's machine state) are values of Z3
  enumeration sorts whose constructors are named after the states;
- ``chan`` is an unbounded ``Seq(Int)``;
- ``percent``, ``applied``, ``requested`` are unbounded ``Int``; the flags are ``Bool``;
- every step has its own free ``Int`` per trigger parameter (the user's percent ``p``), so a
  proof covers every percent a caller can pass, not a sampled domain.

It also converts Z3 models back to concrete :class:`State` records (so counterexamples can be
replayed through :meth:`Spec.successors`) and groups transitions by the spec's fairness groups
(:data:`autoconverge.spec.FAIRNESS_GROUPS`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import z3

from autoconverge.model import trace as _trace
from autoconverge.spec import Spec, State, Transition
from autoconverge.spec.expr import Value
from autoconverge.spec.lifecycle import CONTROLLER_STATES, VARIABLES, WORKER_STATES

WORKER_SORT, _WORKER_CONSTS = z3.EnumSort("WorkerState", list(WORKER_STATES))
CONTROLLER_SORT, _CONTROLLER_CONSTS = z3.EnumSort("ControllerState", list(CONTROLLER_STATES))
CHAN_SORT = z3.SeqSort(z3.IntSort())

_ENUM_VALUES: dict[str, dict[str, z3.ExprRef]] = {
    "w": {n: c for n, c in zip(WORKER_STATES, _WORKER_CONSTS, strict=True)},
    "c": {n: c for n, c in zip(CONTROLLER_STATES, _CONTROLLER_CONSTS, strict=True)},
}


def _sort_of(name: str, example: Value) -> z3.SortRef:
    if name == "w":
        return WORKER_SORT
    if name == "c":
        return CONTROLLER_SORT
    if isinstance(example, bool):
        return z3.BoolSort()
    if isinstance(example, int):
        return z3.IntSort()
    if isinstance(example, tuple):
        return CHAN_SORT
    raise TypeError(f"no Z3 sort for field {name!r} = {example!r}")


def state_vars(spec: Spec, tag: str) -> State:
    """A state whose fields are fresh Z3 constants ``<field>@<tag>``."""
    fields: dict[str, z3.ExprRef] = {}
    for name in VARIABLES:
        sort = _sort_of(name, getattr(spec.initial, name))
        fields[name] = z3.Const(f"{name}@{tag}", sort)
    return State(**fields)


def lift(name: str, value: Value) -> z3.ExprRef:
    """A concrete field value (or a Z3 term already) as a Z3 term of the field's sort."""
    if isinstance(value, z3.ExprRef):
        return value
    if name in _ENUM_VALUES:
        return _ENUM_VALUES[name][value]
    if isinstance(value, bool):
        return z3.BoolVal(value)
    if isinstance(value, int):
        return z3.IntVal(value)
    if isinstance(value, tuple):
        if not value:
            return z3.Empty(CHAN_SORT)
        units = [z3.Unit(z3.IntVal(x)) for x in value]
        return units[0] if len(units) == 1 else z3.Concat(*units)
    raise TypeError(f"cannot lift {name}={value!r}")


def as_bool(v: Value) -> z3.BoolRef:
    """A guard/property value (a Python bool or a Z3 Boolean) as a Z3 Boolean."""
    if isinstance(v, z3.BoolRef):
        return v
    if isinstance(v, bool):
        return z3.BoolVal(v)
    raise TypeError(f"expected a Boolean, got {v!r}")


def lifted_state(s: State) -> State:
    """A state as Z3 terms (concrete fields lifted to constants, Z3 terms kept)."""
    return State(**{n: lift(n, getattr(s, n)) for n in VARIABLES})


def states_equal(a: State, b: State) -> z3.BoolRef:
    return z3.And(*(lift(n, getattr(a, n)) == lift(n, getattr(b, n)) for n in VARIABLES))


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


def concrete_value(name: str, v: z3.ExprRef) -> Any:
    if name in ("w", "c"):
        return str(v)
    if z3.is_bool(v):
        return z3.is_true(v)
    if z3.is_int(v):
        return v.as_long()
    return seq_value(v)


def concrete_state(model: z3.ModelRef, s: State) -> State:
    """The concrete state a model assigns to a state of Z3 terms."""
    return State(**{
        n: concrete_value(n, model.eval(getattr(s, n), model_completion=True))
        for n in VARIABLES
    })


@dataclass
class Encoding:
    """The transition relation of one spec (shipped or a variant) over Z3 terms."""

    spec: Spec
    relation: tuple[Transition, ...] = field(init=False)
    _fresh: itertools.count[int] = field(init=False, default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.relation = self.spec.relation()

    # variables ----------------------------------------------------------------------------
    def state(self, tag: str) -> State:
        return state_vars(self.spec, tag)

    def params(self, tag: str) -> dict[str, z3.ArithRef]:
        """One free Int per parameter name used by any trigger, for one step."""
        names = sorted({p for t in self.relation for p in t.params})
        return {n: z3.Int(f"{n}@{tag}") for n in names}

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self._fresh)}"

    # formulas -----------------------------------------------------------------------------
    def init(self, s: State) -> z3.BoolRef:
        return states_equal(s, self.spec.initial)

    def enabled(self, t: Transition, s: State,
                params: Mapping[str, z3.ArithRef] | None = None) -> z3.BoolRef:
        ps = {p: (params or {})[p] for p in t.params}
        return as_bool(t.enabled(s, **ps))

    def post(self, t: Transition, s: State,
             params: Mapping[str, z3.ArithRef] | None = None) -> State:
        ps = {p: (params or {})[p] for p in t.params}
        return lifted_state(t.apply(s, **ps))

    def step(self, t: Transition, s: State, s2: State,
             params: Mapping[str, z3.ArithRef] | None = None) -> z3.BoolRef:
        """T_t(s, s2): t is enabled in s and s2 is its effect (every other field unchanged)."""
        return z3.And(self.enabled(t, s, params), states_equal(s2, self.post(t, s, params)))

    def next(self, s: State, s2: State, params: Mapping[str, z3.ArithRef],
             transitions: Sequence[Transition] | None = None) -> z3.BoolRef:
        ts = self.relation if transitions is None else transitions
        return z3.Or(*(self.step(t, s, s2, params) for t in ts)) if ts else z3.BoolVal(False)

    def group(self, name: str) -> tuple[Transition, ...]:
        """The transitions of the fairness group ``name`` (:attr:`Transition.fairness_group`)."""
        return tuple(t for t in self.relation if t.fairness_group.name == name)

    def group_enabled(self, name: str, s: State, changing: bool = True) -> z3.BoolRef:
        """ENABLED <<G>>_vars: some transition of the group can fire (and change the state).

        Parameters of a group's triggers are existentially quantified.
        """
        out: list[z3.BoolRef] = []
        for t in self.group(name):
            ps = {p: z3.Int(self.fresh(f"{p}_en")) for p in t.params}
            en = self.enabled(t, s, ps)
            if changing:
                en = z3.And(en, z3.Not(states_equal(self.post(t, s, ps), s)))
            out.append(z3.Exists(list(ps.values()), en) if ps else en)
        return z3.Or(*out) if out else z3.BoolVal(False)

    def progress_enabled(self, s: State) -> z3.BoolRef:
        """Some transition other than a fault is enabled (failing is no way on)."""
        out: list[z3.BoolRef] = []
        for t in self.relation:
            if t.is_fault:
                continue
            ps = {p: z3.Int(self.fresh(f"{p}_en")) for p in t.params}
            en = self.enabled(t, s, ps)
            out.append(z3.Exists(list(ps.values()), en) if ps else en)
        return z3.Or(*out)

    # models -------------------------------------------------------------------------------
    def which(self, model: z3.ModelRef, s: State, s2: State,
              params: Mapping[str, z3.ArithRef],
              transitions: Sequence[Transition] | None = None) -> Transition | None:
        """The (first) transition whose step formula the model satisfies."""
        for t in self.relation if transitions is None else transitions:
            if z3.is_true(model.eval(self.step(t, s, s2, params), model_completion=True)):
                return t
        return None

    def concrete(self, model: z3.ModelRef, s: State) -> State:
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
