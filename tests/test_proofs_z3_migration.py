"""The migration lifecycle proved unbounded with Z3, by certificates (no per-property lemma).

- every one of its 14 properties is proved: the explorer's reachable records, checked by Z3 to
  be an inductive invariant, imply each safety property; a ranking derived from the explorer's
  graph, checked by Z3 under the spec's weak fairness, proves each leads-to property;
- every variant of its bug zoo is caught by Z3 with a counterexample that replays through the
  spec, for each property the variant ``violates`` - and nothing else fails;
- the certificate checks can fail: a certificate missing a state, a spec changed since the
  certificate was derived, or a wrong ranking is ``not proved``, never proved.

The zoo is proved once for the module (one fixture, Spacer left out: the certificate and the
counterexample search are what is tested there).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest
import z3

from autoconverge.model.config import default_section, load_config
from autoconverge.model.explorer import explore
from autoconverge.model.results import ExplorationResult
from autoconverge.model.trace import replay
from autoconverge.proofs.declaration import check_declaration
from autoconverge.proofs.encoding import Encoding, lifted_state, machine_sort
from autoconverge.proofs.prove import (
    ProofResult,
    check_vacuity,
    format_proof,
    prove_all,
    prove_one,
    z3_search_limits,
)
from autoconverge.proofs.z3_certificate import (
    CertificateProver,
    Ranking,
    derive_ranking,
    search_depth,
    set_diagram,
)
from autoconverge.spec import Spec
from autoconverge.spec.migration_variants import MIGRATION_VARIANTS
from autoconverge.spec.specs import MIGRATION_SPEC, variant

if TYPE_CHECKING:
    from conftest import Z3SolverLog

Zoo = Mapping[str, tuple[Spec, dict[str, ProofResult]]]


def _explore(spec: Spec) -> ExplorationResult:
    return explore(spec, load_config(section=default_section(spec)))


@pytest.fixture(scope="module")
def explored() -> ExplorationResult:
    return _explore(MIGRATION_SPEC)


@pytest.fixture(scope="module")
def proofs(explored: ExplorationResult) -> dict[str, ProofResult]:
    """``prove_all`` of the shipped migration spec, as ``autoconverge verify`` runs it."""
    return {r.name: r for r in prove_all(MIGRATION_SPEC, explored=explored)}


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    """Every migration variant's proofs (one run each; no Spacer)."""
    out: dict[str, tuple[Spec, dict[str, ProofResult]]] = {}
    for v in MIGRATION_VARIANTS:
        spec = v.build(MIGRATION_SPEC)
        results = prove_all(spec, use_spacer=False, explored=_explore(spec))
        out[v.name] = (spec, {r.name: r for r in results})
    return out


# --- the shipped spec -----------------------------------------------------------------------


def test_every_migration_property_is_proved(proofs: dict[str, ProofResult],
                                            explored: ExplorationResult) -> None:
    assert set(proofs) == {p.name for p in MIGRATION_SPEC.properties}
    assert len(proofs) >= 14
    for name, r in proofs.items():
        assert r.holds and r.verdict == "proved", format_proof(r)
        assert r.obligations and all(o.holds for o in r.obligations), name
        names = [o.name for o in r.obligations]
        assert names[:2] == ["init[Reachable]", "step[Reachable]"], name
        assert r.certificate is not None
        assert r.certificate["records"] == explored.stats.distinct_records
        assert r.counterexample is None and r.note is None
        if r.kind == "leadsto":
            assert r.method == "certificate+ranking"
            assert {"start", "bounded", "(a) helpful group enabled",
                    "(b/c) source steps", "(d) user steps"} <= set(names)
            assert r.ranking is not None and r.certificate["components"] > 0
        elif r.kind == "deadlock":
            assert r.method == "certificate" and "deadlock-free" in names
        else:  # Spacer's own invariant agrees (re-checked): a second, explorer-free method
            assert r.method == "certificate+spacer", (name, r.spacer)
            assert r.spacer is not None and r.spacer.holds
    step = next(o for o in proofs["NeverRunsTwice"].obligations if o.name == "step[Reachable]")
    assert f"each of the {len(MIGRATION_SPEC.relation())} transitions" in step.detail
    # the environment's steps declared on every source state cannot occur in most of them
    assert "cannot occur here" in step.detail and "handover_returns@start" in step.detail


def test_migration_results_carry_their_evidence(proofs: dict[str, ProofResult]) -> None:
    live = json.loads(json.dumps(proofs["CancelCompletes"].as_dict()))
    assert live["name"] == "CancelCompletes" and live["verdict"] == "proved"
    assert list(live)[:5] == ["name", "kind", "method", "holds", "verdict"]
    cert = live["certificate"]
    assert cert["kind"] == "reachable set + ranking"
    assert "explorer" in cert["derived_from"] and "not on the explorer" in cert["relies_on"]
    assert cert["rank_diagram"]["nodes"] > 0 and cert["helpful_groups"]
    assert live["strengthening"][0]["name"] == "Reachable"
    safety = proofs["GuestNeverLost"].as_dict()
    assert safety["certificate"]["checked"].endswith("R => P")
    assert safety["spacer"]["verdict"] == "proved"
    text = format_proof(proofs["InDoubtResolved"])
    assert text.startswith("InDoubtResolved [leadsto]: proved by certificate+ranking")


def test_the_certificate_is_exactly_the_reachable_set(explored: ExplorationResult) -> None:
    records = explored.graph.reached_records() if explored.graph else []
    d = set_diagram(records, MIGRATION_SPEC.variables)
    assert d.size == len(records) and all(d.value(r) for r in records)
    outside = dataclasses.replace(MIGRATION_SPEC.initial, ran=True)  # ran before anything
    assert outside not in records and d.value(outside) is False
    enc = Encoding(MIGRATION_SPEC)
    s = enc.state("x")
    solver = z3.Solver(ctx=enc.ctx)  # the migration is encoded in a Z3 context of its own
    solver.add(d.z3(enc, s), s.ran, s.src == machine_sort(
        MIGRATION_SPEC.schema, MIGRATION_SPEC.schema.machine("source")).constructor(0)())
    assert solver.check() == z3.unsat  # in start, nothing ran yet
    probe = z3.Solver(ctx=enc.ctx)
    probe.add(d.z3(enc, lifted_state(records[-1])))
    assert probe.check() == z3.sat


def test_migration_vacuity_and_declaration(explored: ExplorationResult) -> None:
    rows = check_vacuity(MIGRATION_SPEC)
    assert {r.property for r in rows} == {p.name for p in MIGRATION_SPEC.properties}
    for r in rows:
        assert r.holds, r
    reach = {r.property: r for r in rows if r.check == "reachability"}
    targets = reach["ExactlyOneHostAfterResolution"].targets
    assert targets is not None and targets[0].reached  # src = resolved: deep in the run
    assert targets[0].depth is not None and 10 < targets[0].depth <= explored.stats.depth
    checks = {c.name: c for c in check_declaration(
        MIGRATION_SPEC, load_config(section=default_section(MIGRATION_SPEC)))}
    assert set(checks) == {"EverySourceStateReachable", "EveryDestinationStateReachable",
                           "EveryTransitionEnabled", "GuardsDisjoint",
                           "OnlyFinalStatesWithoutWayOut"}
    assert all(c.holds for c in checks.values()), checks
    assert "left only by a failure" in checks["OnlyFinalStatesWithoutWayOut"].detail


def test_search_limits_name_each_lifecycle() -> None:
    limits = z3_search_limits()
    assert limits["lifecycles"]["migration"]["bmc_depth"] == max(
        v.max_trace for v in MIGRATION_VARIANTS)
    assert z3_search_limits(MIGRATION_SPEC)["bmc_depth"] == search_depth(MIGRATION_SPEC)
    spec, v = variant("no_final_sync")
    assert search_depth(v.build(spec)) == v.max_trace


# --- the zoo --------------------------------------------------------------------------------


def _violates(spec: Spec, name: str, cex: dict[str, Any]) -> None:
    """``cex`` replays through the spec (no parameters) and ends as a violation of ``name``."""
    states = replay(spec, cex, {})
    prop = spec.property(name)
    last = states[-1]
    if prop.kind == "invariant":
        assert not prop.invariant(last)
    elif prop.kind == "step":
        step = cex["steps"][-1]
        t = spec.find(step["trigger"], step["source"])
        assert not prop.step(states[-2], t, last)
    elif prop.kind == "deadlock":
        assert not spec.terminal(last)
        assert not any(not t.is_fault for t, _p, _n in spec.successors(last, {}))
    else:
        start, p_at = cex["cycle_start"], cex["p_index"]
        assert prop.leads_from(states[p_at])
        assert not any(prop.leads_to(s) for s in states[p_at:])
        assert start <= len(cex["steps"])


@pytest.mark.parametrize("v", MIGRATION_VARIANTS, ids=lambda v: v.name)
def test_each_migration_variant_is_caught_by_z3(v: Any, zoo: Zoo) -> None:
    spec, results = zoo[v.name]
    for name in v.violates:
        r = results[name]
        assert r.verdict == "violated" and not r.holds, format_proof(r)
        assert r.counterexample_source == ("z3-lasso" if r.kind == "leadsto" else "z3-bmc")
        assert r.failed_obligations  # the certificate (or its ranking) does not hold
        cex = r.counterexample
        assert cex is not None
        assert cex["length"] <= v.max_trace + (1 if r.kind == "leadsto" else 0)
        _violates(spec, name, cex)
    # every other property is still proved: no proof gets weaker on a broken variant
    others = {n: r.verdict for n, r in results.items() if n not in v.violates}
    assert set(others.values()) == {"proved"}, others


def test_a_fair_cycle_is_named_and_searched(zoo: Zoo) -> None:
    _spec, results = zoo["cancel_leaves_throttler_running"]
    r = results["CancelCompletes"]
    derived = next(o for o in r.obligations if o.name == "ranking derived")
    assert derived.verdict == "failed" and "fair cycle" in derived.detail
    assert r.certificate is not None and r.certificate["fair_cycle_records"] >= 1
    assert r.counterexample is not None and "stutters forever" in r.counterexample["text"]


def test_zoo_verdicts_are_the_same_alone(zoo: Zoo) -> None:
    """A counterexample search is one check in a Z3 context of its own: the same verdict and
    counterexample length in the zoo's full run (after the other variants) as for the
    property alone, with fresh provers."""
    built, full = zoo["no_recovery_after_lost_resumed"]
    ex = _explore(built)
    for name in ("AbortDiscardsDestination", "GuestNeverLost"):
        alone = prove_one(built, name, use_spacer=False, explored=ex)
        assert (alone.verdict, alone.counterexample_source, alone.counterexample["length"]) \
            == (full[name].verdict, full[name].counterexample_source,
                full[name].counterexample["length"])


# --- the checks can fail ----------------------------------------------------------------------


def test_a_certificate_missing_a_state_is_not_a_proof(explored: ExplorationResult) -> None:
    records = list(explored.graph.reached_records() if explored.graph else [])
    dropped = records.pop(len(records) // 2)
    prover = CertificateProver(MIGRATION_SPEC, records=records)
    r = prover.prove("NeverRunsTwice")
    assert r.verdict == "not proved" and not r.holds
    assert r.failed_obligations == ["step[Reachable]"]
    step = next(o for o in r.obligations if o.name == "step[Reachable]")
    assert step.cti is not None and step.cti["post"] == dataclasses.asdict(dropped)
    assert r.note is not None and "not inductive" in r.note


def test_a_changed_spec_fails_the_old_certificate(explored: ExplorationResult) -> None:
    """The shipped spec's reachable set given as the certificate of a variant (the spec changed,
    the certificate did not): not proved, and the check names the step that leaves it."""
    spec, v = variant("cleanup_skips_stop_dirty_log")
    changed = v.build(spec)
    r = prove_one(changed, "AbortLeavesSourceRunning", use_spacer=False, explored=explored)
    assert r.verdict == "not proved" and not r.holds
    assert r.failed_obligations == ["step[Reachable]"]
    step = next(o for o in r.obligations if o.name == "step[Reachable]")
    assert "finish_abort@aborting" in step.detail


def test_a_wrong_ranking_is_not_a_proof() -> None:
    prover = CertificateProver(MIGRATION_SPEC, explored=lambda: _explore(MIGRATION_SPEC))
    prop = MIGRATION_SPEC.property("InDoubtResolved")
    assert prop.leads_from is not None and prop.leads_to is not None
    good = derive_ranking(MIGRATION_SPEC, prover.records(), prover.steps(), prop.leads_from,
                          prop.leads_to)
    assert good.fair_cycle is None and good.components > 1
    flat = Ranking(good.region, {r: 0 for r in good.region}, dict(good.helpful),
                   good.components, dict(good.by_group), None, good.sources)
    out, _ = prover.rank_obligations("InDoubtResolved", flat)
    failed = [o for o in out if not o.holds]
    helpful = [o for o in failed if o.name.startswith("(b/c)")]
    assert helpful, [o.name for o in out]  # the helpful group's steps no longer decrease it
    assert "the rank is not a ranking function" in helpful[0].detail
    right, _ = prover.rank_obligations("InDoubtResolved", good)
    assert all(o.holds for o in right)


def test_every_migration_solver_has_an_rlimit_and_seeds(z3_solver_log: Z3SolverLog) -> None:
    """As for the throttle (test_z3_determinism): every Z3 solver a certificate proof, Spacer
    and a counterexample search check has a resource limit and the fixed seeds, none a
    timeout."""
    spec, v = variant("cancel_leaves_throttler_running")
    built = v.build(spec)
    ex = _explore(built)
    assert prove_one(built, "CancelCompletes", explored=ex).verdict == "violated"  # a lasso
    assert prove_one(built, "ThrottlerClosedAtEnd", explored=ex).verdict == "violated"
    assert prove_one(built, "GuestNeverLost", explored=ex).method == "certificate+spacer"
    z3_solver_log.assert_limited(0)
