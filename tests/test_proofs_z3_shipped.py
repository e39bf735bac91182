"""Every property of the shipped spec is proved, unbounded, obligation by obligation."""

from __future__ import annotations

import json

import pytest

from autoconverge.proofs.prove import SPACER_PROPERTIES, ProofResult, format_proof
from autoconverge.spec import SPEC


@pytest.fixture(scope="module")
def proofs(z3_proofs: dict[str, tuple[object, dict[str, ProofResult]]]
           ) -> dict[str, ProofResult]:
    """The shipped spec's proofs (``prove_all``, shared with the other Z3 tests: conftest)."""
    return z3_proofs[SPEC.name][1]


@pytest.mark.covers("*")
def test_every_property_is_proved(proofs: dict[str, ProofResult]) -> None:
    assert set(proofs) == {p.name for p in SPEC.properties}
    for name, r in proofs.items():
        assert r.holds is True, format_proof(r)
        assert r.verdict == "proved"
        assert r.obligations, name
        for o in r.obligations:
            assert o.holds is True and o.verdict == "proved", (name, o)
            assert o.name and o.formula and o.time_s >= 0 and o.detail


def test_methods(proofs: dict[str, ProofResult]) -> None:
    for p in SPEC.properties:
        method = proofs[p.name].method
        if p.kind == "leadsto":
            assert method == "ranking"
        else:
            assert method in ("induction", "induction+spacer")


def test_safety_obligations_cover_init_consecution_and_property(
        proofs: dict[str, ProofResult]) -> None:
    r = proofs["WorkerAcceptsEveryCommand"]
    names = [o.name for o in r.obligations]
    assert names == ["init[QueueValid]", "step[QueueValid]", "property"]
    assert [x.name for x in r.strengthening or ()] == ["QueueValid"]
    # the property itself is its own strengthening here
    assert [x.name for x in proofs["PercentInRange"].strengthening or ()] == ["PercentInRange"]
    abort = [o.name for o in proofs["AbortReturnsWithVcpusRunning"].obligations]
    assert "step[QueueShape]" in abort and "step-property[abort_done@awaiting_abort]" in abort
    assert "deadlock-free" in [o.name for o in proofs["NoDeadlock"].obligations]


def test_spacer_finds_and_prints_invariants(proofs: dict[str, ProofResult]) -> None:
    sp = proofs["PausedOnlyInPausePhase"].spacer
    assert sp is not None and sp.verdict == "proved" and sp.holds
    assert sp.invariant is not None and any("paused" in c for c in sp.invariant)
    assert sp.obligations is not None
    assert all(o.holds for o in sp.obligations)  # re-checked by the plain solver
    other = proofs["HandoverKeepsVcpusPaused"].spacer
    assert other is not None and other.invariant is not None
    assert other.invariant_text == "\n".join(f"  /\\ {c}" for c in other.invariant)
    assert any("handed" in c and "paused" in c for c in other.invariant)
    # Spacer is asked exactly for SPACER_PROPERTIES (not for ReturnsOnlyAfterJoin: it ends
    # "unknown" at its resource limit there, the lemmas prove it), and proves each of them
    asked = {n for n, r in proofs.items() if r.spacer is not None}
    assert asked == set(SPACER_PROPERTIES)
    for name in SPACER_PROPERTIES:
        r = proofs[name]
        assert r.method == "induction+spacer" and r.spacer is not None and r.spacer.holds


def test_liveness_obligations(proofs: dict[str, ProofResult]) -> None:
    r = proofs["ShutdownCompletes"]
    names = [o.name for o in r.obligations]
    for want in ("start", "bounded", "(a) helpful group enabled", "(b/c) worker steps",
                 "(b/c) clock steps", "(b/c) vcpu steps", "(b/c) completion steps",
                 "(d) user steps", "(d) timeout steps"):
        assert want in names
    user = next(o for o in r.obligations if o.name == "(d) user steps")
    assert "cannot occur while H" in user.detail  # the controller is blocked
    applied = next(o for o in proofs["PercentApplied"].obligations
                   if o.name == "(d) user steps")
    assert "can occur: call_set@idle" in applied.detail  # unfair user calls, any number
    assert r.ranking is not None and "Len(chan)" in r.ranking.rank
    assert set(r.ranking.fairness) == {"worker", "clock", "vcpu", "completion", "user",
                                       "timeout"}
    # a timed-out shutdown() leaves awaiting_exit for closing, which is q: it may occur
    timeout = next(o for o in r.obligations if o.name == "(d) timeout steps")
    assert "can occur: timeout@awaiting_exit" in timeout.detail


def test_format_proof_is_readable(proofs: dict[str, ProofResult]) -> None:
    text = format_proof(proofs["ShutdownCompletes"])
    assert text.startswith("ShutdownCompletes [leadsto]: proved by ranking")
    assert "rank = " in text and "(d) user steps" in text


def test_json_form(proofs: dict[str, ProofResult]) -> None:
    """``as_dict()`` is what ``autoconverge verify --json`` prints: keys in this order."""
    safety = json.loads(json.dumps(proofs["PercentInRange"].as_dict()))
    assert list(safety) == [
        "name", "kind", "method", "holds", "verdict", "strengthening", "strengthening_text",
        "obligations", "time_s", "counterexample_source", "bmc_depth", "rlimit", "seed",
        "spacer", "statement", "formula"]
    assert safety["strengthening_text"] == "PercentInRange"
    assert list(safety["spacer"]) == [
        "name", "engine", "time_s", "invariant", "invariant_text", "obligations", "verdict",
        "holds", "detail"]
    live = proofs["ShutdownCompletes"].as_dict()
    assert list(live) == [
        "name", "kind", "method", "holds", "verdict", "fairness", "strengthening", "during",
        "rank", "helpful", "obligations", "time_s", "counterexample_source", "bmc_depth",
        "rlimit", "seed", "statement", "formula"]
    assert list(live["obligations"][0]) == ["name", "formula", "holds", "verdict", "time_s",
                                            "detail"]
