"""CLI: argument validation (exit 2, clear messages), and the demo with the simulated guest."""

from __future__ import annotations

import json
import pathlib

import pytest

from autoconverge.cli.errors import UsageError
from autoconverge.cli.main import main
from autoconverge.cli.migration import KEY_ENV, parse_rate, parse_size
from autoconverge.impl.migration.progress import plot_available


@pytest.mark.parametrize(("text", "value"), [
    ("4096", 4096), ("64K", 64 * 1024), ("256M", 256 << 20), ("1G", 1 << 30),
    ("2GiB", 2 << 30), ("1.5M", 3 << 19), ("16m", 16 << 20),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1M", "1X", "1.3", "M", "1 MB/s"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="bad"):
        parse_size(text)


def test_parse_rate() -> None:
    assert parse_rate("128M/s") == 128 << 20
    assert parse_rate("0") == 0
    with pytest.raises(UsageError):
        parse_rate("fast")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("argv", "message"), [
    (["migrate", "--to", "localhost"], "expected HOST:PORT"),
    (["migrate", "--to", "h:70000"], "out of range"),
    (["migrate", "--to", "h:0"], "port 0"),
    (["receive", "--listen", "1.2.3.4:x"], "bad port"),
    (["demo", "--memory", "3M"], "--memory"),
    (["demo", "--memory", "100000"], "multiple of 4 KiB"),
    (["demo", "--working-set", "200M"], "--working-set"),
    (["demo", "--vcpus", "0"], "--vcpus"),
    (["demo", "--max-cpu-throttle", "100"], "--max-cpu-throttle"),
    (["demo", "--downtime-limit", "0"], "--downtime-limit"),
    (["demo", "--downtime-limit", "nan"], "bad --downtime-limit"),
    (["demo", "--timeout", "-1"], "--timeout"),
    (["demo", "--max-bandwidth", "1K"], "--max-bandwidth"),
    (["demo", "--max-bandwidth", "lots"], "bad --max-bandwidth"),
    (["demo", "--cpu-throttle-tailslow"], "only applies to --policy qemu"),
    (["demo", "--plot", "out.txt"], ".png"),
    (["demo", "--io-timeout", "0"], "--io-timeout"),
    (["bench-migration", "--policies", "ch,fastest"], "unknown fastest"),
    (["receive", "--max-vcpus", "0"], "--max-vcpus"),
    (["receive", "--run-after", "-1"], "--run-after"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "x" * 32)
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert "autoconverge: error:" in err and message in err


def test_missing_or_short_key(capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    code, _, err = run_cli(["migrate", "--to", "127.0.0.1:9"], capsys)
    assert code == 2 and "no key" in err
    monkeypatch.setenv(KEY_ENV, "short")
    code, _, err = run_cli(["migrate", "--to", "127.0.0.1:9"], capsys)
    assert code == 2 and "at least 16 bytes" in err
    code, _, err = run_cli(["receive", "--key-file", "/nonexistent/key"], capsys)
    assert code == 2 and "cannot read key file" in err


def test_plot_without_matplotlib_is_a_usage_error(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import autoconverge.cli.migration as mcli

    monkeypatch.setattr(mcli, "plot_available", lambda: False)
    code, _, err = run_cli(["demo", "--backend", "sim", "--plot", "x.png"], capsys)
    assert code == 2 and "needs matplotlib" in err


def test_migrate_to_nobody_fails_cleanly(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    code, out, err = run_cli(["migrate", "--to", f"127.0.0.1:{port}", "--backend", "sim",
                              "--memory", "8M", "--working-set", "1M", "--warmup", "0",
                              "--json"], capsys)
    assert code == 1
    d = json.loads(out)
    assert d["status"] == "failed" and "cannot connect" in d["error"]
    assert d["source_running"] is True


def test_demo_with_the_simulated_guest(capsys: pytest.CaptureFixture[str],
                                       tmp_path: object) -> None:
    import pathlib

    plot = pathlib.Path(str(tmp_path)) / "demo.png"
    argv = ["demo", "--backend", "sim", "--policy", "predictive", "--memory", "32M",
            "--working-set", "8M", "--max-bandwidth", "16M", "--warmup", "0.05", "--json"]
    if plot_available():
        argv += ["--plot", str(plot)]
    code, out, err = run_cli(argv, capsys)
    d = json.loads(out)
    assert code == 0, err
    for key in ("converged", "memory_hash_match", "total_time_s", "iterations", "downtime_ms",
                "guest_cpu_stolen_s"):
        assert key in d
    assert d["converged"] is True and d["memory_hash_match"] is True
    assert d["guest_continued"] is True and d["max_throttle_percent"] > 0
    assert d["receiver"]["status"] == "completed" and d["receiver_exit_code"] == 0
    assert "migration completed with policy predictive" in err
    if plot_available():
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_receiver_rejects_a_wrong_key_and_still_takes_the_real_source() -> None:
    from autoconverge.cli.demo import collect_receiver, spawn_receiver
    from autoconverge.impl.migration.backends import make_source_guest
    from autoconverge.impl.migration.guest_config import GuestConfig
    from autoconverge.impl.migration.policy import make_policy
    from autoconverge.impl.migration.runner import migrate_to
    from autoconverge.impl.migration.source import MigrationConfig

    key = b"the-real-key-0123456789abcdefghij"
    proc, port, _ = spawn_receiver("sim", key, run_after=0.05)
    guest = make_source_guest("sim", GuestConfig(8 << 20, 1, "moderate", 1 << 20))
    try:
        cfg = MigrationConfig(max_bandwidth_bps=64e6, timeout_s=30)
        bad = migrate_to("127.0.0.1", port, b"an-attacker-key-0123456789abcdef", guest.vm,
                         make_policy("ch"), guest.throttle_factory, cfg)
        assert bad.status == "failed" and "same key" in (bad.error or "")
        assert guest.vm.log_starts == 0 and not guest.vm.paused  # nothing happened here
        good = migrate_to("127.0.0.1", port, key, guest.vm, make_policy("ch"),
                          guest.throttle_factory, cfg)
        assert good.converged and good.memory_hash_match, good.error
    finally:
        guest.close()
    dest, err = collect_receiver(proc, 30)
    assert dest is not None and dest["status"] == "completed", err
    assert "refused 127.0.0.1:" in err and "HELLO does not carry a valid MAC" in err


def test_receive_on_a_port_in_use_is_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.setenv(KEY_ENV, "k" * 32)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_cli(["receive", "--listen", f"127.0.0.1:{port}", "--backend", "sim",
                                "--accept-timeout", "1"], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"autoconverge: error: --listen: cannot listen on 127.0.0.1:{port}: Address already in "
        f"use"]


@pytest.mark.parametrize(("mode", "content", "message"), [
    (0o644, b"k" * 32, "accessible by group or others (mode 0644); run: chmod 600"),
    (0o640, b"k" * 32, "(mode 0640)"),
    (0o600, b"short\n", "at least 16 bytes, got 5 from key file"),
    (0o600, b"k" * 5000, "longer than 4096 bytes"),
])
def test_a_bad_key_file_is_one_line_exit_2(mode: int, content: bytes, message: str,
                                           capsys: pytest.CaptureFixture[str],
                                           tmp_path: pathlib.Path) -> None:
    key = tmp_path / "key"
    key.write_bytes(content)
    key.chmod(mode)
    for argv in (["receive", "--backend", "sim", "--listen", "127.0.0.1:0"],
                 ["migrate", "--to", "127.0.0.1:9", "--backend", "sim"]):
        code, _, err = run_cli([*argv, "--key-file", str(key)], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and message in lines[0], err


def test_a_key_file_that_is_not_a_file_is_refused(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: pathlib.Path) -> None:
    code, _, err = run_cli(["receive", "--key-file", str(tmp_path)], capsys)
    assert code == 2 and "is not a regular file" in err


def test_port_file_in_a_missing_folder_is_refused_before_listening(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import autoconverge.impl.migration.transport as transport

    monkeypatch.setenv(KEY_ENV, "k" * 32)
    listened: list[object] = []
    monkeypatch.setattr(transport, "listen", lambda *a: listened.append(a))
    with pytest.raises(SystemExit) as info:
        main(["receive", "--backend", "sim", "--port-file", "/nonexistent/dir/port"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and listened == []
    assert len(err.strip().splitlines()) == 1 and "--port-file" in err and "/nonexistent/dir" in err


def test_migrate_to_nobody_is_one_line_within_the_connect_timeout(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    t = time.monotonic()
    code, _, err = run_cli(["migrate", "--to", f"127.0.0.1:{port}", "--connect-timeout", "2",
                            "--backend", "sim", "--memory", "8M", "--working-set", "1M",
                            "--warmup", "0"], capsys)
    assert time.monotonic() - t < 2 + 5
    assert code == 1
    assert err.strip().splitlines() == [
        f"migration failed before anything was sent: cannot connect to 127.0.0.1:{port}: "
        f"Connection refused (the guest keeps running here)"]


def test_receive_help_documents_the_hostile_input_options(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    with pytest.raises(SystemExit):
        main(["receive", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "MemAvailable" in out and "--handshake-timeout" in out
    assert "first source to authenticate wins" in out
