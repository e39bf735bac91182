"""The compiled explorer equals the interpreted oracle: same graph, same verdicts, everywhere.

Every spec and every bug-zoo variant of both lifecycles, at its default bound: the graph the
generated successor functions build (:mod:`autoconverge.model.compiled`) must equal the one
:meth:`Transition.enabled` / :meth:`Transition.apply` build (nodes, labelled edges, parents,
depths, fairness masks, records, deadlocks, first violations) and every verdict and
counterexample must be the same. A deliberately wrong compilation (one guard negated, one
guard weakened) must make the comparison fail.
"""

from __future__ import annotations

from typing import Any

import pytest

from autoconverge.model.compiled import compile_predicates, pack, simplify
from autoconverge.model.config import default_section, load_config
from autoconverge.model.explorer import explore
from autoconverge.model.graph import StateGraph, build_graph
from autoconverge.spec import SPEC, Spec
from autoconverge.spec.expr import Not, Or, Term, var
from autoconverge.spec.specs import MIGRATION_SPEC, all_variants
from autoconverge.spec.variants import probe_percents


def _graph_view(g: StateGraph) -> dict[str, Any]:
    """Everything the checkers read from a graph, as plain data."""
    return {
        "nodes": list(g.nodes), "succ": [list(e) for e in g.succ], "parent": list(g.parent),
        "depth": list(g.depth), "enabled_mask": list(g.enabled_mask),
        "records": list(g.abstract), "deadlocks": list(g.deadlocks),
        "invariant_violations": {k: (v.node, v.label) for k, v in
                                 g.invariant_violations.items()},
        "step_violations": {k: (v.node, v.label) for k, v in g.step_violations.items()},
        "counts": (g.transitions, g.bounded_ends, g.terminal_nodes, g.truncated),
    }


def _graphs(spec: Spec, guard_hook: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    cfg = load_config(section=default_section(spec)).with_percents(probe_percents(spec))
    inv = {p.name: p.invariant for p in spec.properties if p.kind == "invariant"}
    steps = {p.name: p.step for p in spec.properties if p.kind == "step"}
    interpreted = build_graph(spec, cfg, inv, steps, engine="interpreted")
    compiled = build_graph(spec, cfg, inv, steps, guard_hook=guard_hook)
    return _graph_view(interpreted), _graph_view(compiled)


def _verdicts(spec: Spec, engine: str) -> list[dict[str, Any]]:
    cfg = load_config(section=default_section(spec))
    return [p.as_dict() for p in explore(spec, cfg, engine=engine).properties]


SPECS_AND_VARIANTS = [pytest.param(SPEC, id="throttle"),
                      pytest.param(MIGRATION_SPEC, id="migration")] + [
    pytest.param(v.build(SPEC if family == "throttle" else MIGRATION_SPEC), id=v.name)
    for family, v in all_variants()]


@pytest.mark.parametrize("spec", SPECS_AND_VARIANTS)
def test_compiled_graph_and_verdicts_equal_the_interpreted(spec: Spec) -> None:
    interpreted, compiled = _graphs(spec)
    assert compiled == interpreted
    assert _verdicts(spec, "compiled") == _verdicts(spec, "interpreted")


def test_the_shipped_specs_compile_without_fallbacks() -> None:
    for spec in (SPEC, MIGRATION_SPEC):
        g = explore(spec, load_config(section=default_section(spec))).graph
        assert g is not None and g.compiled is not None
        assert g.compiled.fallbacks == ()
        assert "def expand(s):" in g.compiled.source


@pytest.mark.parametrize("spec", [pytest.param(SPEC, id="throttle"),
                                  pytest.param(MIGRATION_SPEC, id="migration")])
def test_a_wrong_compilation_is_caught(spec: Spec) -> None:
    """Negating one guard, or weakening one to 'always', changes the compiled graph."""
    cfg = load_config(section=default_section(spec))
    g = build_graph(spec, cfg, {}, {}, engine="interpreted")
    fired = sorted({li for edges in g.succ for _, li in edges})
    interpreted = _graphs(spec)[0]
    for victim in (fired[0], fired[len(fired) // 2], fired[-1]):
        def negate(i: int, guard: Any, victim: int = victim) -> Any:
            return Not(guard) if i == victim else guard
        assert _graphs(spec, negate)[1] != interpreted, f"negated guard {victim} not caught"

    def weaken(i: int, guard: Any) -> Any:
        return Or(guard, True) if i == fired[0] else guard
    # a guard that is not constantly true at this bound: weakening it adds edges
    assert _graphs(spec, weaken)[1] != interpreted


def test_a_function_that_cannot_be_compiled_falls_back_to_calling_it() -> None:
    """A guard that uses Python ``if`` on a state value cannot be traced: it is called."""

    def python_if_guard(s: Any, **_: Any) -> Any:
        return not s.expired  # Python's not: a Term refuses bool(), so not compilable

    t = SPEC.find("expire", "throttling_pause")
    spec = SPEC.with_transitions(replace={("expire", "throttling_pause"):
                                          {"guard": python_if_guard}}, name="python-if")
    interpreted, compiled = _graphs(spec)
    assert compiled == interpreted
    g = explore(spec, load_config()).graph
    assert g is not None and g.compiled is not None
    assert any(f.startswith(f"guard {t.label}") for f in g.compiled.fallbacks)


def test_constant_folding() -> None:
    x = var("x")
    assert simplify(Term("and", (Term("const", (True,)), x == 1))) is not True
    assert simplify(Term("and", (Term("const", (False,)), x == 1))) is False
    assert simplify(Term("or", (Term("const", (True,)), x == 1))) is True
    assert simplify(Term("eq", (x, x))) is True
    assert simplify(Term("implies", (Term("const", (False,)), x == 1))) is True
    assert simplify(Term("ite", (Term("const", (True,)), Term("const", (3,)), x))) == 3


def test_compiled_predicates_agree_with_the_functions() -> None:
    g = explore(SPEC, load_config()).graph
    assert g is not None
    props = [p for p in SPEC.properties if p.kind == "leadsto"]
    fns = {p.name: p.leads_to for p in props}
    compiled = compile_predicates(SPEC, fns)
    for rec in g.reached_records():
        for p in props:
            assert compiled[p.name](pack(rec)) == bool(p.leads_to(rec))
