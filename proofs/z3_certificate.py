"""Unbounded proofs of a finite lifecycle by certificates: the explorer proposes, Z3 checks.

A lifecycle whose state record is finite as declared (the migration: flags, small codes, one
message in flight each way; no FIFO, no counter) needs no hand-written lemma. The
explicit-state explorer's reachable records ``R`` propose the inductive invariant, and its
state graph proposes a ranking for each leads-to property. Z3 checks each certificate against
the spec's own encoding (:class:`.encoding.Encoding`: the declared guards and effects
evaluated on Z3 terms) over *every* value of every field - the ``Int`` fields unbounded -, so
nothing rests on the explorer being right: a record it missed, a successor its bound cut, a
step it evaluated wrongly makes a check fail (with the counterexample to the certificate),
never a proof. The explorer is only where the certificate comes from.

Safety (method ``certificate``), obligations:

- ``init[Reachable]``: ``Init => R``;
- ``step[Reachable]``: ``R /\\ T_t => R'`` for every declared transition ``t`` (one query
  each): ``R`` is an inductive invariant, so every reachable state, of any behaviour of any
  length, is in ``R``;
- ``property``: invariant ``R => P``; step property ``R /\\ T_t => P(s, t, s')`` for every
  ``t`` (``step-property[...]``); deadlock ``R /\\ ~terminal => ENABLED (Next without
  faults)`` (``deadlock-free``).

``R`` is a formula exactly true on the records: a reduced ordered decision diagram over the
record's fields in declaration order (a node per field value, equal sub-diagrams shared:
:class:`Diagram`). :mod:`.prove` also asks Spacer (:mod:`.z3_spacer`) for an invariant of its
own for each invariant and step property - a second method that does not use the explorer at
all (``certificate+spacer`` when it agrees).

Liveness ``p ~> q`` (method ``certificate+ranking``) under the spec's weak fairness
(:attr:`Spec.weak_fairness`; no fairness on the other groups), the usual proof rule (see
:mod:`.z3_liveness`), with a certificate derived from the explorer's graph: ``H`` is the set of
records of ``R`` reachable from a ``p /\\ ~q`` record through ``~q`` records; its strongly
connected components, in reverse topological order, are the rank (successors first: a step
never goes to a component of a higher rank); in each component a weakly fair group enabled in
each of its records (a state-changing step) none of whose steps stays in the component is the
helpful group. Such a group exists in every component exactly when the explorer finds no fair
cycle; a component without one is a fair cycle, and the derivation reports it. Obligations:

- ``start``: ``R /\\ p /\\ ~q => H``;
- ``bounded``: ``H /\\ ~q => rank >= 0``;
- ``(a) helpful group enabled``: ``H /\\ ~q => ENABLED <<h(s)>>``;
- ``(b/c)`` / ``(d) <group> steps``, for every transition ``t`` of every group, weakly fair or
  not: ``H /\\ ~q /\\ T_t => q' \\/ s' = s \\/ H' /\\ (rank' < rank \\/ t not of h(s) /\\
  rank' = rank /\\ h(s') = h(s))``.

Soundness: take a behaviour, fair to every weakly fair group, from Init through a state with
``p /\\ ~q`` (in ``R``: ``R`` is inductive, so ``H`` by ``start``), on which ``q`` never holds
afterwards. Every later state is in ``H`` and no step increases the rank (a stuttering step
keeps everything); naturals are well-founded, so the rank is eventually constant, and from then
on ``h`` is one group ``G``, enabled in every state (``(a)``) and never taking a
state-changing step (it would decrease the rank or reach ``q``): ``G`` is continuously enabled
and never taken, against ``WF(G)``. The rank and the helpful group are written as decision
diagrams too (their values matter on ``H`` only, so a field that does not change them there
is not tested).

What these proofs rely on: the spec's Z3 encoding (the declared guards and effects, the same
functions the explorer and the implementation evaluate, on Z3 terms), Z3's ``unsat``
verdicts, and for liveness the proof rule above. Not on the explorer's bound (the certificate
is checked for every state and every step), nor on the explorer being correct.

When an obligation fails, a counterexample is searched from Init (:class:`.z3_bmc.OneShot`:
every behaviour of at most :func:`search_depth` steps, the variant's declared ``max_trace``);
without one the property is ``not proved``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import z3

from autoconverge.model.fairness import tarjan_scc
from autoconverge.model.trace import state_from_dict
from autoconverge.spec import Spec, Transition
from autoconverge.spec.core import param_combinations
from autoconverge.spec.specs import ZOOS, variant_of

from . import results
from .encoding import Encoding, as_bool, lift, states_equal
from .z3_bmc import SEARCH_RLIMIT, OneShot, Unrolling
from .z3_lemmas import Lemma
from .z3_obligations import (
    FAILED,
    PROVED,
    RLIMIT,
    SEED,
    UNKNOWN,
    Checker,
    Outcome,
    Query,
    Step,
)

if TYPE_CHECKING:
    from autoconverge.model.results import ExplorationResult

SAFETY_METHOD = "certificate"
LIVENESS_METHOD = "certificate+ranking"
HINTS = 4
"""Records handed to a counterexample search as where to look first (:meth:`hint`)."""
REACHABLE = "Reachable"
"""The name of the reachable-set certificate in obligations (``init[Reachable]``, ...)."""


def search_depth(spec: Spec) -> int:
    """Steps of the counterexample search when a certificate fails: the variant's declared
    ``max_trace`` (its longest shortest counterexample), else the longest of the lifecycle's
    zoo."""
    v = variant_of(spec)
    if v is not None and v in ZOOS.get(spec.family, ()):
        return int(v.max_trace)
    return int(max((v.max_trace for v in ZOOS.get(spec.family, ())), default=0))


# --- decision diagrams ----------------------------------------------------------------------


@dataclass(frozen=True)
class Diagram:
    """A reduced ordered decision diagram over the fields of a record.

    A *set* diagram (``leaf`` None) is true exactly on its records: a node tests its field
    against each value some record has there, and a value no record has is false. A
    *function* diagram maps each record of its domain to an integer (its leaves); a node whose
    every branch leads to the same sub-diagram is left out (the value does not depend on the
    field within the domain), so its value outside the domain is unspecified.
    """

    fields: tuple[str, ...]
    nodes: tuple[tuple[int, tuple[tuple[Any, int], ...]], ...]
    """Node ``i`` (``i >= 1``; 0 unused): (field index, ((value, child), ...)). A child
    ``<= 0`` is a leaf: ``-j`` is ``leaves[j]``."""
    leaves: tuple[Any, ...]
    root: int
    size: int
    """Records (set) or domain records (function) it was built from."""
    is_set: bool

    @property
    def node_count(self) -> int:
        return len(self.nodes) - 1

    def digest(self) -> str:
        """A short digest of the diagram (the same records and values: the same digest)."""
        return hashlib.sha256(repr((self.fields, self.nodes, self.leaves,
                                    self.root)).encode()).hexdigest()[:16]

    def z3(self, enc: Encoding, s: Any) -> z3.ExprRef:
        """The diagram over a record of Z3 terms: a Boolean (set) or an Int (function)."""
        schema = enc.spec.schema
        built: dict[int, z3.ExprRef] = {}

        def term(i: int) -> z3.ExprRef:
            if i <= 0:
                leaf = self.leaves[-i]
                return (z3.BoolVal(bool(leaf), enc.ctx) if self.is_set
                        else z3.IntVal(leaf, enc.ctx))
            return built[i]

        tests_of: dict[tuple[str, str, Any], z3.BoolRef] = {}

        def test(name: str, var: z3.ExprRef, v: Any) -> z3.BoolRef:
            key = (name, type(v).__name__, v)
            if key not in tests_of:
                tests_of[key] = var == lift(name, v, schema)
            return tests_of[key]

        for i in range(1, len(self.nodes)):
            level, children = self.nodes[i]
            name = self.fields[level]
            var = lift(name, getattr(s, name), schema)
            tests = [(test(name, var, v), c) for v, c in children]
            if self.is_set:
                parts = [t if c <= 0 else _connect(z3.Z3_mk_and, [t, term(c)])
                         for t, c in tests]
                built[i] = _connect(z3.Z3_mk_or, parts) if len(parts) > 1 else parts[0]
            else:
                out = term(tests[-1][1])
                for t, c in reversed(tests[:-1]):
                    out = z3.If(t, term(c), out)
                built[i] = out
        return term(self.root)

    def value(self, record: Any) -> Any:
        """The diagram on a concrete record: membership (set) or the value (function; None
        outside the domain where a test fails)."""
        i = self.root
        while i > 0:
            level, children = self.nodes[i]
            got = getattr(record, self.fields[level])
            nxt = next((c for v, c in children if v == got and type(v) is type(got)), None)
            if nxt is None:
                return False if self.is_set else None
            i = nxt
        return bool(self.leaves[-i]) if self.is_set else self.leaves[-i]


def _connect(mk: Any, parts: list[z3.BoolRef]) -> z3.BoolRef:
    """``z3.And``/``z3.Or`` (``mk``: ``Z3_mk_and``/``Z3_mk_or``) of Booleans, through Z3's C
    API (the Python wrappers re-check every argument's sort: most of a large diagram's
    building time)."""
    ctx = parts[0].ctx
    arr = (z3.Ast * len(parts))()
    for i, p in enumerate(parts):
        arr[i] = p.as_ast()
    return z3.BoolRef(mk(ctx.ref(), len(parts), arr), ctx)


def _row(record: Any, fields: Sequence[str]) -> tuple[Any, ...]:
    return tuple(getattr(record, f) for f in fields)


def _key(v: Any) -> tuple[str, Any]:
    return (type(v).__name__, v)


def build_diagram(rows: Mapping[tuple[Any, ...], Any], fields: Sequence[str], *,
                  is_set: bool) -> Diagram:
    """The reduced diagram of ``rows`` (record tuples in ``fields`` order -> leaf value)."""
    leaves: list[Any] = []
    leaf_ids: dict[Any, int] = {}

    def leaf(v: Any) -> int:
        k = _key(v)
        if k not in leaf_ids:
            leaf_ids[k] = -len(leaves)
            leaves.append(v)
        return leaf_ids[k]

    nodes: list[tuple[int, tuple[tuple[Any, int], ...]]] = [(-1, ())]
    table: dict[tuple[int, tuple[tuple[tuple[str, Any], int], ...]], int] = {}
    cur: dict[tuple[Any, ...], int] = {r: leaf(True if is_set else v) for r, v in rows.items()}
    for level in range(len(fields) - 1, -1, -1):
        groups: dict[tuple[Any, ...], dict[tuple[str, Any], tuple[Any, int]]] = {}
        for r, child in cur.items():
            groups.setdefault(r[:level], {})[_key(r[level])] = (r[level], child)
        nxt: dict[tuple[Any, ...], int] = {}
        for prefix, by_value in groups.items():
            children = tuple(by_value[k] for k in sorted(by_value, key=repr))
            if not is_set and len({c for _, c in children}) == 1:
                nxt[prefix] = children[0][1]  # the field does not matter here
                continue
            key = (level, tuple((_key(v), c) for v, c in children))
            if key not in table:
                table[key] = len(nodes)
                nodes.append((level, children))
            nxt[prefix] = table[key]
        cur = nxt
    root = cur[()] if cur else leaf(False if is_set else 0)  # no records at all
    return Diagram(tuple(fields), tuple(nodes), tuple(leaves), root, len(rows), is_set)


def set_diagram(records: Iterable[Any], fields: Sequence[str]) -> Diagram:
    return build_diagram({_row(r, fields): True for r in records}, fields, is_set=True)


def function_diagram(values: Mapping[Any, int], fields: Sequence[str]) -> Diagram:
    return build_diagram({_row(r, fields): v for r, v in values.items()}, fields,
                         is_set=False)


# --- one solver per family of queries -----------------------------------------------------


def combine(name: str, formula: str, parts: list[Outcome], what: str,
            cannot: list[str] | None = None) -> Outcome:
    """One obligation made of per-transition queries: proved iff all are."""
    total = sum(p.time_s for p in parts)
    failed = [p for p in parts if p.verdict == FAILED]
    unknown = [p for p in parts if p.verdict == UNKNOWN]
    if failed:
        others = f" (also: {', '.join(p.name for p in failed[1:])})" if failed[1:] else ""
        return Outcome(name, formula, FAILED, total,
                       f"{what} fails for {failed[0].name}{others}: {failed[0].detail}",
                       failed[0].cti, parts=parts)
    if unknown:
        return Outcome(name, formula, UNKNOWN, total,
                       f"not proved for {', '.join(p.name for p in unknown)}: "
                       f"{unknown[0].detail}", parts=parts)
    detail = f"z3: unsat for each of the {len(parts)} transitions"
    if cannot:
        detail += (f"; {len(cannot)} cannot occur here (their hypotheses are unsatisfiable): "
                   + ", ".join(cannot))
    return Outcome(name, formula, PROVED, total, detail, parts=parts)


# --- the ranking certificate --------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """A ranking certificate of ``p ~> q`` derived from the explorer's graph (or why none)."""

    region: tuple[Any, ...]
    """H: the records reachable from a ``p /\\ ~q`` record through ``~q`` records."""
    rank: dict[Any, int] = field(default_factory=dict)
    """Each record of H -> the index of its strongly connected component (successors
    first)."""
    helpful: dict[Any, int] = field(default_factory=dict)
    """Each record of H -> the index of its helpful group in the spec's weakly fair groups."""
    components: int = 0
    by_group: dict[str, int] = field(default_factory=dict)
    """Components per helpful group."""
    fair_cycle: tuple[Any, ...] | None = None
    """A component with no helpful group: a fair cycle (the derivation failed)."""
    sources: int = 0


def _steps(spec: Spec, records: Sequence[Any], domain: Mapping[str, tuple[int, ...]]
           ) -> dict[Any, list[tuple[Transition, Any]]]:
    """Every record's state-changing steps (stuttering ones are no steps), evaluated."""
    out: dict[Any, list[tuple[Transition, Any]]] = {}
    for r in records:
        out[r] = [(t, nxt) for t in spec.relation()
                  for params in param_combinations(t.params, domain)
                  if t.enabled(r, **params) and (nxt := t.apply(r, **params)) != r]
    return out


def _graph_steps(graph: Any) -> dict[Any, list[tuple[Transition, Any]]]:
    """Every explored record's state-changing steps, from the explorer's graph (its edges
    are per node: a record with each number of user calls made; a step the bound cut is
    missing, and the ranking then fails its check)."""
    out: dict[Any, dict[tuple[str, str, str, Any], tuple[Transition, Any]]] = {}
    for n, edges in enumerate(graph.succ):
        r = graph.state(n)
        mine = out.setdefault(r, {})
        for m, li in edges:
            nxt = graph.state(m)
            t = graph.labels[li].transition
            if nxt != r:
                mine.setdefault((t.trigger, t.source, t.dest, nxt), (t, nxt))
    return {r: list(v.values()) for r, v in out.items()}


def derive_ranking(spec: Spec, records: Sequence[Any],
                   steps: Mapping[Any, list[tuple[Transition, Any]]],
                   leads_from: Callable[[Any], Any], leads_to: Callable[[Any], Any]
                   ) -> Ranking:
    """The ranking certificate of ``leads_from ~> leads_to`` over ``records`` (a proposal:
    :meth:`CertificateProver.rank_obligations` checks it)."""
    known = set(records)
    not_q = {r for r in records if not leads_to(r)}
    sources = [r for r in records if r in not_q and leads_from(r)]
    region: list[Any] = []
    seen = set(sources)
    todo = list(sources)
    while todo:
        r = todo.pop()
        region.append(r)
        for _t, nxt in steps[r]:
            if nxt in not_q and nxt in known and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    order = {r: i for i, r in enumerate(records)}
    index = {r: i for i, r in enumerate(sorted(region, key=order.__getitem__))}
    nodes = list(index.values())
    back = {i: r for r, i in index.items()}
    succ = {i: [index[n] for _t, n in steps[back[i]] if n in index] for i in nodes}
    comps = tarjan_scc(nodes, lambda i: succ[i])
    weak = spec.weak_fairness
    rank: dict[Any, int] = {}
    helpful: dict[Any, int] = {}
    by_group: dict[str, int] = {}
    for c, comp in enumerate(comps):
        members = set(comp)
        chosen = None
        for gi, g in enumerate(weak):
            enabled_everywhere = all(any(t.fairness_group.name == g.name
                                         for t, _n in steps[back[i]]) for i in comp)
            stays = any(t.fairness_group.name == g.name and n in index and index[n] in members
                        for i in comp for t, n in steps[back[i]])
            if enabled_everywhere and not stays:
                chosen = gi
                break
        if chosen is None:
            return Ranking(tuple(back[i] for i in nodes), components=len(comps),
                           fair_cycle=tuple(back[i] for i in sorted(comp)),
                           sources=len(sources))
        by_group[weak[chosen].name] = by_group.get(weak[chosen].name, 0) + 1
        for i in comp:
            rank[back[i]] = c
            helpful[back[i]] = chosen
    return Ranking(tuple(back[i] for i in nodes), rank, helpful, len(comps), by_group,
                   None, len(sources))


# --- the prover -----------------------------------------------------------------------------


class CertificateProver:
    """Certificate proofs for one spec (a finite lifecycle); the reachable set is derived
    and checked once, for all its properties.

    ``explored``: a function returning the explorer's result for ``spec`` (run on demand);
    ``records``: the certificate's records, if given (else the explorer's reachable ones) -
    a test can hand it a wrong one."""

    def __init__(self, spec: Spec, rlimit: int = RLIMIT, *,
                 explored: Callable[[], ExplorationResult] | None = None,
                 records: Sequence[Any] | None = None,
                 search_rlimit: int = SEARCH_RLIMIT, depth: int | None = None) -> None:
        self.spec = spec
        self.enc = Encoding(spec)
        self.rlimit = rlimit
        self.search_rlimit = search_rlimit
        self.depth = search_depth(spec) if depth is None else depth
        """Steps from Init searched for a safety counterexample (a lasso: one more)."""
        self._explored = explored
        self._records = tuple(records) if records is not None else None
        self.pre = self.enc.state("s")
        self.post = self.enc.state("s'")
        self.params = self.enc.params("step")
        self.outcomes: dict[str, list[Outcome]] = {}
        """Every property's obligations (kept for the vacuity check)."""
        self._reachable: list[Outcome] | None = None
        self._r: tuple[Diagram, z3.BoolRef, z3.BoolRef] | None = None
        self._steps: dict[Any, list[tuple[Transition, Any]]] | None = None
        self._graph: Any = None
        self._step_formulas: dict[Transition, z3.BoolRef] = {}
        self._search: OneShot | None = None
        self._hyp: dict[int, tuple[Outcome, Checker, list[z3.BoolRef]]] = {}
        """Each query's outcome -> the solver that asked it and what it added to that
        solver's hypotheses (the vacuity check asks whether they are satisfiable)."""
        self.origin = "the records given"

    # the certificate ------------------------------------------------------------------------
    def records(self) -> tuple[Any, ...]:
        if self._records is None:
            if self._explored is None:
                raise ValueError("no records and no explorer to propose them")
            ex = self._explored()
            graph = ex.graph
            if graph is None:  # e.g. a result without its graph: explore again
                from autoconverge.model.explorer import explore

                ex = explore(self.spec, ex.stats.config)
                graph = ex.graph
            assert graph is not None
            self._records = tuple(graph.reached_records())
            self._graph = graph
            st = ex.stats
            self.origin = (f"the explorer at [{st.config.section}]: {st.distinct_states} "
                           f"states, {st.distinct_records} records, depth {st.depth}, "
                           f"{st.bounded_ends} bounded ends"
                           + (", TRUNCATED" if st.truncated else ""))
        return self._records

    def reachable(self) -> tuple[Diagram, z3.BoolRef, z3.BoolRef]:
        """R as a diagram and as formulas over the pre- and the post-state."""
        if self._r is None:
            d = set_diagram(self.records(), self.spec.variables)
            ctx = self.enc.ctx
            self._r = (d, as_bool(d.z3(self.enc, self.pre), ctx),
                       as_bool(d.z3(self.enc, self.post), ctx))
        return self._r

    def lemma(self) -> Lemma:
        """The certificate as the strengthening of a proof (printed in its result)."""
        d, _, _ = self.reachable()
        return Lemma(REACHABLE,
                     f"every reachable state is one of the {d.size} records the explorer "
                     f"reached ({self.origin}): an inductive invariant, checked by Z3",
                     f"R: a decision diagram of {d.node_count} nodes over "
                     f"({', '.join(d.fields)}), true on exactly {d.size} records "
                     f"(digest {d.digest()})",
                     holds=lambda s: d.value(s) if not _symbolic(s) else d.z3(self.enc, s))

    def domain(self) -> dict[str, tuple[int, ...]]:
        percents: tuple[int, ...] = ()
        if self._explored is not None:
            percents = self._explored().stats.config.percents
        return dict(self.spec.param_domains(percents))

    def steps(self) -> dict[Any, list[tuple[Transition, Any]]]:
        """Each record's state-changing steps: the explorer's edges (evaluated here for
        records given without a graph)."""
        if self._steps is None:
            records = self.records()
            if self._graph is not None:
                found = _graph_steps(self._graph)
                self._steps = {r: found.get(r, []) for r in records}
            else:
                self._steps = _steps(self.spec, records, self.domain())
        return self._steps

    def step(self, t: Transition) -> z3.BoolRef:
        """``T_t(s, s')`` over the prover's pre- and post-state (built once per spec)."""
        if t not in self._step_formulas:
            self._step_formulas[t] = self.enc.step(t, self.pre, self.post, self.params)
        return self._step_formulas[t]

    def reachable_outcomes(self) -> list[Outcome]:
        """``Init => R`` and ``R /\\ T_t => R'`` for every transition (once per spec)."""
        if self._reachable is None:
            _, r, r2 = self.reachable()
            s, s2, ps = self.pre, self.post, self.params
            init = Checker(self.enc, [self.enc.init(s)], self.rlimit).check(
                f"init[{REACHABLE}]", "Init => R", [], r, states={"s": s})
            checker = Checker(self.enc, [r, z3.Not(r2)], self.rlimit)
            parts: list[Outcome] = []
            cannot: list[str] = []
            hyp = Checker(self.enc, [r], self.rlimit)
            for t in self.enc.relation:
                step = self.step(t)
                o = checker.check(f"step[{REACHABLE}]@{t.label}", "", [step], None,
                                  step=Step(s, s2, ps, (t,)))
                # the query was R /\ ~R' /\ T: unsat is the proof; keep R /\ T => R' as
                # the recorded query (its hypotheses: R /\ T)
                o.query = Query(ground=[r, step], goal=r2, step=Step(s, s2, ps, (t,)))
                o.may_be_vacuous = True
                self._hyp[id(o)] = (o, hyp, [step])
                if o.holds and hyp.satisfiable([step]) is False:
                    o.hypotheses_sat[self.rlimit] = False
                    o.detail = f"cannot occur: {t.label} is enabled in no state of R"
                    cannot.append(t.label)
                parts.append(o)
            cons = combine(f"step[{REACHABLE}]", "R /\\ Next => R'", parts,
                           "the reachable set R is not closed: R /\\ T => R'", cannot)
            self._reachable = [init, cons]
        return self._reachable

    # properties ------------------------------------------------------------------------------
    def prove(self, name: str, counterexample: bool = True) -> results.ProofResult:
        t0 = time.perf_counter()
        prop = self.spec.property(name)
        obligations = list(self.reachable_outcomes())
        ranking: Ranking | None = None
        if prop.kind == "leadsto":
            own, ranking = self.rank_obligations(name)
        else:
            own = self.safety_obligations(name)
        obligations.extend(own)
        self.outcomes[name] = obligations
        holds = all(o.holds for o in obligations)
        cex: dict[str, Any] | None = None
        note: str | None = None
        depth = self.depth + (1 if prop.kind == "leadsto" else 0)
        if not holds:
            if not all(o.holds for o in own):
                if counterexample:
                    cex, searched = self.counterexample(name, self.hint(name, ranking))
                    if cex is None:
                        note = (f"no counterexample of up to {searched} steps from Init (one Z3 "
                                f"check of every behaviour that long, rlimit "
                                f"{self.search_rlimit})")
            else:
                note = ("the property's own obligations hold, but the reachable-set "
                        "certificate is not inductive in this spec (see step[Reachable]: a "
                        "state the explorer did not reach); no counterexample search")
        d, _, _ = self.reachable()
        evidence: dict[str, Any] = {
            "kind": "reachable set" + (" + ranking" if ranking is not None else ""),
            "derived_from": self.origin,
            "records": d.size, "diagram_nodes": d.node_count, "fields": list(d.fields),
            "digest": d.digest(),
            "checked": ("Init => R; R /\\ T_t => R' for each of the "
                        f"{len(self.enc.relation)} declared transitions; "
                        + _checked_text(prop.kind)),
            "relies_on": ("the spec's Z3 encoding (its guards and effects on Z3 terms) and "
                          "Z3's unsat verdicts" + ("; the weak-fairness proof rule"
                                                   if prop.kind == "leadsto" else "")
                          + "; not on the explorer's bound or correctness: it only proposes "
                          "the certificate"),
        }
        ranking_text: results.RankingArgument | None = None
        if ranking is not None:
            evidence.update(_ranking_evidence(ranking, self.spec.variables))
            ranking_text = results.RankingArgument(
                {g.name: g.statement for g in self.spec.fairness_groups},
                f"H: the {len(ranking.region)} records of R reachable from a p /\\ ~q record "
                f"({ranking.sources}) through ~q records",
                f"the index of the record's strongly connected component of H in the "
                f"explorer's graph, successors first ({ranking.components} components; a "
                f"decision diagram over the record)",
                "per component, a weakly fair group enabled in each of its records none of "
                "whose steps stays in it: " + (", ".join(
                    f"{g}: {n}" for g, n in ranking.by_group.items()) or "none"))
        method = LIVENESS_METHOD if prop.kind == "leadsto" else SAFETY_METHOD
        verdict = (results.PROVED if holds else
                   results.NOT_PROVED if cex is None else results.VIOLATED)
        return results.ProofResult(
            name, prop.kind, method, verdict, tuple(o.result() for o in obligations),
            round(time.perf_counter() - t0, 4), prop.statement, prop.formula,
            strengthening=(self.lemma(),), ranking=ranking_text, counterexample=cex,
            note=note,
            counterexample_source=None if cex is None else (
                "z3-lasso" if prop.kind == "leadsto" else "z3-bmc"),
            bmc_depth=depth, rlimit=self.rlimit, seed=SEED, certificate=evidence)

    def safety_obligations(self, name: str) -> list[Outcome]:
        prop = self.spec.property(name)
        _, r, _ = self.reachable()
        s, s2, ps = self.pre, self.post, self.params
        checker = Checker(self.enc, [r], self.rlimit)
        if prop.kind == "invariant":
            assert prop.invariant is not None
            o = checker.check("property", f"R => {prop.formula}", [],
                              as_bool(prop.invariant(s), self.enc.ctx), states={"s": s})
            self._hyp[id(o)] = (o, checker, [])
            return [o]
        if prop.kind == "deadlock":
            goal = z3.Implies(z3.Not(as_bool(self.spec.terminal(s), self.enc.ctx)),
                              self.enc.progress_enabled(s))
            o = checker.check("deadlock-free", "R /\\ ~terminal => ENABLED (Next without fault)",
                              [], goal, states={"s": s})
            self._hyp[id(o)] = (o, checker, [])
            return [o]
        if prop.kind != "step":
            raise ValueError(f"{name} is not a safety property")
        assert prop.step is not None
        out: list[Outcome] = []
        trivial: list[str] = []
        for t in self.enc.relation:
            pred = prop.step(s, t, s2)
            p = as_bool(pred, self.enc.ctx)
            if z3.is_true(z3.simplify(p)):
                trivial.append(t.label)
                continue
            step = self.step(t)
            o = checker.check(f"step-property[{t.label}]", f"R /\\ T[{t.label}] => P(s, t, s')",
                              [step], p, step=Step(s, s2, ps, (t,)))
            o.may_be_vacuous = True  # a transition enabled in no state of R
            self._hyp[id(o)] = (o, checker, [step])
            out.append(o)
        if trivial:
            out.append(Outcome(
                "step-property[static]", "P(s, t, s') for the remaining transitions",
                PROVED, 0.0,
                "P is identically true for these transitions (their trigger/actor/calls "
                "decide it): " + ", ".join(trivial)))
        return out

    def rank_obligations(self, name: str, ranking: Ranking | None = None
                         ) -> tuple[list[Outcome], Ranking]:
        """The ranking certificate's obligations (``ranking``: a given one - a test can hand
        it a wrong one - else the one derived from the explorer's graph)."""
        prop = self.spec.property(name)
        assert prop.leads_from is not None and prop.leads_to is not None
        lf, lt = prop.leads_from, prop.leads_to
        if ranking is None:
            ranking = derive_ranking(self.spec, self.records(), self.steps(), lf, lt)
        s, s2, ps = self.pre, self.post, self.params
        _, r, _ = self.reachable()
        ctx = self.enc.ctx
        p, q, q2 = as_bool(lf(s), ctx), as_bool(lt(s), ctx), as_bool(lt(s2), ctx)
        fields = self.spec.variables
        h_d = set_diagram(ranking.region, fields)
        h, h2 = as_bool(h_d.z3(self.enc, s), ctx), as_bool(h_d.z3(self.enc, s2), ctx)
        out: list[Outcome] = []
        out.append(Checker(self.enc, [r, p, z3.Not(q)], self.rlimit).check(
            "start", "R /\\ p /\\ ~q => H", [], h, states={"s": s}))
        if ranking.fair_cycle is not None:
            sample = ranking.fair_cycle[0]
            out.append(Outcome(
                "ranking derived", "a helpful weakly fair group in every component of H",
                FAILED, 0.0,
                f"the explorer's graph has a fair cycle of ~q states reachable from p: a "
                f"strongly connected component of {len(ranking.fair_cycle)} records of H in "
                f"which every weakly fair group is disabled somewhere or taken inside it (no "
                f"ranking certificate exists); one of its records: {sample}"))
            return out, ranking
        rank_d = function_diagram(ranking.rank, fields)
        help_d = function_diagram(ranking.helpful, fields)
        rk, rk2 = rank_d.z3(self.enc, s), rank_d.z3(self.enc, s2)
        hp, hp2 = help_d.z3(self.enc, s), help_d.z3(self.enc, s2)
        live = Checker(self.enc, [h, z3.Not(q)], self.rlimit)
        out.append(live.check("bounded", "H /\\ ~q => rank >= 0", [], rk >= 0,
                              states={"s": s}))
        weak = [g.name for g in self.spec.weak_fairness]
        enabled = z3.And(*(z3.Implies(hp == i, self.enc.group_enabled(g, s))
                           for i, g in enumerate(weak)))
        out.append(live.check("(a) helpful group enabled", "H /\\ ~q => ENABLED <<h(s)>>",
                              [], enabled, states={"s": s}))
        for group in self.spec.fairness_groups:
            gi = weak.index(group.name) if group.weak else -1
            keep = z3.And(h2, z3.Or(rk2 < rk, z3.And(hp != gi, rk2 == rk, hp2 == hp)))
            goal = z3.Or(q2, states_equal(s2, s), keep)
            parts: list[Outcome] = []
            cannot: list[str] = []
            ts = self.enc.group(group.name)
            for t in ts:
                step = self.step(t)
                o = live.check(f"{group.name}@{t.label}", "", [step], goal,
                               step=Step(s, s2, ps, (t,)))
                o.may_be_vacuous = True
                self._hyp[id(o)] = (o, live, [step])
                if o.holds and live.satisfiable([step]) is False:
                    o.hypotheses_sat[self.rlimit] = False
                    o.detail = "cannot occur: H /\\ ~q /\\ T is unsat"
                    cannot.append(t.label)
                parts.append(o)
            label = f"{'(b/c)' if group.weak else '(d)'} {group.name} steps"
            fair = "the helpful group's steps decrease the rank; " if group.weak else ""
            formula = (f"H /\\ ~q /\\ T_t => q' \\/ s' = s \\/ H' /\\ (rank' < rank \\/ t not "
                       f"helpful /\\ rank' = rank /\\ h' = h) for every {group.statement} "
                       f"transition t ({fair}no step increases it)")
            if not ts:
                out.append(Outcome(label, formula, PROVED, 0.0, "the group has no transitions"))
                continue
            combined = combine(label, formula, parts, "the rank is not a ranking function",
                               cannot)
            if combined.holds:
                live_ts = [t.label for t in ts if t.label not in cannot]
                combined.detail = (f"z3: unsat for each of the {len(ts)} transitions"
                                   + (f"; cannot occur while H: {', '.join(cannot)}"
                                      if cannot else "")
                                   + (f"; can occur: {', '.join(live_ts)}" if live_ts else ""))
            out.append(combined)
        return out, ranking

    # vacuity ---------------------------------------------------------------------------------
    def fill_hypotheses(self, outcomes: Iterable[Outcome]) -> None:
        """Whether each query's hypotheses are satisfiable (for the vacuity check), with the
        solvers that asked it (incrementally)."""
        for ob in outcomes:
            for leaf in ob.leaves():
                if self.rlimit in leaf.hypotheses_sat:
                    continue
                found = self._hyp.get(id(leaf))
                if found is not None and found[0] is leaf:
                    _, checker, extra = found
                    leaf.hypotheses_sat[self.rlimit] = checker.satisfiable(extra)

    # counterexamples ---------------------------------------------------------------------------
    def hint(self, name: str, ranking: Ranking | None = None) -> tuple[Any, ...]:
        """Where the explorer says a violation of ``name`` is (a guess, for the search only):
        the fair cycle the ranking derivation found, else the first :data:`HINTS` records of
        the certificate (breadth-first order: the shallowest) that violate the invariant,
        are stuck, or take a step that violates the step property."""
        if ranking is not None and ranking.fair_cycle is not None:
            return ranking.fair_cycle
        prop = self.spec.property(name)
        out: list[Any] = []
        for r in self.records():
            if prop.kind == "invariant":
                bad = not prop.invariant(r)
            elif prop.kind == "deadlock":
                bad = not self.spec.terminal(r) and not any(
                    t.enabled(r, **ps) for t in self.spec.relation() if not t.is_fault
                    for ps in param_combinations(t.params, self.domain()))
            elif prop.kind == "step":
                bad = any(not prop.step(r, t, nxt) for t, nxt in self.steps()[r])
            else:
                bad = False
            if bad:
                out.append(r)
                if len(out) == HINTS:
                    break
        return tuple(out)

    def counterexample(self, name: str, hint: Sequence[Any] = ()
                       ) -> tuple[dict[str, Any] | None, int]:
        """A violation of ``name`` from Init within :attr:`depth` steps (a lasso: one more):
        one Z3 check of every behaviour that long (:class:`.z3_bmc.OneShot`).

        ``hint``: records where the violation may be (:meth:`hint`). The search first asks
        for a behaviour ending there (the bad state, the pre-state of the bad step, the
        state the lasso returns to), which Z3 answers faster; then, if there is none within
        the depth, for any. A hint only narrows what is asked: a counterexample found is a
        behaviour of the encoding from Init that violates the property, whatever the hint."""
        if hint:
            found, searched = self._counterexample(name, hint)
            if found is not None:
                return found, searched
        return self._counterexample(name, ())

    def _counterexample(self, name: str, hint: Sequence[Any]
                        ) -> tuple[dict[str, Any] | None, int]:
        if self._search is None:
            self._search = OneShot(self.enc, self.depth, self.search_rlimit)
        search = self._search
        prop = self.spec.property(name)
        enc = self.enc
        record = self.spec.schema.record

        def at(s: Any) -> z3.BoolRef:
            """The state is one of the hinted records (no hint: anywhere)."""
            if not hint:
                return z3.BoolVal(True, enc.ctx)
            return z3.Or(*(states_equal(s, r if isinstance(r, record) else
                                        state_from_dict(r, record)) for r in hint))
        if prop.kind == "invariant":
            inv = prop.invariant
            assert inv is not None
            return search.safety(lambda u, k: z3.And(z3.Not(as_bool(inv(u.states[k]), enc.ctx)),
                                                     at(u.states[k])),
                                 name=name, kind="invariant", summary=prop.formula)
        if prop.kind == "step":
            step = prop.step
            assert step is not None

            def bad(u: Unrolling, k: int) -> z3.BoolRef:
                s, s2 = u.states[k], u.states[k + 1]
                bad_steps = [z3.And(u.sel[k] == n, z3.Not(as_bool(step(s, t, s2), enc.ctx)))
                             for n, t in enumerate(enc.relation)]
                return z3.And(at(s), z3.Or(*bad_steps))

            return search.safety(bad, name=name, kind="step", summary=prop.formula,
                                 bad_step=True)
        if prop.kind == "deadlock":
            terminal = self.spec.terminal
            return search.safety(lambda u, k: z3.And(
                z3.Not(as_bool(terminal(u.states[k]), enc.ctx)),
                z3.Not(enc.progress_enabled(u.states[k])), at(u.states[k])),
                                 name=name, kind="deadlock", summary=prop.formula)
        assert prop.leads_from is not None and prop.leads_to is not None
        return search.lasso(prop.leads_from, prop.leads_to, name=name, returns_to=at)


def _symbolic(s: Any) -> bool:
    return any(isinstance(getattr(s, f), z3.ExprRef) for f in s.__dataclass_fields__)


def _checked_text(kind: str) -> str:
    return {
        "invariant": "R => P",
        "step": "R /\\ T_t => P(s, t, s') for each transition",
        "deadlock": "R /\\ ~terminal => ENABLED (Next without faults)",
        "leadsto": ("R /\\ p /\\ ~q => H; H /\\ ~q => ENABLED <<h>>; every step from H /\\ ~q "
                    "reaches q, stutters, or stays in H without increasing the rank (the "
                    "helpful group's steps decrease it, others keep h when they keep it)"),
    }[kind]


def _ranking_evidence(ranking: Ranking, fields: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"region": len(ranking.region), "p_not_q_records": ranking.sources,
                           "components": ranking.components,
                           "helpful_groups": dict(ranking.by_group)}
    if ranking.fair_cycle is not None:
        out["fair_cycle_records"] = len(ranking.fair_cycle)
        return out
    rank = function_diagram(ranking.rank, fields)
    helpful = function_diagram(ranking.helpful, fields)
    out["rank_diagram"] = {"nodes": rank.node_count, "digest": rank.digest(),
                           "max": max(ranking.rank.values(), default=0)}
    out["helpful_diagram"] = {"nodes": helpful.node_count, "digest": helpful.digest()}
    return out
