"""``autoconverge conformance`` and the pytest plugin: the kit's two front ends.

The command exits 0 with every property passing on the fake backend, 1 naming the property
for each broken backend (JSON and table), and prints the shortest failing program with the
seed that replays it. The pytest plugin (entry point ``pytest11``) is exercised the way a CI
user would: a 3-line test file in a fresh folder, run by a separate pytest.
(Usage errors, exit 2 with one line, are walked in test_cli_contract.py.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autoconverge.cli.errors import EXIT_OK, EXIT_VIOLATED
from autoconverge.cli.main import main
from autoconverge.impl.broken_backends import EXPECTED
from autoconverge.model.conformance import PROPERTIES

pytestmark = pytest.mark.realtime

FAST = ["--examples", "3", "--seed", "99", "--call-timeout", "1"]


def test_the_fake_backend_passes_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "autoconverge.impl.fakes:clock_backend", "--json",
                 *FAST]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["seed"] == 99 and report["examples"] == 3
    assert [p["name"] for p in report["properties"]] == list(PROPERTIES)
    assert {p["status"] for p in report["properties"]} == {"pass"}
    assert report["duty_cycle"]["requested_percent"] == 50
    assert [s["name"] for s in report["stages"]] == [
        "contract", "lifecycle", "faults", "machine", "duty"]
    assert report["replay"].endswith("--seed 99 --examples 3")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_broken_backend_exits_1_naming_its_property(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["conformance", f"autoconverge.impl.broken_backends:{name}", *FAST, "--fail-fast"]
    assert main([*args, "--json"]) == EXIT_VIOLATED
    report = json.loads(capsys.readouterr().out)
    failed = [p for p in report["properties"] if p["status"] == "fail"]
    assert [p["name"] for p in failed] == [EXPECTED[name]]
    assert failed[0]["failure"]["message"] and failed[0]["failure"]["found_in"]
    assert report["ok"] is False


def test_the_table_shows_the_property_the_program_and_the_seed(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["conformance", "autoconverge.impl.broken_backends:early_pause", *FAST,
            "--stages", "machine"]
    assert main(args) == EXIT_VIOLATED
    out = capsys.readouterr().out
    assert re.search(r"^PauseStops +fail ", out, re.M) and "FAIL PauseStops:" in out
    assert "shortest failing program (Hypothesis):" in out
    assert "    state = Conformance()" in out and "    state.teardown()" in out
    assert ("replay: autoconverge conformance autoconverge.impl.broken_backends:early_pause "
            "--seed 99 --examples 3") in out
    assert out.rstrip().endswith("FAIL: PauseStops")


THREE_LINES = """\
from autoconverge.impl.{module} import {factory}
def test_backend_conforms(autoconverge_conformance):
    autoconverge_conformance({factory})
"""


def test_the_pytest_plugin_runs_the_suite_from_a_three_line_file(tmp_path: Path) -> None:
    (tmp_path / "test_good.py").write_text(
        THREE_LINES.format(module="fakes", factory="clock_backend"))
    (tmp_path / "test_broken.py").write_text(
        THREE_LINES.format(module="broken_backends", factory="ignores_resume"))
    assert len((tmp_path / "test_good.py").read_text().splitlines()) == 3
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf",
         "--autoconverge-examples", "3", "--autoconverge-seed", "4",
         "--autoconverge-call-timeout", "1", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False)
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    assert "1 failed, 1 passed" in out
    assert "FAILED test_broken.py::test_backend_conforms" in out
    assert "FAIL ResumeRuns:" in out and "FAIL: ResumeRuns" in out
    assert "seed 4," in out
