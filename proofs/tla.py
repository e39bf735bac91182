"""TLA+ (and a TLC ``.cfg``) generated from the spec declaration.

:func:`generate` prints a TLA+ module for one spec (shipped or a bug-zoo variant); every
guard, effect and property is the spec's own function evaluated on syntax trees
(:mod:`.codegen`). :func:`generate_cfg` prints the model configuration at a
:class:`~autoconverge.proofs.codegen.Bounds`.

Module layout:

- variables: the spec's state record plus ``ncalls`` (user calls made); the channel ``chan``
  is a TLA+ sequence (``Head``/``Tail``/``Append``), unbounded in the module, bounded by the
  constant ``QueueCap`` in the actions that push;
- constants ``MaxCalls``, ``QueueCap``, ``Percents`` (the domain of ``set_throttle_percent``);
- one action per transition (``recv_set_waiting``, ``call_set_idle(p)``, ...), grouped by
  the spec's fairness groups (:data:`autoconverge.spec.FAIRNESS_GROUPS`): ``WorkerNext``,
  ``ClockNext``, ``CompletionNext`` (a blocking call returning) and ``UserNext`` (user calls);
- ``Spec == Init /\\ [][Next]_vars /\\ WF_vars(WorkerNext) /\\ WF_vars(ClockNext) /\\
  WF_vars(CompletionNext)``: weak fairness per *thread*, never per action (per-action
  fairness would certify a worker that prefers its timer over a queued shutdown forever);
  user calls carry no fairness;
- ``EndStutter``: an explicit stutter step in terminal states (``w = "exit" /\\ c = "done"``)
  and in *bounded ends* (a user call is enabled but cut by ``MaxCalls``/``QueueCap``), so
  TLC's own deadlock check reports exactly the states the explorer calls stuck-without-a-cut;
  the property ``NoDeadlock`` itself is the (stronger) invariant "terminal, or a transition
  other than ``fault`` is enabled when the bounds are ignored";
- invariants as ``INVARIANT``; step properties as action properties ``[][A]_vars`` (one
  conjunct ``step => predicate`` per transition, the post-state substituted by the step's
  effect); leads-to properties as ``p ~> q``; both under ``PROPERTY``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from autoconverge.spec import FAIRNESS_GROUPS, WEAK_FAIRNESS, FairnessGroup, Spec, State
from autoconverge.spec import lifecycle as L
from autoconverge.spec.expr import Term
from autoconverge.spec.lifecycle import VARIABLES

from . import tools
from .codegen import (
    ALL_VARIABLES,
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
    const,
    cut_by_bounds,
    initial_values,
    no_deadlock_term,
    simplify,
    state_term,
    step_property_term,
    steps,
    stutter_condition,
    terminal_term,
)
from .printer import TermPrinter
from .runs import CheckerRun, PropertyVerdict

MODULE = "Autoconverge"
STUTTER_SUFFIX = "_Stutter"


PARAM_CONSTANTS: dict[str, str] = {"p": "Percents", "k": "Callers"}
"""The TLA+ constant holding each trigger parameter's domain (values from
:func:`autoconverge.spec.lifecycle.param_domains`, set in the TLC configuration)."""


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
    DOMAINS: ClassVar[Mapping[str, str]] = {
        f"{name}_domain": constant for name, constant in PARAM_CONSTANTS.items()
    }

    def state(self, name: str) -> str:
        return f'"{name}"'

    def sequence(self, items: tuple[Any, ...]) -> str:
        return "<<" + ", ".join(self(v) for v in items) + ">>"

    def special(self, op: str, a: tuple[Any, ...]) -> str | None:
        if op == "exists":
            return f"(\\E {a[0]} \\in {self.DOMAINS[a[1]]} : {self(a[2])})"
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
    binders = ", ".join(f"{p} \\in {PARAM_CONSTANTS[p]}" for p in st.symbolic_params)
    return f"{quantifier} {binders} : {body}"


def _action(st: Step) -> str:
    head = _action_ref(st)
    parts = [expr(st.enabled)]
    if st.bound is not True:
        parts.append(expr(st.bound))
    for name in ALL_VARIABLES:
        if name in st.updates:
            parts.append(f"{name}' = {expr(st.updates[name])}")
    unchanged = [n for n in ALL_VARIABLES if n not in st.updates]
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
    lines: list[str] = [
        f"---- MODULE {MODULE} ----",
        f"\\* Generated by autoconverge.proofs.tla from spec {spec.name!r}. Do not edit.",
        "EXTENDS Integers, Sequences",
        "",
        "CONSTANTS MaxCalls, QueueCap, " + ", ".join(PARAM_CONSTANTS.values()),
        "",
        "VARIABLES " + ", ".join(ALL_VARIABLES),
        "vars == <<" + ", ".join(ALL_VARIABLES) + ">>",
        "",
        "Init ==",
        "    " + _conj([f"{n} = {expr(init[n])}" for n in ALL_VARIABLES], "    "),
        "",
    ]
    for st in all_steps:
        lines.append(_action(st))
        lines.append("")

    for g in FAIRNESS_GROUPS:
        members = [_quantify(st, _action_ref(st)) for st in all_steps
                   if st.transition.fairness_group == g]
        lines += [f"\\* {g.statement}", f"{_group_action(g)} ==\n    {_disj(members, '    ')}", ""]
    lines += [
        f"Terminal == {expr(terminal_term())}",
        "",
        "\\* a user call is enabled but cut by MaxCalls/QueueCap",
        f"CutByBounds ==\n    {expr(cut_by_bounds(all_steps))}",
        "",
        "\\* terminal states and bounded ends stutter explicitly (else TLC calls them deadlocks)",
        "EndStutter == (Terminal \\/ CutByBounds) /\\ UNCHANGED vars",
        "",
        "Next == " + " \\/ ".join((*(_group_action(g) for g in FAIRNESS_GROUPS), "EndStutter")),
        "",
        "Spec == Init /\\ [][Next]_vars",
        "        /\\ " + " /\\ ".join(f"WF_vars({_group_action(g)})" for g in WEAK_FAIRNESS),
        "",
        "\\* ---- properties ----",
    ]
    for p in spec.properties:
        lines.append(f"\\* {p.name}: {p.statement}")
        if p.kind == "invariant":
            lines.append(f"{p.name} ==\n    {expr(state_term(p.invariant))}")
        elif p.kind == "deadlock":
            lines.append("\\* terminal, or a transition other than fault enabled (bounds ignored)")
            lines.append(f"{p.name} ==\n    {expr(no_deadlock_term(all_steps))}")
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
            lines.append(f"{p.name} ==\n    {expr(state_term(p.leads_from))} ~> "
                         f"{expr(state_term(p.leads_to))}")
        lines.append("")
    lines.append("====")
    return "\n".join(lines) + "\n"


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
        f"    QueueCap = {bounds.channel_capacity}",
        *(f"    {PARAM_CONSTANTS[name]} = {{{', '.join(str(v) for v in values)}}}"
          for name, values in L.param_domains(bounds.percents).items()),
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
    (workdir / f"{MODULE}.tla").write_text(generate(spec, bounds))
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
        r = tools.run_tlc(workdir, MODULE, cfg, deadlock=check_deadlock, timeout=timeout)
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
            on_lasso = [n for n in live if _violated_on_lasso(by_name[n], r)]
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
        r = tools.run_tlc(workdir, MODULE, "MCcount.cfg", deadlock=False, timeout=timeout)
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


def _violated_on_lasso(prop: Any, r: tools.TlcResult) -> bool:
    """``p ~> q`` fails on the lasso: some state satisfies p and no state from there on
    (cycle included) satisfies q."""
    if not r.trace or r.loop_start is None:
        return False
    states = [State(**{k: v for k, v in d.items() if k in VARIABLES}) for d in r.trace]
    cycle = states[r.loop_start:]
    for i, s in enumerate(states):
        if prop.leads_from(s) and not any(prop.leads_to(x) for x in (*states[i:], *cycle)):
            return True
    return False
