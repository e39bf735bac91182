"""Compiled successors: a spec's guards, effects and properties printed as specialised Python.

The explorer's interpreted path (:meth:`Transition.enabled` / :meth:`Transition.apply` on
state records, :mod:`.graph`) evaluates every guard through :mod:`autoconverge.spec.expr`'s
mode dispatch, once per state and label. This module evaluates the *same* guard, effect and
property functions once, on :class:`~autoconverge.spec.expr.Term` syntax trees (each record
field a variable, each label's parameters concrete), folds constants, prints the result as
Python source and ``exec`` s it - once per (spec, bound). States are packed as plain tuples of
the record's field values (in field order), so a record is ``record(*t)`` and back.

What it generates (:func:`compile_spec`):

- ``expand(t)``: every enabled label from state tuple ``t``, in the interpreted order (the
  machines in schema order, each machine's labels for its current state in label order), each
  with its successor tuple and the step properties it violates; plus the bits of the enabled
  weakly fair groups and whether a non-fault label is enabled;
- ``invariants(t)``: the names of the invariants ``t`` violates; ``terminal(t)``;
- one predicate per named state function (the leads-to properties' ``p`` and ``q``).

Anything that cannot be evaluated on syntax trees (a function that uses Python ``if`` on a
state value, say) falls back to calling the original function on ``record(*t)`` from the
generated code, so a compilation is always complete. The interpreted path stays the oracle:
the tests compare both graphs (states, labelled edges, depth, verdicts) on every spec and
bug-zoo variant, and show that a deliberately wrong compilation is caught.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from autoconverge.spec import Spec, Transition
from autoconverge.spec.expr import _EMPTY_HEAD, Term, var
from autoconverge.spec.fold import simplify

__all__ = ["CompiledSpec", "compile_predicates", "compile_spec", "pack", "simplify"]


class CompilableLabel(Protocol):
    """What the compiler needs of an edge label (:class:`.graph.Label`)."""

    @property
    def transition(self) -> Transition: ...

    @property
    def group_bit(self) -> int: ...

    @property
    def params_dict(self) -> dict[str, Any]: ...


Edge = tuple[int, tuple[Any, ...], tuple[str, ...]]
"""(label index, successor state tuple, names of the step properties the step violates)."""
Expansion = tuple[list[Edge], int, bool]
"""(edges, bits of the enabled weakly fair groups, some non-fault label is enabled)."""


@dataclass(frozen=True)
class CompiledSpec:
    """The generated functions of one (spec, labels, properties) and their source."""

    fields: tuple[str, ...]
    expand: Callable[[tuple[Any, ...]], Expansion]
    invariants: Callable[[tuple[Any, ...]], list[str]]
    terminal: Callable[[tuple[Any, ...]], bool]
    predicates: Mapping[str, Callable[[tuple[Any, ...]], bool]]
    source: str
    fallbacks: tuple[str, ...]
    """What had to be called as Python functions (not compiled), for the record."""


def pack(record: Any) -> tuple[Any, ...]:
    """A state record as the tuple the compiled functions take (field values in order)."""
    return tuple(getattr(record, f.name) for f in dataclasses.fields(record))


# --- constant folding -----------------------------------------------------------------------

def _is_const(x: Any) -> bool:
    return not isinstance(x, Term)


# --- printing ---------------------------------------------------------------------------------

_PY_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
           "add": "+", "sub": "-", "mul": "*"}


class _Printer:
    """Prints folded Terms as Python over the local variables ``v_<field>``."""

    def __init__(self, fields: Sequence[str]) -> None:
        self.fields = set(fields)

    def truth(self, x: Any) -> str:
        """An expression whose truth value is ``x``'s."""
        if not isinstance(x, Term):
            return repr(bool(x))
        op, a = x.op, x.args
        if op == "and":
            return "(" + " and ".join(self.truth(y) for y in a) + ")" if a else "True"
        if op == "or":
            return "(" + " or ".join(self.truth(y) for y in a) + ")" if a else "False"
        if op == "not":
            return f"(not {self.truth(a[0])})"
        if op == "implies":
            return f"((not {self.truth(a[0])}) or {self.truth(a[1])})"
        return self.value(x)

    def value(self, x: Any) -> str:
        """An expression whose value is ``x``'s concrete value (bools as bools)."""
        if not isinstance(x, Term):
            return repr(x)
        op, a = x.op, x.args
        if op == "var":
            if a[0] not in self.fields:
                raise KeyError(f"unknown variable {a[0]!r}")
            return f"v_{a[0]}"
        if op == "const":
            return self.value(a[0]) if isinstance(a[0], Term) else repr(a[0])
        if op == "state":
            return repr(a[0])
        if op in ("and", "or", "implies"):
            return f"bool({self.truth(x)})"
        if op == "not":
            return f"(not {self.truth(a[0])})"
        if op == "ite":
            return f"({self.value(a[1])} if {self.truth(a[0])} else {self.value(a[2])})"
        if op == "is_state":
            return f"({self.value(a[0])} == {a[1]!r})"
        if op in _PY_CMP:
            return f"({self.value(a[0])} {_PY_CMP[op]} {self.value(a[1])})"
        if op == "chan_len":
            return f"len({self.value(a[0])})"
        if op == "chan_head":
            c = self.value(a[0])
            return f"({c}[0] if {c} else {_EMPTY_HEAD})"
        if op == "chan_tail":
            return f"{self.value(a[0])}[1:]"
        if op == "chan_push":
            return f"({self.value(a[0])} + ({self.value(a[1])},))"
        raise ValueError(f"cannot print term op {op!r}")


# --- the compiler ----------------------------------------------------------------------------


class _Unsupported(Exception):
    """A function could not be evaluated on syntax trees or printed: call it instead."""


def _symbolic(record: type, fields: Sequence[str]) -> Any:
    return record(**{f: var(f) for f in fields})


def _try_print(pr: _Printer, fn: Callable[[Any], Any], sym: Any) -> str:
    """``fn(sym)`` folded and printed as a truth value."""
    try:
        term = simplify(fn(sym))
        return pr.truth(term)
    except Exception as exc:
        raise _Unsupported(str(exc)) from exc


def compile_spec(
    spec: Spec,
    labels: Sequence[CompilableLabel],
    explored: Sequence[int],
    fault_free: set[int],
    invariants: Mapping[str, Callable[[Any], Any]],
    steps: Mapping[str, Callable[[Any, Transition, Any], Any]],
    predicates: Mapping[str, Callable[[Any], Any]] | None = None,
    *,
    guard_hook: Callable[[int, Any], Any] | None = None,
) -> CompiledSpec:
    """Generate and load the functions for ``spec`` with these edge labels and properties.

    ``explored``: the label indices to try (faults left out for a bound without faults);
    ``fault_free``: the labels that count as progress (deadlock detection). ``guard_hook``
    (tests only) may rewrite label ``i``'s folded guard before printing: a deliberately wrong
    compilation the comparison with the interpreted path must catch.
    """
    schema = spec.schema
    record = schema.record
    fields = tuple(f.name for f in dataclasses.fields(record))
    pr = _Printer(fields)
    sym = _symbolic(record, fields)
    unpack = (", ".join(f"v_{f}" for f in fields) + ("," if len(fields) == 1 else ""))
    env: dict[str, Any] = {"_R": record, "_T": [lab.transition for lab in labels],
                           "_P": [lab.params_dict for lab in labels],
                           "_S": list(steps.values()), "_I": list(invariants.values()),
                           "_Q": {}, "_F": fields, "_term": spec.terminal}
    fallbacks: list[str] = []
    lines: list[str] = ["def expand(s):", f"    {unpack} = s", "    out = []",
                        "    mask = 0", "    prog = False"]
    by_machine: dict[str, dict[str, list[int]]] = {m.name: {} for m in schema.machines}
    for i in explored:
        t = labels[i].transition
        by_machine[t.machine].setdefault(t.source, []).append(i)
    step_names = list(steps)
    for m in schema.machines:
        first = True
        for source, idxs in by_machine[m.name].items():
            body: list[str] = []
            for i in idxs:
                body.extend(_label_code(i, labels[i], sym, pr, fields, step_names, steps,
                                        i in fault_free, guard_hook, fallbacks))
            if not body:
                continue
            kw = "if" if first else "elif"
            first = False
            lines.append(f"    {kw} v_{m.var} == {source!r}:")
            lines.extend("    " + b for b in body)
    lines.append("    return out, mask, prog")
    lines.append("")
    lines += ["def invariants(s):", f"    {unpack} = s", "    bad = []"]
    for k, (name, fn) in enumerate(invariants.items()):
        try:
            cond = _try_print(pr, fn, sym)
        except _Unsupported:
            fallbacks.append(f"invariant {name}")
            cond = f"_I[{k}](_R(*s))"
        lines += [f"    if not {cond}:", f"        bad.append({name!r})"]
    lines += ["    return bad", ""]
    try:
        cond = _try_print(pr, spec.terminal, sym)
    except _Unsupported:
        fallbacks.append("terminal")
        cond = "_term(_R(*s))"
    lines += ["def terminal(s):", f"    {unpack} = s", f"    return bool({cond})", ""]
    pred_names = _predicate_lines(predicates or {}, pr, sym, unpack, env, lines, fallbacks)
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<compiled {spec.name}>", "exec"), env)
    return CompiledSpec(
        fields=fields, expand=env["expand"], invariants=env["invariants"],
        terminal=env["terminal"],
        predicates={name: env[f] for name, f in pred_names.items()},
        source=source, fallbacks=tuple(fallbacks))


def compile_predicates(spec: Spec, predicates: Mapping[str, Callable[[Any], Any]]
                       ) -> dict[str, Callable[[tuple[Any, ...]], bool]]:
    """Only the named state predicates (e.g. a leads-to property's ``p`` and ``q``), as
    functions of a state tuple."""
    record = spec.schema.record
    fields = tuple(f.name for f in dataclasses.fields(record))
    unpack = (", ".join(f"v_{f}" for f in fields) + ("," if len(fields) == 1 else ""))
    env: dict[str, Any] = {"_R": record, "_Q": {}}
    lines: list[str] = []
    names = _predicate_lines(predicates, _Printer(fields), _symbolic(record, fields), unpack,
                             env, lines, [])
    exec(compile("\n".join(lines) + "\n", f"<predicates {spec.name}>", "exec"), env)
    return {name: env[f] for name, f in names.items()}


def _predicate_lines(predicates: Mapping[str, Callable[[Any], Any]], pr: _Printer, sym: Any,
                     unpack: str, env: dict[str, Any], lines: list[str],
                     fallbacks: list[str]) -> dict[str, str]:
    pred_names: dict[str, str] = {}
    for k, (name, fn) in enumerate(predicates.items()):
        fname = f"pred_{k}"
        pred_names[name] = fname
        env["_Q"][fname] = fn
        try:
            cond = _try_print(pr, fn, sym)
        except _Unsupported:
            fallbacks.append(f"predicate {name}")
            cond = f"_Q[{fname!r}](_R(*s))"
        lines += [f"def {fname}(s):", f"    {unpack} = s", f"    return bool({cond})", ""]
    return pred_names


def _label_code(i: int, lab: CompilableLabel, sym: Any, pr: _Printer, fields: tuple[str, ...],
                step_names: list[str],
                steps: Mapping[str, Callable[[Any, Transition, Any], Any]],
                progress: bool, guard_hook: Callable[[int, Any], Any] | None,
                fallbacks: list[str]) -> list[str]:
    """The lines (indented for an ``if`` on the source state) trying label ``i``."""
    t = lab.transition
    params = lab.params_dict
    # under the dispatch on the machine's state, that field is the source state: a constant
    sym = dataclasses.replace(sym, **{t.machine_var: t.source})
    try:
        guard = simplify(t.guard(sym, **params))
        if guard_hook is not None:
            guard = simplify(guard_hook(i, guard))
        if _is_const(guard) and not guard:
            return []  # never enabled at this bound
        cond = pr.truth(guard)
    except Exception:  # not expressible: call the guard
        fallbacks.append(f"guard {t.label}")
        cond = f"_T[{i}].guard(_R(*s), **_P[{i}])"
    post_sym: Any = None
    try:
        updates = t.updates(sym, **params)
        updates[t.machine_var] = t.dest
        post_terms = {f: simplify(updates.get(f, var(f))) for f in fields}
        nxt = "(" + ", ".join(pr.value(post_terms[f]) for f in fields) + ",)"
        post_sym = type(sym)(**post_terms)
    except Exception:  # not expressible: call apply
        fallbacks.append(f"effect {t.label}")
        nxt = f"tuple(getattr(_x, _f) for _x in (_T[{i}].apply(_R(*s), **_P[{i}]),) for _f in _F)"
    out = [f"    if {cond}:", f"        n = {nxt}"]
    checks: list[str] = []
    for k, name in enumerate(step_names):
        fn = steps[name]
        try:
            if post_sym is None:
                raise _Unsupported("no symbolic successor")
            ok = simplify(fn(sym, t, post_sym))
            if _is_const(ok):
                if ok:
                    continue
                checks.append(f"        b.append({name!r})")
                continue
            checks += [f"        if not {pr.truth(ok)}:", f"            b.append({name!r})"]
        except Exception:  # not expressible: call it
            fallbacks.append(f"step {name} on {t.label}")
            checks += [f"        if not _S[{k}](_R(*s), _T[{i}], _R(*n)):",
                       f"            b.append({name!r})"]
    if checks:
        out += ["        b = []", *checks, f"        out.append(({i}, n, tuple(b)))"]
    else:
        out.append(f"        out.append(({i}, n, ()))")
    if lab.group_bit:
        out.append(f"        mask |= {lab.group_bit}")
    if progress:
        out.append("        prog = True")
    return out
