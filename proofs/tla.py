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
- one action per transition (``recv_set_waiting``, ``call_set_idle(p)``, ...), grouped per
  thread: ``WorkerNext``, ``ClockNext``, ``ControllerNext``; ``ControllerWaitNext`` is the
  completion of a blocking call (abort/shutdown/handover returning);
- ``Spec == Init /\\ [][Next]_vars /\\ WF_vars(WorkerNext) /\\ WF_vars(ClockNext) /\\
  WF_vars(ControllerWaitNext)``: weak fairness per *thread*, never per action (per-action
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

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoconverge.spec import Spec, State
from autoconverge.spec.expr import Term, Value
from autoconverge.spec.lifecycle import VARIABLES

from . import tools
from .codegen import (
    ALL_VARIABLES,
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
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

MODULE = "Autoconverge"
STUTTER_SUFFIX = "_Stutter"
_SYMBOLS = {MAX_CALLS: "MaxCalls", QUEUE_CAP: "QueueCap"}
_DOMAINS = {"p_domain": "Percents"}
_BIN = {"eq": "=", "ne": "#", "lt": "<", "le": "<=", "gt": ">", "ge": ">=",
        "add": "+", "sub": "-", "mul": "*"}


def expr(x: Value) -> str:
    """A TLA+ expression for a (simplified) term."""
    x = simplify(x)
    if isinstance(x, bool):
        return "TRUE" if x else "FALSE"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, str):
        return f'"{x}"'
    if isinstance(x, tuple):
        return "<<" + ", ".join(expr(v) for v in x) + ">>"
    if not isinstance(x, Term):
        raise TypeError(f"cannot print {x!r} in TLA+")
    op, a = x.op, x.args
    if op == "var":
        return str(_SYMBOLS.get(a[0], a[0]))
    if op == "const":
        return expr(a[0])
    if op == "and":
        return "(" + " /\\ ".join(expr(t) for t in a) + ")"
    if op == "or":
        return "(" + " \\/ ".join(expr(t) for t in a) + ")"
    if op == "not":
        return f"~{expr(a[0])}" if _atomic(a[0]) else f"~({expr(a[0])})"
    if op == "implies":
        return f"({expr(a[0])} => {expr(a[1])})"
    if op == "ite":
        return f"(IF {expr(a[0])} THEN {expr(a[1])} ELSE {expr(a[2])})"
    if op in _BIN:
        return f"({expr(a[0])} {_BIN[op]} {expr(a[1])})"
    if op == "is_state":
        return f'({expr(a[0])} = "{a[1]}")'
    if op == "ch_len":
        return f"Len({expr(a[0])})"
    if op == "ch_head":
        return f"Head({expr(a[0])})"
    if op == "ch_tail":
        return f"Tail({expr(a[0])})"
    if op == "ch_push":
        return f"Append({expr(a[0])}, {expr(a[1])})"
    if op == "exists":
        return f"(\\E {a[0]} \\in {_DOMAINS[a[1]]} : {expr(a[2])})"
    raise NotImplementedError(f"no TLA+ for term op {op!r}")


def _lift(x: Value) -> Term:
    return x if isinstance(x, Term) else Term("const", (x,))


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


def _atomic(x: Value) -> bool:
    return not isinstance(x, Term) or x.op in ("var", "const")


def _conj(items: list[str], indent: str) -> str:
    if not items:
        return "TRUE"
    if len(items) == 1:
        return items[0]
    return "\n".join(f"{indent}/\\ {it}" for it in items).lstrip()


def _disj(items: list[str], indent: str) -> str:
    if not items:
        return "FALSE"
    if len(items) == 1:
        return items[0]
    return "\n".join(f"{indent}\\/ {it}" for it in items).lstrip()


def _action_ref(st: Step) -> str:
    return f"{st.name}({', '.join(st.symbolic_params)})" if st.symbolic_params else st.name


def _quantify(st: Step, body: str, quantifier: str = "\\E") -> str:
    if not st.symbolic_params:
        return body
    binders = ", ".join(f"{p} \\in Percents" for p in st.symbolic_params)
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
        "CONSTANTS MaxCalls, QueueCap, Percents",
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

    def group(pred: Callable[[Step], bool]) -> list[str]:
        return [_quantify(st, _action_ref(st)) for st in all_steps if pred(st)]

    lines += [
        "WorkerNext ==\n    " + _disj(group(lambda s: s.transition.actor == "worker"), "    "),
        "",
        "ClockNext ==\n    " + _disj(group(lambda s: s.transition.actor == "clock"), "    "),
        "",
        "ControllerNext ==\n    "
        + _disj(group(lambda s: s.transition.actor == "controller"), "    "),
        "",
        "\\* the completion of a blocking call (weakly fair; user calls are not)",
        "ControllerWaitNext ==\n    "
        + _disj(group(lambda s: s.group == "controller"), "    "),
        "",
        f"Terminal == {expr(terminal_term())}",
        "",
        "\\* a user call is enabled but cut by MaxCalls/QueueCap",
        f"CutByBounds ==\n    {expr(cut_by_bounds(all_steps))}",
        "",
        "\\* terminal states and bounded ends stutter explicitly (else TLC calls them deadlocks)",
        "EndStutter == (Terminal \\/ CutByBounds) /\\ UNCHANGED vars",
        "",
        "Next == WorkerNext \\/ ClockNext \\/ ControllerNext \\/ EndStutter",
        "",
        "Spec == Init /\\ [][Next]_vars",
        "        /\\ WF_vars(WorkerNext) /\\ WF_vars(ClockNext) /\\ WF_vars(ControllerWaitNext)",
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
                    cond = simplify(Term("and", (_lift(st.enabled), _lift(st.bound),
                                                 _lift(quiet))))
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
    percents = ", ".join(str(p) for p in bounds.percents)
    lines = [
        f"\\* Generated by autoconverge.proofs.tla for spec {spec.name!r}. Do not edit.",
        "CONSTANTS",
        f"    MaxCalls = {bounds.max_calls}",
        f"    QueueCap = {bounds.channel_capacity}",
        f"    Percents = {{{percents}}}",
        "SPECIFICATION Spec",
    ]
    if invs:
        lines.append("INVARIANT " + " ".join(invs))
    if props:
        lines.append("PROPERTY " + " ".join(props))
    return "\n".join(lines) + "\n"


# --- running TLC ----------------------------------------------------------------------------


def check_tlc(spec: Spec, bounds: Bounds, workdir: Path | None = None, *,
              timeout: float = tools.DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Generate the module and run TLC (one worker) until every property has a verdict.

    TLC stops checking a state at its first violated invariant and names no property when
    a temporal one fails, so: run with every property (``-continue``); record the named
    invariants/action properties and the deadlock; attribute a temporal counterexample by
    evaluating each leads-to property (the spec's own predicates, on concrete states) on the
    lasso TLC printed; re-run without what is known violated until a run adds nothing.
    A shipped spec that holds needs one run. Artifacts stay in ``workdir`` when given."""
    tools.require("tlc")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="autoconverge-tlc-")
        workdir = Path(tmp.name)
    try:
        return _check_tlc(spec, bounds, workdir, timeout)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _check_tlc(spec: Spec, bounds: Bounds, workdir: Path, timeout: float) -> dict[str, Any]:
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (workdir / f"{MODULE}.tla").write_text(generate(spec, bounds))
    t_gen = time.perf_counter() - t0
    by_name = {p.name: p for p in spec.properties}
    deadlock_props = [p.name for p in spec.properties if p.kind == "deadlock"]
    companions = stutter_invariants(spec, bounds)
    remaining = [p.name for p in spec.properties]
    verdicts: dict[str, dict[str, Any]] = {}
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
            verdicts[n] = {"holds": False, "time_s": round(r.seconds, 4), "run": cfg}
        remaining = [n for n in remaining if n not in found]
        if not found or not remaining:
            if not r.complete:
                raise tools.ToolError(f"TLC run {cfg} stopped early without a violation")
            for n in remaining:
                verdicts[n] = {"holds": True, "time_s": round(r.seconds, 4), "run": cfg}
            break
    complete = [x for x in runs if x["complete"]]
    if not complete:  # every property violated, each run stopped early: count once more
        (workdir / "MCcount.cfg").write_text(generate_cfg(spec, bounds, properties=()))
        r = tools.run_tlc(workdir, MODULE, "MCcount.cfg", deadlock=False, timeout=timeout)
        complete = [{"distinct": r.distinct, "depth": r.depth - 1}]
    distinct = complete[0]["distinct"]
    for v in verdicts.values():
        v["states"] = distinct
    depths = [x["depth"] for x in complete if x["depth"] >= 0]
    return {
        "checker": "tlc",
        "spec": spec.name,
        "bounds": bounds.as_dict(),
        "properties": {p.name: verdicts[p.name] for p in spec.properties},
        "states": distinct,
        "transitions": None,
        "depth": depths[0] if depths else None,
        "runs": runs,
        "seconds": {"generate": round(t_gen, 4), "run": round(sum(x["seconds"] for x in runs), 4),
                    "total": round(time.perf_counter() - t_start, 4)},
        "workdir": str(workdir),
    }


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
