"""Promela generated from the spec declaration, for SPIN.

:func:`generate` prints a Promela model of one spec (either lifecycle, shipped or a bug-zoo
variant) at a :class:`~autoconverge.proofs.codegen.Bounds`: every guard, effect and property
is the spec's own function evaluated on syntax trees (:mod:`.codegen`), never a hand-written
copy, and the model's shape (machines, variables, fairness, the FIFO) is the spec's schema's.

Model layout:

- one ``active proctype`` per weakly fair group of the schema (:func:`processes`: the
  throttle's ``worker``, ``clock``, ``vcpu``, ``completion``; the migration's ``source``,
  ``destination``, ``throttler``, ``operator``) holding that group's transitions, and one
  ``unfair`` proctype holding every transition of the unfair groups (user calls, timeouts,
  faults...), so they interleave with the rest. Each proctype is one ``do`` loop of
  ``d_step { guard -> effect }`` options: each transition is a single indivisible step,
  exactly the spec's granularity, and every process's program counter is always at its loop
  head, so SPIN's distinct states are the explorer's (the machines' states are the global
  ``mtype`` variables the schema names, e.g. ``w``/``c`` or ``src``/``dst``). Every loop is
  an end label: a process blocked on its guards is a legitimate end; what is a deadlock is
  decided by the ``NoDeadlock`` assertion (below), never by SPIN's invalid-end-state check.
- a FIFO (:attr:`Schema.channel_var`, the throttle's ``chan``) is an array with a length
  (``q[QUEUE_SLOTS]``, ``qlen``), not a Promela ``chan``: guards must test the *head's
  value* against ranges inside one atomic guard (``q?[x]`` polls only match constants or
  bind variables), and the array keeps the state canonical (a pop shifts and zeroes the
  freed slot) so counts match the explorer's tuples. A lifecycle without a FIFO (the
  migration) has neither the array nor ``QUEUE_CAP``.
- bounds: ``#define MAX_CALLS``/``QUEUE_CAP``; a byte ``ncalls`` counts user calls.
- properties (``mode="safety"``): every invariant and ``NoDeadlock`` ("terminal, or a
  transition other than a fault is enabled when the bounds are ignored": the explorer's exact
  notion) are state predicates, asserted on every reachable state: on the initial state
  inside each step enabled there (before its effect; if none is, a ``timeout`` step checks
  the initial state, then the only state), and after every step that writes a variable the
  predicate reads (a step that writes none of them leaves it as it was in the pre-state,
  itself checked), simplified with what the step fixes in its post-state
  (:func:`.codegen.post_state_term`: its machine's new state, the constants it writes, what
  its guard fixed of the rest); both keep the generated C small. Every step property is
  asserted inside the step on the pre-state, with the post-state substituted by the step's
  effect expressions. Each assertion reads ``assert(prop_<Name> || expr)`` with
  ``prop_<Name>`` a hidden constant 0, so pan's message names the property.
- ``mode="liveness"``: one ``ltl`` block per leads-to property, ``[]((p) -> <>(q))``, checked
  one per run (``pan -a -f -N <Name>``). ``-f`` is SPIN's weak fairness *per process*, so one
  proctype per weakly fair group is exactly the spec's weak fairness per group. The unfair
  steps must not be forced, so their proctype gets one more option, ``stop``: set
  ``unfair_off`` (every unfair step is guarded by ``!unfair_off``) and spend the rest of the
  call budget, i.e. no unfair step happens again. A fair ``unfair`` process then either keeps
  taking unfair steps or takes ``stop``; it is never forced to call. ``stop`` adds states,
  so the safety model (whose counts are compared) leaves it out. A stuttering unfair step
  (a timeout that changes nothing) taken forever cannot stand in for a weakly fair group's
  step either: that group is its own process.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from autoconverge.spec import FairnessGroup, Spec
from autoconverge.spec.expr import Term, Value
from autoconverge.spec.fold import const, simplify

from . import tools
from .codegen import (
    CALLS,
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
    all_variables,
    chan_delta,
    channel_var,
    initial_values,
    mentions,
    no_deadlock_term,
    post_state_term,
    state_symbol,
    state_term,
    step_property_term,
    steps,
    variable_kinds,
)
from .printer import TermPrinter
from .runs import CheckerRun, PropertyVerdict

Mode = Literal["safety", "liveness"]

UNFAIR_OFF = "unfair_off"
"""Liveness models only: set by the ``unfair`` process's ``stop`` step, after which no step
without fairness (user calls, timeouts, faults...) happens again."""
UNFAIR_PROCESS = "unfair"
"""The proctype of every transition of the schema's unfair groups."""


@dataclass(frozen=True)
class Process:
    """One proctype: its name, the fairness groups whose steps it runs, whether it is weakly
    fair in the spec (an unfair process gets ``stop`` in the liveness model)."""

    name: str
    groups: tuple[FairnessGroup, ...]
    weak: bool


def processes(spec: Spec) -> tuple[Process, ...]:
    """One process per weakly fair group (the schema's order), then the unfair one."""
    unfair = tuple(g for g in spec.fairness_groups if not g.weak)
    out = [Process(g.name, (g,), True) for g in spec.weak_fairness]
    if unfair:
        out.append(Process(UNFAIR_PROCESS, unfair, False))
    taken = set(all_variables(spec))
    for proc in out:
        if not re.fullmatch(r"[A-Za-z_]\w*", proc.name) or proc.name in taken:
            raise NotImplementedError(f"{spec.name}: fairness group {proc.name!r} cannot name a "
                                      "proctype (not an identifier, or a variable's name)")
    if len({proc.name for proc in out}) != len(out):
        raise NotImplementedError(f"{spec.name}: a fairness group is named {UNFAIR_PROCESS!r}")
    return tuple(out)


def mtype_name(spec: Spec, state: str) -> str:
    """A machine state's ``mtype`` constant: the machine's variable, then the state."""
    return f"{state_symbol(spec, state)}_{state}"


class PromelaPrinter(TermPrinter):
    """Promela spellings for one spec; a FIFO is the array ``q`` with the length ``qlen``."""

    LANGUAGE = "Promela"
    TRUE, FALSE = "true", "false"
    AND, OR, NOT = "&&", "||", "!"
    EQ, NE = "==", "!="
    TEMPLATES: ClassVar[Mapping[str, str]] = {"ite": "({} -> {} : {})"}
    SYMBOLS: ClassVar[Mapping[str, str]] = {MAX_CALLS: "MAX_CALLS", QUEUE_CAP: "QUEUE_CAP"}

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.chan = channel_var(spec)

    def state(self, name: str) -> str:
        return mtype_name(self.spec, name)

    def variable(self, name: str) -> str:
        if name == self.chan:
            raise NotImplementedError("a channel value is not a Promela expression")
        return super().variable(name)

    def special(self, op: str, a: tuple[Any, ...]) -> str | None:
        if op == "chan_len":
            drops, pushed = chan_delta(a[0])
            k = len(pushed) - drops
            return "qlen" if k == 0 else f"(qlen {'+' if k > 0 else '-'} {abs(k)})"
        if op == "chan_head":
            drops, pushed = chan_delta(a[0])
            if pushed:
                raise NotImplementedError("the head of a channel with pushes is not supported")
            return f"q[{drops}]"
        return None


def _assert(expr: PromelaPrinter, name: str, cond: Value) -> str | None:
    cond = simplify(cond)
    if cond is True:
        return None
    return f"assert(prop_{name} || {expr(cond)})"


def effect_statements(expr: PromelaPrinter, st: Step, cap: int) -> list[str]:
    """The effect as statements: right-hand sides are read from the pre-state (temporaries
    where a later assignment would overwrite what they read), then the channel, then the
    variables."""
    out: list[str] = []
    updates = dict(st.updates)
    chan = updates.pop(expr.chan, None) if expr.chan is not None else None
    written = set(updates) | ({expr.chan} if chan is not None and expr.chan else set())
    assigns: list[str] = []
    pushes: list[str] = []
    drops = 0
    if chan is not None:
        drops, pushed = chan_delta(chan)
        for i, v in enumerate(pushed):
            if mentions(v, written):
                if i > 0:
                    raise NotImplementedError("two computed pushes in one step")
                out.append(f"tmp_push{i} = {expr(v)}")
                pushes.append(f"tmp_push{i}")
            else:
                pushes.append(expr(v))
    for name in _ordered(expr.spec, updates):
        v = updates[name]
        if mentions(v, written - {name}):
            out.append(f"tmp_{name} = {expr(v)}")
            assigns.append(f"{name} = tmp_{name}")
        else:
            assigns.append(f"{name} = {expr(v)}")
    for _ in range(drops):
        out.extend(f"q[{i}] = q[{i + 1}]" for i in range(cap - 1))
        out.extend((f"q[{cap - 1}] = 0", "qlen--"))
    for p in pushes:
        out.extend((f"q[qlen] = {p}", "qlen++"))
    out.extend(assigns)
    return out


def _ordered(spec: Spec, names: Iterable[str]) -> list[str]:
    order = {n: i for i, n in enumerate(all_variables(spec))}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def _d_step(expr: PromelaPrinter, st: Step, body: list[str], extra_guard: str = "") -> str:
    guard = simplify(Term("and", (const(st.enabled), const(st.bound))))
    stmts = [f"{extra_guard} && ({expr(guard)})" if extra_guard else expr(guard), *body]
    return "d_step { " + " -> ".join(stmts[:1]) + (
        ";\n            " + ";\n            ".join(stmts[1:]) if len(stmts) > 1 else "") + " }"


def generate(spec: Spec, bounds: Bounds, mode: Mode = "safety") -> str:
    """The Promela model of ``spec`` at ``bounds`` (``mode``: see the module docstring)."""
    expr = PromelaPrinter(spec)
    all_steps = steps(spec, bounds)
    props = spec.properties
    invariants = [(p.name, state_term(spec, p.invariant)) for p in props
                  if p.kind == "invariant"]
    step_props = [p for p in props if p.kind == "step"]
    deadlock_props = [p.name for p in props if p.kind == "deadlock"]
    init = initial_values(spec)
    kinds = variable_kinds(spec)
    int_vars = [n for n, k in kinds.items() if k == "int"]
    bool_vars = [n for n, k in kinds.items() if k == "bool"]
    chan = expr.chan
    if chan is not None and tuple(init[chan]):
        raise NotImplementedError("a non-empty initial channel is not supported")
    cap = max(bounds.channel_capacity, 1)
    safety = mode == "safety"
    initial_steps = {id(st) for st in all_steps if _enabled_initially(spec, bounds, st)}
    lines: list[str] = [
        f"/* Generated by autoconverge.proofs.promela from spec {spec.name!r} "
        f"(lifecycle {spec.family!r}, mode: {mode}). Do not edit. */",
        f"/* bounds: {bounds.as_dict()} */",
        f"#define MAX_CALLS {bounds.max_calls}",
    ]
    if chan is not None:
        lines += [
            f"#define QUEUE_CAP {bounds.channel_capacity}",
            f"#define QUEUE_SLOTS {cap}   /* array size (at least 1) */",
        ]
    lines += [
        "",
        "mtype = { " + ", ".join(mtype_name(spec, s) for m in spec.schema.machines
                                 for s in m.states) + " };",
    ]
    lines += [f"mtype {m.var} = {mtype_name(spec, init[m.var])};   /* {m.name} machine state */"
              for m in spec.schema.machines]
    lines += [f"short {name} = {int(init[name])};" for name in int_vars]
    lines += [f"bool {name} = {'true' if init[name] else 'false'};" for name in bool_vars]
    if chan is not None:
        lines += [
            f"short q[QUEUE_SLOTS];   /* the FIFO {chan}: q[0] is the head, unused slots "
            "hold 0 */",
            "byte qlen = 0;",
        ]
    lines += [
        f"byte {CALLS} = 0;   /* user calls made so far (at most MAX_CALLS) */",
        *(() if safety else (f"bool {UNFAIR_OFF} = false;   /* the unfair steps stopped */",)),
        "/* temporaries of a d_step (hidden: not part of the state vector) */",
        *(f"hidden short tmp_{name};" for name in int_vars),
        *(("hidden short tmp_push0;",) if chan is not None else ()),
        *(f"hidden byte tmp_{name};" for name in (*bool_vars, CALLS)),
    ]
    if safety:
        lines.append("/* always 0: assert(prop_X || e) makes pan's message name property X */")
        lines += [f"hidden byte prop_{p.name};" for p in props
                  if p.kind in ("invariant", "step", "deadlock")]
        lines.append("")
        for name, inv in invariants:
            lines.append(_define(f"INV_{name}", expr(inv)))
        no_deadlock = no_deadlock_term(spec, all_steps)
        if deadlock_props:
            lines.append("/* terminal, or a transition other than a fault is enabled when the "
                         "bounds are ignored */")
            lines.append(_define("NO_DEADLOCK", expr(no_deadlock)))
        state_checks = [(name, inv, f"INV_{name}") for name, inv in invariants
                        if inv is not True]
        state_checks += [(name, no_deadlock, "NO_DEADLOCK") for name in deadlock_props
                         if no_deadlock is not True]
        lines.append("/* every state-level property (the initial state's check) */")
        lines.append("inline check_state() {")
        lines += [f"    assert(prop_{name} || {macro});" for name, _, macro in state_checks
                  ] or ["    skip;"]
        lines.append("}")
    lines.append("")

    def body(st: Step) -> list[str]:
        out: list[str] = []
        if safety:
            if id(st) in initial_steps:
                out.append("check_state()")
            for p in step_props:
                a = _assert(expr, p.name, step_property_term(p.step, st))
                if a:
                    out.append(a)
        out.extend(effect_statements(expr, st, cap))
        if safety:
            written = set(st.updates)
            for name, term, _ in state_checks:
                if mentions(term, written):
                    a = _assert(expr, name, post_state_term(term, st))
                    if a:
                        out.append(a)
        return out

    first = True
    for proc in processes(spec):
        mine = [st for st in all_steps if st.transition.fairness_group in proc.groups]
        if not mine:
            continue
        lines.append(f"/* {'; '.join(g.statement for g in proc.groups)} */")
        lines.append(f"active proctype {proc.name}() {{")
        lines.append(f"end_{proc.name}:   /* blocked on its guards: a legitimate end */")
        lines.append("    do")
        if safety and first and not initial_steps:
            # no step leaves the initial state: it is the only state; check it there
            lines.append("    :: /* the initial state has no successor: check it */")
            lines.append("       d_step { timeout -> check_state() }")
        first = False
        for st in mine:
            extra = "" if safety or proc.weak else "!" + UNFAIR_OFF
            lines.append(f"    :: /* {st.name} */")
            lines.append(f"       {_d_step(expr, st, body(st), extra)}")
        if not safety and not proc.weak:
            lines.append("    :: /* stop: no more user calls, timeouts or other unfair steps */")
            lines.append(f"       d_step {{ !{UNFAIR_OFF} -> {CALLS} = MAX_CALLS; "
                         f"{UNFAIR_OFF} = true }}")
        lines.append("    od")
        lines.append("}")
        lines.append("")
    if mode == "liveness":
        for p in props:
            if p.kind == "leadsto":
                lines.append(
                    f"ltl {p.name} {{ [] ({expr(state_term(spec, p.leads_from))} -> "
                    f"<> {expr(state_term(spec, p.leads_to))}) }}")
    return "\n".join(lines) + "\n"


def _enabled_initially(spec: Spec, bounds: Bounds, st: Step) -> bool:
    """The step can be taken in the initial state (guard and bounds, on concrete values)."""
    t = st.transition
    if not t.enabled(spec.initial, **st.params_dict):
        return False
    if t.user_call and bounds.max_calls <= 0:
        return False
    chan = channel_var(spec)
    if chan is not None:
        after = t.apply(spec.initial, **st.params_dict)
        if len(getattr(after, chan)) > bounds.channel_capacity:
            return False
    return True


def _define(name: str, text: str, width: int = 96) -> str:
    """A ``#define`` wrapped at ``||``/``&&`` with backslash continuations."""
    out: list[str] = []
    line = f"#define {name} "
    for i, part in enumerate(text.split(" || ")):
        piece = part if i == 0 else "|| " + part
        if len(line) + len(piece) > width and line.strip():
            out.append(line.rstrip() + " \\")
            line = "    "
        line += piece + " "
    out.append(line.rstrip())
    return "\n".join(out)


def model_name(spec: Spec) -> str:
    """The file name stem of ``spec``'s generated models (the spec's name as an identifier):
    concurrent runs on different specs never share a file."""
    return re.sub(r"\W", "_", spec.name)


def properties_checked(spec: Spec, mode: Mode) -> list[str]:
    kinds = ("invariant", "step", "deadlock") if mode == "safety" else ("leadsto",)
    return [p.name for p in spec.properties if p.kind in kinds]


# --- running SPIN ---------------------------------------------------------------------------


def check_spin(spec: Spec, bounds: Bounds, workdir: Path | None = None, *,
               timeout: float = tools.DEFAULT_TIMEOUT, replay: bool = False) -> CheckerRun:
    """Generate, compile and run SPIN on ``spec`` at ``bounds``: one exhaustive safety run
    (``pan -c0``: every assertion and invalid end state, counting on past errors) and one
    ``pan -a -f -N <name>`` run per leads-to property. Artifacts stay in ``workdir`` when
    given (else a temporary folder, removed)."""
    tools.require("spin")
    with tools.work_folder(workdir, "autoconverge-spin-") as folder:
        return _check_spin(spec, bounds, folder, timeout, replay)


PAN_FLAGS = ("-n", "-m500000", "-w22")
"""pan: no unreached-code listing, DFS depth limit, 2^22-slot hash table."""


def _check_spin(spec: Spec, bounds: Bounds, workdir: Path, timeout: float, replay: bool
                ) -> CheckerRun:
    t_start = time.perf_counter()
    kinds = {p.name: p.kind for p in spec.properties}
    unknown = [n for n, k in kinds.items() if k not in ("invariant", "step", "deadlock",
                                                           "leadsto")]
    if unknown:
        raise tools.ToolError(f"no SPIN encoding for properties {unknown}")
    props: dict[str, PropertyVerdict] = {}
    sdir, ldir = workdir / "safety", workdir / "liveness"
    sdir.mkdir(parents=True, exist_ok=True)
    ldir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pml = f"{model_name(spec)}.pml"
    (sdir / pml).write_text(generate(spec, bounds, "safety"))
    (ldir / pml).write_text(generate(spec, bounds, "liveness"))
    t_gen = time.perf_counter() - t0
    pan, t_cc = tools.spin_compile(sdir / pml, safety=True, timeout=timeout)
    safety = tools.pan_run(pan, ["-c0", *PAN_FLAGS], timeout)
    _check_depth(safety)
    violated = set(safety.assertion_props)
    if safety.invalid_end:
        violated |= {n for n, k in kinds.items() if k == "deadlock"}
    for name, kind in kinds.items():
        if kind != "leadsto":
            props[name] = PropertyVerdict(name not in violated, safety.states,
                                          round(safety.seconds, 4), "safety")
    t_run = safety.seconds
    live_names = [n for n, k in kinds.items() if k == "leadsto"]
    t_cc2 = 0.0
    if live_names:
        lpan, t_cc2 = tools.spin_compile(ldir / pml, safety=False, timeout=timeout)
        for name in live_names:
            r = tools.pan_run(lpan, ["-a", "-f", "-N", name, *PAN_FLAGS], timeout)
            _check_depth(r)
            trail = (tools.spin_replay(ldir / pml)
                     if r.acceptance_cycle and replay and r.trail is not None else None)
            props[name] = PropertyVerdict(not r.acceptance_cycle, r.states, round(r.seconds, 4),
                                          f"liveness -N {name}", trail)
            t_run += r.seconds
    # pan counts the initial state as a transition; a model whose initial state has no
    # successor has one more, the timeout step that checks it (a self-loop: not a spec step)
    lone = not any(_enabled_initially(spec, bounds, st) for st in steps(spec, bounds))
    return CheckerRun(
        "spin", spec.name, props, states=safety.states,
        transitions=safety.transitions - 1 - int(lone),
        depth=safety.depth,
        seconds={"generate": round(t_gen, 4), "compile": round(t_cc + t_cc2, 4),
                 "run": round(t_run, 4), "total": round(time.perf_counter() - t_start, 4)},
        bounds=bounds.as_dict(), workdir=str(workdir),
    )


def _check_depth(r: tools.PanResult) -> None:
    if "max search depth too small" in r.output:
        raise tools.ToolError("pan: max search depth too small (raise -m)")
