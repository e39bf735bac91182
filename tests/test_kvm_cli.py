"""``autoconverge throttle`` and ``autoconverge bench-kvm``: bad input exits 2, output shape."""

from __future__ import annotations

import json

import pytest

from autoconverge.cli.errors import EXIT_OK, EXIT_USAGE
from autoconverge.cli.main import main

pytestmark = pytest.mark.kvm

BASE = ["throttle", "--percent", "50", "--seconds", "0.4", "--vcpus", "1"]


@pytest.mark.parametrize(("args", "message"), [
    (["throttle", "--percent", "100", "--seconds", "1", "--vcpus", "1"], "0..99"),
    (["throttle", "--percent", "-1", "--seconds", "1", "--vcpus", "1"], "0..99"),
    (["throttle", "--percent", "x", "--seconds", "1", "--vcpus", "1"], "integer percent"),
    (["throttle", "--percent", "5", "--seconds", "0", "--vcpus", "1"], "seconds"),
    (["throttle", "--percent", "5", "--seconds", "nan", "--vcpus", "1"], "seconds"),
    (["throttle", "--percent", "5", "--seconds", "1", "--vcpus", "0"], "1..64"),
    (["throttle", "--percent", "5", "--seconds", "1", "--vcpus", "65"], "1..64"),
    ([*BASE, "--timeslice-ms", "5"], "--timeslice-ms must be in 20..1000"),
    ([*BASE, "--memory-mib", "0"], "--memory-mib"),
    ([*BASE, "--workload", "worst", "--working-set-pages", "100000", "--memory-mib", "1"],
     "does not fit"),
    ([*BASE, "--kvm-device", "/nonexistent/kvm"], "KVM is not available"),
    ([*BASE, "--kvm-device", "/dev/null"], "KVM_GET_API_VERSION"),
    (["bench-kvm", "--timeslices-ms", "1"], "--timeslice-ms must be in"),
])
def test_bad_input_and_environment_exit_2_with_a_message(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    assert code == EXIT_USAGE
    assert message in capsys.readouterr().err


def test_throttle_reports_both_measures_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--json", "--timeslice-ms", "20"]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["requested_percent"] == 50
    assert 0 < out["achieved_time_share_percent"] < 100
    assert isinstance(out["achieved_progress_percent"], float)
    assert out["cycles"] >= 1 and out["vcpus"] == 1
    assert out["unthrottled_progress_per_s"] > 0


def test_throttle_at_zero_percent_does_not_pause(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["throttle", "--percent", "0", "--seconds", "0.2", "--vcpus", "2", "--json"]
    assert main(args) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["achieved_time_share_percent"] == 0 and out["cycles"] == 0


def test_bench_kvm_prints_the_report(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench-kvm", "--quick", "--vcpus", "1", "--timeslices-ms", "20"]
    assert main(args) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    (row,) = report["pause_resume"]
    assert row["vcpus"] == 1 and row["pause_us"]["n"] == 10 and row["floor_resume_us"]["n"] == 10
    (duty,) = report["duty_cycle"]["rows"]
    assert duty["percent"] == 50 and duty["timeslice_ms"] == 20
    assert {"time_share_percent", "naive_time_share_percent",
            "throttle_thread_cpu_ms_per_s"} <= duty.keys()
    api = report["api_latency"]
    assert {"set_throttle_percent_us", "abort_us", "shutdown_us"} <= api.keys()
    (dirty,) = report["dirty_log"]
    assert dirty["memory_mib"] == 16 and dirty["dirty_pages_per_s"] > 0
