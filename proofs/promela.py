"""Promela generated from the spec declaration, for SPIN.

:func:`generate` prints a Promela model of one spec (the shipped one or a bug-zoo variant) at
a :class:`~autoconverge.proofs.codegen.Bounds`: every guard, effect and property is the
spec's own function evaluated on syntax trees (:mod:`.codegen`), never a hand-written copy.

Model layout:

- four ``active proctype``\\ s, one per thread-like actor (:data:`THREAD_ACTORS`, read
  from the fairness groups): ``worker`` (every ``worker`` transition), ``clock`` (the
  ``expire`` transitions), ``vcpu`` (a vCPU call in progress ending: returning or failing)
  and ``controller`` (user calls, timeouts and the completions of blocking calls). Each
  transition is one ``d_step { guard -> effect }``: a single indivisible step, exactly the
  spec's granularity, so SPIN's distinct states are the explorer's. The worker, the clock
  and the vCPUs are one loop each (the worker's machine state is the global ``w``); the
  controller has one location per machine state so that SPIN's own *invalid end state*
  check can tell a caller stuck in a blocking call (``awaiting_*``, ``resuming``: not an end
  label) from a bounded end (``end_idle``, ``end_stalled``, ``end_closing``: the user could
  still call ``shutdown``) and the terminal ``end_done``.
- the channel is an array with a length (``q[QUEUE_SLOTS]``, ``qlen``), not a Promela
  ``chan``: guards must test the *head's value* against ranges inside one atomic guard
  (``q?[x]`` polls only match constants or bind variables), and the array keeps the state
  canonical (a pop shifts and zeroes the freed slot) so counts match the explorer's tuples.
- bounds: ``#define MAX_CALLS``/``QUEUE_CAP``; a byte ``ncalls`` counts user calls.
- properties (``mode="safety"``): every invariant is asserted before and after every step
  (before: covers the initial state; after: covers states without successors); every step
  property is asserted inside the step on the pre-state, with the post-state substituted by
  the step's effect expressions; ``NoDeadlock`` is SPIN's invalid-end-state check plus an
  assertion after every step that the new state is terminal or has a non-``fault``
  transition enabled when the bounds are ignored (the explorer's exact notion, which no
  placement of end labels can express). Each assertion reads ``assert(prop_<Name> ||
  expr)`` with ``prop_<Name>`` a hidden constant 0, so pan's message names the property.
- ``mode="liveness"``: one ``ltl`` block per leads-to property, ``[]((p) -> <>(q))``, checked
  one per run (``pan -a -f -N <Name>``). ``-f`` is SPIN's weak fairness *per process*: the
  worker thread, the clock, and the controller. User calls must not be fair, so the
  controller gets an extra option at every location it can call from: ``stop`` (spend the
  rest of the call budget: the user never calls again). A fair controller that sits idle
  then takes ``stop`` instead of being forced to call; the completions of blocking calls
  stay weakly fair. ``stop`` adds states, so the safety model (whose counts are compared)
  leaves it out. Timeouts (unfair, not user calls) stop with ``stop`` too, and are left out
  where they would change nothing (:func:`.codegen.stutter_condition`): a stuttering step
  is no step in the explorer or TLA+, but SPIN would let the controller take it forever
  and count that as the controller moving, starving its weakly fair completions (user
  calls cannot: ``MAX_CALLS`` bounds them).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from autoconverge.spec import FAIRNESS_GROUPS, Spec
from autoconverge.spec.expr import Term, Value
from autoconverge.spec.lifecycle import CONTROLLER_STATES, INITIAL, VARIABLES, WORKER_STATES

from . import tools
from .codegen import (
    CALLS,
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
    chan_delta,
    const,
    initial_values,
    is_var,
    mentions,
    no_deadlock_term,
    simplify,
    state_symbol,
    state_term,
    step_property_term,
    steps,
    stutter_condition,
)
from .printer import TermPrinter
from .runs import CheckerRun, PropertyVerdict

Mode = Literal["safety", "liveness"]

UNFAIR_OFF = "unfair_off"
"""Liveness models only: set by the controller's ``stop`` step, after which neither user calls
nor timeouts (the steps without fairness) happen again."""

THREAD_ACTORS: tuple[str, ...] = tuple(
    dict.fromkeys(g.actor for g in FAIRNESS_GROUPS if g.actor != "controller")
)
"""The actors that run as their own weakly fair proctype (worker, clock, vcpu: one per
thread-like fairness group of the spec); the controller is one proctype with a location per
machine state."""

BOOL_VARS: tuple[str, ...] = tuple(
    n for n in VARIABLES if isinstance(getattr(INITIAL, n), bool)
)
"""The state record's flags (read from the spec's initial state, not restated)."""
INT_VARS: tuple[str, ...] = tuple(
    n for n in VARIABLES
    if n not in ("w", "c") and type(getattr(INITIAL, n)) is int  # exact type: bool excluded
)
"""The state record's integers (machine states and the channel are declared apart)."""


def mtype_name(state: str) -> str:
    return f"{state_symbol(state)}_{state}"


class PromelaPrinter(TermPrinter):
    """Promela spellings; the channel is the array ``q`` with the length ``qlen``."""

    LANGUAGE = "Promela"
    TRUE, FALSE = "true", "false"
    AND, OR, NOT = "&&", "||", "!"
    EQ, NE = "==", "!="
    TEMPLATES: ClassVar[Mapping[str, str]] = {"ite": "({} -> {} : {})"}
    SYMBOLS: ClassVar[Mapping[str, str]] = {MAX_CALLS: "MAX_CALLS", QUEUE_CAP: "QUEUE_CAP"}

    def state(self, name: str) -> str:
        return mtype_name(name)

    def variable(self, name: str) -> str:
        if name == "chan":
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


expr = PromelaPrinter()
"""A Promela expression for a (simplified) term over the current state."""


def _assert(name: str, cond: Value) -> str | None:
    cond = simplify(cond)
    if cond is True:
        return None
    return f"assert(prop_{name} || {expr(cond)})"


def effect_statements(st: Step, cap: int) -> list[str]:
    """The effect as statements: right-hand sides are read from the pre-state (temporaries
    where a later assignment would overwrite what they read), then the channel, then the
    variables."""
    out: list[str] = []
    updates = dict(st.updates)
    chan = updates.pop("chan", None)
    written = set(updates) | ({"chan"} if chan is not None else set())
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
    for name in _ordered(updates):
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


def _ordered(names: Iterable[str]) -> list[str]:
    order = {n: i for i, n in enumerate((*VARIABLES, CALLS))}
    return sorted(names, key=lambda n: order.get(n, len(order)))


def _d_step(st: Step, body: list[str], extra_guard: str = "") -> str:
    guard = simplify(Term("and", (const(st.enabled), const(st.bound))))
    stmts = [f"{extra_guard} && ({expr(guard)})" if extra_guard else expr(guard), *body]
    return "d_step { " + " -> ".join(stmts[:1]) + (
        ";\n            " + ";\n            ".join(stmts[1:]) if len(stmts) > 1 else "") + " }"


def generate(spec: Spec, bounds: Bounds, mode: Mode = "safety") -> str:
    """The Promela model of ``spec`` at ``bounds`` (``mode``: see the module docstring)."""
    all_steps = steps(spec, bounds)
    props = spec.properties
    invariants = [(p.name, state_term(p.invariant)) for p in props if p.kind == "invariant"]
    step_props = [p for p in props if p.kind == "step"]
    has_deadlock = any(p.kind == "deadlock" for p in props)
    init = initial_values(spec)
    if tuple(init["chan"]):
        raise NotImplementedError("a non-empty initial channel is not supported")
    cap = max(bounds.channel_capacity, 1)
    safety = mode == "safety"
    lines: list[str] = [
        f"/* Generated by autoconverge.proofs.promela from spec {spec.name!r} "
        f"(mode: {mode}). Do not edit. */",
        f"/* bounds: {bounds.as_dict()} */",
        f"#define MAX_CALLS {bounds.max_calls}",
        f"#define QUEUE_CAP {bounds.channel_capacity}",
        f"#define QUEUE_SLOTS {cap}   /* array size (at least 1) */",
        "",
        "mtype = { " + ", ".join(mtype_name(s) for s in (*WORKER_STATES, *CONTROLLER_STATES))
        + " };",
        f"mtype w = {mtype_name(init['w'])};   /* worker machine state */",
        f"mtype c = {mtype_name(init['c'])};   /* controller machine state */",
    ]
    lines += [f"short {name} = {int(init[name])};" for name in INT_VARS]
    lines += [f"bool {name} = {'true' if init[name] else 'false'};" for name in BOOL_VARS]
    lines += [
        "short q[QUEUE_SLOTS];   /* the FIFO chan: q[0] is the head, unused slots hold 0 */",
        "byte qlen = 0;",
        f"byte {CALLS} = 0;   /* user calls made so far (at most MAX_CALLS) */",
        *(() if safety else (f"bool {UNFAIR_OFF} = false;   /* the unfair steps stopped */",)),
        "/* temporaries of a d_step (hidden: not part of the state vector) */",
        *(f"hidden short tmp_{name};" for name in INT_VARS),
        "hidden short tmp_push0;",
        *(f"hidden byte tmp_{name};" for name in (*BOOL_VARS, CALLS)),
    ]
    if safety:
        lines.append("/* always 0: assert(prop_X || e) makes pan's message name property X */")
        lines += [f"hidden byte prop_{p.name};" for p in props
                  if p.kind in ("invariant", "step", "deadlock")]
        lines.append("")
        for name, inv in invariants:
            lines.append(_define(f"INV_{name}", expr(inv)))
        if has_deadlock:
            lines.append("/* terminal, or a transition other than fault is enabled when the bounds "
                         "are ignored */")
            lines.append(_define("NO_DEADLOCK", expr(no_deadlock_term(all_steps))))
        checks = [f"assert(prop_{name} || INV_{name})" for name, inv in invariants
                  if inv is not True]
        lines.append("inline check_invariants() {")
        lines += [f"    {c};" for c in checks] or ["    skip;"]
        lines.append("}")
        lines.append("inline check_post() {")
        lines.append("    check_invariants();")
        if has_deadlock:
            lines.append("    assert(prop_NoDeadlock || NO_DEADLOCK);")
        lines.append("}")
    lines.append("")

    def body(st: Step) -> list[str]:
        out: list[str] = []
        if safety:
            out.append("check_invariants()")
            for p in step_props:
                a = _assert(p.name, step_property_term(p.step, st))
                if a:
                    out.append(a)
        out.extend(effect_statements(st, cap))
        if safety:
            out.append("check_post()")
        return out

    for actor in THREAD_ACTORS:
        mine = [st for st in all_steps if st.transition.actor == actor]
        lines.append(f"active proctype {actor}() {{")
        lines.append(f"end_{actor}:   /* a thread blocked on its input is a legitimate end */")
        if mine:
            lines.append("    do")
            for st in mine:
                lines.append(f"    :: /* {st.name} */")
                lines.append(f"       {_d_step(st, body(st))}")
            lines.append("    od")
        else:
            lines.append("    false")
        lines.append("}")
        lines.append("")

    ctl = [st for st in all_steps if st.transition.actor == "controller"]

    def label(loc: str) -> str:
        return _controller_label(loc, [st for st in ctl if st.transition.source == loc])

    lines.append("active proctype controller() {")
    for loc in (init["c"], *(s for s in CONTROLLER_STATES if s != init["c"])):
        out_steps = [st for st in ctl if st.transition.source == loc]
        lines.append(f"{label(loc)}:")
        if not out_steps:
            lines.append("    false;")
            continue
        lines.append("    if")
        for st in out_steps:
            extra = ""
            if not safety and st.transition.fairness is None and not st.user_call:
                # liveness: an unfair step that is not a user call (a timeout) stops with
                # them; the controller proctype is weakly fair as a whole, which must not
                # force it. Nor may it stand in for the completions' fairness: where it would
                # change nothing it is no step (as in the explorer and TLA+), else SPIN could
                # take it forever and count that as the controller moving
                quiet = stutter_condition(st)
                if quiet is True:
                    continue
                extra = "!" + UNFAIR_OFF
                if quiet is not False:
                    extra += f" && !({expr(quiet)})"
            lines.append(f"    :: /* {st.name} */")
            lines.append(f"       {_d_step(st, body(st), extra)};")
            lines.append(f"       goto {label(st.transition.dest)}")
        if not safety and any(st.transition.fairness is None for st in out_steps):
            lines.append("    :: /* stop: no more user calls or timeouts (neither is fair) */")
            lines.append(f"       d_step {{ !{UNFAIR_OFF} -> {CALLS} = MAX_CALLS; "
                         f"{UNFAIR_OFF} = true }};")
            lines.append(f"       goto {label(loc)}")
        lines.append("    fi;")
    lines.append("}")
    lines.append("")
    if mode == "liveness":
        for p in props:
            if p.kind == "leadsto":
                lines.append(
                    f"ltl {p.name} {{ [] ({expr(state_term(p.leads_from))} -> "
                    f"<> {expr(state_term(p.leads_to))}) }}")
    return "\n".join(lines) + "\n"


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


def _controller_label(loc: str, out_steps: list[Step]) -> str:
    """``end_<loc>`` where the controller may legitimately stay forever: no way out (done), or
    a user call whose guard is only the source state (the unbounded spec can always call:
    a block there is a bounded end); otherwise ``L_<loc>`` (a caller stuck in a blocking
    call is an invalid end state)."""
    if not out_steps:
        return f"end_{loc}"
    for st in out_steps:
        if st.user_call and _only_source(st):
            return f"end_{loc}"
    return f"L_{loc}"


def _only_source(st: Step) -> bool:
    e = st.enabled
    parts = e.args if isinstance(e, Term) and e.op == "and" else (e,)
    return all(_source_or_lock_free(p) for p in parts) and any(
        isinstance(p, Term) and p.op == "is_state" for p in parts)


def _source_or_lock_free(e: Value) -> bool:
    """``c = <loc>``, or ``holder = 0``: the API lock is free wherever the controller is not
    inside a blocking call (the property LockHeldOnlyInCall, checked in the same run), so a
    user call guarded by it alone is callable in every state of its location."""
    if not isinstance(e, Term):
        return False
    if e.op == "is_state":
        return is_var(e.args[0], "c")
    zero = e.args[1] if e.op == "eq" else None
    return (is_var(e.args[0], "holder") and isinstance(zero, Term) and zero.op == "const"
            and zero.args == (0,))


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
    (sdir / "model.pml").write_text(generate(spec, bounds, "safety"))
    (ldir / "model.pml").write_text(generate(spec, bounds, "liveness"))
    t_gen = time.perf_counter() - t0
    pan, t_cc = tools.spin_compile(sdir / "model.pml", safety=True, timeout=timeout)
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
        lpan, t_cc2 = tools.spin_compile(ldir / "model.pml", safety=False, timeout=timeout)
        for name in live_names:
            r = tools.pan_run(lpan, ["-a", "-f", "-N", name, *PAN_FLAGS], timeout)
            _check_depth(r)
            trail = (tools.spin_replay(ldir / "model.pml")
                     if r.acceptance_cycle and replay and r.trail is not None else None)
            props[name] = PropertyVerdict(not r.acceptance_cycle, r.states, round(r.seconds, 4),
                                          f"liveness -N {name}", trail)
            t_run += r.seconds
    return CheckerRun(
        "spin", spec.name, props, states=safety.states, transitions=safety.transitions - 1,
        depth=safety.depth,
        seconds={"generate": round(t_gen, 4), "compile": round(t_cc + t_cc2, 4),
                 "run": round(t_run, 4), "total": round(time.perf_counter() - t_start, 4)},
        bounds=bounds.as_dict(), workdir=str(workdir),
    )


def _check_depth(r: tools.PanResult) -> None:
    if "max search depth too small" in r.output:
        raise tools.ToolError("pan: max search depth too small (raise -m)")
