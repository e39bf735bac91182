"""The bug zoo: for every variant the matching proof fails, with a real counterexample.

This is how the proofs are shown able to fail: each variant of ``spec.variants`` must make
at least one of the properties it ``violates`` not proved, and where the engines say
``violated`` the attached trace must be a real behaviour of the variant (replayed through
``Spec.successors``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from autoconverge.model.trace import replay
from autoconverge.proofs.prove import ProofResult, format_proof
from autoconverge.spec import Spec, State
from autoconverge.spec.lifecycle import NO_CALL
from autoconverge.spec.variants import VARIANTS, Variant

Zoo = Mapping[str, tuple[Spec, dict[str, ProofResult]]]
"""Variant name -> (the variant's spec, its proofs by property)."""


@pytest.fixture(scope="module")
def zoo(z3_proofs: Zoo) -> Zoo:
    """Every variant's proofs (``prove_all``, shared with the other Z3 tests: conftest; each
    variant proved when a test first asks for it)."""
    return z3_proofs


def _replay(spec: Spec, cex: dict[str, Any]) -> list[State]:
    """The explorer's replay: each step's own parameters are its domain (a parameter no step
    uses gets none: the percent ``p``, the caller ``k``)."""
    domain: dict[str, set[int]] = {p: set() for t in spec.relation() for p in t.params}
    for st in cex["steps"]:
        for k, v in st["params"].items():
            domain[k].add(v)
    return replay(spec, cex, {k: tuple(sorted(v)) for k, v in domain.items()})


@pytest.mark.parametrize("v", VARIANTS, ids=lambda v: v.name)
@pytest.mark.covers("*")
def test_matching_proof_fails(v: Variant, zoo: Zoo) -> None:
    spec, results = zoo[v.name]
    failing = [n for n in v.violates if not results[n].holds]
    assert failing, f"{v.name}: every proof of {v.violates} passed"
    violated = [n for n in failing if results[n].verdict == "violated"]
    assert violated, f"{v.name}: no real counterexample for {failing}"
    lengths = []
    for n in violated:
        r = results[n]
        assert r.failed_obligations, format_proof(r)
        cex = r.counterexample
        assert cex is not None
        states = _replay(spec, cex)
        prop = spec.property(n)
        if prop.kind == "invariant":
            assert prop.invariant is not None and not prop.invariant(states[-1])
        if prop.kind == "leadsto":
            assert cex["cycle_start"] is not None
        lengths.append(cex["length"])
    # BMC finds shortest traces; the bad step of a step property is counted too
    assert min(lengths) <= v.max_trace + 1


def test_shipped_spec_proofs_do_not_fail_on_shared_obligations(zoo: Zoo) -> None:
    """Obligations memoized across specs: a variant never reuses a failure of another."""
    _spec, results = zoo["command_cuts_sleep"]
    assert results["PercentInRange"].holds and results["ShutdownCompletes"].holds


def test_lemma_failures_are_named(zoo: Zoo) -> None:
    """Leaving a pause phase without resume() breaks 'the vCPUs are paused exactly in a
    pause phase or after a handover': the proof names the lemma and the transition."""
    _spec, results = zoo["no_resume_on_leave"]
    r = results["ReturnsOnlyAfterJoin"]
    assert r.failed_obligations == ["step[VcpusMatchState]"]
    ob = next(o for o in r.obligations if o.name == "step[VcpusMatchState]")
    assert "lemma VcpusMatchState is not preserved by recv_exit@throttling_pause" in ob.detail
    assert ob.cti is not None and ob.cti["transition"] in (
        "recv_exit@throttling_pause", "recv_abort@throttling_pause")
    assert ob.cti["pre"]["paused"] and ob.cti["post"]["paused"]
    assert ob.cti["post"]["w"] != "throttling_pause" and ob.cti["post"]["call"] == NO_CALL


def test_ranking_failure_for_sleeping_worker(zoo: Zoo) -> None:
    _spec, results = zoo["sleeps_with_shutdown_queued"]
    r = results["ShutdownCompletes"]
    assert r.verdict == "violated"
    assert "(b/c) clock steps" in r.failed_obligations
    ob = next(o for o in r.obligations if o.name == "(b/c) clock steps")
    assert ob.cti is not None and ob.cti["transition"].startswith("expire@")
    text = r.counterexample_text
    assert text is not None
    assert "cycle" in text and "expire" in text and "shutdown" in text


def test_spacer_proves_what_the_lemmas_cannot(zoo: Zoo) -> None:
    """In resume_after_handover the lemma 'handed => paused' breaks, yet PauseResumeAlternate
    still holds: Spacer finds another invariant and the plain solver re-checks it."""
    _spec, results = zoo["resume_after_handover"]
    r = results["PauseResumeAlternate"]
    assert r.holds and r.method == "spacer"
    assert r.induction_attempt is not None
    assert r.induction_attempt.failed_obligations == ["step[HandedMeansExitedPaused]",
                                                      "step[VcpusMatchState]"]
    assert all(o.holds for o in r.obligations)
    assert r.spacer is not None and r.spacer.invariant


_BROKEN_LEMMA = {
    # variant -> properties outside its ``violates`` that end "not proved": a lemma their
    # strengthening or ranking rests on is one the variant breaks, and no counterexample
    # exists within Z3's search depth or at the explorer's bound (the properties themselves
    # hold there). Proof incompleteness on broken variants, never a verdict.
    "api_accepts_100": {  # QueueValid/QueueShape: 100 may be queued
        "AbortReturnsWithVcpusRunning", "PercentApplied"},
    "spinning_handshake": {  # QueueShape/RequestedMeansWork: abort returns unanswered
        "ShutdownCompletes", "AbortCompletes", "HandoverCompletes"},
    "no_resume_on_leave": {  # VcpusMatchState: paused outside a pause phase (and nothing
        # violates ReturnsOnlyAfterJoin: shutdown() resumes what the worker left paused)
        "HandoverMeansOwnedPause", "ReturnsOnlyAfterJoin"},
    "two_step_update": {  # CallOnlyAtPhaseStart: a pause phase with percent 0; VcpusResumed
        # also because the second half of the update is a worker step that defeats its rank
        "ShutdownCompletes", "AbortCompletes", "HandoverCompletes", "PercentApplied",
        "VcpusResumed"},
    "shutdown_without_join": {  # ClosedMeansGone: done before the worker exited
        "HandoverMeansOwnedPause", "NoDeadlock", "ShutdownCompletes", "AbortCompletes",
        "HandoverCompletes"},
    "resume_after_handover": {  # HandedMeansExitedPaused/VcpusMatchState: handed, running
        "AbortReturnsWithVcpusRunning", "VcpusResumed"},
    "timeout_leaves_call_pending": {  # LockMatchesCall: waiting with the lock free
        "HandoverMeansOwnedPause", "NoDeadlock", "ShutdownCompletes", "AbortCompletes",
        "HandoverCompletes"},
    "shutdown_ignores_paused_vcpus": {  # OwnerOnlyAfterHandover: done, paused, no owner
        "HandoverMeansOwnedPause"},
    "worker_dies_silently": {  # AliveBeforeClose/RespMeansAnswered/RequestedMeansWork
        "ShutdownCompletes", "AbortCompletes", "HandoverCompletes"},
}
"""The known proof incompleteness on the bug zoo (README: "what the checks guarantee")."""


def test_unrelated_properties_stay_proved(zoo: Zoo) -> None:
    """Beyond the properties a variant violates (expected, or shown by a real
    counterexample), its proofs fail only where a lemma they rest on is broken by the
    variant: exactly the known list, so a proof that gets weaker - or stronger - shows here
    (and the README's list is updated with it)."""
    for v in VARIANTS:
        _spec, results = zoo[v.name]
        unexpected = {n for n, r in results.items()
                      if r.verdict == "not proved"} - set(v.violates)
        assert unexpected == _BROKEN_LEMMA.get(v.name, set()), v.name
        for n in unexpected:
            r = results[n]
            broken = [o for o in r.failed_obligations if o.startswith("step[")]
            assert broken, (v.name, n, r.failed_obligations)  # a broken lemma, named
            assert r.note is not None and "explorer" in r.note, (v.name, n)


def test_json_form_of_failed_and_replaced_proofs(zoo: Zoo) -> None:
    """``as_dict()`` is what ``autoconverge verify --json`` prints: keys in this order."""
    replaced = zoo["resume_after_handover"][1]["PauseResumeAlternate"].as_dict()
    assert list(replaced) == [
        "name", "kind", "method", "holds", "verdict", "strengthening", "strengthening_text",
        "obligations", "time_s", "counterexample_source", "bmc_depth", "rlimit", "seed",
        "spacer", "induction_attempt", "note", "statement", "formula"]
    assert list(replaced["induction_attempt"]) == ["verdict", "obligations",
                                                   "failed_obligations"]
    violated = zoo["sleeps_with_shutdown_queued"][1]["ShutdownCompletes"].as_dict()
    assert list(violated) == [
        "name", "kind", "method", "holds", "verdict", "fairness", "strengthening", "during",
        "rank", "helpful", "obligations", "failed_obligations", "counterexample",
        "counterexample_text", "time_s", "counterexample_source", "bmc_depth", "rlimit",
        "seed", "statement", "formula"]
