"""The checks of the declaration itself: reachable states, enabled transitions, disjoint guards."""

from __future__ import annotations

import dataclasses
import json

from autoconverge.model.config import load_config
from autoconverge.proofs.declaration import DeclarationCheck, check_declaration
from autoconverge.spec import SPEC, Transition

CFG = load_config()


def test_declaration_checks_hold() -> None:
    checks = check_declaration(SPEC, CFG)
    assert {c.name for c in checks} >= {
        "EveryWorkerStateReachable", "EveryControllerStateReachable",
        "EveryTransitionEnabled", "GuardsDisjoint", "ExitOnlyStateWithoutWayOut"}
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
    never = Transition("recv_exit", "exit", "exit", "worker", guard=lambda s: s.resp)
    bad = SPEC.with_transitions(add=(twin, never), name="bad")
    checks = {c.name: c for c in check_declaration(bad, CFG)}
    assert not checks["GuardsDisjoint"].holds
    assert "recv_exit@waiting" in checks["GuardsDisjoint"].detail
    assert not checks["ExitOnlyStateWithoutWayOut"].holds


def test_faults_not_explored_are_reported_not_failed() -> None:
    cfg = dataclasses.replace(CFG, faults=False, expected_states=None)
    checks = {c.name: c for c in check_declaration(SPEC, cfg)}
    assert checks["EveryTransitionEnabled"].holds
    assert "not explored" in checks["EveryTransitionEnabled"].detail
