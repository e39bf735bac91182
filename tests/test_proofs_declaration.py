"""The checks of the declaration itself: reachable states, enabled transitions, disjoint guards."""

from __future__ import annotations

import dataclasses
import json

from autoconverge.model.config import load_config
from autoconverge.proofs.declaration import DeclarationCheck, check_declaration
from autoconverge.spec import SPEC, Transition
from autoconverge.spec.expr import And, Not

CFG = load_config()


def test_declaration_checks_hold() -> None:
    checks = check_declaration(SPEC, CFG)
    assert {c.name for c in checks} >= {
        "EveryWorkerStateReachable", "EveryControllerStateReachable",
        "EveryTransitionEnabled", "GuardsDisjoint", "OnlyFinalStatesWithoutWayOut"}
    assert all(c.holds for c in checks), checks
    assert all(isinstance(c, DeclarationCheck) for c in checks)
    # the JSON form `autoconverge verify --json` prints
    assert json.loads(json.dumps([c.as_dict() for c in checks]))[0] == {
        "name": checks[0].name, "holds": True, "detail": checks[0].detail}


def test_declaration_finds_overlapping_guards_and_dead_transitions() -> None:
    # a second recv_exit from waiting whose guard overlaps the first: transitions would
    # silently take the first one
    twin = Transition("recv_exit", "waiting", "throttling_pause", "worker",
                      guard=SPEC.find("recv_exit", "waiting").guard)
    # a way out of the final state (a self-loop there is fine: a vCPU call ending), whose
    # guard no state satisfies
    never = Transition("recv_exit", "exit", "waiting", "worker",
                       guard=lambda s: And(s.resp, Not(s.resp)))
    bad = SPEC.with_transitions(add=(twin, never), name="bad")
    checks = {c.name: c for c in check_declaration(bad, CFG)}
    assert not checks["GuardsDisjoint"].holds
    assert "recv_exit@waiting" in checks["GuardsDisjoint"].detail
    assert not checks["OnlyFinalStatesWithoutWayOut"].holds
    assert "worker exit has transitions out of it ['recv_exit@exit']" in (
        checks["OnlyFinalStatesWithoutWayOut"].detail)
    assert not checks["EveryTransitionEnabled"].holds
    assert "never enabled: ['recv_exit@exit']" in checks["EveryTransitionEnabled"].detail


def test_guard_overlap_is_confirmed_over_every_parameter() -> None:
    """Two call_shutdown@idle that overlap only for the second caller: the reachable-state
    confirmation tries every caller (k over CALLERS, not over the percents)."""
    second = Transition("call_shutdown", "idle", "done", "controller",
                        guard=lambda s, k: And(k == 2, s.holder == 0), params=("k",))
    bad = SPEC.with_transitions(add=(second,), name="bad")
    check = {c.name: c for c in check_declaration(bad, CFG)}["GuardsDisjoint"]
    assert not check.holds
    assert "call_shutdown@idle" in check.detail
    assert check.detail.endswith("(also in a reachable state)"), check.detail


def test_faults_not_explored_are_reported_not_failed() -> None:
    cfg = dataclasses.replace(CFG, faults=False, expected_states=None)
    checks = {c.name: c for c in check_declaration(SPEC, cfg)}
    enabled = checks["EveryTransitionEnabled"]
    assert enabled.holds, enabled.detail
    assert "not explored" in enabled.detail
    # shutdown()'s own resume failing, a handover the worker failed: only after a fault
    assert "reachable only after a fault" in enabled.detail
    assert "resume_left_paused@resuming" in enabled.detail
    assert "handover_failed@awaiting_handover" in enabled.detail
