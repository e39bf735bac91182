"""Leads-to under weak fairness: fair-cycle detection over strongly connected components.

For ``p ~> q`` the checker restricts the graph to the ``~q`` nodes reachable, through ``~q``
nodes only, from a ``p /\\ ~q`` node, splits that region into SCCs (Tarjan, iterative, so no
recursion limit) and looks for a **fair** one. With weak fairness on groups of transitions
(the spec's :data:`~autoconverge.spec.WEAK_FAIRNESS`: per thread, the worker's transitions
together, the clock's together, the controller's blocking-call completions together; user
calls unfair) an SCC carries a fair infinite path
iff, for every group, the group is *disabled* in some state of the SCC (weak fairness only
demands the group be taken if it stays enabled) or some edge of the group has both ends in the
SCC (so the path can take it infinitely often). Enabledness is judged in the whole explored
model, including edges that leave the region.

A single state in which every group is disabled is fair too, as an infinite stutter: this
covers true dead ends, terminal states and bounded ends, and states where only user calls are
enabled (a user may stop calling). A fair SCC is a counterexample: a path from ``init`` to
a ``p`` state, on to the SCC through ``~q`` states, then a cycle inside the SCC that
witnesses every group (takes it, or passes a state where it is disabled) - a lasso.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .graph import StateGraph, all_groups_mask


def tarjan_scc(nodes: Sequence[int], succ: Callable[[int], Sequence[int]]) -> list[list[int]]:
    """Strongly connected components of the subgraph on ``nodes`` (iterative Tarjan).

    ``succ(n)`` must only return members of ``nodes``. Components come out in reverse
    topological order (sinks first).
    """
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on_stack: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[int, int]] = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, i = work[-1]
            children = succ(v)
            if i < len(children):
                work[-1] = (v, i + 1)
                w = children[i]
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(comp)
    return out


@dataclass
class Lasso:
    """``prefix`` leads from the initial node to ``cycle_start``; ``cycle`` returns to it.

    Steps are ``(label, node reached)``. An empty ``cycle`` means stuttering forever at
    ``cycle_start`` (every fairness group is disabled there).
    """

    prefix: list[tuple[int, int]]
    cycle: list[tuple[int, int]]
    cycle_start: int
    source: int
    """The ``p`` node the violation starts from (on the prefix)."""

    def __len__(self) -> int:
        return len(self.prefix) + len(self.cycle)


@dataclass
class LeadsToResult:
    holds: bool
    region: int
    """Nodes in the ~q region reachable from p /\\ ~q nodes."""
    sources: int
    sccs: int
    fair_sccs: int
    lasso: Lasso | None


def check_leadsto(g: StateGraph, p: Callable[[int], bool], q: Callable[[int], bool],
                  max_candidates: int = 64) -> LeadsToResult:
    """Check ``p ~> q`` on ``g`` (``p``/``q`` are predicates on nodes)."""
    n_nodes = len(g.nodes)
    not_q = [not q(n) for n in range(n_nodes)]
    sources = [n for n in range(n_nodes) if not_q[n] and p(n)]
    # Dijkstra from init-depth of each source through ~q nodes: dist = depth(src) + hops
    dist: dict[int, int] = {}
    rpar: dict[int, tuple[int, int]] = {}
    heap: list[tuple[int, int]] = []
    for sn in sources:
        d = g.depth[sn]
        if d < dist.get(sn, 1 << 60):
            dist[sn] = d
            rpar[sn] = (-1, -1)
            heapq.heappush(heap, (d, sn))
    done: set[int] = set()
    while heap:
        d, v = heapq.heappop(heap)
        if v in done:
            continue
        done.add(v)
        for w, lab in g.succ[v]:
            if not_q[w] and d + 1 < dist.get(w, 1 << 60):
                dist[w] = d + 1
                rpar[w] = (v, lab)
                heapq.heappush(heap, (d + 1, w))
    region = sorted(done)
    in_region = done

    def rsucc(v: int) -> list[int]:
        return [w for w, _ in g.succ[v] if w in in_region]

    comps = tarjan_scc(region, rsucc)
    fair: list[list[int]] = []
    for comp in comps:
        if _fair(g, comp):
            fair.append(comp)
    if not fair:
        return LeadsToResult(True, len(region), len(sources), len(comps), 0, None)
    fair.sort(key=lambda c: min(dist[v] for v in c))
    best: Lasso | None = None
    for comp in fair[:max_candidates]:
        entry = min(comp, key=lambda v: (dist[v], v))
        lasso = _lasso(g, comp, entry, rpar)
        if best is None or len(lasso) < len(best):
            best = lasso
    return LeadsToResult(False, len(region), len(sources), len(comps), len(fair), best)


def _mask(g: StateGraph, v: int) -> int:
    return g.enabled_mask[g.nodes[v][0]]


def _fair(g: StateGraph, comp: list[int]) -> bool:
    members = set(comp)
    if len(comp) == 1:
        v = comp[0]
        if _mask(g, v) == 0:
            return True  # stuttering forever is fair here
        if not any(w == v for w, _ in g.succ[v]):
            return False
    need = all_groups_mask(g.spec)
    for v in comp:
        need &= _mask(g, v)  # a group disabled somewhere is satisfied
        for w, lab in g.succ[v]:
            if w in members:
                need &= ~g.labels[lab].group_bit
        if not need:
            return True
    return need == 0


def _lasso(g: StateGraph, comp: list[int], entry: int,
           rpar: dict[int, tuple[int, int]]) -> Lasso:
    # prefix: region parents back to a source, then BFS parents back to init
    tail: list[tuple[int, int]] = []
    v = entry
    while True:
        par, lab = rpar[v]
        if par < 0:
            break
        tail.append((lab, v))
        v = par
    source = v
    tail.reverse()
    prefix = g.path_to(source) + tail
    if len(comp) == 1 and _mask(g, entry) == 0:
        return Lasso(prefix, [], entry, source)
    members = set(comp)
    need = all_groups_mask(g.spec)
    cycle: list[tuple[int, int]] = []
    cur = entry

    def visit(v: int) -> None:
        nonlocal need
        need &= _mask(g, v)

    visit(cur)
    while need:
        # nearest node where an unsatisfied group is disabled, or edge of such a group
        path = _bfs_in(g, members, cur, _witness_goal(g, need))
        for lab, w in path:
            need &= ~g.labels[lab].group_bit
            visit(w)
        cycle.extend(path)
        cur = cycle[-1][1] if cycle else cur
    if cur != entry or not cycle:
        back = _bfs_in(g, members, cur, lambda v, lab, w: w == entry)
        for lab, _w in back:
            need &= ~g.labels[lab].group_bit
        cycle.extend(back)
    return Lasso(prefix, cycle, entry, source)


def _witness_goal(g: StateGraph, need: int) -> Callable[[int, int, int], bool]:
    """Goal for the cycle search: an edge of a needed group, or a node disabling one."""

    def goal(v: int, lab: int, w: int) -> bool:
        return bool((need & ~_mask(g, w)) or (g.labels[lab].group_bit & need))

    return goal


def _bfs_in(g: StateGraph, members: set[int], start: int,
            goal: Callable[[int, int, int], bool]) -> list[tuple[int, int]]:
    """Shortest non-empty path inside ``members`` whose last edge (v, lab, w) meets goal."""
    par: dict[int, tuple[int, int]] = {}
    q: deque[int] = deque([start])
    seen = {start}
    while q:
        v = q.popleft()
        for w, lab in g.succ[v]:
            if w not in members:
                continue
            if goal(v, lab, w):
                path = [(lab, w)]
                u = v
                while u != start:
                    pu, pl = par[u]
                    path.append((pl, u))
                    u = pu
                path.reverse()
                return path
            if w not in seen:
                seen.add(w)
                par[w] = (v, lab)
                q.append(w)
    raise AssertionError("no path inside an SCC: not strongly connected")
