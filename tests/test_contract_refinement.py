"""The throttle spec refines the throttler contract the migration spec assumes (bounded,
without failing vCPU calls): model/contract_refinement.py. The check is shown to fail on a
contract missing a move and on every throttle variant that breaks what the migration relies
on."""

from __future__ import annotations

import pytest

from autoconverge.model.contract_refinement import check_refinement, contract_moves
from autoconverge.spec import SPEC
from autoconverge.spec import migration as M
from autoconverge.spec.variants import variant

MOVES = contract_moves()


@pytest.mark.covers("HandoverMeansOwnedPause", "ReturnsOnlyAfterJoin",
                    "migration:AbortLeavesSourceRunning", "migration:InDoubtKeepsSourcePaused")
def test_the_throttle_used_as_the_migration_uses_it_is_a_behaviour_of_the_contract() -> None:
    r = check_refinement(moves=MOVES)
    assert r.ok, r.mismatches
    assert r.states > 500
    # every move of the contract is taken by some throttle step (the mapping is not vacuous)
    assert {(a, b) for a, b, _ in MOVES} <= r.moves_used


def test_the_moves_are_read_from_the_migration_spec() -> None:
    running, late = (M.THR_RUNNING, M.VM_RUNNING), (M.THR_LATE, M.VM_RUNNING)
    assert ((M.THR_HANDING, M.VM_RUNNING), late, False) in MOVES  # handover_timeout
    assert (late, (M.THR_LATE, M.VM_PAUSED), False) in MOVES  # late_pause
    assert (running, (M.THR_HANDING, M.VM_RUNNING), True) in MOVES  # start_handover


def test_a_contract_without_the_late_pause_is_refuted() -> None:
    no_late = {m for m in MOVES
               if not (m[0] == (M.THR_LATE, M.VM_RUNNING) and m[1] == (M.THR_LATE, M.VM_PAUSED))}
    r = check_refinement(moves=no_late)
    assert not r.ok and "timeout@awaiting_handover" in r.mismatches[0]


@pytest.mark.parametrize("name", ["shutdown_without_join", "resume_after_handover",
                                  "timeout_leaves_call_pending",
                                  "shutdown_ignores_paused_vcpus"])
def test_throttle_variants_that_break_the_contract_are_refuted(name: str) -> None:
    r = check_refinement(variant(name).build(SPEC), moves=MOVES)
    assert not r.ok and "is no contract move" in r.mismatches[0], name
