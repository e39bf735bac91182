"""The Z3 part of ``verify`` on several processes and with fewer queries gives the verdicts
of one process asking every query: the same verdict, counterexample source and length per
property, in the spec's order; vacuity answered by a wider satisfiable set only when it
covers the query; the reachability depths of the batched search those of one check per
target. Each shortcut's deliberately broken variant is shown to be caught."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import z3

from autoconverge.proofs import z3_obligations
from autoconverge.proofs.encoding import Encoding
from autoconverge.proofs.prove import ProofResult
from autoconverge.proofs.z3_bmc import Unrolling, reach_many
from autoconverge.proofs.z3_lemmas import Lemma
from autoconverge.proofs.z3_obligations import Query, hypotheses_satisfiable, limited
from autoconverge.proofs.z3_parallel import prove_and_check
from autoconverge.spec import SPEC, Spec
from autoconverge.spec.expr import is_state
from autoconverge.spec.specs import SPECS

Proofs = Mapping[str, tuple[Spec, dict[str, ProofResult]]]


def _key(proof: Mapping[str, Any]) -> tuple[Any, ...]:
    cex = proof.get("counterexample")
    return (proof["verdict"], proof.get("counterexample_source"),
            None if cex is None else cex["length"])


def _result_key(r: ProofResult) -> tuple[Any, ...]:
    return _key(r.as_dict())


def test_two_workers_give_the_one_process_verdicts_in_order(
        z3_proofs: Proofs, zoo_explored: Mapping[str, Any]) -> None:
    """A variant whose lemmas break (their failed obligations, counterexamples to induction
    included, cross from the lemma stage's workers to the property stage's) and the
    shipped spec, together on two workers, against ``prove_all`` in this process."""
    broken = "worker_dies_silently"
    spec, full = z3_proofs[broken]
    job = [(spec, zoo_explored[broken]), (SPEC, None)]
    out = prove_and_check(job, workers=2)
    for (s, _), got in zip(job, out, strict=True):
        expected = z3_proofs[s.name][1]
        assert [p["name"] for p in got.proofs] == [p.name for p in s.properties]
        assert [_key(p) for p in got.proofs] == [_result_key(expected[p.name])
                                                 for p in s.properties], s.name
        names = [v.name for v in got.vacuity]
        hypotheses = [n for n in names if n.endswith("hypotheses satisfiable")]
        assert names[:len(hypotheses)] == hypotheses  # then the reachability checks
        assert {v.property for v in got.vacuity if v.check == "reachability"} == {
            p.name for p in s.properties}
    assert out[1].vacuity_holds  # the shipped spec's proofs are not vacuous
    failed = [p for p in out[0].proofs if not p["holds"]]
    assert failed and any(o["verdict"] == "failed" and o.get("cti")
                          for p in failed for o in p["obligations"])
    assert {p["name"] for p in failed} == {n for n, r in full.items() if not r.holds}


def test_one_worker_and_two_give_the_same_report() -> None:
    """The migration (certificates, Spacer, rankings): every obligation's verdict and detail
    and every vacuity check the same on one process as on two."""
    spec = SPECS["migration"]

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if k not in ("time_s", "invariant", "invariant_text")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    one, two = (prove_and_check([(spec, None)], workers=w)[0] for w in (1, 2))
    assert strip(one.proofs) == strip(two.proofs)
    assert [(v.name, v.holds, v.detail) for v in one.vacuity] == \
        [(v.name, v.holds, v.detail) for v in two.vacuity]
    assert all(p["holds"] for p in one.proofs) and one.vacuity_holds


# --- vacuity: a wider satisfiable set answers only for what it covers -------------------


def _lemma(name: str, holds: Callable[[Any], Any]) -> Lemma:
    return Lemma(name, name, name, holds=holds)


@pytest.fixture
def fresh_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(z3_obligations, "_SATISFIED", {})
    monkeypatch.setattr(z3_obligations, "_ASKED", {})


@pytest.mark.usefixtures("fresh_answers")
def test_a_wider_set_answers_for_its_subsets_only() -> None:
    enc = Encoding(SPEC)
    s = enc.state("s")
    ground = [s.percent >= 0]
    high = _lemma("High", lambda x: x.percent > 50)
    odd = _lemma("Odd", lambda x: x.percent % 2 == 1)
    low = _lemma("Low", lambda x: x.percent < 10)
    asked: list[Query] = []
    real = z3_obligations.satisfiable

    def counting(e: Encoding, q: Query, *a: Any, **k: Any) -> Any:
        asked.append(q)
        return real(e, q, *a, **k)

    z3_obligations.satisfiable = counting  # type: ignore[assignment]
    try:
        # the widest set (High, Odd) is satisfiable: it answers for High alone
        assert hypotheses_satisfiable(enc, Query(ground=ground, facts=[(high, s)]),
                                      context=[(high, s), (odd, s)]) is True
        assert len(asked) == 1 and len(asked[0].facts) == 2
        assert hypotheses_satisfiable(enc, Query(ground=ground, facts=[(odd, s)])) is True
        assert len(asked) == 1  # covered: no query asked
        # High and Low contradict: not covered by the wider set, asked and refuted
        assert hypotheses_satisfiable(enc, Query(ground=ground,
                                                 facts=[(high, s), (low, s)])) is False
        # a wider set that is unsatisfiable answers nothing: Low alone is asked on its own
        assert hypotheses_satisfiable(enc, Query(ground=ground, facts=[(low, s)]),
                                      context=[(high, s), (low, s)]) is True
        # other ground formulas: the answers above do not apply
        assert hypotheses_satisfiable(enc, Query(ground=[s.percent < 0],
                                                 facts=[(high, s)])) is False
    finally:
        z3_obligations.satisfiable = real  # type: ignore[assignment]


@pytest.mark.usefixtures("fresh_answers")
def test_a_covering_rule_that_ignores_the_facts_is_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broken variant: a set known satisfiable answering for any query with the same
    ground formulas (facts not compared) calls contradictory hypotheses satisfiable."""
    monkeypatch.setattr(z3_obligations, "_facts_key", lambda facts: frozenset())
    enc = Encoding(SPEC)
    s = enc.state("s")
    ground = [s.percent >= 0]
    high = _lemma("High", lambda x: x.percent > 50)
    low = _lemma("Low", lambda x: x.percent < 10)
    assert hypotheses_satisfiable(enc, Query(ground=ground, facts=[(high, s)])) is True
    assert hypotheses_satisfiable(enc, Query(ground=ground,
                                             facts=[(high, s), (low, s)])) is True  # wrong


# --- reachability: the batched search reaches each target at its own first depth ---------


def _one_check_per_target(enc: Encoding, targets: Mapping[str, Any], depth: int
                          ) -> dict[str, int | None]:
    """The reference: each target asked on its own at each depth until reached."""
    solver = limited(z3.Solver(ctx=enc.ctx), 100_000_000)
    u = Unrolling(enc, solver, enc.fresh("ref"), stutter=True)
    found: dict[str, int | None] = dict.fromkeys(targets)
    for k in range(depth + 1):
        u.extend()
        for name, target in targets.items():
            if found[name] is not None:
                continue
            solver.push()
            solver.add(target(u, k))
            if solver.check() == z3.sat:
                found[name] = k
            solver.pop()
    return found


def test_batched_reachability_depths_are_one_check_per_target_depths() -> None:
    enc = Encoding(SPEC)
    targets = {
        "worker exited": lambda u, k: is_state(u.states[k].w, "exit"),
        "controller done": lambda u, k: is_state(u.states[k].c, "done"),
        "paused": lambda u, k: u.states[k].paused,
        "handed": lambda u, k: u.states[k].handed,
        "throttling": lambda u, k: is_state(u.states[k].w, "throttling_pause"),
        "negative percent": lambda u, k: u.states[k].percent < 0,
    }
    depth = 4
    batched = reach_many(enc, targets, depth, traces=False)
    reference = _one_check_per_target(enc, targets, depth)
    assert {n: r["depth"] for n, r in batched.items()} == reference
    assert reference["negative percent"] is None  # an unreachable target stays so
    assert len({d for d in reference.values() if d is not None}) > 1
    with_traces = reach_many(enc, {"paused": targets["paused"]}, depth)
    assert len(with_traces["paused"]["steps"]) == reference["paused"]
