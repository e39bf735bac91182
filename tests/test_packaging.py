"""The built wheel: layout under autoconverge/ only, and its CLI runs from a fresh venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        check=True, cwd=out,
    )
    (whl,) = out.glob("autoconverge-*.whl")
    return whl


def test_wheel_installs_only_under_autoconverge(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"autoconverge", next(t for t in tops if t.endswith(".dist-info"))}
    for sub in ("spec", "model", "impl", "proofs"):
        assert f"autoconverge/{sub}/__init__.py" in names
        assert f"autoconverge/{sub}/py.typed" in names
    assert "autoconverge/model/explorer.toml" in names  # package data


def test_wheel_cli_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q",
         str(wheel)],
        check=True,
    )
    # dependencies come from this environment's site-packages (a plain path: its .pth
    # files, such as the editable install's finder, are not processed)
    site = Path(subprocess.check_output(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.check_output(
        [str(py), "-c", "import autoconverge.spec as s; print(s.__file__)"], text=True, env=env,
        cwd=tmp_path)
    assert str(venv) in where  # the wheel's copy, not the source tree
    cli = venv / "bin" / "autoconverge"
    out = subprocess.run([str(cli), "verify", "--no-proofs", "--json", "--quiet"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["properties"]
    diagram = subprocess.run([str(cli), "diagram"], capture_output=True, text=True, env=env,
                             cwd=tmp_path, check=True)
    assert "stateDiagram" in diagram.stdout and "recv_set" in diagram.stdout
