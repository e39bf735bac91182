"""``ProcessTreeVcpus``: a process tree throttled like vCPUs, and ``autoconverge throttle --pid``.

On busy child processes (``BUSY_LOOP`` exits once orphaned, and every test kills what it
started): pause() stops the whole tree before returning (every thread ``T`` in /proc for
signals, ``frozen 1`` for the cgroup freezer), progress() (CPU ticks) stands still while
paused, resume() lets it run, close() never leaves it stopped, and the caller's own process
or an ancestor is refused. The command reports the achieved throttle and resumes the process
on every way out, SIGTERM included.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from autoconverge.cli.errors import EXIT_OK
from autoconverge.cli.main import main
from autoconverge.impl.process_tree import (
    BUSY_LOOP,
    ProcessTreeVcpus,
    cgroup2_dir,
    spawn_busy,
    thread_states,
)

pytestmark = pytest.mark.realtime


def _cgroup_usable() -> bool:
    """Can this test process freeze a child through cgroup v2?"""
    child = subprocess.Popen(["sleep", "10"])
    try:
        ProcessTreeVcpus(child.pid, mechanism="cgroup").close()
        return True
    except Exception:
        return False
    finally:
        child.kill()
        child.wait(5)


MECHANISMS = ["signal", pytest.param("cgroup", marks=pytest.mark.skipif(
    not _cgroup_usable(), reason="no writable cgroup v2 hierarchy here"))]


@pytest.fixture
def busy() -> Iterator[subprocess.Popen[bytes]]:
    """A busy child the test owns (not the backend): it is killed at the end."""
    child = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    time.sleep(0.1)
    try:
        yield child
    finally:
        child.kill()
        child.wait(5)


def _states(tree: list[int]) -> set[str]:
    return {s for p in tree for s in thread_states(p)}


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_pause_stops_the_whole_tree_and_resume_runs_it(mechanism: str) -> None:
    backend = spawn_busy(mechanism, children=2)  # type: ignore[arg-type]
    try:
        assert backend.mechanism == mechanism
        deadline = time.monotonic() + 5
        while len(backend.tree()) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        tree = backend.tree()
        assert len(tree) == 3 and os.getpid() not in tree
        assert not backend.is_paused()
        for _ in range(3):
            backend.pause()
            assert backend.is_paused()
            if mechanism == "signal":
                assert _states(tree) <= {"T", "t"}
            p0 = backend.progress()
            time.sleep(0.05)
            assert backend.progress() == p0  # CPU time stands still
            backend.resume()
            assert not backend.is_paused() and not _states(tree) & {"T", "t"}
            p0 = backend.progress()
            time.sleep(0.1)
            assert backend.progress() > p0
    finally:
        backend.close()
    time.sleep(0.05)
    assert all(thread_states(p) in ([], ["Z"]) for p in tree)  # killed (zombies reaped later)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_close_never_leaves_the_process_stopped(
        busy: subprocess.Popen[bytes], mechanism: str) -> None:
    before = cgroup2_dir(busy.pid)
    backend = ProcessTreeVcpus(busy.pid, mechanism=mechanism)  # type: ignore[arg-type]
    backend.pause()
    assert backend.is_paused()
    backend.close()
    assert busy.poll() is None  # not owned: still alive
    assert set(thread_states(busy.pid)) <= {"R", "S"}
    assert cgroup2_dir(busy.pid) == before  # back in its own cgroup, ours removed
    backend.close()  # idempotent
    with pytest.raises(Exception, match="closed"):
        backend.pause()


def test_the_caller_and_its_ancestors_are_refused() -> None:
    for pid in (os.getpid(), os.getppid(), 1):
        with pytest.raises(ValueError, match="this process or one of its ancestors"):
            ProcessTreeVcpus(pid)
    with pytest.raises(ProcessLookupError):
        ProcessTreeVcpus(2**22 + 12345)
    for bad in (0, -1, True, "12"):
        with pytest.raises(ValueError):
            ProcessTreeVcpus(bad)  # type: ignore[arg-type]


def test_a_process_that_exits_is_reported(busy: subprocess.Popen[bytes]) -> None:
    backend = ProcessTreeVcpus(busy.pid, mechanism="signal")
    busy.kill()
    busy.wait(5)
    with pytest.raises(Exception, match="exited"):
        backend.pause()
    backend.close()


def test_throttle_pid_reports_the_achieved_share_and_leaves_it_running(
        busy: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["throttle", "--pid", str(busy.pid), "--percent", "50", "--seconds", "1",
            "--timeslice-ms", "100", "--json"]
    assert main(args) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["pid"] == busy.pid and out["requested_percent"] == 50
    assert out["mechanism"] in ("cgroup", "signal") and out["processes"] == 1
    assert out["cycles"] >= 9
    assert abs(out["paused_time_share_percent"] - 50) < 10
    assert out["progress_while_paused_percent"] <= 5  # the CPU time stood still while paused
    # the achieved share from CPU time: about 50 % on a quiet host; a busy one skews it
    assert 0 < out["achieved_progress_percent"] < 100
    assert out["host_cpu_pressure_percent"] is None or out["host_cpu_pressure_percent"] >= 0
    assert out["unthrottled_progress_per_s"] > 0
    assert set(thread_states(busy.pid)) <= {"R", "S"}


def _held(pid: int, mechanism: str) -> bool:
    """Is ``pid`` stopped (signal) or frozen (cgroup) right now?"""
    if mechanism == "signal":
        return bool(set(thread_states(pid)) & {"T"})
    home = cgroup2_dir(pid)
    return home is not None and home.name.startswith("autoconverge-") \
        and "frozen 1" in (home / "cgroup.events").read_text()


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sigterm_during_throttle_pid_resumes_the_process(
        busy: subprocess.Popen[bytes], mechanism: str) -> None:
    cli = subprocess.Popen(
        [sys.executable, "-m", "autoconverge", "throttle", "--pid", str(busy.pid),
         "--percent", "95", "--seconds", "3", "--mechanism", mechanism],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _held(busy.pid, mechanism):  # throttling: held 95 % of the time
            assert cli.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=20)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(5)
    assert cli.returncode == 128 + signal.SIGTERM, err
    assert not _held(busy.pid, mechanism)
    assert set(thread_states(busy.pid)) <= {"R", "S"}
    home = cgroup2_dir(busy.pid)
    assert home is None or not home.name.startswith("autoconverge-")
