"""The policy options of ``demo``/``migrate``/``bench-migration``: bad input is one line and
exit 2; the demo's default link (a third of the measured dirty rate) defeats ``none``."""

from __future__ import annotations

import json

import pytest

from autoconverge.cli.main import main
from autoconverge.cli.migration import KEY_ENV


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--policy", "ch", "--cpu-throttle-start-iteration", "0"],
     "--cpu-throttle-start-iteration must be within 1..10000"),
    (["demo", "--policy", "ch", "--cpu-throttle-every", "x"], "bad --cpu-throttle-every"),
    (["demo", "--policy", "ch", "--cpu-throttle-increment", "100"],
     "--cpu-throttle-increment must be within 1..99"),
    (["demo", "--policy", "qemu", "--cpu-throttle-start-iteration", "3"],
     "only apply to --policy ch"),
    (["demo", "--policy", "none", "--cpu-throttle-increment", "5"],
     "only applies to --policy ch or qemu"),
    (["migrate", "--to", "127.0.0.1:9", "--policy", "predictive", "--cpu-throttle-every", "2"],
     "only apply to --policy ch"),
    (["demo", "--deadline", "0"], "--deadline must be within"),
    (["demo", "--deadline", "soon"], "bad --deadline"),
    (["demo", "--deadline", "0.2"], "--deadline must be longer than --downtime-limit"),
    (["demo", "--dirty-ratio", "0"], "--dirty-ratio must be within"),
    (["demo", "--dirty-ratio", "lots"], "bad --dirty-ratio"),
    (["demo", "--max-bandwidth", "64M", "--dirty-ratio", "2"],
     "--dirty-ratio only applies to --max-bandwidth auto"),
    (["bench-migration", "--sweep", "--repeat", "0"], "--repeat"),
    (["bench-migration", "--sweep", "--deadline", "0"], "--deadline"),
    (["bench-migration", "--sweep", "--throughput-only"], "exclude each other"),
])
def test_bad_policy_arguments_exit_2(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "x" * 32)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own checks (argument types)
        code = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "error:" in err and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_demo_defaults_defeat_none_on_the_simulated_guest(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--backend", "sim", "--policy", "none", "--memory", "16M",
                 "--working-set", "4M", "--timeout", "3", "--json"])
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert code == 1, err
    assert d["converged"] is False and d["status"] == "timeout"
    assert d["source_running"] is True and d["dirty_log_stopped"] is True
    assert d["dirty_rate_to_bandwidth"] == pytest.approx(3.0)
    assert "dirty rate / bandwidth = 3.00" in err
