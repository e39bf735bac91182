"""The bounded state graph of a spec: breadth-first, with safety checks on the fly.

A *node* is a spec :class:`~autoconverge.spec.State` (controller x worker x clock flags x
channel x vCPU flag, all in one record) paired with the number of user calls made so far
(the call bound). The spec is evaluated once per distinct ``State`` (successors, invariants,
enabled fairness groups) and once per distinct (``State``, edge label) for step properties,
however many call counts the state occurs with.

Edges come from iterating :meth:`Spec.relation` (the relation introspected from the
``transitions`` machines) with the configured parameter domain. A user call (a ``call_*``
trigger) is *cut* when the call budget is spent or when its successor would hold more than
``channel_capacity`` queued commands; a node whose only successors were cut, and which is not
terminal, is a **bounded end**: in the unbounded spec the user could call again, or stop
calling (user calls carry no fairness), so it is neither a deadlock nor a terminal state.

A **deadlock** is a non-terminal state in which no transition other than a fault
(:attr:`Transition.is_fault`) is enabled in the unbounded spec (user calls included, cut or
not). Faults are excluded because they only model a failing vCPU call: a state that can only
move by failing is stuck. This is slightly stronger than the property's formula
``ENABLED Next``. Each node also records which of the spec's weakly fair groups are enabled
in it (a bit mask, :func:`group_bits`), for the fair-cycle search (:mod:`.fairness`).

Two engines build the same graph: ``compiled`` (the default; the spec's guards, effects and
properties printed as Python once per bound by :mod:`.compiled`, states packed as tuples) and
``interpreted`` (:meth:`Transition.enabled` / :meth:`Transition.apply` on records: the
oracle the tests compare the compiled graph with). Both report progress to an optional
callback (:mod:`.progress`).
"""

from __future__ import annotations

import itertools
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoconverge.spec import Spec, State, Transition

from .bound import BoundTransition
from .compiled import CompiledSpec, compile_spec
from .config import ExplorerConfig
from .progress import ExploreProgress, ProgressTicker

ENGINES: tuple[str, ...] = ("compiled", "interpreted")
"""The graph builders: generated Python (default), or the spec's functions on records."""
PROGRESS_EVERY_NODES = 2048
"""How many expanded nodes between two looks at the progress clock."""


def group_bits(spec: Spec) -> dict[str, int]:
    """The spec's weakly fair groups as bits of a mask, in the spec's order."""
    return {g.name: 1 << i for i, g in enumerate(spec.weak_fairness)}


def all_groups_mask(spec: Spec) -> int:
    return (1 << len(spec.weak_fairness)) - 1


@dataclass(frozen=True)
class Label(BoundTransition):
    """An edge label: one transition with concrete parameters, and its fairness bit."""

    group_bit: int
    """The bit of the transition's weakly fair group (:func:`group_bits`); 0 for none."""


@dataclass
class Violation:
    """First (shortest) witness of a safety violation: a node, or an edge from a node."""

    node: int
    label: int | None = None
    detail: str = ""


@dataclass
class StateGraph:
    """The explored graph; nodes are ints, ``nodes[i] = (abstract index, calls used)``."""

    spec: Spec
    config: ExplorerConfig
    labels: list[Label]
    abstract: Sequence[State]
    """abstract state index -> its record (decoded on access from ``packed`` when compiled)."""
    nodes: Sequence[tuple[int, int]]
    succ: Sequence[Sequence[tuple[int, int]]]
    """node -> [(successor node, label index)] (cut user calls excluded)."""
    parent: Sequence[tuple[int, int]]
    """node -> (BFS parent node, label index); (-1, -1) for the initial node."""
    depth: Sequence[int]
    enabled_mask: list[int]
    """abstract state -> bits of the fairness groups enabled in it (in the explored model)."""
    invariant_violations: dict[str, Violation] = field(default_factory=dict)
    step_violations: dict[str, Violation] = field(default_factory=dict)
    deadlocks: list[int] = field(default_factory=list)
    bounded_ends: int = 0
    terminal_nodes: int = 0
    transitions: int = 0
    truncated: bool = False
    seconds: float = 0.0
    packed: list[tuple[Any, ...]] | None = field(default=None, repr=False)
    """abstract state index -> the state as a tuple of field values (compiled engine only)."""
    compiled: CompiledSpec | None = field(default=None, repr=False)
    """The generated functions the graph was built with (compiled engine only)."""
    csr: Adjacency | None = field(default=None, repr=False)
    """The edges as int arrays (compiled engine; :func:`adjacency` builds them otherwise)."""
    analysis: dict[str, Any] = field(default_factory=dict, repr=False)
    """Results computed once from the finished graph and shared by its checks (e.g. the
    SCCs the leads-to checks start from, :mod:`.fairness`)."""

    def state(self, node: int) -> State:
        return self.abstract[self.nodes[node][0]]

    def path_to(self, node: int) -> list[tuple[int, int]]:
        """[(label, node)] steps from the initial node to ``node`` (BFS: shortest)."""
        out: list[tuple[int, int]] = []
        while True:
            par, lab = self.parent[node]
            if par < 0:
                break
            out.append((lab, node))
            node = par
        out.reverse()
        return out

    def reached_records(self) -> list[State]:
        """The distinct state records of explored nodes (successors cut by a bound excluded)."""
        return [self.abstract[a] for a in sorted({a for a, _ in self.nodes})]

    @property
    def max_depth(self) -> int:
        return max(self.depth) if self.depth else 0


def _labels(relation: tuple[Transition, ...], domain: Mapping[str, tuple[int, ...]],
            bits: Mapping[str, int]) -> list[Label]:
    out: list[Label] = []
    for t in relation:
        combos = itertools.product(*(domain[name] for name in t.params))
        for values in combos:
            out.append(Label(t, tuple(zip(t.params, values, strict=True)),
                             bits[t.fairness] if t.fairness else 0))
    return out


@dataclass(frozen=True)
class Adjacency:
    """A graph's edges in compressed sparse rows: node ``n``'s edges are the positions
    ``offsets[n]`` to ``offsets[n + 1]`` of ``targets`` (successor nodes) and ``labels``.
    4 bytes an edge instead of a tuple and a list slot (~70 bytes)."""

    offsets: array[int]
    targets: array[int]
    labels: array[int]
    node_abstract: Sequence[int]
    """node -> its abstract state (record) index."""


def adjacency(g: StateGraph) -> Adjacency:
    """``g``'s edges as :class:`Adjacency` (built once from ``g.succ`` if not compiled)."""
    if g.csr is not None:
        return g.csr
    cached = g.analysis.get("adjacency")
    if not isinstance(cached, Adjacency):
        offsets, targets, labels = array("i", [0]), array("i"), array("i")
        for edges in g.succ:
            for m, li in edges:
                targets.append(m)
                labels.append(li)
            offsets.append(len(targets))
        cached = Adjacency(offsets, targets, labels, array("i", (a for a, _ in g.nodes)))
        g.analysis["adjacency"] = cached
    return cached


class _SuccView(Sequence[list[tuple[int, int]]]):
    """``succ[n]`` of an :class:`Adjacency`, as the list of (successor, label) pairs."""

    def __init__(self, adj: Adjacency) -> None:
        self._adj = adj

    def __len__(self) -> int:
        return len(self._adj.offsets) - 1

    def __getitem__(self, n: Any) -> Any:
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        adj = self._adj
        lo, hi = adj.offsets[n], adj.offsets[n + 1]
        return list(zip(adj.targets[lo:hi], adj.labels[lo:hi], strict=True))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return (self[n] for n in range(len(self)))


class _PairView(Sequence[tuple[int, int]]):
    """Two parallel int arrays seen as a sequence of pairs."""

    def __init__(self, first: Sequence[int], second: Sequence[int]) -> None:
        self._first = first
        self._second = second

    def __len__(self) -> int:
        return len(self._first)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return list(zip(self._first[i], self._second[i], strict=True))
        return self._first[i], self._second[i]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._first, self._second, strict=True)


class RecordList(Sequence[Any]):
    """The records of packed states, built on access (``record(*packed[i])``)."""

    def __init__(self, packed: list[tuple[Any, ...]], record: type) -> None:
        self._packed = packed
        self._record = record

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._record(*t) for t in self._packed[i]]
        return self._record(*self._packed[i])

    def __iter__(self) -> Iterator[Any]:
        record = self._record
        return (record(*t) for t in self._packed)


def _expected_states(spec: Spec, config: ExplorerConfig) -> int | None:
    return config.expected_states if spec.name == config.expected_spec else None


def build_graph(
    spec: Spec,
    config: ExplorerConfig,
    invariants: Mapping[str, Callable[[State], Any]],
    steps: Mapping[str, Callable[[State, Transition, State], Any]],
    *,
    progress: Callable[[ExploreProgress], None] | None = None,
    engine: str = "compiled",
    guard_hook: Callable[[int, Any], Any] | None = None,
) -> StateGraph:
    """Breadth-first exploration of ``spec`` at ``config``'s bound, checking safety.

    ``engine``: one of :data:`ENGINES`; ``progress``: called about twice a second while
    exploring, and once at the end; ``guard_hook`` (tests only, compiled engine): rewrite
    label ``i``'s guard before it is compiled, to show a wrong compilation is caught.
    """
    if engine == "compiled":
        return _build_compiled(spec, config, invariants, steps, progress, guard_hook)
    if engine != "interpreted":
        raise ValueError(f"unknown engine {engine!r} (have: {', '.join(ENGINES)})")
    t0 = time.perf_counter()
    ticker = (ProgressTicker(progress, _expected_states(spec, config))
              if progress is not None else None)
    relation = spec.relation()
    labels_all = _labels(relation, spec.param_domains(config.percents), group_bits(spec))
    fault_free = [i for i, lab in enumerate(labels_all) if not lab.transition.is_fault]
    explored = [i for i, lab in enumerate(labels_all)
                if config.faults or not lab.transition.is_fault]
    # index labels by (machine, source) so only the owning machine's current state is tried
    by_source: dict[tuple[str, str], list[int]] = {}
    for i in explored:
        t = labels_all[i].transition
        by_source.setdefault((t.machine, t.source), []).append(i)
    fault_free_set = set(fault_free)

    records: list[State] = []
    nodes: list[tuple[int, int]] = []
    succ: list[list[tuple[int, int]]] = []
    parent: list[tuple[int, int]] = []
    depths: list[int] = []
    g = StateGraph(spec=spec, config=config, labels=labels_all, abstract=records, nodes=nodes,
                   succ=succ, parent=parent, depth=depths, enabled_mask=[])
    abs_index: dict[State, int] = {}
    # per abstract state: list of (label, successor abstract index), deadlock flag
    abs_succ: list[list[tuple[int, int]]] = []
    abs_stuck: list[bool] = []
    abs_terminal: list[bool] = []
    step_memo: dict[tuple[int, int], list[str]] = {}
    machines = spec.schema.machines
    chan_var = spec.schema.channel_var

    def over_capacity(st: State) -> bool:
        return chan_var is not None and len(getattr(st, chan_var)) > cap

    def intern(s: State) -> int:
        a = abs_index.get(s)
        if a is None:
            a = len(records)
            abs_index[s] = a
            records.append(s)
            abs_succ.append([])  # filled on expansion
            abs_stuck.append(False)
            abs_terminal.append(False)
            g.enabled_mask.append(-1)
        return a

    def expand(a: int) -> list[tuple[int, int]]:
        if g.enabled_mask[a] >= 0:
            return abs_succ[a]
        s = g.abstract[a]
        out: list[tuple[int, int]] = []
        mask = 0
        progress = False
        for key in ((m.name, getattr(s, m.var)) for m in machines):
            for li in by_source.get(key, ()):
                lab = labels_all[li]
                if lab.transition.enabled(s, **lab.params_dict):
                    nxt = lab.transition.apply(s, **lab.params_dict)
                    out.append((li, intern(nxt)))
                    mask |= lab.group_bit
                    if li in fault_free_set:
                        progress = True
        abs_succ[a] = out
        g.enabled_mask[a] = mask
        abs_terminal[a] = bool(spec.terminal(s))
        abs_stuck[a] = not progress and not abs_terminal[a]
        return out

    node_index: dict[tuple[int, int], int] = {}

    def add_node(a: int, calls: int, par: int, lab: int, d: int) -> int:
        key = (a, calls)
        n = node_index.get(key)
        if n is None:
            n = len(nodes)
            node_index[key] = n
            nodes.append(key)
            succ.append([])
            parent.append((par, lab))
            depths.append(d)
            queue.append(n)
        return n

    queue: deque[int] = deque()
    add_node(intern(spec.initial), 0, -1, -1, 0)
    inv_checked: set[int] = set()
    cap = config.channel_capacity
    max_calls = config.max_calls
    while queue:
        n = queue.popleft()
        if ticker is not None and n % PROGRESS_EVERY_NODES == 0:
            ticker.poll(len(nodes), g.transitions, len(queue))
        a, calls = nodes[n]
        s = g.abstract[a]
        if a not in inv_checked:
            inv_checked.add(a)
            for name, pred in invariants.items():
                if name not in g.invariant_violations and not pred(s):
                    g.invariant_violations[name] = Violation(n)
        edges = expand(a)
        if abs_stuck[a]:
            g.deadlocks.append(n)
        out = succ[n]
        cut = False
        for li, b in edges:
            lab = labels_all[li]
            if lab.user_call:
                nxt_state = g.abstract[b]
                if calls >= max_calls or over_capacity(nxt_state):
                    cut = True
                    continue
                nc = calls + 1
            else:
                if over_capacity(g.abstract[b]):
                    cut = True
                    continue
                nc = calls
            memo_key = (a, li)
            bad = step_memo.get(memo_key)
            if bad is None:
                post = g.abstract[b]
                bad = [name for name, pred in steps.items()
                       if not pred(s, lab.transition, post)]
                step_memo[memo_key] = bad
            for name in bad:
                if name not in g.step_violations:
                    g.step_violations[name] = Violation(n, li)
            m = add_node(b, nc, n, li, depths[n] + 1)
            out.append((m, li))
        g.transitions += len(out)
        if not out:
            if abs_terminal[a]:
                g.terminal_nodes += 1
            elif cut:
                g.bounded_ends += 1
        if len(nodes) > config.max_states:
            g.truncated = True
            break
    g.seconds = time.perf_counter() - t0
    if ticker is not None:
        ticker.finish(len(nodes), g.transitions)
    return g


def _explored_labels(spec: Spec, config: ExplorerConfig
                     ) -> tuple[list[Label], list[int], set[int]]:
    """Every label at this bound, the indices explored, the indices that are not faults."""
    labels_all = _labels(spec.relation(), spec.param_domains(config.percents), group_bits(spec))
    fault_free = {i for i, lab in enumerate(labels_all) if not lab.transition.is_fault}
    explored = [i for i, lab in enumerate(labels_all)
                if config.faults or not lab.transition.is_fault]
    return labels_all, explored, fault_free


def _build_compiled(
    spec: Spec,
    config: ExplorerConfig,
    invariants: Mapping[str, Callable[[State], Any]],
    steps: Mapping[str, Callable[[State, Transition, State], Any]],
    progress: Callable[[ExploreProgress], None] | None,
    guard_hook: Callable[[int, Any], Any] | None,
) -> StateGraph:
    """:func:`build_graph` on generated code: the same nodes, edges, order and verdicts."""
    t0 = time.perf_counter()
    ticker = (ProgressTicker(progress, _expected_states(spec, config))
              if progress is not None else None)
    labels_all, explored, fault_free = _explored_labels(spec, config)
    comp = compile_spec(spec, labels_all, explored, fault_free, invariants, steps,
                        guard_hook=guard_hook)
    # nodes, edges and parents live in int arrays (4 bytes a number); the graph's usual
    # sequences of pairs are views of them
    packed: list[tuple[Any, ...]] = []
    node_abs, node_calls = array("i"), array("i")
    parent_node, parent_label = array("i"), array("i")
    depth = array("i")
    offsets, targets, edge_labels = array("i", [0]), array("i"), array("i")
    enabled_mask: list[int] = []
    csr = Adjacency(offsets, targets, edge_labels, node_abs)
    g = StateGraph(spec=spec, config=config, labels=labels_all,
                   abstract=RecordList(packed, spec.schema.record),
                   nodes=_PairView(node_abs, node_calls), succ=_SuccView(csr),
                   parent=_PairView(parent_node, parent_label), depth=depth,
                   enabled_mask=enabled_mask, packed=packed, compiled=comp, csr=csr)
    chan_var = spec.schema.channel_var
    chan_i = comp.fields.index(chan_var) if chan_var is not None else -1
    cap = config.channel_capacity
    max_calls = config.max_calls
    width = max_calls + 1
    user = bytes(lab.user_call for lab in labels_all)
    abs_index: dict[tuple[Any, ...], int] = {}
    # per abstract state, once expanded: its edges as [label, successor, label, ...], the
    # step properties violated per edge position (only where some are), stuck / terminal
    abs_edges: list[list[int] | None] = []
    abs_bad: dict[int, dict[int, tuple[str, ...]]] = {}
    over = bytearray()  # abstract state -> more queued commands than the capacity
    abs_stuck = bytearray()
    abs_terminal = bytearray()
    node_of = array("i")  # abstract * width + calls -> node (-1: none yet)
    unset_row = array("i", [-1] * width)
    expand, check_invariants, terminal = comp.expand, comp.invariants, comp.terminal
    inv_bad = g.invariant_violations
    step_bad = g.step_violations
    deadlocks = g.deadlocks

    def intern(t: tuple[Any, ...]) -> int:
        a = abs_index.get(t)
        if a is None:
            a = len(packed)
            abs_index[t] = a
            packed.append(t)
            abs_edges.append(None)
            over.append(chan_i >= 0 and len(t[chan_i]) > cap)
            abs_stuck.append(0)
            abs_terminal.append(0)
            enabled_mask.append(-1)
            node_of.extend(unset_row)
        return a

    a0 = intern(tuple(getattr(spec.initial, f) for f in comp.fields))
    node_of[a0 * width] = 0
    node_abs.append(a0)
    node_calls.append(0)
    parent_node.append(-1)
    parent_label.append(-1)
    depth.append(0)
    transitions = 0
    bounded_ends = 0
    terminal_nodes = 0
    n = 0
    while n < len(node_abs):
        if ticker is not None and n % PROGRESS_EVERY_NODES == 0:
            ticker.poll(len(node_abs), transitions, len(node_abs) - n)
        a = node_abs[n]
        calls = node_calls[n]
        edges = abs_edges[a]
        if edges is None:
            t = packed[a]
            for name in check_invariants(t):
                if name not in inv_bad:
                    inv_bad[name] = Violation(n)
            raw, mask, prog = expand(t)
            edges = []
            bad_at: dict[int, tuple[str, ...]] = {}
            for li, nxt, bad in raw:
                if bad:
                    bad_at[len(edges)] = bad
                edges.append(li)
                edges.append(intern(nxt))
            if bad_at:
                abs_bad[a] = bad_at
            abs_edges[a] = edges
            enabled_mask[a] = mask
            is_terminal = bool(terminal(t))
            abs_terminal[a] = is_terminal
            abs_stuck[a] = not prog and not is_terminal
        if abs_stuck[a]:
            deadlocks.append(n)
        bad_here = abs_bad.get(a)
        cut = False
        added = 0
        d1 = depth[n] + 1
        for j in range(0, len(edges), 2):
            li = edges[j]
            b = edges[j + 1]
            if over[b]:
                cut = True
                continue
            if user[li]:
                if calls >= max_calls:
                    cut = True
                    continue
                nc = calls + 1
            else:
                nc = calls
            if bad_here is not None and j in bad_here:
                for name in bad_here[j]:
                    if name not in step_bad:
                        step_bad[name] = Violation(n, li)
            key = b * width + nc
            m = node_of[key]
            if m < 0:
                m = len(node_abs)
                node_of[key] = m
                node_abs.append(b)
                node_calls.append(nc)
                parent_node.append(n)
                parent_label.append(li)
                depth.append(d1)
            targets.append(m)
            edge_labels.append(li)
            added += 1
        offsets.append(len(targets))
        transitions += added
        if not added:
            if abs_terminal[a]:
                terminal_nodes += 1
            elif cut:
                bounded_ends += 1
        n += 1
        if len(node_abs) > config.max_states:
            g.truncated = True
            break
    # a truncated graph: the nodes past the last expanded one have no edges
    while len(offsets) <= len(node_abs):
        offsets.append(len(targets))
    g.transitions = transitions
    g.bounded_ends = bounded_ends
    g.terminal_nodes = terminal_nodes
    g.seconds = time.perf_counter() - t0
    if ticker is not None:
        ticker.finish(len(node_abs), transitions)
    return g
