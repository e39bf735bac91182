"""Constant folding of the spec's expression syntax trees (:class:`~.expr.Term`).

One job: turn a guard, effect or property evaluated on symbolic variables into the smallest
equivalent tree - constants folded, neutral and absorbing junction members resolved, nested
junctions flattened, duplicates dropped, negated comparisons turned round, a conjunction that
puts one machine variable in two states is False. The Promela/TLA+ generators
(:mod:`autoconverge.proofs.codegen`) and the explorer's compiled successors
(:mod:`autoconverge.model.compiled`) print what it returns; every rewrite keeps the value of
the expression in every state (ints and bools as Python compares them).
"""

from __future__ import annotations

from .expr import Term, Value


def is_term(x: object) -> bool:
    return isinstance(x, Term)


def const(x: Value) -> Term:
    return x if isinstance(x, Term) else Term("const", (x,))


_CMP = {
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
}


_NEGATED = {"eq": "ne", "ne": "eq", "lt": "ge", "ge": "lt", "gt": "le", "le": "gt"}


def _dedupe(parts: list[Value]) -> list[Value]:
    seen: set[str] = set()
    out: list[Value] = []
    for p in parts:
        key = repr(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _fold_junction(op: str, args: tuple[Value, ...]) -> Value:
    """Fold ``and``/``or``: the absorbing constant wins, the neutral one drops out, nested
    junctions of the same kind flatten, duplicates go."""
    absorbing = op == "or"  # True absorbs an or, False an and
    parts: list[Value] = []
    for a in (simplify(a) for a in args):
        if a is absorbing:
            return absorbing
        if a is not (not absorbing):
            parts.extend(a.args if is_term(a) and a.op == op else (a,))
    parts = _dedupe(parts)
    if op == "and" and _two_states_of_one_machine(parts):
        return False
    return (not absorbing) if not parts else parts[0] if len(parts) == 1 else Term(op, tuple(parts))


def _two_states_of_one_machine(parts: list[Value]) -> bool:
    """Conjuncts that put one machine variable in two different states (never true)."""
    seen: dict[str, str] = {}
    for p in parts:
        if is_term(p) and p.op == "is_state" and is_term(p.args[0]) and p.args[0].op == "var":
            name = p.args[0].args[0]
            if seen.setdefault(name, p.args[1]) != p.args[1]:
                return True
    return False


def simplify(x: Value) -> Value:
    """Constant-fold a term: the result is a plain Python value or a Term without foldables."""
    if not isinstance(x, Term):
        return x
    op, args = x.op, x.args
    if op == "const":
        return simplify(args[0])
    if op in ("var", "state"):
        return x
    if op in ("and", "or"):
        return _fold_junction(op, args)
    if op == "not":
        a = simplify(args[0])
        if not is_term(a):
            return not a
        if a.op == "not":
            return a.args[0]
        if a.op in _NEGATED:
            return Term(_NEGATED[a.op], a.args)
        return Term("not", (a,))
    if op == "implies":
        a, b = simplify(args[0]), simplify(args[1])
        if a is False or b is True:
            return True
        if a is True:
            return b
        if b is False:
            return simplify(Term("not", (a,)))
        return Term("implies", (a, b))
    if op == "ite":
        c = simplify(args[0])
        if not is_term(c):
            return simplify(args[1] if c else args[2])
        return Term("ite", (c, const(simplify(args[1])), const(simplify(args[2]))))
    if op == "is_state":
        s = simplify(args[0])
        if not is_term(s):
            return bool(s == args[1])
        return Term("is_state", (s, args[1]))
    if op in _CMP:
        a, b = simplify(args[0]), simplify(args[1])
        if not is_term(a) and not is_term(b):
            return _CMP[op](a, b)
        if op in ("eq", "ne") and is_term(a) and is_term(b) and repr(a) == repr(b):
            return op == "eq"
        return Term(op, (const(a), const(b)))
    if op == "exists":
        body = simplify(args[2])
        return body if not is_term(body) else Term("exists", (args[0], args[1], body))
    # channel operations and anything else: simplify the arguments only
    return Term(op, tuple(const(simplify(a)) if isinstance(a, Term) else a for a in args))
