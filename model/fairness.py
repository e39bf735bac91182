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

At scale (a million nodes): the whole graph's SCCs are computed once per graph and shared by
every leads-to property (a region's SCCs refine them: a node alone in its graph SCC is alone
in the region's, only the rest is split again), the region search is a breadth-first sweep
by distance over int arrays (the graph's :class:`~.graph.Adjacency`), and no recursion or
per-node dict is involved.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .graph import StateGraph, adjacency, all_groups_mask


def tarjan_scc(nodes: Sequence[int], succ: Callable[[int], Sequence[int]],
               size: int | None = None) -> list[list[int]]:
    """Strongly connected components of the subgraph on ``nodes`` (iterative Tarjan).

    ``succ(n)`` must only return members of ``nodes``. Components come out in reverse
    topological order (sinks first). ``size`` (optional): every node is below it - the
    bookkeeping then lives in int arrays instead of dicts (a state graph's node numbers).
    """
    if size is None:
        size = max(nodes, default=-1) + 1
    unset = -1
    index = [unset] * size
    low = [0] * size
    on_stack = bytearray(size)
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in nodes:
        if index[root] != unset:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        work: list[tuple[int, Sequence[int], int]] = [(root, succ(root), 0)]
        while work:
            v, children, i = work[-1]
            if i < len(children):
                work[-1] = (v, children, i + 1)
                w = children[i]
                if index[w] == unset:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work.append((w, succ(w), 0))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                comp: list[int] = []
                while True:
                    w = stack.pop()
                    on_stack[w] = 0
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


NodePredicate = Callable[[int], bool] | Sequence[bool]
"""A predicate on nodes: a function, or its value per node (a list indexed by node)."""


def _per_node(g: StateGraph, f: NodePredicate) -> Sequence[bool]:
    return f if isinstance(f, Sequence) else [bool(f(n)) for n in range(len(g.nodes))]


def check_leadsto(g: StateGraph, p: NodePredicate, q: NodePredicate,
                  max_candidates: int = 64) -> LeadsToResult:
    """Check ``p ~> q`` on ``g`` (``p``/``q``: predicates on nodes, or their values per node).

    Distances, regions and SCCs are kept in int arrays indexed by node (no dicts, no
    recursion), so a million-node graph takes seconds.
    """
    n_nodes = len(g.nodes)
    pv = _per_node(g, p)
    qv = _per_node(g, q)
    not_q = [not x for x in qv]
    sources = [n for n in range(n_nodes) if not_q[n] and pv[n]]
    # Dijkstra with unit weights from each source at its BFS depth, through ~q nodes:
    # dist = depth(src) + hops. Levels in increasing distance, each level in node order
    # (the order a heap of (dist, node) pops them).
    unreached = 1 << 60
    dist = [unreached] * n_nodes
    rpar_node = [-1] * n_nodes
    rpar_lab = [-1] * n_nodes
    done = bytearray(n_nodes)
    levels: dict[int, list[int]] = {}
    depth = g.depth
    for sn in sources:
        d = depth[sn]
        if d < dist[sn]:
            dist[sn] = d
            levels.setdefault(d, []).append(sn)
    adj = adjacency(g)
    offsets, targets, labels = adj.offsets, adj.targets, adj.labels
    region: list[int] = []
    while levels:
        d = min(levels)
        level = sorted(set(levels.pop(d)))
        d1 = d + 1
        nxt: list[int] = []
        for v in level:
            if done[v] or dist[v] != d:
                continue
            done[v] = 1
            region.append(v)
            for k in range(offsets[v], offsets[v + 1]):
                w = targets[k]
                if not_q[w] and d1 < dist[w]:
                    dist[w] = d1
                    rpar_node[w] = v
                    rpar_lab[w] = labels[k]
                    nxt.append(w)
        if nxt:
            levels.setdefault(d1, []).extend(nxt)
    region.sort()
    n_sccs, fair = _fair_region_sccs(g, _components(g), region)
    if not fair:
        return LeadsToResult(True, len(region), len(sources), n_sccs, 0, None)
    fair.sort(key=lambda c: min(dist[v] for v in c))
    best: Lasso | None = None
    parents = _RegionParents(rpar_node, rpar_lab)
    for comp in fair[:max_candidates]:
        entry = min(comp, key=lambda v: (dist[v], v))
        lasso = _lasso(g, comp, entry, parents)
        if best is None or len(lasso) < len(best):
            best = lasso
    return LeadsToResult(False, len(region), len(sources), n_sccs, len(fair), best)


@dataclass(frozen=True)
class GraphComponents:
    """The SCCs of a whole state graph, computed once and shared by every leads-to check:
    any cycle inside a property's region is a cycle of the graph, so the region's SCCs refine
    the graph's (:func:`_region_sccs`)."""

    comp: list[int]
    """node -> its SCC's number (reverse topological order: sinks first)."""
    size: list[int]
    """SCC number -> its number of nodes."""
    node_mask: list[int]
    """node -> the fairness groups enabled in its record (``enabled_mask`` per node)."""


def _components(g: StateGraph) -> GraphComponents:
    cached = g.analysis.get("components")
    if not isinstance(cached, GraphComponents):
        adj = adjacency(g)
        comp, size = _components_csr(adj.offsets, adj.targets)
        mask = g.enabled_mask
        cached = GraphComponents(comp, size, [mask[a] for a in adj.node_abstract])
        g.analysis["components"] = cached
    return cached


def graph_components(succ: Sequence[Sequence[tuple[int, int]]]
                     ) -> tuple[list[int], list[int]]:
    """SCCs of a graph given as ``succ[node] = [(successor, label)]``: each node's SCC number
    (reverse topological order) and each SCC's size (iterative Tarjan over int arrays: no
    recursion, no dicts)."""
    offsets, targets = array("i", [0]), array("i")
    for edges in succ:
        targets.extend(w for w, _ in edges)
        offsets.append(len(targets))
    return _components_csr(offsets, targets)


def _components_csr(offsets: Sequence[int], targets: Sequence[int]
                    ) -> tuple[list[int], list[int]]:
    """:func:`graph_components` on edges in compressed sparse rows (:class:`.graph.Adjacency`)."""
    n = len(offsets) - 1
    index = [-1] * n
    low = [0] * n
    on_stack = bytearray(n)
    stack: list[int] = []
    comp = [-1] * n
    sizes: list[int] = []
    counter = 0
    for root in range(n):
        if index[root] >= 0:
            continue
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        work: list[tuple[int, int]] = [(root, offsets[root])]
        while work:
            v, i = work[-1]
            end = offsets[v + 1]
            descended = False
            while i < end:
                w = targets[i]
                i += 1
                if index[w] < 0:
                    work[-1] = (v, i)
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work.append((w, offsets[w]))
                    descended = True
                    break
                if on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
            if descended:
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                cid = len(sizes)
                size = 0
                while True:
                    w = stack.pop()
                    on_stack[w] = 0
                    comp[w] = cid
                    size += 1
                    if w == v:
                        break
                sizes.append(size)
    return comp, sizes


def _fair_region_sccs(g: StateGraph, gc: GraphComponents, region: list[int]
                      ) -> tuple[int, list[list[int]]]:
    """The number of SCCs of the subgraph induced by ``region`` (sorted), and the fair ones.

    A node alone in its graph SCC is alone in the region's too (then it is fair only if every
    group is disabled there, or it has a self-loop that makes it fair); the other nodes are
    split by Tarjan within each graph SCC. Order: the lone nodes in region order, then the
    rest by graph SCC.
    """
    succ = g.succ
    adj = adjacency(g)
    offsets, targets = adj.offsets, adj.targets
    comp, size = gc.comp, gc.size
    mask = gc.node_mask
    n_sccs = 0
    fair: list[list[int]] = []
    groups: dict[int, list[int]] = {}
    for v in region:
        c = comp[v]
        if size[c] == 1:
            n_sccs += 1
            if mask[v] == 0 or (v in targets[offsets[v]:offsets[v + 1]] and _fair(g, [v])):
                fair.append([v])
        else:
            groups.setdefault(c, []).append(v)
    for members in groups.values():
        inside = set(members)

        def rsucc(v: int, inside: set[int] = inside) -> list[int]:
            return [w for w, _ in succ[v] if w in inside]

        for scc in tarjan_scc(members, rsucc):
            n_sccs += 1
            if _fair(g, scc):
                fair.append(scc)
    return n_sccs, fair


class _RegionParents:
    """node -> (parent node, label) on the shortest ~q path from a source ((-1, -1): none)."""

    def __init__(self, nodes: list[int], labels: list[int]) -> None:
        self._nodes = nodes
        self._labels = labels

    def __getitem__(self, v: int) -> tuple[int, int]:
        return self._nodes[v], self._labels[v]


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


def _lasso(g: StateGraph, comp: list[int], entry: int, rpar: _RegionParents) -> Lasso:
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
