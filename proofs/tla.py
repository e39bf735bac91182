"""TLA+ (and a TLC ``.cfg``) generated from the spec declaration.

:func:`generate` prints a TLA+ module for one spec (either lifecycle, shipped or a bug-zoo
variant); every guard, effect and property is the spec's own function evaluated on syntax
trees (:mod:`.codegen`), and the module's shape (variables, initial state, fairness groups,
terminal states, parameters, the FIFO) is the spec's schema's. :func:`generate_cfg` prints
the model configuration at a :class:`~autoconverge.proofs.codegen.Bounds`. The module is
named after the spec (:func:`module_name`: ``Throttle``, ``Migration``, a variant's name), so
concurrent runs on different specs never share a file.

Module layout:

- variables: the spec's state record plus ``ncalls`` (user calls made); a FIFO (the
  throttle's ``chan``) is a TLA+ sequence (``Head``/``Tail``/``Append``), unbounded in the
  module, bounded by the constant ``QueueCap`` in the actions that push (a lifecycle without
  a FIFO has no ``QueueCap``);
- constants ``MaxCalls``, [``QueueCap``,] and one per trigger parameter holding its domain
  (the throttle's ``Percents``, ``Callers``: :data:`PARAM_CONSTANTS`);
- one action per transition (``recv_set_waiting``, ``call_set_idle(p, k)``, ...), grouped by
  the schema's fairness groups: ``<Group>Next`` (the throttle's ``WorkerNext``,
  ``ClockNext``, ``VcpuNext``, ``CompletionNext``, ``UserNext``, ``TimeoutNext``);
- ``Spec == Init /\\ [][Next]_vars /\\ WF_vars(<Group>Next) ...`` for every weakly fair
  group: weak fairness per *thread*, never per action (per-action fairness would certify a
  worker that prefers its timer over a queued shutdown forever); the unfair groups (user
  calls, timeouts, faults...) carry none;
- ``EndStutter``: an explicit stutter step in terminal states (the schema's ``terminal``)
  and in *bounded ends* (a user call is enabled but cut by ``MaxCalls``/``QueueCap``), so
  TLC's own deadlock check reports exactly the states the explorer calls stuck-without-a-cut;
  the property ``NoDeadlock`` itself is the (stronger) invariant "terminal, or a transition
  other than ``fault`` is enabled when the bounds are ignored";
- invariants as ``INVARIANT``; step properties as action properties ``[][A]_vars`` (one
  conjunct ``step => predicate`` per transition, the post-state substituted by the step's
  effect); leads-to properties as ``p ~> q``; both under ``PROPERTY``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from autoconverge.spec import FairnessGroup, Spec
from autoconverge.spec.expr import Term
from autoconverge.spec.fold import const, simplify

from . import tools
from .codegen import (
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
    all_variables,
    channel_var,
    cut_by_bounds,
    initial_values,
    no_deadlock_term,
    state_term,
    step_property_term,
    steps,
    stutter_condition,
    terminal_term,
)
from .printer import TermPrinter
from .runs import CheckerRun, PropertyVerdict

STUTTER_SUFFIX = "_Stutter"


def module_name(spec: Spec) -> str:
    """The TLA+ module (and file) name of ``spec``: its name in CamelCase (``Throttle``,
    ``Migration``, ``ApiAccepts100``)."""
    name = "".join(part[:1].upper() + part[1:] for part in re.split(r"\W|_", spec.name))
    return name if name[:1].isalpha() else f"M{name}"


PARAM_CONSTANTS: dict[str, str] = {"p": "Percents", "k": "Callers"}
"""Readable names of the TLA+ constants holding a trigger parameter's domain (the throttle's
percent and caller); any other parameter ``x`` gets ``Domain_x`` (:func:`param_constant`).
The values are :meth:`Spec.param_domains`, set in the TLC configuration."""


def param_constant(name: str) -> str:
    return PARAM_CONSTANTS.get(name, f"Domain_{name}")


class TlaPrinter(TermPrinter):
    """TLA+ spellings; the channel is a sequence, machine states are strings."""

    LANGUAGE = "TLA+"
    TRUE, FALSE = "TRUE", "FALSE"
    AND, OR, NOT, IMPLIES = "/\\", "\\/", "~", "=>"
    EQ, NE = "=", "#"
    TEMPLATES: ClassVar[Mapping[str, str]] = {
        "ite": "(IF {} THEN {} ELSE {})", "chan_len": "Len({})", "chan_head": "Head({})",
        "chan_tail": "Tail({})", "chan_push": "Append({}, {})",
    }
    SYMBOLS: ClassVar[Mapping[str, str]] = {MAX_CALLS: "MaxCalls", QUEUE_CAP: "QueueCap"}

    def state(self, name: str) -> str:
        return f'"{name}"'

    def sequence(self, items: tuple[Any, ...]) -> str:
        return "<<" + ", ".join(self(v) for v in items) + ">>"

    def special(self, op: str, a: tuple[Any, ...]) -> str | None:
        if op == "exists":
            return f"(\\E {a[0]} \\in {param_constant(a[0])} : {self(a[2])})"
        return None


expr = TlaPrinter()
"""A TLA+ expression for a (simplified) term."""


def stutter_invariants(spec: Spec, bounds: Bounds) -> dict[str, str]:
    """Companion invariant name -> step property, for step properties with steps that can
    change no variable (see :func:`generate`)."""
    all_steps = steps(spec, bounds, symbolic_params=True)
    out: dict[str, str] = {}
    for p in spec.properties:
        if p.kind != "step":
            continue
        for st in all_steps:
            if (step_property_term(p.step, st) is not True
                    and stutter_condition(st) is not False):
                out[f"{p.name}{STUTTER_SUFFIX}"] = p.name
    return out


def _bullets(items: list[str], indent: str, op: str, empty: str) -> str:
    """A TLA+ bulleted conjunction or disjunction (``empty`` when there is nothing)."""
    if not items:
        return empty
    if len(items) == 1:
        return items[0]
    return "\n".join(f"{indent}{op} {it}" for it in items).lstrip()


def _conj(items: list[str], indent: str) -> str:
    return _bullets(items, indent, expr.AND, expr.TRUE)


def _disj(items: list[str], indent: str) -> str:
    return _bullets(items, indent, expr.OR, expr.FALSE)


def _action_ref(st: Step) -> str:
    return f"{st.name}({', '.join(st.symbolic_params)})" if st.symbolic_params else st.name


def _quantify(st: Step, body: str, quantifier: str = "\\E") -> str:
    if not st.symbolic_params:
        return body
    binders = ", ".join(f"{p} \\in {param_constant(p)}" for p in st.symbolic_params)
    return f"{quantifier} {binders} : {body}"


def _action(st: Step, variables: tuple[str, ...]) -> str:
    head = _action_ref(st)
    parts = [expr(st.enabled)]
    if st.bound is not True:
        parts.append(expr(st.bound))
    for name in variables:
        if name in st.updates:
            parts.append(f"{name}' = {expr(st.updates[name])}")
    unchanged = [n for n in variables if n not in st.updates]
    if unchanged:
        parts.append("UNCHANGED <<" + ", ".join(unchanged) + ">>")
    t = st.transition
    doc = f"\\* {t.trigger}: {t.source} -> {t.dest} ({t.actor})"
    return f"{doc}\n{head} ==\n    {_conj(parts, '    ')}"


def _group_action(group: FairnessGroup) -> str:
    """The action of a fairness group's steps: ``WorkerNext``, ``CompletionNext``, ..."""
    return f"{group.name.capitalize()}Next"


def generate(spec: Spec, bounds: Bounds) -> str:
    """The TLA+ module of ``spec``; ``bounds`` only decides whether ``fault`` is modelled
    (the numeric bounds are constants, set in :func:`generate_cfg`)."""
    all_steps = steps(spec, bounds, symbolic_params=True)
    init = initial_values(spec)
    variables = all_variables(spec)
    lines: list[str] = [
        f"---- MODULE {module_name(spec)} ----",
        f"\\* Generated by autoconverge.proofs.tla from spec {spec.name!r} "
        f"(lifecycle {spec.family!r}). Do not edit.",
        "EXTENDS Integers, Sequences",
        "",
        "CONSTANTS " + ", ".join(_constants(spec, bounds)),
        "",
        "VARIABLES " + ", ".join(variables),
        "vars == <<" + ", ".join(variables) + ">>",
        "",
        "Init ==",
        "    " + _conj([f"{n} = {expr(init[n])}" for n in variables], "    "),
        "",
    ]
    for st in all_steps:
        lines.append(_action(st, variables))
        lines.append("")

    for g in spec.fairness_groups:
        members = [_quantify(st, _action_ref(st)) for st in all_steps
                   if st.transition.fairness_group == g]
        lines += [f"\\* {g.statement}", f"{_group_action(g)} ==\n    {_disj(members, '    ')}", ""]
    lines += [
        f"Terminal == {expr(terminal_term(spec))}",
        "",
        "\\* a user call is enabled but cut by " + "/".join(
            ("MaxCalls", "QueueCap") if channel_var(spec) else ("MaxCalls",)),
        f"CutByBounds ==\n    {expr(cut_by_bounds(all_steps))}",
        "",
        "\\* terminal states and bounded ends stutter explicitly (else TLC calls them deadlocks)",
        "EndStutter == (Terminal \\/ CutByBounds) /\\ UNCHANGED vars",
        "",
        "Next == " + " \\/ ".join((*(_group_action(g) for g in spec.fairness_groups),
                                    "EndStutter")),
        "",
        "Spec == Init /\\ [][Next]_vars" + (
            "\n        /\\ " + " /\\ ".join(f"WF_vars({_group_action(g)})"
                                        for g in spec.weak_fairness)
            if spec.weak_fairness else ""),
        "",
        "\\* ---- properties ----",
    ]
    for p in spec.properties:
        lines.append(f"\\* {p.name}: {p.statement}")
        if p.kind == "invariant":
            lines.append(f"{p.name} ==\n    {expr(state_term(spec, p.invariant))}")
        elif p.kind == "deadlock":
            lines.append("\\* terminal, or a transition other than fault enabled (bounds ignored)")
            lines.append(f"{p.name} ==\n    {expr(no_deadlock_term(spec, all_steps))}")
        elif p.kind == "step":
            conj: list[str] = []
            still: list[str] = []
            for st in all_steps:
                pred = step_property_term(p.step, st)
                if pred is True:
                    continue
                conj.append(_quantify(st, f"({_action_ref(st)} => {expr(pred)})", "\\A"))
                quiet = stutter_condition(st)
                if quiet is not False:
                    cond = simplify(Term("and", (const(st.enabled), const(st.bound),
                                                 const(quiet))))
                    still.append(_quantify(st, f"({expr(cond)} => {expr(pred)})", "\\A"))
            lines.append(f"{p.name} ==\n    [][{_conj(conj, '       ')}]_vars"
                         if conj else f"{p.name} == [][TRUE]_vars")
            if still:
                lines.append(f"\\* steps of {p.name} that change no variable are stuttering "
                             "steps, invisible to [][...]_vars:")
                lines.append("\\* checked as a state predicate on their enabling condition")
                lines.append(f"{p.name}{STUTTER_SUFFIX} ==\n    {_conj(still, '    ')}")
        elif p.kind == "leadsto":
            lines.append(f"{p.name} ==\n    {expr(state_term(spec, p.leads_from))} ~> "
                         f"{expr(state_term(spec, p.leads_to))}")
        lines.append("")
    lines.append("====")
    return "\n".join(lines) + "\n"


def _param_domains(spec: Spec, bounds: Bounds) -> dict[str, tuple[int, ...]]:
    """The domains of the parameters some transition of ``spec`` takes."""
    used = {name for t in spec.relation() for name in t.params}
    return {n: d for n, d in spec.param_domains(bounds.percents).items() if n in used}


def _constants(spec: Spec, bounds: Bounds) -> list[str]:
    return ["MaxCalls", *(("QueueCap",) if channel_var(spec) else ()),
            *(param_constant(n) for n in _param_domains(spec, bounds))]


def generate_cfg(spec: Spec, bounds: Bounds, *, properties: tuple[str, ...] | None = None
                 ) -> str:
    """The TLC model configuration: constants from ``bounds``, the named properties
    (default: all of the spec's)."""
    names = set(properties) if properties is not None else {p.name for p in spec.properties}
    invs = [p.name for p in spec.properties
            if p.name in names and p.kind in ("invariant", "deadlock")]
    invs += [inv for inv, prop in stutter_invariants(spec, bounds).items() if prop in names]
    props = [p.name for p in spec.properties if p.name in names and p.kind in ("step", "leadsto")]
    lines = [
        f"\\* Generated by autoconverge.proofs.tla for spec {spec.name!r}. Do not edit.",
        "CONSTANTS",
        f"    MaxCalls = {bounds.max_calls}",
        *((f"    QueueCap = {bounds.channel_capacity}",) if channel_var(spec) else ()),
        *(f"    {param_constant(name)} = {{{', '.join(str(v) for v in values)}}}"
          for name, values in _param_domains(spec, bounds).items()),
        "SPECIFICATION Spec",
    ]
    if invs:
        lines.append("INVARIANT " + " ".join(invs))
    if props:
        lines.append("PROPERTY " + " ".join(props))
    return "\n".join(lines) + "\n"


# --- running TLC ----------------------------------------------------------------------------


def check_tlc(spec: Spec, bounds: Bounds, workdir: Path | None = None, *,
              timeout: float = tools.DEFAULT_TIMEOUT) -> CheckerRun:
    """Generate the module and run TLC (one worker) until every property has a verdict.

    TLC stops checking a state at its first violated invariant and names no property when
    a temporal one fails, so: run with every property (``-continue``); record the named
    invariants/action properties and the deadlock; attribute a temporal counterexample by
    evaluating each leads-to property (the spec's own predicates, on concrete states) on the
    lasso TLC printed; re-run without what is known violated until a run adds nothing.
    A shipped spec that holds needs one run. Artifacts stay in ``workdir`` when given."""
    tools.require("tlc")
    with tools.work_folder(workdir, "autoconverge-tlc-") as folder:
        return _check_tlc(spec, bounds, folder, timeout)


def _check_tlc(spec: Spec, bounds: Bounds, workdir: Path, timeout: float) -> CheckerRun:
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    module = module_name(spec)
    (workdir / f"{module}.tla").write_text(generate(spec, bounds))
    t_gen = time.perf_counter() - t0
    by_name = {p.name: p for p in spec.properties}
    deadlock_props = [p.name for p in spec.properties if p.kind == "deadlock"]
    companions = stutter_invariants(spec, bounds)
    remaining = [p.name for p in spec.properties]
    decided: dict[str, tuple[bool, float, str]] = {}  # name -> (holds, seconds, run's cfg)
    runs: list[dict[str, Any]] = []
    while True:
        cfg = f"MC{len(runs)}.cfg"
        (workdir / cfg).write_text(generate_cfg(spec, bounds, properties=tuple(remaining)))
        check_deadlock = all(n in remaining for n in deadlock_props)
        r = tools.run_tlc(workdir, module, cfg, deadlock=check_deadlock, timeout=timeout)
        runs.append({"cfg": cfg, "properties": list(remaining), "violated": list(r.violated),
                     "deadlock": r.deadlock, "temporal": r.temporal_violated,
                     "distinct": r.distinct, "depth": r.depth - 1 if r.depth >= 0 else -1,
                     "complete": r.complete, "seconds": round(r.seconds, 4)})
        found = list(dict.fromkeys(companions.get(n, n) for n in r.violated))
        found = [n for n in found if n in remaining]
        if r.deadlock:
            found += [n for n in deadlock_props if n in remaining and n not in found]
        if r.temporal_violated:
            live = [n for n in remaining if by_name[n].kind == "leadsto"]
            on_lasso = [n for n in live if _violated_on_lasso(spec, by_name[n], r)]
            if not on_lasso:
                raise tools.ToolError(
                    f"TLC found a temporal counterexample that violates none of {live}")
            found += on_lasso
        for n in found:
            decided[n] = (False, round(r.seconds, 4), cfg)
        remaining = [n for n in remaining if n not in found]
        if not found or not remaining:
            if not r.complete:
                raise tools.ToolError(f"TLC run {cfg} stopped early without a violation")
            for n in remaining:
                decided[n] = (True, round(r.seconds, 4), cfg)
            break
    complete = [x for x in runs if x["complete"]]
    if not complete:  # every property violated, each run stopped early: count once more
        (workdir / "MCcount.cfg").write_text(generate_cfg(spec, bounds, properties=()))
        r = tools.run_tlc(workdir, module, "MCcount.cfg", deadlock=False, timeout=timeout)
        complete = [{"distinct": r.distinct, "depth": r.depth - 1}]
    distinct = complete[0]["distinct"]
    depths = [x["depth"] for x in complete if x["depth"] >= 0]
    return CheckerRun(
        "tlc", spec.name,
        {p.name: PropertyVerdict(decided[p.name][0], distinct, decided[p.name][1],
                                 decided[p.name][2]) for p in spec.properties},
        states=distinct, transitions=None, depth=depths[0] if depths else None,
        seconds={"generate": round(t_gen, 4), "run": round(sum(x["seconds"] for x in runs), 4),
                 "total": round(time.perf_counter() - t_start, 4)},
        bounds=bounds.as_dict(), workdir=str(workdir), details={"runs": runs},
    )


def _violated_on_lasso(spec: Spec, prop: Any, r: tools.TlcResult) -> bool:
    """``p ~> q`` fails on the lasso: some state satisfies p and no state from there on
    (cycle included) satisfies q (the states read as ``spec``'s records)."""
    if not r.trace or r.loop_start is None:
        return False
    names = set(spec.variables)
    states = [spec.schema.record(**{k: v for k, v in d.items() if k in names})
              for d in r.trace]
    cycle = states[r.loop_start:]
    for i, s in enumerate(states):
        if prop.leads_from(s) and not any(prop.leads_to(x) for x in (*states[i:], *cycle)):
            return True
    return False
