"""Explicit-state exploration of a spec: every interleaving at a bound, every property.

Composes the controller (every sequence of user calls up to ``max_calls``: percents from the
configured domain, abort, shutdown, handover), the worker machine, the clock, the FIFO
channel (bounded by ``channel_capacity``) and the vCPUs' paused flag - all of which live in
the spec's state record - by iterating the spec's relation (:meth:`Spec.relation`). Then:

- every ``invariant`` property at every reachable state, every ``step`` property on every
  reachable edge (shortest counterexample: BFS parents);
- ``deadlock``: no reachable non-terminal state is stuck (see :mod:`.graph` for the exact
  notion, and for *bounded ends*: states whose only moves were user calls cut by the bound -
  not deadlocks, not terminal; counted in the stats);
- every ``leadsto`` property under the spec's fairness (its ``WEAK_FAIRNESS`` groups: the
  worker's transitions as one group, the clock's as one, the controller's blocking-call
  completions as one; user calls unfair), by fair-SCC detection (:mod:`.fairness`);
  counterexamples are lassos.

Usage::

    from autoconverge.model.explorer import explore, load_config
    result = explore(SPEC, load_config())        # [ci] section of model/explorer.toml
    print(result.format_text()); result.ok

The result is typed (:mod:`.results`): a :class:`~.results.PropertyResult` per property and
the run's :class:`~.results.ExplorationStats`; ``result.as_dict()`` is its JSON form.

What a verdict guarantees, and what it does not:

- it is exhaustive *up to the bound* (the config's percents, ``max_calls`` user calls,
  ``channel_capacity`` queued commands): every interleaving inside it, no reduction
  (no symmetry, no partial-order reduction, no hashing that may lose states); nothing is
  claimed beyond it (the Z3 proofs of :mod:`autoconverge.proofs` are the unbounded ones);
- ``leadsto`` verdicts assume the spec's weak fairness groups and nothing stronger (user calls
  and timeouts unfair); a bounded end counts as a user stopping, not as a deadlock;
- the graph is built by generated code (:mod:`.compiled`, default) or by calling the spec's
  functions (``engine="interpreted"``); the two give the same states, edges, depths,
  verdicts and counterexamples (the tests compare them on every spec and bug-zoo variant).
  A ``progress`` callback (:mod:`.progress`) sees the graph grow.

For a bug-zoo variant (:func:`autoconverge.spec.variants.variant_of`), the percent domain is
extended with the variant's ``probe_percents`` automatically. The checks of the declaration
itself (reachability, overlapping guards) are :mod:`autoconverge.proofs.declaration`.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

from autoconverge.spec import Spec, State, Transition
from autoconverge.spec.variants import probe_percents

from .compiled import compile_predicates
from .config import ExplorerConfig, load_config
from .fairness import check_leadsto
from .graph import StateGraph, adjacency, build_graph
from .progress import ExploreProgress
from .results import ExplorationResult, ExplorationStats, PropertyResult
from .trace import format_counterexample, state_dict, step_dicts

__all__ = [
    "ExplorationResult",
    "ExplorationStats",
    "ExploreProgress",
    "ExplorerConfig",
    "PropertyResult",
    "explore",
    "load_config",
]


def explore(spec: Spec, config: ExplorerConfig | None = None, *,
            progress: Callable[[ExploreProgress], None] | None = None,
            engine: str = "compiled") -> ExplorationResult:
    """Explore ``spec`` at ``config``'s bound (default ``[ci]``) and check its properties.

    ``progress`` (e.g. :func:`.progress.stderr_progress`) is called about twice a second
    while the state graph is built, and once when it is complete. ``engine``: ``compiled``
    (generated successor functions, :mod:`.compiled`) or ``interpreted`` (the oracle); both
    give the same graph and verdicts.
    """
    collecting = gc.isenabled()
    gc.disable()  # millions of small tuples and lists, no cycles among them: pure overhead
    try:
        return _explore(spec, config, progress, engine)
    finally:
        if collecting:
            gc.enable()


def _explore(spec: Spec, config: ExplorerConfig | None,
             progress: Callable[[ExploreProgress], None] | None,
             engine: str) -> ExplorationResult:
    t0 = time.perf_counter()
    base = config if config is not None else load_config()
    cfg = base.with_percents(probe_percents(spec))
    props = list(spec.properties)
    if cfg.properties:
        known = {p.name for p in props}
        unknown = [n for n in cfg.properties if n not in known]
        if unknown:
            raise ValueError(f"config names unknown properties: {unknown}")
        props = [p for p in props if p.name in cfg.properties]

    invariants: dict[str, Callable[[State], Any]] = {
        p.name: p.invariant for p in props if p.kind == "invariant"}
    steps: dict[str, Callable[[State, Transition, State], Any]] = {
        p.name: p.step for p in props if p.kind == "step"}
    g = build_graph(spec, cfg, invariants, steps, progress=progress, engine=engine)
    t_graph = time.perf_counter() - t0
    node_preds = _leadsto_predicates(g, [p for p in props if p.kind == "leadsto"])

    results: list[PropertyResult] = []
    for p in props:
        cex: dict[str, Any] | None = None
        details: dict[str, Any] = {}
        if p.kind == "invariant":
            v = g.invariant_violations.get(p.name)
            if v is not None:
                cex = _safety_cex(g, p.name, "invariant", g.path_to(v.node),
                                  "the last state violates the invariant")
        elif p.kind == "step":
            v = g.step_violations.get(p.name)
            if v is not None:
                target = next(m for m, li in g.succ[v.node] if li == v.label)
                cex = _safety_cex(g, p.name, "step",
                                  [*g.path_to(v.node), (v.label or 0, target)],
                                  "the last step violates the step property")
        elif p.kind == "deadlock":
            details["deadlocked_states"] = len(g.deadlocks)
            if g.deadlocks:
                n = min(g.deadlocks, key=lambda x: g.depth[x])
                cex = _safety_cex(g, p.name, "deadlock", g.path_to(n),
                                  "no transition but fault is enabled in the last state, "
                                  "which is not terminal")
        elif p.kind == "leadsto":
            pf, qf = node_preds[p.name]
            lr = check_leadsto(g, pf, qf)
            details.update(region=lr.region, sources=lr.sources, sccs=lr.sccs,
                           fair_sccs=lr.fair_sccs)
            if lr.lasso is not None:
                la = lr.lasso
                steps_all = la.prefix + la.cycle
                cex = {
                    "property": p.name,
                    "kind": "liveness",
                    "summary": (
                        f"lasso: {len(la.prefix)}-step prefix to a ~q state reached from a "
                        f"p state, then a fair {len(la.cycle)}-step cycle of ~q states"
                        if la.cycle else
                        f"{len(la.prefix)} steps to a ~q state where no fair thread can move"
                    ),
                    "initial": state_dict(spec.initial),
                    "steps": step_dicts(g, steps_all),
                    "length": len(steps_all),
                    "cycle_start": len(la.prefix),
                    "p_index": _index_on_path(la.prefix, la.source),
                }
        else:  # pragma: no cover - a new kind in the spec
            raise ValueError(f"unknown property kind {p.kind!r}")
        results.append(PropertyResult(
            name=p.name,
            kind=p.kind,
            statement=p.statement,
            holds=cex is None and not g.truncated,
            distinct_states=len(g.nodes),
            depth=g.max_depth,
            counterexample=cex,
            counterexample_text=(format_counterexample(cex, spec.schema.value_names)
                                 if cex else None),
            details=details,
        ))
    total = time.perf_counter() - t0
    applies = (spec.name == cfg.expected_spec and cfg.expected_states is not None
               and cfg.percents == base.percents)
    stats = ExplorationStats(
        spec=spec.name,
        distinct_states=len(g.nodes),
        distinct_records=len(set(adjacency(g).node_abstract)),
        transitions=g.transitions,
        depth=g.max_depth,
        terminal_states=g.terminal_nodes,
        bounded_ends=g.bounded_ends,
        deadlocks=len(g.deadlocks),
        seconds_explore=round(t_graph, 4),
        seconds_total=round(total, 4),
        states_per_second=round(len(g.nodes) / t_graph, 1) if t_graph > 0 else 0.0,
        truncated=g.truncated,
        config=cfg,
        expected_states=cfg.expected_states if applies else None,
        expected_depth=cfg.expected_depth if applies else None,
        regression_ok=(
            (len(g.nodes) == cfg.expected_states
             and (cfg.expected_depth is None or g.max_depth == cfg.expected_depth))
            if applies else None
        ),
    )
    return ExplorationResult(spec=spec.name, properties=tuple(results), stats=stats, graph=g)


def _leadsto_predicates(g: StateGraph, props: list[Any]
                        ) -> dict[str, tuple[Sequence[bool], Sequence[bool]]]:
    """Each leads-to property's ``p`` and ``q`` per node. On a compiled graph the predicates
    are compiled too and evaluated once per distinct record; else called on records."""
    out: dict[str, tuple[Sequence[bool], Sequence[bool]]] = {}
    if g.packed is not None:
        fns: dict[str, Callable[[Any], Any]] = {}
        for p in props:
            assert p.leads_from is not None and p.leads_to is not None
            fns[f"{p.name}.p"] = p.leads_from
            fns[f"{p.name}.q"] = p.leads_to
        compiled = compile_predicates(g.spec, fns)
        packed = g.packed
        abs_of = adjacency(g).node_abstract
        for p in props:
            fp, fq = compiled[f"{p.name}.p"], compiled[f"{p.name}.q"]
            pa = [fp(t) for t in packed]
            qa = [fq(t) for t in packed]
            out[p.name] = ([pa[a] for a in abs_of], [qa[a] for a in abs_of])
        return out
    for p in props:
        assert p.leads_from is not None and p.leads_to is not None
        pf, qf = _node_pred(g, p.leads_from), _node_pred(g, p.leads_to)
        n = len(g.nodes)
        out[p.name] = ([pf(i) for i in range(n)], [qf(i) for i in range(n)])
    return out


def _node_pred(g: StateGraph, f: Callable[[State], Any]) -> Callable[[int], bool]:
    memo: dict[int, bool] = {}

    def pred(n: int) -> bool:
        a = g.nodes[n][0]
        r = memo.get(a)
        if r is None:
            r = bool(f(g.abstract[a]))
            memo[a] = r
        return r

    return pred


def _index_on_path(prefix: list[tuple[int, int]], node: int) -> int:
    """Number of steps after which the path reaches ``node`` (0: the initial state)."""
    for i, (_, n) in enumerate(prefix, start=1):
        if n == node:
            return i
    return 0


def _safety_cex(g: StateGraph, name: str, kind: str, path: list[tuple[int, int]],
                summary: str) -> dict[str, Any]:
    return {
        "property": name,
        "kind": kind,
        "summary": f"{len(path)} steps; {summary}",
        "initial": state_dict(g.spec.initial),
        "steps": step_dicts(g, path),
        "length": len(path),
    }
