"""Counterexamples: JSON-ready dicts, readable text, and replay through the spec.

A counterexample is ``{"property", "kind", "initial", "steps", "length", ...}`` where each
step is ``{"actor", "trigger", "source", "dest", "params", "calls", "state"}`` and ``state``
the full resulting state record (channel as a list, commands as ints). Safety traces are the
shortest path to the bad state (or bad step: the last one); liveness traces are lassos:
``steps[cycle_start:]`` is the cycle, which returns to the state reached after
``steps[cycle_start - 1]`` (an empty cycle: stuttering forever in the last state).

:func:`replay` re-runs a counterexample through :meth:`Spec.successors`, so a test can
confirm the trace is a behaviour of the spec and ends where it claims.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoconverge.spec import COMMAND_NAMES, Spec, State

from .graph import StateGraph


def state_dict(s: State) -> dict[str, Any]:
    d: dict[str, Any] = dict(s.as_dict())
    d["chan"] = list(s.chan)
    return d


def state_from_dict(d: Mapping[str, Any]) -> State:
    fields = dict(d)
    fields["chan"] = tuple(fields["chan"])
    return State(**fields)


def step_dicts(g: StateGraph, steps: list[tuple[int, int]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for lab_i, node in steps:
        lab = g.labels[lab_i]
        t = lab.transition
        out.append({
            "actor": t.actor,
            "trigger": t.trigger,
            "source": t.source,
            "dest": t.dest,
            "params": dict(lab.params),
            "calls": list(t.calls),
            "state": state_dict(g.state(node)),
        })
    return out


def fmt_chan(chan: Any) -> str:
    return "[" + ", ".join(COMMAND_NAMES.get(x, str(x)) for x in chan) + "]"


def fmt_state(s: State | Mapping[str, Any],
              prev: State | Mapping[str, Any] | None = None) -> str:
    """One line, fields changed since ``prev`` marked with ``*``."""
    d = state_dict(s) if isinstance(s, State) else dict(s)
    prev = None if prev is None else (state_dict(prev) if isinstance(prev, State) else prev)
    """One line: machine states first, then flags; fields changed since ``prev`` get a *."""
    parts: list[str] = []
    for k, v in d.items():
        if k == "chan":
            text = fmt_chan(v)
        elif isinstance(v, bool):
            text = "T" if v else "F"
        else:
            text = str(v)
        star = "*" if prev is not None and prev.get(k) != v else ""
        parts.append(f"{star}{k}={text}")
    return " ".join(parts)


def format_counterexample(cex: Mapping[str, Any]) -> str:
    lines = [f"{cex['property']} violated ({cex['kind']}): {cex.get('summary', '')}".rstrip()]
    prev = cex["initial"]
    lines.append(f"  {0:3}  {'initial':34} {fmt_state(prev)}")
    cycle_start = cex.get("cycle_start")
    for i, st in enumerate(cex["steps"], start=1):
        if cycle_start is not None and i - 1 == cycle_start:
            lines.append("       -- cycle: the following steps repeat forever --")
        args = ", ".join(f"{k}={v}" for k, v in st["params"].items())
        calls = f" [{', '.join(st['calls'])}()]" if st["calls"] else ""
        what = f"{st['actor']}: {st['trigger']}({args}){calls}"
        lines.append(f"  {i:3}  {what:34} {fmt_state(st['state'], prev)}")
        prev = st["state"]
    if cycle_start is not None and cycle_start == len(cex["steps"]):
        lines.append("       -- then stutters forever: no fair thread can move --")
    elif cycle_start is not None:
        lines.append("       -- back to the state after step "
                     f"{cycle_start} --")
    return "\n".join(lines)


def replay(spec: Spec, cex: Mapping[str, Any],
           param_domain: Mapping[str, tuple[int, ...]]) -> list[State]:
    """Re-run ``cex`` from ``spec.initial`` through :meth:`Spec.successors`.

    Returns the visited states (initial first). Raises ``AssertionError`` if a step is not
    enabled or leads elsewhere than recorded, or if a lasso's cycle does not close.
    """
    s = spec.initial
    assert state_dict(s) == dict(cex["initial"]), "initial state differs"
    states = [s]
    for i, st in enumerate(cex["steps"], start=1):
        want = state_from_dict(st["state"])
        found = [
            nxt for t, params, nxt in spec.successors(s, param_domain)
            if t.trigger == st["trigger"] and t.source == st["source"]
            and dict(params) == dict(st["params"])
        ]
        assert found, f"step {i} ({st['trigger']} from {st['source']}) is not enabled"
        assert want in found, f"step {i} ({st['trigger']}) leads elsewhere: {found} != {want}"
        s = want
        states.append(s)
    cs = cex.get("cycle_start")
    if cs is not None and cs < len(cex["steps"]):
        assert states[-1] == states[cs], "the lasso's cycle does not return to its start"
    return states
