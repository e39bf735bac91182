"""The leads-to machinery at scale: whole-graph SCCs computed once, refined per region.

Random graphs (fixed seeds): :func:`graph_components` agrees with :func:`tarjan_scc`, and the
SCCs of a region found by refining the graph's SCCs (:func:`_fair_region_sccs`) are exactly
the SCCs of the region's induced subgraph.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from autoconverge.model.fairness import (
    GraphComponents,
    _fair_region_sccs,
    graph_components,
    tarjan_scc,
)


def _random_graph(seed: int, n: int, edges_per_node: float) -> list[list[tuple[int, int]]]:
    rng = random.Random(seed)
    succ: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for _ in range(int(n * edges_per_node)):
        succ[rng.randrange(n)].append((rng.randrange(n), 0))
    return succ


def _canonical(comps: list[list[int]]) -> list[list[int]]:
    return sorted(sorted(c) for c in comps)


@pytest.mark.parametrize("seed", range(6))
def test_graph_components_agree_with_tarjan(seed: int) -> None:
    succ = _random_graph(seed, 300, 1.3)
    comp, size = graph_components(succ)
    by_id: dict[int, list[int]] = {}
    for v, c in enumerate(comp):
        by_id.setdefault(c, []).append(v)
    assert [len(by_id[c]) for c in range(len(size))] == size
    expected = tarjan_scc(list(range(len(succ))), lambda v: [w for w, _ in succ[v]])
    assert _canonical(list(by_id.values())) == _canonical(expected)
    assert any(s > 1 for s in size)  # the test graph has real cycles


@pytest.mark.parametrize("seed", range(6))
def test_region_sccs_refine_the_graph_sccs(seed: int) -> None:
    succ = _random_graph(seed, 300, 1.5)
    comp, size = graph_components(succ)
    rng = random.Random(1000 + seed)
    region = sorted(v for v in range(len(succ)) if rng.random() < 0.7)
    inside = set(region)
    # a stub graph where no fairness group is ever enabled: every SCC is fair, so the fair
    # list is the list of all the region's SCCs
    g: Any = SimpleNamespace(succ=succ, spec=SimpleNamespace(weak_fairness=()),
                             nodes=[(v, 0) for v in range(len(succ))],
                             enabled_mask=[0] * len(succ),
                             labels=[SimpleNamespace(group_bit=0)], csr=None, analysis={})
    gc = GraphComponents(comp, size, [0] * len(succ))
    n_sccs, fair = _fair_region_sccs(g, gc, region)
    expected = tarjan_scc(region, lambda v: [w for w, _ in succ[v] if w in inside])
    assert n_sccs == len(expected)
    assert _canonical(fair) == _canonical(expected)
    # cutting nodes out of a graph SCC splits it: the refinement is not the identity
    assert len(expected) > len({comp[v] for v in region})


def test_graph_components_handle_a_million_node_chain() -> None:
    n = 1_000_000  # one cycle, far deeper than any recursion limit
    succ = [[((v + 1) % n, 0)] for v in range(n)]
    comp, size = graph_components(succ)
    assert size == [n] and set(comp) == {0}
