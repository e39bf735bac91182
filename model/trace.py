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

import dataclasses
from collections.abc import Mapping
from typing import Any

from autoconverge.spec import Spec, State

from .graph import StateGraph


def state_dict(s: Any) -> dict[str, Any]:
    """A state record as JSON-ready values (a FIFO as a list)."""
    return {f.name: (list(v) if isinstance(v := getattr(s, f.name), tuple) else v)
            for f in dataclasses.fields(s)}


def state_from_dict(d: Mapping[str, Any], record: type = State) -> Any:
    """The record of type ``record`` (default: the throttle's) that :func:`state_dict` gave."""
    return record(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


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


def _named(names: Mapping[int, str] | None, x: Any) -> str:
    return names.get(x, str(x)) if names is not None and isinstance(x, int) else str(x)


def fmt_chan(chan: Any, names: Mapping[int, str] | None = None) -> str:
    """A FIFO's elements, integer codes named by ``names``."""
    return "[" + ", ".join(_named(names, x) for x in chan) + "]"


def fmt_state(s: Any, prev: Any = None,
              value_names: Mapping[str, Mapping[int, str]] | None = None) -> str:
    """One line: the record's fields in order; fields changed since ``prev`` get a ``*``;
    integer codes named by ``value_names`` (a schema's)."""
    d = dict(s) if isinstance(s, Mapping) else state_dict(s)
    if prev is not None and not isinstance(prev, Mapping):
        prev = state_dict(prev)
    names_of = value_names or {}
    parts: list[str] = []
    for k, v in d.items():
        names = names_of.get(k)
        if isinstance(v, list | tuple):
            text = fmt_chan(v, names)
        elif names is not None and not isinstance(v, bool):
            text = _named(names, v)
        elif isinstance(v, bool):
            text = "T" if v else "F"
        else:
            text = str(v)
        star = "*" if prev is not None and prev.get(k) != v else ""
        parts.append(f"{star}{k}={text}")
    return " ".join(parts)


def format_counterexample(cex: Mapping[str, Any],
                          value_names: Mapping[str, Mapping[int, str]] | None = None) -> str:
    """A counterexample as numbered lines (``value_names``: a schema's, for int codes)."""
    lines = [f"{cex['property']} violated ({cex['kind']}): {cex.get('summary', '')}".rstrip()]
    prev = cex["initial"]
    lines.append(f"  {0:3}  {'initial':34} {fmt_state(prev, None, value_names)}")
    cycle_start = cex.get("cycle_start")
    for i, st in enumerate(cex["steps"], start=1):
        if cycle_start is not None and i - 1 == cycle_start:
            lines.append("       -- cycle: the following steps repeat forever --")
        args = ", ".join(f"{k}={v}" for k, v in st["params"].items())
        calls = f" [{', '.join(st['calls'])}()]" if st["calls"] else ""
        what = f"{st['actor']}: {st['trigger']}({args}){calls}"
        lines.append(f"  {i:3}  {what:34} {fmt_state(st['state'], prev, value_names)}")
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
        want = state_from_dict(st["state"], spec.schema.record)
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
