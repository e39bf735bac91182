"""The Z3 encoding is the spec's own relation: same transitions, same semantics as concrete."""

from __future__ import annotations

from collections import deque

import z3

from autoconverge.proofs.encoding import (
    CONTROLLER_SORT,
    WORKER_SORT,
    Encoding,
    concrete_state,
    fmt_clause,
    lifted_state,
    states_equal,
)
from autoconverge.proofs.z3_liveness import FAIR_NAMES
from autoconverge.spec import CONTROLLER_STATES, SPEC, WORKER_STATES, State, Transition
from autoconverge.spec.lifecycle import (
    CALLERS,
    CLOCK_GROUP,
    COMPLETION_GROUP,
    TIMEOUT_GROUP,
    USER_CALL_GROUP,
    VCPU_GROUP,
    WEAK_FAIRNESS,
    WORKER_GROUP,
    param_domains,
)
from autoconverge.spec.variants import variant

DOMAIN = param_domains((0, 1, 50, 99, 100))
"""Every trigger parameter's sampled values: the user's percent ``p`` (0 and 100 outside
what the API accepts) and the caller ``k`` (every modelled caller)."""


def _reachable(limit: int = 150, max_chan: int = 3) -> list[State]:
    seen = {SPEC.initial}
    todo = deque([SPEC.initial])
    while todo and len(seen) < limit:
        s = todo.popleft()
        for _t, _p, nxt in SPEC.successors(s, DOMAIN):
            if len(nxt.chan) <= max_chan and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return sorted(seen, key=repr)


def test_enum_sorts_are_named_after_the_states() -> None:
    assert [WORKER_SORT.constructor(i).name() for i in range(WORKER_SORT.num_constructors())] \
        == list(WORKER_STATES)
    assert [CONTROLLER_SORT.constructor(i).name()
            for i in range(CONTROLLER_SORT.num_constructors())] == list(CONTROLLER_STATES)


def test_relation_is_the_declared_one() -> None:
    enc = Encoding(SPEC)
    assert enc.relation == SPEC.relation()
    v = variant("spinning_handshake").build(SPEC)
    assert "poll@waiting" in [t.label for t in Encoding(v).relation]


def test_fairness_groups_are_per_thread() -> None:
    # the weakly fair groups, in the order the Z3 ranking proofs number them (helpful codes)
    assert WEAK_FAIRNESS == (WORKER_GROUP, CLOCK_GROUP, VCPU_GROUP, COMPLETION_GROUP)
    assert FAIR_NAMES == ("worker", "clock", "vcpu", "completion")
    groups = {t.label: t.fairness_group for t in SPEC.relation()}
    assert groups["recv_set@waiting"] == WORKER_GROUP
    assert groups["pause_elapsed@throttling_pause"] == WORKER_GROUP
    assert groups["expire@throttling_run"] == CLOCK_GROUP
    # a vCPU call's end (returning or failing) is its own group, not the worker's step
    assert groups["call_return@throttling_pause"] == VCPU_GROUP
    assert groups["fault@throttling_pause"] == VCPU_GROUP
    assert groups["resume_failed@exit"] == VCPU_GROUP
    assert groups["shutdown_done@awaiting_exit"] == COMPLETION_GROUP
    assert groups["resumed@resuming"] == COMPLETION_GROUP
    assert groups["call_set@idle"] == USER_CALL_GROUP
    assert groups["call_shutdown@idle"] == USER_CALL_GROUP
    assert groups["timeout@awaiting_exit"] == TIMEOUT_GROUP
    # no fairness exactly on user calls and timeouts
    assert {t.fairness_group for t in SPEC.relation() if t.fairness is None} \
        == {USER_CALL_GROUP, TIMEOUT_GROUP}
    assert all(t.fairness is None for t in SPEC.relation() if t.user_call)
    enc = Encoding(SPEC)
    assert {t.label for t in enc.group(USER_CALL_GROUP.name)} == {
        t.label for t in SPEC.relation() if t.user_call}
    # a variant's added transition falls into its thread's group
    spinning = Encoding(variant("spinning_handshake").build(SPEC))
    assert "poll@waiting" in [t.label for t in spinning.group(WORKER_GROUP.name)]


def _param_values(t: Transition) -> list[dict[str, int]]:
    """Every combination of the sampled values of a transition's parameters."""
    out: list[dict[str, int]] = [{}]
    for name in t.params:
        out = [{**o, name: v} for o in out for v in DOMAIN[name]]
    return out


def test_z3_semantics_match_concrete_semantics() -> None:
    """For every sampled reachable state, transition and parameter values (percent, caller):
    same guard, same effect."""
    enc = Encoding(SPEC)
    states = _reachable()
    assert len(states) >= 100
    checked = 0
    callers: set[int] = set()
    for s in states:
        zs = lifted_state(s)
        for t in enc.relation:
            for params in _param_values(t):
                zparams = {k: z3.IntVal(v) for k, v in params.items()}
                concrete_en = bool(t.enabled(s, **params))
                assert z3.is_true(z3.simplify(enc.enabled(t, zs, zparams))) == concrete_en, \
                    (t.label, s, params)
                if concrete_en:
                    want = t.apply(s, **params)
                    got = z3.simplify(states_equal(enc.post(t, zs, zparams), want))
                    assert z3.is_true(got), (t.label, s, params)
                    checked += 1
                    callers.add(params.get("k", 0))
    assert checked > 200
    assert callers >= set(CALLERS)  # every caller's calls were compared


def test_percent_parameter_is_free() -> None:
    """The user's percent is an unconstrained Int: the guard alone decides (no sampling)."""
    def can_set(spec_variant: object, value: int) -> bool:
        spec = SPEC if spec_variant is None else spec_variant
        enc = Encoding(spec)
        s, s2 = enc.state("a"), enc.state("b")
        ps = enc.params("x")
        t = next(t for t in enc.relation if t.trigger == "call_set")
        solver = z3.Solver()
        solver.add(enc.init(s), enc.step(t, s, s2, ps), ps["p"] == value)
        return bool(solver.check() == z3.sat)

    assert can_set(None, 37) and can_set(None, 99) and can_set(None, 1)
    assert not can_set(None, 100) and not can_set(None, 0) and not can_set(None, -5)
    assert can_set(variant("api_accepts_100").build(SPEC), 100)


def test_models_read_back_as_concrete_states() -> None:
    enc = Encoding(SPEC)
    s = enc.state("m")
    solver = z3.Solver()
    want = State(w="throttling_run", c="awaiting_exit", percent=42, applied=7, paused=False,
                 call=2, handed=False, failed=False, expired=True, polled=True, requested=42,
                 holder=2, owner=0, chan=(42, -1), resp=False)
    solver.add(states_equal(s, want))
    assert solver.check() == z3.sat
    assert concrete_state(solver.model(), s) == want


def test_invariants_print_readably() -> None:
    enc = Encoding(SPEC)
    s = enc.state("r")
    is_pause = s.w == WORKER_SORT.constructor(1)()
    text = fmt_clause(z3.Or(z3.Not(s.paused), s.handed, is_pause))
    assert text == "paused => handed \\/ w = throttling_pause"
