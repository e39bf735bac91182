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
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoconverge.spec import Spec, State, Transition

from .bound import BoundTransition
from .config import ExplorerConfig


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
    abstract: list[State]
    nodes: list[tuple[int, int]]
    succ: list[list[tuple[int, int]]]
    """node -> [(successor node, label index)] (cut user calls excluded)."""
    parent: list[tuple[int, int]]
    """node -> (BFS parent node, label index); (-1, -1) for the initial node."""
    depth: list[int]
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
    _abs_cache: dict[int, list[Any]] = field(default_factory=dict, repr=False)

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


def build_graph(
    spec: Spec,
    config: ExplorerConfig,
    invariants: Mapping[str, Callable[[State], Any]],
    steps: Mapping[str, Callable[[State, Transition, State], Any]],
) -> StateGraph:
    """Breadth-first exploration of ``spec`` at ``config``'s bound, checking safety."""
    t0 = time.perf_counter()
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

    g = StateGraph(spec=spec, config=config, labels=labels_all, abstract=[], nodes=[],
                   succ=[], parent=[], depth=[], enabled_mask=[])
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
            a = len(g.abstract)
            abs_index[s] = a
            g.abstract.append(s)
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
            n = len(g.nodes)
            node_index[key] = n
            g.nodes.append(key)
            g.succ.append([])
            g.parent.append((par, lab))
            g.depth.append(d)
            queue.append(n)
        return n

    queue: deque[int] = deque()
    add_node(intern(spec.initial), 0, -1, -1, 0)
    inv_checked: set[int] = set()
    cap = config.channel_capacity
    max_calls = config.max_calls
    while queue:
        n = queue.popleft()
        a, calls = g.nodes[n]
        s = g.abstract[a]
        if a not in inv_checked:
            inv_checked.add(a)
            for name, pred in invariants.items():
                if name not in g.invariant_violations and not pred(s):
                    g.invariant_violations[name] = Violation(n)
        edges = expand(a)
        if abs_stuck[a]:
            g.deadlocks.append(n)
        out = g.succ[n]
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
            m = add_node(b, nc, n, li, g.depth[n] + 1)
            out.append((m, li))
        g.transitions += len(out)
        if not out:
            if abs_terminal[a]:
                g.terminal_nodes += 1
            elif cut:
                g.bounded_ends += 1
        if len(g.nodes) > config.max_states:
            g.truncated = True
            break
    g.seconds = time.perf_counter() - t0
    return g
