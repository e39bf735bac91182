"""Non-vacuity: hypotheses satisfiable, antecedents reachable from Init - and the check fails
when an antecedent cannot be reached."""

from __future__ import annotations

from autoconverge.proofs.prove import check_vacuity
from autoconverge.spec import SPEC


def test_shipped_spec_proofs_are_not_vacuous() -> None:
    rows = check_vacuity(SPEC)
    names = {p.name for p in SPEC.properties}
    assert {r.property for r in rows} == names
    assert {r.check for r in rows} == {"hypotheses", "reachability"}
    for r in rows:
        assert r.holds, r
    reach = {r.property: r for r in rows if r.check == "reachability"}
    shutdown = reach["ShutdownCompletes"].targets
    assert shutdown is not None and shutdown[0].depth == 1
    steps = reach["PauseResumeAlternate"].targets
    assert steps is not None
    assert {t.target for t in steps} >= {"recv_abort@throttling_pause enabled",
                                         "recv_handover@throttling_run enabled"}
    assert all(t.depth is not None and t.depth <= 8 for t in steps)
    hyps = {r.property: r for r in rows if r.check == "hypotheses"}
    queries = hyps["AbortReturnsWithVcpusRunning"].queries
    assert queries is not None and queries > 100


def test_unreachable_antecedent_is_reported() -> None:
    no_handover = SPEC.with_transitions(remove=(("call_handover", "idle"),),
                                        name="no_handover")
    rows = {(r.property, r.check): r for r in check_vacuity(no_handover, depth=4)}
    bad = rows[("HandoverKeepsVcpusPaused", "reachability")]
    assert not bad.holds and "NOT reachable" in bad.detail
    assert not rows[("HandoverCompletes", "reachability")].holds
    assert rows[("ShutdownCompletes", "reachability")].holds
