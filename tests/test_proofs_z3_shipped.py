"""Every property of the shipped spec is proved, unbounded, obligation by obligation."""

from __future__ import annotations

from typing import Any

import pytest

from autoconverge.proofs.prove import format_proof, prove_all
from autoconverge.spec import SPEC


@pytest.fixture(scope="module")
def proofs() -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in prove_all(SPEC)}


@pytest.mark.covers("*")
def test_every_property_is_proved(proofs: dict[str, dict[str, Any]]) -> None:
    assert set(proofs) == {p.name for p in SPEC.properties}
    for name, r in proofs.items():
        assert r["holds"] is True, format_proof(r)
        assert r["verdict"] == "proved"
        assert r["obligations"], name
        for o in r["obligations"]:
            assert o["holds"] is True and o["verdict"] == "proved", (name, o)
            assert o["name"] and o["formula"] and o["time_s"] >= 0 and o["detail"]


def test_methods(proofs: dict[str, dict[str, Any]]) -> None:
    for p in SPEC.properties:
        method = proofs[p.name]["method"]
        if p.kind == "leadsto":
            assert method == "ranking"
        else:
            assert method in ("induction", "induction+spacer")


def test_safety_obligations_cover_init_consecution_and_property(
        proofs: dict[str, dict[str, Any]]) -> None:
    r = proofs["WorkerAcceptsEveryCommand"]
    names = [o["name"] for o in r["obligations"]]
    assert names == ["init[QueueValid]", "step[QueueValid]", "property"]
    assert [x["name"] for x in r["strengthening"]] == ["QueueValid"]
    # the property itself is its own strengthening here
    assert [x["name"] for x in proofs["PercentInRange"]["strengthening"]] == ["PercentInRange"]
    abort = [o["name"] for o in proofs["AbortReturnsWithVcpusRunning"]["obligations"]]
    assert "step[QueueShape]" in abort and "step-property[abort_done@awaiting_abort]" in abort
    assert "deadlock-free" in [o["name"] for o in proofs["NoDeadlock"]["obligations"]]


def test_spacer_finds_and_prints_invariants(proofs: dict[str, dict[str, Any]]) -> None:
    sp = proofs["PausedOnlyInPausePhase"]["spacer"]
    assert sp["verdict"] == "proved" and sp["holds"]
    assert any("paused" in c for c in sp["invariant"])
    assert all(o["holds"] for o in sp["obligations"])  # re-checked by the plain solver
    text = proofs["ReturnsOnlyAfterJoin"]["spacer"]["invariant_text"]
    assert "c = done => w = exit" in text


def test_liveness_obligations(proofs: dict[str, dict[str, Any]]) -> None:
    r = proofs["ShutdownCompletes"]
    names = [o["name"] for o in r["obligations"]]
    for want in ("start", "bounded", "(a) helpful group enabled", "(b/c) worker steps",
                 "(b/c) clock steps", "(b/c) completion steps", "(d) user steps"):
        assert want in names
    user = next(o for o in r["obligations"] if o["name"] == "(d) user steps")
    assert "cannot occur while H" in user["detail"]  # the controller is blocked
    applied = next(o for o in proofs["PercentApplied"]["obligations"]
                   if o["name"] == "(d) user steps")
    assert "can occur: call_set@idle" in applied["detail"]  # unfair user calls, any number
    assert "Len(chan)" in r["rank"]
    assert set(r["fairness"]) == {"worker", "clock", "completion", "user"}


def test_format_proof_is_readable(proofs: dict[str, dict[str, Any]]) -> None:
    text = format_proof(proofs["ShutdownCompletes"])
    assert text.startswith("ShutdownCompletes [leadsto]: proved by ranking")
    assert "rank = " in text and "(d) user steps" in text
