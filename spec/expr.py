"""Expression helpers that let one guard or effect function be evaluated three ways.

The spec's guards, effects and properties are ordinary Python functions over a state record.
They use only arithmetic, comparisons and the helpers below, so the *same* function can be
evaluated on:

- concrete Python values (``bool``/``int``/``str``/``tuple``): the implementation and the
  explicit-state explorer;
- Z3 terms (``z3.ExprRef``): the unbounded proofs in ``autoconverge.proofs``; this module
  never imports z3 itself (a value can only be a Z3 term once something imported z3), so
  the throttler runs without z3 installed;
- :class:`Term` syntax trees: the Promela and TLA+ generators print them.

Rules for spec authors: never use Python's ``and``/``or``/``not``/``if`` on state values (a
:class:`Term` refuses ``bool()`` to catch that); use :func:`And`, :func:`Or`, :func:`Not`,
:func:`If`, :func:`Implies`, :func:`is_state` and the ``chan_*`` channel helpers. Python
conditionals on *static* data (a transition's trigger name, a constant) are fine.

Channels are FIFO sequences of ints: a ``tuple`` concretely, ``Seq(Int)`` in Z3, and a
``Term`` of sort ``chan`` in generated code.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

Value: TypeAlias = Any
"""A bool, int, str, tuple, z3.ExprRef or Term: whatever the evaluation mode is."""


@dataclass(frozen=True, eq=False)
class Term:
    """A syntax-tree node for code generation.

    ``op`` is one of: ``var`` (args: name), ``const`` (args: int/bool), ``state`` (args: a
    state name), ``and``, ``or``, ``not``, ``implies``, ``ite``, ``eq``, ``ne``, ``lt``,
    ``le``, ``gt``, ``ge``, ``add``, ``sub``, ``mul``, ``is_state`` (args: term, state
    name), ``chan_len``, ``chan_head``, ``chan_tail``, ``chan_push``.
    """

    op: str
    args: tuple[Any, ...]

    def __bool__(self) -> bool:
        raise TypeError(
            "a spec expression was used as a Python bool; use And/Or/Not/If from "
            "autoconverge.spec.expr instead of and/or/not/if"
        )

    def __hash__(self) -> int:
        return id(self)

    def _bin(self, op: str, other: Any, swap: bool = False) -> Term:
        o = other if isinstance(other, Term) else Term("const", (other,))
        return Term(op, (o, self) if swap else (self, o))

    def __eq__(self, other: object) -> Term:  # type: ignore[override]
        return self._bin("eq", other)

    def __ne__(self, other: object) -> Term:  # type: ignore[override]
        return self._bin("ne", other)

    def __lt__(self, other: Any) -> Term:
        return self._bin("lt", other)

    def __le__(self, other: Any) -> Term:
        return self._bin("le", other)

    def __gt__(self, other: Any) -> Term:
        return self._bin("gt", other)

    def __ge__(self, other: Any) -> Term:
        return self._bin("ge", other)

    def __add__(self, other: Any) -> Term:
        return self._bin("add", other)

    def __radd__(self, other: Any) -> Term:
        return self._bin("add", other, swap=True)

    def __sub__(self, other: Any) -> Term:
        return self._bin("sub", other)

    def __rsub__(self, other: Any) -> Term:
        return self._bin("sub", other, swap=True)

    def __mul__(self, other: Any) -> Term:
        return self._bin("mul", other)

    def __rmul__(self, other: Any) -> Term:
        return self._bin("mul", other, swap=True)

    def __repr__(self) -> str:
        if self.op in ("var", "const", "state"):
            return f"{self.op}:{self.args[0]!r}"
        return f"{self.op}({', '.join(map(repr, self.args))})"


def var(name: str) -> Term:
    return Term("var", (name,))


def _lift(x: Any) -> Term:
    return x if isinstance(x, Term) else Term("const", (x,))


def _z3() -> Any:
    """The z3 module if it is loaded, else None (then no value is a Z3 term)."""
    return sys.modules.get("z3")


def _is_z3(x: Any) -> bool:
    z3 = _z3()
    return z3 is not None and isinstance(x, z3.ExprRef)


def _is_z3_seq(x: Any) -> bool:
    z3 = _z3()
    return z3 is not None and isinstance(x, z3.SeqRef)


def _mode(xs: Iterable[Any]) -> str:
    mode = "py"
    for x in xs:
        if _is_z3(x):
            return "z3"
        if isinstance(x, Term):
            mode = "term"
    return mode


def And(*xs: Value) -> Value:
    m = _mode(xs)
    if m == "z3":
        return _z3().And(*xs) if xs else _z3().BoolVal(True)
    if m == "term":
        return Term("and", tuple(_lift(x) for x in xs))
    return all(bool(x) for x in xs)


def Or(*xs: Value) -> Value:
    m = _mode(xs)
    if m == "z3":
        return _z3().Or(*xs) if xs else _z3().BoolVal(False)
    if m == "term":
        return Term("or", tuple(_lift(x) for x in xs))
    return any(bool(x) for x in xs)


def Not(x: Value) -> Value:
    m = _mode((x,))
    if m == "z3":
        return _z3().Not(x)
    if m == "term":
        return Term("not", (x,))
    return not x


def Implies(a: Value, b: Value) -> Value:
    m = _mode((a, b))
    if m == "z3":
        return _z3().Implies(a, b)
    if m == "term":
        return Term("implies", (_lift(a), _lift(b)))
    return (not a) or bool(b)


def If(c: Value, a: Value, b: Value) -> Value:
    m = _mode((c, a, b))
    if m == "z3":
        return _z3().If(c, a, b)
    if m == "term":
        return Term("ite", (_lift(c), _lift(a), _lift(b)))
    return a if c else b


def Eq(a: Value, b: Value) -> Value:
    """Equality that also works between two Terms of any kind."""
    m = _mode((a, b))
    if m == "term":
        return Term("eq", (_lift(a), _lift(b)))
    return a == b


def is_state(x: Value, name: str) -> Value:
    """``x`` (a machine's state) is the state called ``name``.

    Concretely a string comparison; in Z3 the state is a value of an enumeration sort whose
    constructors carry the state names; in a Term it prints as the generator likes.
    """
    if _is_z3(x):
        z3 = _z3()
        sort = x.sort()
        if isinstance(sort, z3.DatatypeSortRef):
            for i in range(sort.num_constructors()):
                ctor = sort.constructor(i)
                if ctor.name() == name:
                    return x == ctor()
            raise KeyError(f"state {name!r} is not in sort {sort}")
        raise TypeError(f"z3 state must be an enumeration sort, got {sort}")
    if isinstance(x, Term):
        return Term("is_state", (x, name))
    return x == name


def in_states(x: Value, names: Iterable[str]) -> Value:
    return Or(*(is_state(x, n) for n in names))


# --- FIFO channels ------------------------------------------------------------------------


def chan_len(c: Value) -> Value:
    if _is_z3_seq(c):
        return _z3().Length(c)
    if isinstance(c, Term):
        return Term("chan_len", (c,))
    return len(c)


def chan_empty(c: Value) -> Value:
    if _is_z3_seq(c):
        return _z3().Length(c) == 0
    if isinstance(c, Term):
        return Term("eq", (Term("chan_len", (c,)), Term("const", (0,))))
    return len(c) == 0


def chan_head(c: Value) -> Value:
    """The oldest element. Only meaningful when the channel is not empty (guard it)."""
    if _is_z3_seq(c):
        return c[0]
    if isinstance(c, Term):
        return Term("chan_head", (c,))
    return c[0] if c else _EMPTY_HEAD


_EMPTY_HEAD = -(10**9)
"""Concrete head of an empty channel: matches no command, so guarded code stays total."""


def chan_tail(c: Value) -> Value:
    if _is_z3_seq(c):
        z3 = _z3()
        return z3.SubSeq(c, 1, z3.Length(c) - 1)
    if isinstance(c, Term):
        return Term("chan_tail", (c,))
    return tuple(c[1:])


def chan_push(c: Value, x: Value) -> Value:
    if _is_z3_seq(c):
        z3 = _z3()
        return z3.Concat(c, z3.Unit(x if _is_z3(x) else z3.IntVal(x)))
    if isinstance(c, Term):
        return Term("chan_push", (c, _lift(x)))
    return (*c, x)
