"""``autoconverge verify`` over both specs: every property names its spec, both zoos are
listed, a variant of either is selected by name and fails with a counterexample, ``--spec``
selects one (issue 16's CLI contract). Z3 is left out here (``--no-proofs``); the proofs of
both specs have their own tests."""

from __future__ import annotations

import json

import pytest

from autoconverge.cli.main import main
from autoconverge.spec.specs import SPECS, ZOOS


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    rc = main([*argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_verify_checks_both_specs_and_each_property_names_its_spec(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _json(capsys, "verify", "--no-proofs", "--quiet")
    assert rc == 0 and isinstance(report, dict) and report["ok"] is True
    by_spec: dict[str, set[str]] = {}
    for p in report["properties"]:
        by_spec.setdefault(p["spec"], set()).add(p["name"])
        assert p["holds"] is True, p["name"]
    assert by_spec == {name: {p.name for p in spec.properties} for name, spec in SPECS.items()}
    assert set(report["specs"]) == set(SPECS)


def test_spec_selects_one(capsys: pytest.CaptureFixture[str]) -> None:
    rc, report = _json(capsys, "verify", "--no-proofs", "--quiet", "--spec", "migration")
    assert rc == 0 and isinstance(report, dict)
    assert {p["spec"] for p in report["properties"]} == {"migration"}
    assert report["explorer"]["distinct_states"] == 2326


def test_list_variants_lists_both_zoos(capsys: pytest.CaptureFixture[str]) -> None:
    rc, listed = _json(capsys, "verify", "--list-variants")
    assert rc == 0 and isinstance(listed, list)
    assert {(v["spec"], v["name"]) for v in listed} == {
        (family, v.name) for family, zoo in ZOOS.items() for v in zoo}


@pytest.mark.parametrize("name", [v.name for v in ZOOS["migration"]])
@pytest.mark.covers("migration:*")
def test_every_migration_variant_exits_1_with_a_counterexample(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["verify", "--no-proofs", "--quiet", "--variant", name])
    out = capsys.readouterr().out
    assert rc == 1 and "VIOLATIONS FOUND" in out and "counterexample for" in out, out[-2000:]


def test_a_variant_of_the_other_spec_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--spec", "throttle", "--variant", "no_final_sync"]) == 2
    assert "migration" in capsys.readouterr().err


def test_diagram_draws_the_migration_machines(capsys: pytest.CaptureFixture[str]) -> None:
    for machine, state in (("source", "awaiting_resumed"), ("destination", "prepared")):
        assert main(["diagram", "--spec", "migration", "--machine", machine]) == 0
        assert state in capsys.readouterr().out


def test_quiet_silences_every_progress_line_and_leaves_stdout_as_it_is(
        capsys: pytest.CaptureFixture[str]) -> None:
    runs = []
    for extra in ((), ("--quiet",)):
        assert main(["verify", "--no-proofs", "--spec", "migration", "--json", *extra]) == 0
        captured = capsys.readouterr()
        runs.append((json.loads(captured.out), captured.err))
    (loud, loud_err), (quiet, quiet_err) = runs
    assert "explicit-state exploration" in loud_err and quiet_err == ""

    def strip(x: object) -> object:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items()
                    if "seconds" not in k and k not in ("time_s", "states_per_second")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    assert strip(loud) == strip(quiet)


def test_progress_names_the_phases_and_the_explorer_states(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--no-proofs", "--spec", "migration", "--json"]) == 0
    err = capsys.readouterr().err
    assert "migration: explicit-state exploration" in err
    assert "migration explorer: 2,326 states" in err and "states/s" in err


@pytest.mark.parametrize("jobs", ["0", "two", "-1"])
def test_bad_jobs_is_a_one_line_usage_error(jobs: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--jobs", jobs])
    assert exc.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--jobs" in lines[0]
