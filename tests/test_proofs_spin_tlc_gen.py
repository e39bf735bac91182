"""The Promela/TLA+ generators without the tools: the shared relation, the texts, the parsers
(both lifecycles: the throttle and the migration, and their zoos)."""

from __future__ import annotations

import dataclasses
import operator
from collections import deque
from typing import Any

import pytest

from autoconverge.proofs import promela, tla, tools
from autoconverge.proofs.codegen import (
    CALLS,
    MAX_CALLS,
    QUEUE_CAP,
    Bounds,
    Step,
    simplify,
    state_term,
    step_property_term,
    steps,
    stutter_condition,
)
from autoconverge.spec import SPEC, WEAK_FAIRNESS, Spec, State
from autoconverge.spec.expr import Term, var
from autoconverge.spec.lifecycle import CALLERS
from autoconverge.spec.specs import MIGRATION_SPEC, ZOOS
from autoconverge.spec.variants import VARIANTS, variant

_OPS = {"eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le,
        "gt": operator.gt, "ge": operator.ge, "add": operator.add, "sub": operator.sub,
        "mul": operator.mul}


def _ev(x: Any, env: dict[str, Any]) -> Any:
    """Evaluate a generator term on concrete values (an independent reading of the trees)."""
    if not isinstance(x, Term):
        return x
    a = x.args
    if x.op == "var":
        return env[a[0]]
    if x.op == "const":
        return _ev(a[0], env)
    if x.op == "and":
        return all(_ev(t, env) for t in a)
    if x.op == "or":
        return any(_ev(t, env) for t in a)
    if x.op == "not":
        return not _ev(a[0], env)
    if x.op == "implies":
        return (not _ev(a[0], env)) or _ev(a[1], env)
    if x.op == "ite":
        return _ev(a[1], env) if _ev(a[0], env) else _ev(a[2], env)
    if x.op in _OPS:
        return _OPS[x.op](_ev(a[0], env), _ev(a[1], env))
    if x.op == "is_state":
        return _ev(a[0], env) == a[1]
    if x.op == "chan_len":
        return len(_ev(a[0], env))
    if x.op == "chan_head":
        return _ev(a[0], env)[0]
    if x.op == "chan_tail":
        return tuple(_ev(a[0], env)[1:])
    if x.op == "chan_push":
        return (*_ev(a[0], env), _ev(a[1], env))
    raise AssertionError(f"unexpected op {x.op}")


def _record(s: Any) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


def _bfs_steps(spec: Spec, b: Bounds) -> set[tuple[Any, ...]]:
    all_steps = steps(spec, b)
    env0 = {**_record(spec.initial), CALLS: 0, MAX_CALLS: b.max_calls,
            QUEUE_CAP: b.channel_capacity}
    keys = sorted(k for k in env0 if k not in (MAX_CALLS, QUEUE_CAP))
    seen = {tuple(env0[k] for k in keys)}
    todo = deque([env0])
    while todo:
        env = todo.popleft()
        for st in all_steps:
            if _ev(st.enabled, env) and _ev(st.bound, env):
                nxt = dict(env)
                nxt.update({k: _ev(v, env) for k, v in st.updates.items()})
                key = tuple(nxt[k] for k in keys)
                if key not in seen:
                    seen.add(key)
                    todo.append(nxt)
    return seen


def _bfs_spec(spec: Spec, b: Bounds) -> set[tuple[Any, ...]]:
    """The same bounded slice straight from Spec.successors (as the explorer does it)."""
    keys = sorted((*_record(spec.initial), CALLS))
    chan = spec.schema.channel_var
    init = (spec.initial, 0)
    seen = {init}
    todo = deque([init])
    while todo:
        s, n = todo.popleft()
        for t, _, s2 in spec.successors(s, spec.param_domains(b.percents)):
            if t.is_fault and not b.faults:
                continue
            if chan is not None and len(getattr(s2, chan)) > b.channel_capacity:
                continue
            n2 = n
            if t.user_call:
                if n >= b.max_calls:
                    continue
                n2 = n + 1
            if (s2, n2) not in seen:
                seen.add((s2, n2))
                todo.append((s2, n2))
    return {tuple({**_record(s), CALLS: n}[k] for k in keys) for s, n in seen}


SMALL = Bounds(percents=(0, 1, 50, 99, 100), max_calls=3, channel_capacity=2)
ALL_SPECS = [SPEC, *(v.build(SPEC) for v in VARIANTS)]
MIGRATION_SPECS = [MIGRATION_SPEC, *(v.build(MIGRATION_SPEC) for v in ZOOS["migration"])]
MIGRATION_BOUNDS = Bounds(percents=(), max_calls=1, channel_capacity=0)
"""The migration's own bound (``[migration]`` of explorer.toml: it cuts nothing)."""


@pytest.mark.parametrize(("spec", "bounds"),
                         [*(pytest.param(s, SMALL, id=s.name) for s in ALL_SPECS),
                          pytest.param(MIGRATION_SPEC, MIGRATION_BOUNDS, id="migration")])
def test_generator_relation_is_the_spec_relation(spec: Spec, bounds: Bounds) -> None:
    """The guard/effect trees both generators print reach exactly the spec's states (the
    migration's: ``If`` in effects, guards reading the other machine's state, no FIFO)."""
    from_trees = _bfs_steps(spec, bounds)
    from_spec = _bfs_spec(spec, bounds)
    assert from_trees == from_spec
    assert len(from_trees) > 50


def test_simplify_folds_constants_and_keeps_variables() -> None:
    x = var("x")
    assert simplify(Term("and", (Term("const", (True,)), x))) is x
    assert simplify(Term("or", (Term("const", (True,)), x))) is True
    assert simplify(Term("eq", (Term("const", (3,)), Term("const", (3,))))) is True
    folded = simplify(Term("not", (Term("eq", (x, Term("const", (0,)))),)))
    assert isinstance(folded, Term) and folded.op == "ne"


def test_out_of_domain_percents_fold_away_and_are_derived_from_the_guard() -> None:
    b = Bounds(percents=(0, 1, 50, 99, 100))
    shipped = promela.generate(SPEC, b)
    buggy = promela.generate(variant("api_accepts_100").build(SPEC), b)
    assert "call_set_idle_p100" not in shipped and "call_set_idle_p0" not in shipped
    assert "call_set_idle_p100" in buggy and "q[qlen] = 100" in buggy


def _asserted(spec: Spec, name: str) -> bool:
    """Whether a property has something to assert at all (else every step folds it to
    true and the generator prints no assertion for it)."""
    p = spec.property(name)
    if p.kind == "invariant":
        return state_term(spec, p.invariant) is not True
    return any(step_property_term(p.step, st) is not True for st in steps(spec, Bounds()))


def test_promela_structure() -> None:
    safety = promela.generate(SPEC, Bounds(), "safety")
    live = promela.generate(SPEC, Bounds(), "liveness")
    procs = [p.name for p in promela.processes(SPEC)]
    # one process per weakly fair group, then one for every unfair step
    assert procs == [*(g.name for g in WEAK_FAIRNESS), "unfair"]
    assert procs == ["worker", "clock", "vcpu", "completion", "unfair"]
    for text in (safety, live):
        for proc in procs:
            assert f"active proctype {proc}()" in text
            assert f"end_{proc}:" in text  # a process blocked on its guards is a legitimate end
        assert text.count("active proctype") == len(procs)
        assert "mtype w = w_waiting;" in text and "mtype c = c_idle;" in text
        assert "short q[QUEUE_SLOTS];" in text and "#define QUEUE_CAP 3" in text
        assert "d_step" in text
    # the user calls and the timeouts run in the unfair process, the completions apart
    unfair = safety.split("active proctype unfair()", 1)[1]
    completion = safety.split("active proctype completion()", 1)[1].split("active proctype", 1)[0]
    assert "/* call_shutdown_idle_k1 */" in unfair and "/* timeout_awaiting_exit */" in unfair
    assert "/* shutdown_done_awaiting_exit */" in completion and "call_" not in completion
    for p in SPEC.properties:
        if p.kind in ("invariant", "step"):
            assert (f"prop_{p.name} ||" in safety) == _asserted(SPEC, p.name), p.name
        if p.kind == "leadsto":
            assert f"ltl {p.name} {{ [] (" in live
            assert f"ltl {p.name}" not in safety
    # paused follows the calls by construction in the shipped spec (only call_return and
    # resume_failed write it): nothing to assert; a variant that writes it gets the assertion
    assert not _asserted(SPEC, "PausedFollowsCalls")
    broken = variant("paused_without_pause_call").build(SPEC)
    assert "prop_PausedFollowsCalls ||" in promela.generate(broken, Bounds(), "safety")
    assert "stop: no more user calls, timeouts or other unfair steps" in live
    assert "stop:" not in safety
    assert "NO_DEADLOCK" in safety


def test_liveness_model_stops_unfair_steps_apart_from_fair_ones() -> None:
    """Only the unfair steps stop (``unfair_off``), and a stuttering timeout cannot stand in
    for the completions' fairness: they are another process (a timeout that changes nothing
    is no step in the explorer or TLA+; SPIN's -f is fairness per process)."""
    pending = variant("timeout_leaves_call_pending").build(SPEC)
    live = promela.generate(pending, Bounds(), "liveness")
    block = live.split("/* timeout_awaiting_exit */", 1)[1].split(":: /*", 1)[0]
    assert "d_step { !unfair_off && ((c == c_awaiting_exit))" in block
    unfair = live.split("active proctype unfair()", 1)[1].split("active proctype", 1)[0]
    assert "/* timeout_awaiting_exit */" in unfair
    assert "d_step { !unfair_off -> ncalls = MAX_CALLS; unfair_off = true }" in unfair
    for proc in promela.processes(pending):
        if proc.weak:
            fair = live.split(f"active proctype {proc.name}()", 1)[1].split("}\n", 1)[0]
            assert "unfair_off" not in fair and "timeout_" not in fair
    safety = promela.generate(pending, Bounds(), "safety")
    assert "unfair_off" not in safety  # the safety model: every step, nothing stops


def test_tla_structure_fairness_per_thread() -> None:
    text = tla.generate(SPEC, Bounds())
    assert text.count("WF_vars(") == len(WEAK_FAIRNESS) == 4
    assert ("WF_vars(WorkerNext) /\\ WF_vars(ClockNext) /\\ WF_vars(VcpuNext) "
            "/\\ WF_vars(CompletionNext)") in text
    assert ("Next == WorkerNext \\/ ClockNext \\/ VcpuNext \\/ CompletionNext \\/ UserNext "
            "\\/ TimeoutNext \\/ EndStutter") in text
    assert "WF_vars(UserNext)" not in text and "WF_vars(TimeoutNext)" not in text
    assert "EndStutter == (Terminal \\/ CutByBounds) /\\ UNCHANGED vars" in text
    assert "CONSTANTS MaxCalls, QueueCap, Percents, Callers" in text
    assert "\\E p \\in Percents, k \\in Callers : call_set_idle(p, k)" in text
    assert "\\E k \\in Callers : call_shutdown_stalled(k)" in text
    cfg = tla.generate_cfg(SPEC, Bounds(percents=(1, 50, 99), max_calls=4, channel_capacity=3))
    assert "Percents = {1, 50, 99}" in cfg and "MaxCalls = 4" in cfg and "QueueCap = 3" in cfg
    assert f"Callers = {{{', '.join(map(str, CALLERS))}}}" in cfg
    for p in SPEC.properties:
        section = "INVARIANT" if p.kind in ("invariant", "deadlock") else "PROPERTY"
        line = next(ln for ln in cfg.splitlines() if ln.startswith(section))
        assert p.name in line.split()
        if p.kind == "step":
            assert (f"{p.name} ==\n    [][" if _asserted(SPEC, p.name)
                    else f"{p.name} == [][TRUE]_vars") in text
        if p.kind == "leadsto":
            assert " ~> " in text.split(f"{p.name} ==", 1)[1].split("\n\n", 1)[0]


def test_stuttering_steps_get_a_companion_invariant() -> None:
    spinning = variant("spinning_handshake").build(SPEC)
    quiet = [st for st in steps(spinning, Bounds()) if stutter_condition(st) is not False]
    assert [st.name for st in quiet] == ["poll_waiting"]
    assert tla.stutter_invariants(SPEC, Bounds()) == {}
    companions = tla.stutter_invariants(spinning, Bounds())
    assert companions["NoBusyWaiting_Stutter"] == "NoBusyWaiting"
    assert "NoBusyWaiting_Stutter" in tla.generate_cfg(spinning, Bounds())


def test_step_names_are_unique_identifiers() -> None:
    for spec in (*ALL_SPECS, *MIGRATION_SPECS):
        names = [st.name for st in steps(spec, Bounds(percents=(0, 1, 50, 99, 100)))]
        assert len(names) == len(set(names))
        assert all(n.replace("_", "").isalnum() for n in names)
        sym: list[Step] = steps(spec, Bounds(), symbolic_params=True)
        assert len({st.name for st in sym}) == len(sym)


PAN_OUT = """pan:1: assertion violated (prop_PercentInRange||(w!=1)) (at depth 3)
pan:2: assertion violated (prop_NoDeadlock||(c==2)) (at depth 4)
pan:3: assertion violated (prop_PercentInRange||(w!=1)) (at depth 5)
pan:4: invalid end state (at depth 6)
State-vector 44 byte, depth reached 17, errors: 4
     1662 states, stored
     2874 states, matched
     4536 transitions (= stored+matched)
"""


def test_parse_pan() -> None:
    r = tools.parse_pan(PAN_OUT)
    assert (r.states, r.transitions, r.depth, r.errors) == (1662, 4536, 17, 4)
    assert r.assertion_props == ("PercentInRange", "NoDeadlock")
    assert r.invalid_end and not r.acceptance_cycle
    with pytest.raises(tools.ToolError):
        tools.parse_pan("pan:1: indexing q[3] - size is 3 (at depth 2)\n" + PAN_OUT)


TLC_OUT = """Error: Invariant PausedOnlyInPausePhase is violated.
Error: The behavior up to this point is:
State 1: <Initial predicate>
/\\ w = "waiting"
Error: Temporal properties were violated.
Error: The following behavior constitutes a counter-example:

State 1: <Initial predicate>
/\\ w = "waiting"
/\\ c = "awaiting_exit"
/\\ chan = <<-1, 50>>
/\\ paused = FALSE

State 2: <recv_set_waiting line 1, col 1 to line 2, col 2 of module Autoconverge>
/\\ w = "throttling_pause"
/\\ c = "awaiting_exit"
/\\ chan = <<>>
/\\ paused = TRUE

Back to state 2: <expire_throttling_pause line 3, col 1 to line 4, col 2 of module X>

6461 states generated, 1715 distinct states found, 0 states left on queue.
The depth of the complete state graph search is 13.
"""


def test_parse_tlc_and_lasso() -> None:
    r = tools.parse_tlc(TLC_OUT)
    assert (r.distinct, r.generated, r.depth) == (1715, 6461, 13)
    assert r.violated == ("PausedOnlyInPausePhase",) and r.temporal_violated
    assert r.loop_start == 1 and len(r.trace) == 2
    assert r.trace[0]["chan"] == (-1, 50) and r.trace[1]["paused"] is True
    full = [{**SPEC.initial.as_dict(), **d} for d in r.trace]
    r.trace = full
    shutdown = SPEC.property("ShutdownCompletes")
    assert tla._violated_on_lasso(SPEC, shutdown, r)
    resumed = SPEC.property("VcpusResumed")
    assert tla._violated_on_lasso(SPEC, resumed, r)
    r.trace = [full[0]]
    r.loop_start = 0
    assert not tla._violated_on_lasso(SPEC, resumed, r)
    with pytest.raises(tools.ToolError):
        tools.parse_tlc("Error: Parsing or semantic analysis failed.\n")


def test_parse_tla_values() -> None:
    assert tools.parse_tla_value("<<1, <<2, -3>>, \"x\">>") == (1, (2, -3), "x")
    assert tools.parse_tla_value("<<>>") == ()
    assert tools.parse_tla_value("TRUE") is True
    s = State(**{**SPEC.initial.as_dict(), "chan": tools.parse_tla_value("<<99>>")})
    assert s.chan == (99,)


# --- the migration: no FIFO, int codes and flags, If in effects, guards across machines -------


def test_migration_promela_has_no_queue_and_reads_both_machines() -> None:
    safety = promela.generate(MIGRATION_SPEC, MIGRATION_BOUNDS, "safety")
    live = promela.generate(MIGRATION_SPEC, MIGRATION_BOUNDS, "liveness")
    procs = [p.name for p in promela.processes(MIGRATION_SPEC)]
    assert procs == ["source", "destination", "throttler", "operator", "unfair"]
    for text in (safety, live):
        assert "QUEUE_CAP" not in text and "qlen" not in text and "q[" not in text
        assert "#define MAX_CALLS 1" in text
        assert "mtype src = src_start;" in text and "mtype dst = dst_listening;" in text
        assert "short thr = 0;" in text and "bool link = true;" in text
        for proc in procs:
            assert f"active proctype {proc}()" in text
    # If in an effect: a message is lost when the link is down
    assert "sd = (link -> 1 : 0)" in safety
    # a source guard reads the destination's machine state
    commit = safety.split("/* send_commit_ready_to_commit */", 1)[1].split(":: /*", 1)[0]
    assert "(dst != dst_dead)" in commit or "!((dst == dst_dead))" in commit
    # the cancel is the user call: counted, and stoppable in the liveness model
    unfair = live.split("active proctype unfair()", 1)[1]
    assert "/* cancel_start */" in unfair and "(ncalls < MAX_CALLS)" in unfair
    assert "unfair_off = true" in unfair
    for p in MIGRATION_SPEC.properties:
        if p.kind == "leadsto":
            assert f"ltl {p.name} {{ [] (" in live


def test_migration_tla_structure() -> None:
    text = tla.generate(MIGRATION_SPEC, MIGRATION_BOUNDS)
    assert text.startswith("---- MODULE Migration ----")
    assert "CONSTANTS MaxCalls\n" in text and "QueueCap" not in text
    assert "VARIABLES src, dst, vm, thr," in text and text.count("ncalls") > 2
    assert ("Spec == Init /\\ [][Next]_vars\n        /\\ WF_vars(SourceNext) /\\ "
            "WF_vars(DestinationNext) /\\ WF_vars(ThrottlerNext) /\\ WF_vars(OperatorNext)"
            ) in text
    assert ("Next == SourceNext \\/ DestinationNext \\/ ThrottlerNext \\/ OperatorNext "
            "\\/ UserNext \\/ ClockNext \\/ LateNext \\/ GuestNext \\/ FaultsNext "
            "\\/ CrashNext \\/ FailureNext \\/ EndStutter") in text
    assert "sd' = (IF link THEN 1 ELSE 0)" in text
    assert 'Init ==\n    /\\ src = "start"\n    /\\ dst = "listening"' in text
    cfg = tla.generate_cfg(MIGRATION_SPEC, MIGRATION_BOUNDS)
    assert "MaxCalls = 1" in cfg and "QueueCap" not in cfg and "Percents" not in cfg
    for p in MIGRATION_SPEC.properties:
        section = "INVARIANT" if p.kind in ("invariant", "deadlock") else "PROPERTY"
        line = next(ln for ln in cfg.splitlines() if ln.startswith(section))
        assert p.name in line.split()


def test_generated_names_differ_per_spec() -> None:
    """Concurrent runs on different specs never share a file (TLC's module, SPIN's model)."""
    specs = [*ALL_SPECS, *MIGRATION_SPECS]
    modules = {tla.module_name(s) for s in specs}
    models = {promela.model_name(s) for s in specs}
    assert len(modules) == len(models) == len(specs)
    assert tla.module_name(SPEC) == "Throttle" and promela.model_name(SPEC) == "throttle"
    assert all(m.isidentifier() for m in modules | models)
