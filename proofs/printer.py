"""One printer of the spec's syntax trees for every generated language.

:class:`TermPrinter` walks a (constant-folded, :func:`autoconverge.spec.fold.simplify`) tree of
:class:`~autoconverge.spec.expr.Term` nodes once for all target languages; a language
(:mod:`.promela`, :mod:`.tla`) only declares its spellings - the constants, the connectives,
the comparison and arithmetic operators, the ops it prints as a template (the conditional,
channel functions) - and the cases only it has (how a machine state is named, channel
operations it must compute) as hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from autoconverge.spec.expr import Term, Value
from autoconverge.spec.fold import simplify


def atomic(x: Value) -> bool:
    """Printed without parentheses after a negation."""
    return not isinstance(x, Term) or x.op in ("var", "const")


class TermPrinter:
    """Prints a term as an expression of one language (call the printer on the term)."""

    LANGUAGE: ClassVar[str]
    TRUE: ClassVar[str]
    FALSE: ClassVar[str]
    AND: ClassVar[str]
    OR: ClassVar[str]
    NOT: ClassVar[str]
    IMPLIES: ClassVar[str | None] = None
    """None: the language has no implication; ``a => b`` prints as ``~a \\/ b``."""
    EQ: ClassVar[str]
    NE: ClassVar[str]
    INFIX: ClassVar[Mapping[str, str]] = MappingProxyType({
        "lt": "<", "le": "<=", "gt": ">", "ge": ">=", "add": "+", "sub": "-", "mul": "*",
    })
    """The other infix ops (spelled alike in every language generated so far)."""
    TEMPLATES: ClassVar[Mapping[str, str]]
    """Term op -> format string of its printed arguments: ``ite`` (condition, then-value,
    else-value) and any function-like op of the language."""
    SYMBOLS: ClassVar[Mapping[str, str]] = {}
    """Names of the bound symbols (:data:`.codegen.SYMBOLS`) in the language."""

    def __call__(self, x: Value) -> str:
        x = simplify(x)
        if isinstance(x, bool):
            return self.TRUE if x else self.FALSE
        if isinstance(x, int):
            return str(x)
        if isinstance(x, str):
            return self.state(x)
        if isinstance(x, tuple):
            return self.sequence(x)
        if not isinstance(x, Term):
            raise TypeError(f"cannot print {x!r} in {self.LANGUAGE}")
        return self.term(x.op, x.args)

    def term(self, op: str, a: tuple[Any, ...]) -> str:
        if op == "var":
            return self.variable(str(a[0]))
        if op == "const":
            return self(a[0])
        if op in ("and", "or"):
            joiner = f" {self.AND if op == 'and' else self.OR} "
            return "(" + joiner.join(self(t) for t in a) + ")"
        if op == "not":
            return f"{self.NOT}{self(a[0])}" if atomic(a[0]) else f"{self.NOT}({self(a[0])})"
        if op == "implies":
            if self.IMPLIES is None:
                return self(Term("or", (Term("not", (a[0],)), a[1])))
            return f"({self(a[0])} {self.IMPLIES} {self(a[1])})"
        if op in self.TEMPLATES:
            return self.TEMPLATES[op].format(*(self(t) for t in a))
        if op in ("eq", "ne") or op in self.INFIX:
            infix = self.EQ if op == "eq" else self.NE if op == "ne" else self.INFIX[op]
            return f"({self(a[0])} {infix} {self(a[1])})"
        if op == "is_state":
            return f"({self(a[0])} {self.EQ} {self.state(a[1])})"
        out = self.special(op, a)
        if out is None:
            raise NotImplementedError(f"no {self.LANGUAGE} for term op {op!r}")
        return out

    # hooks ----------------------------------------------------------------------------------
    def state(self, name: str) -> str:
        """A machine state's name as a value."""
        raise NotImplementedError

    def variable(self, name: str) -> str:
        return self.SYMBOLS.get(name, name)

    def sequence(self, items: tuple[Any, ...]) -> str:
        raise TypeError(f"cannot print {items!r} in {self.LANGUAGE}")

    def special(self, op: str, a: tuple[Any, ...]) -> str | None:
        """Ops the language computes rather than spells (None: not printable)."""
        return None
