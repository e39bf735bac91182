"""The obligation engine: sound instantiation, real CTIs, timeouts never count as proved."""

from __future__ import annotations

import pytest
import z3

from autoconverge.proofs import z3_obligations, z3_safety
from autoconverge.proofs.encoding import Encoding
from autoconverge.proofs.z3_bmc import lasso
from autoconverge.proofs.z3_lemmas import Lemma, lemma
from autoconverge.proofs.z3_obligations import (
    FAILED,
    PROVED,
    UNKNOWN,
    Query,
    Step,
    discharge,
    satisfiable,
)
from autoconverge.proofs.z3_safety import SafetyProver
from autoconverge.spec import SPEC
from autoconverge.spec.expr import And, Implies, is_state
from autoconverge.spec.lifecycle import NO_CALL, is_valid_command


def test_instantiation_refines_until_proved() -> None:
    """``QueueValid => chan[2] valid``: index 2 is not a seed; refinement must add it."""
    enc = Encoding(SPEC)
    s = enc.state("s")
    goal = z3.Implies(z3.Length(s.chan) >= 7, is_valid_command(s.chan[2]))
    out = discharge(enc, "third element", "", Query(facts=[(lemma("QueueValid"), s)],
                                                    goal=goal, states={"s": s}))
    assert out.verdict == PROVED


def test_non_inductive_claim_gives_a_concrete_cti() -> None:
    enc = Encoding(SPEC)
    s, s2 = enc.state("s"), enc.state("t")
    ps = enc.params("x")
    small = Lemma("AtMostFifty", "", "percent <= 50", holds=lambda st: st.percent <= 50)
    out = discharge(enc, "step", "", Query(ground=[enc.next(s, s2, ps)],
                                           facts=[(small, s)], goal=(small, s2),
                                           step=Step(s, s2, ps)))
    assert out.verdict == FAILED and not out.holds
    assert out.cti is not None
    assert out.cti["post"]["percent"] > 50 >= out.cti["pre"]["percent"]
    assert out.cti["transition"].startswith("recv_set@")


def test_element_lemma_cti_is_checked_against_the_full_quantifier() -> None:
    """A claim about every element that a step breaks: the CTI satisfies the hypothesis in
    full (every element of the concrete pre-state channel), not just its instances."""
    enc = Encoding(SPEC)
    s, s2 = enc.state("s"), enc.state("t")
    ps = enc.params("x")
    below = Lemma("QueuedBelow60", "", "", each=lambda st, i, x: And(x <= 60, x != 0))
    out = discharge(enc, "step", "", Query(ground=[enc.next(s, s2, ps)],
                                           facts=[(below, s)], goal=(below, s2),
                                           step=Step(s, s2, ps)))
    assert out.verdict == FAILED and out.cti is not None
    assert all(x <= 60 and x != 0 for x in out.cti["pre"]["chan"])
    assert not all(x <= 60 and x != 0 for x in out.cti["post"]["chan"])


def test_unknown_is_never_proved(monkeypatch: pytest.MonkeyPatch) -> None:
    def always_unknown(*_a: object, **_k: object) -> tuple[str, None, str]:
        return "unknown", None, "z3: timeout (forced by the test)"

    monkeypatch.setattr(z3_obligations, "_solve", always_unknown)
    monkeypatch.setattr(z3_safety, "MEMO", {})
    r = SafetyProver(SPEC).prove("ExitIsAbsorbing")
    assert r.holds is False and r.verdict != "proved"
    assert any(o.verdict == UNKNOWN for o in r.obligations)


def test_satisfiable_detects_contradictory_hypotheses() -> None:
    enc = Encoding(SPEC)
    s = enc.state("s")
    exited = is_state(s.w, "exit")
    sat, witness = satisfiable(enc, Query(ground=[exited], states={"s": s}))
    assert sat is True and witness is not None and witness["s"]["w"] == "exit"
    no, _ = satisfiable(enc, Query(ground=[exited, is_state(s.w, "waiting")],
                                   states={"s": s}))
    assert no is False
    # handed => ... /\ (call = NONE => paused): handed, no call in progress and running
    # contradict it; with a call in progress (e.g. the handover's pause()) they do not
    handed = lemma("HandedMeansExitedPaused")
    no2, _ = satisfiable(enc, Query(ground=[s.handed, s.call == NO_CALL,
                                            Implies(True, z3.Not(s.paused))],
                                    facts=[(handed, s)], states={"s": s}))
    assert no2 is False
    yes, pausing = satisfiable(enc, Query(ground=[s.handed, z3.Not(s.paused)],
                                          facts=[(handed, s)], states={"s": s}))
    assert yes is True and pausing is not None and pausing["s"]["call"] != NO_CALL


def test_lasso_respects_fairness() -> None:
    """Without fairness the worker may starve and shutdown never return; with per-thread
    weak fairness no such lasso exists (up to the bound)."""
    enc = Encoding(SPEC)
    prop = SPEC.property("ShutdownCompletes")
    assert prop.leads_from is not None and prop.leads_to is not None
    unfair, _ = lasso(enc, prop.leads_from, prop.leads_to, 4, name=prop.name, fair_groups=())
    assert unfair is not None and unfair["cycle_start"] is not None
    fair, depth = lasso(enc, prop.leads_from, prop.leads_to, 5, name=prop.name)
    assert fair is None and depth == 5


def test_lasso_finds_unfair_user() -> None:
    """'idle ~> done' is not a property: users need not call shutdown (no fairness)."""
    enc = Encoding(SPEC)
    cex, _ = lasso(enc, lambda st: is_state(st.c, "idle"), lambda st: is_state(st.c, "done"),
                   3, name="IdleLeadsToDone")
    assert cex is not None
    assert "stutters forever" in cex["text"] or "cycle" in cex["text"]
