"""The command line's contract: a bad argument is one line on stderr, exit 2, no traceback.

Every subcommand is walked with bad arguments (missing, malformed, out of range, unwritable
or missing paths) through both entry points, the ``autoconverge`` console script and
``python -m autoconverge``. Each case must exit 2 before any work starts, print exactly one
line on stderr that names the argument, and never a traceback. A test also checks that the
table covers every subcommand the parser has, so a new subcommand cannot skip the walk, and
that a failure during a run is one line with exit 1 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from autoconverge.cli import main as cli_main
from autoconverge.cli.errors import EXIT_USAGE, EXIT_VIOLATED

MISSING_DIR = "/nonexistent-autoconverge-dir/x"

BAD: dict[str, list[tuple[list[str], str]]] = {
    # subcommand: [(arguments after the subcommand, what the error line must name)]
    "verify": [(["--variant", "no_such_variant"], "no_such_variant"),
               (["--bogus"], "--bogus")],
    "report": [(["--output", f"{MISSING_DIR}/report.md"], "--output"),
               (["--readme", "/missing/README.md"], "--readme"),
               (["--variant", "no_such_variant"], "no_such_variant")],
    "diagram": [(["--output", f"{MISSING_DIR}/d.svg"], "--output"),
                (["--machine", "both"], "--machine"),
                (["--format", "png"], "--format")],
    "bench-model": [(["--repeat", "0"], "--repeat"),
                    (["--repeat", "x"], "--repeat"),
                    (["--config", "/missing.toml"], "--config"),
                    (["--sections", "nosuchsection", "--no-variants"], "nosuchsection")],
    "bench-virtualtime": [(["--cycles", "0"], "--cycles"),
                          (["--cycles", "many"], "--cycles")],
    "soak-throttler": [(["--runs", "0"], "--runs"),
                       (["--callers", "x"], "--callers"),
                       (["--faults", "raise,explode"], "--faults"),
                       (["--backend", "xen"], "--backend"),
                       (["--seed", "1", "--replay", "2"], "--replay"),
                       (["--replay", "2", "--runs", "5"], "--runs")],
    "soak": [(["--runs", "0"], "--runs"),
             (["--faults", "cancel,explode"], "--faults"),
             (["--backend", "xen"], "--backend"),
             (["--run-timeout", "0"], "--run-timeout"),
             (["--seed", "1", "--replay", "2"], "--replay"),
             (["--replay", "2", "--runs", "5"], "--runs")],
    "receive": [(["--listen", "nohostport"], "--listen"),
                (["--listen", "127.0.0.1:99999"], "--listen"),
                (["--max-memory", "lots"], "--max-memory"),
                (["--max-vcpus", "0"], "--max-vcpus"),
                (["--run-after", "-1"], "--run-after"),
                (["--accept-timeout", "x"], "--accept-timeout"),
                (["--key-file", "/missing/key"], "key file"),
                (["--port-file", f"{MISSING_DIR}/port"], "--port-file"),
                (["--handshake-timeout", "0"], "--handshake-timeout")],
    "migrate": [([], "--to"),
                (["--to", "nohostport"], "--to"),
                (["--to", "127.0.0.1:0"], "--to"),
                (["--to", "127.0.0.1:1", "--memory", "12Q"], "--memory"),
                (["--to", "127.0.0.1:1", "--max-bandwidth", "fast"], "--max-bandwidth"),
                (["--to", "127.0.0.1:1", "--downtime-limit", "-5"], "--downtime-limit"),
                (["--to", "127.0.0.1:1", "--policy", "fastest"], "--policy"),
                (["--to", "127.0.0.1:1", "--plot", "run.txt"], "--plot"),
                (["--to", "127.0.0.1:1", "--connect-timeout", "x"], "--connect-timeout")],
    "demo": [(["--memory", "0"], "--memory"),
             (["--timeout", "never"], "--timeout"),
             (["--timeout-strategy", "panic"], "--timeout-strategy"),
             (["--plot", f"{MISSING_DIR}/run.png"], "--plot"),
             (["--backend", "xen"], "--backend")],
    "bench-migration": [(["--throughput-memory", "0"], "--throughput-memory"),
                        (["--throughput-repeat", "0"], "--throughput-repeat"),
                        (["--plot", "x.txt"], "--plot"),
                        (["--policies", "ch,warp"], "--policies")],
    "conformance": [([], "MODULE:FACTORY"),
                    (["nocolon"], "MODULE:FACTORY"),
                    (["no_such_module_xyz:make"], "no_such_module_xyz"),
                    (["autoconverge.impl.fakes:no_such_factory"], "no_such_factory"),
                    (["autoconverge.impl.fakes:HANG_NS"], "not callable"),
                    (["autoconverge.impl.fakes:clock_backend", "--examples", "0"],
                     "--examples"),
                    (["autoconverge.impl.fakes:clock_backend", "--seed", "x"], "--seed"),
                    (["autoconverge.impl.fakes:clock_backend", "--stages", "bogus"],
                     "--stages"),
                    (["autoconverge.impl.fakes:clock_backend", "--call-timeout", "0"],
                     "--call-timeout")],
    "throttle": [([], "--percent"),
                 (["--percent", "100", "--seconds", "1", "--vcpus", "1"], "--percent"),
                 (["--percent", "50", "--seconds", "0", "--vcpus", "1"], "--seconds"),
                 (["--percent", "50", "--seconds", "1", "--vcpus", "0"], "--vcpus"),
                 (["--percent", "50", "--seconds", "1", "--vcpus", "1",
                   "--memory-mib", "0"], "--memory-mib"),
                 (["--percent", "50", "--seconds", "1"], "--vcpus"),
                 (["--percent", "50", "--seconds", "1", "--pid", "0"], "--pid"),
                 (["--percent", "50", "--seconds", "1", "--pid", "999999999"], "--pid"),
                 (["--percent", "50", "--seconds", "1", "--pid", "1"], "--pid"),
                 (["--percent", "50", "--seconds", "1", "--pid", "1", "--vcpus", "1"],
                  "--pid")],
    "bench-kvm": [(["--vcpus", "0"], "--vcpus"),
                  (["--percents", "100"], "--percents"),
                  (["--iterations", "-3"], "--iterations")],
    "bench-checkers": [(["--timeout", "-1"], "--timeout"),
                       (["--bounds", "calls=x"], "calls=x"),
                       (["--spec", "nope"], "--spec")],
}
"""Bad command lines per subcommand; each must be refused before any work starts."""


def _subcommands() -> set[str]:
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _entry_points() -> list[list[str]]:
    script = shutil.which("autoconverge", path=os.path.dirname(sys.executable))
    assert script is not None, "the autoconverge console script is not installed"
    return [[script], [sys.executable, "-m", "autoconverge"]]


def _run(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["AUTOCONVERGE_KEY"] = "k" * 32  # a valid key, so that the argument under test decides
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def test_every_subcommand_is_walked() -> None:
    assert set(BAD) == _subcommands()


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cases = [(entry, sub, args, needle) for entry in _entry_points()
             for sub, rows in BAD.items() for args, needle in rows]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: _run([*c[0], c[1], *c[2]], tmp_path), cases))
    failures = []
    for (entry, sub, args, needle), r in zip(cases, results, strict=True):
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        ok = (r.returncode == EXIT_USAGE and len(lines) == 1 and needle in lines[0]
              and "Traceback" not in r.stderr)
        if not ok:
            failures.append(f"{' '.join([os.path.basename(entry[-1]), sub, *args])}: "
                            f"rc={r.returncode} stderr={r.stderr.strip()[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_both_entry_points_agree_on_help(tmp_path: Path) -> None:
    outs = [_run([*entry, "--help"], tmp_path) for entry in _entry_points()]
    assert all(o.returncode == 0 for o in outs)
    assert outs[0].stdout == outs[1].stdout
    assert all(name in outs[0].stdout for name in _subcommands())


def test_a_failure_during_a_run_is_one_line_and_exit_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("disk on fire\nsecond line")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices["diagram"].set_defaults(func=broken)
    assert cli_main.main(["diagram"]) == EXIT_VIOLATED
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "autoconverge: diagram failed: RuntimeError: disk on fire "
        "(--debug shows the traceback)"]
    assert cli_main.main(["--debug", "diagram"]) == EXIT_VIOLATED
    err = capsys.readouterr().err
    assert "Traceback" in err and "disk on fire" in err


def test_a_missing_extra_is_named_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    real_import = cli_main.importlib.import_module

    def without_numpy(name: str) -> object:
        if name == "autoconverge.cli.demo":
            raise ModuleNotFoundError("No module named 'numpy'", name="numpy")
        return real_import(name)

    monkeypatch.setattr(cli_main.importlib, "import_module", without_numpy)
    monkeypatch.setattr(cli_main, "MISSING_EXTRAS", {})
    with pytest.raises(SystemExit) as info:
        cli_main.main(["demo"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'autoconverge[migration]'" in err[0]


def test_a_module_missing_at_run_time_names_the_commands_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def needs_z3(args: argparse.Namespace) -> int:
        raise ModuleNotFoundError("No module named 'z3'", name="z3")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda: parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            action.choices["verify"].set_defaults(func=needs_z3)
    assert cli_main.main(["verify"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip().splitlines() == [
        "autoconverge: error: verify needs the Python module 'z3', which is not installed: "
        "pip install 'autoconverge[verify]'"]


def test_verify_scope_line_prints_the_declared_fairness() -> None:
    """The human table's "scope:" note states the fairness assumption from the spec's
    groups (every weakly fair one; none on user calls and timeouts), not a restatement."""
    from autoconverge.cli.verify import _table, scope_text
    from autoconverge.spec import FAIRNESS_GROUPS

    text = " ".join(scope_text().split())
    weak_part, unfair_part = text.split("and none on ", 1)
    for g in FAIRNESS_GROUPS:
        what = g.statement.rsplit(" (", 1)[0]
        assert what in (weak_part if g.weak else unfair_part), (g.name, text)
    assert {g.name for g in FAIRNESS_GROUPS if not g.weak} == {"user", "timeout"}
    assert "user calls or on a caller's wait timing out;" in unfair_part
    assert all(len(line) <= 96 for line in scope_text().splitlines())
    table = _table({"properties": [], "ok": True, "variant": None})
    assert scope_text() in table and table.endswith("ALL PROPERTIES HOLD")
