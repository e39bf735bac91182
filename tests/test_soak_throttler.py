"""The throttler soak (``autoconverge soak-throttler``, :mod:`autoconverge.model.soak_throttler`).

- The soak of issue #15 (2000 runs, 3 callers, raise and hang faults, fake backend) ends with
  every counter zero (the issue's defects are fixed), and the runs happen, faults strike, no
  fd grows.
- The soak catches bugs: each deliberately broken throttler, runtime or backend wrapper below
  makes its counter non-zero, where the real throttler on the same programs keeps it zero.
- A run replays: same seed, same record (virtual time), also through the command line.
- On KVM (``kvm`` marker: runs wherever /dev/kvm is usable, skipped with the reason only where
  it is not) 20 runs strike faults and leave no fd and no thread behind, all counters zero.
- The command line: bad arguments are one line and exit 2, ``--json`` prints the counters.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from autoconverge.cli import main as cli_main
from autoconverge.cli.errors import EXIT_OK, EXIT_USAGE, EXIT_VIOLATED
from autoconverge.impl.runtime import Channel, Runtime, Thread
from autoconverge.impl.throttler import (
    Throttler,
    ThrottlerClosed,
    ThrottlerTimeout,
    TraceEvent,
)
from autoconverge.impl.vcpus import Vcpus
from autoconverge.model import soak_throttler as soak_module
from autoconverge.model.soak_throttler import (
    COUNTERS,
    FAULT_KINDS,
    RunResult,
    SoakReport,
    SoakVcpus,
    run_fake,
    soak,
)

MS = 1_000_000
ALL_FAULTS = frozenset(FAULT_KINDS)
NO_FAULTS: frozenset[str] = frozenset()
HANGS = frozenset({"hang"})


# --- the soak of the issue -------------------------------------------------------------------


@pytest.fixture(scope="module")
def issue_soak() -> SoakReport:
    return soak(2000, callers=3, faults=ALL_FAULTS, backend="fake", seed=0)


def test_the_issue_soak_runs_and_strikes_faults(issue_soak: SoakReport) -> None:
    assert issue_soak.runs == 2000
    assert issue_soak.counters["leaked_fds"] == 0  # only measured on KVM
    struck = {k: v for k, v in issue_soak.outcomes.items() if k.startswith("fault:")}
    assert set(struck) == {"fault:raise", "fault:interrupt", "fault:hang"}
    assert min(struck.values()) >= 100, struck
    assert issue_soak.outcomes["abort:ThrottlerTimeout"] > 0  # hangs outlast the call timeout


def test_the_issue_soak_finds_nothing(issue_soak: SoakReport) -> None:
    found = {c: n for c, n in issue_soak.counters.items() if n}
    assert not found, f"{found}; first: {issue_soak.first_failures[:3]}"


# --- the soak catches bugs: broken variants --------------------------------------------------


class ShutdownLeavesPaused(Throttler):
    """shutdown() skips the resume: it hands over instead (nobody owns the vCPUs then)."""

    def shutdown(self) -> None:
        if not self.closed:
            self.handover()


class HandoverDoesNotPause(Throttler):
    """handover() returns with the vCPUs running: it shuts down instead."""

    def handover(self) -> None:
        if self.closed:
            raise ThrottlerClosed(f"{self.name}: already shut down")
        self.shutdown()


class AcceptsBadInput(Throttler):
    """set_throttle_percent() ignores bad input instead of raising."""

    def set_throttle_percent(self, percent: int) -> None:
        if isinstance(percent, int) and not isinstance(percent, bool) and 0 <= percent <= 99:
            super().set_throttle_percent(percent)


class DropsFirstEvent(Throttler):
    """The recorded trace misses its first step (the spec cannot follow it)."""

    @property
    def events(self) -> list[TraceEvent]:
        return super().events[1:]


class StuckAfterTimeout(Throttler):
    """After a ThrottlerTimeout every call raises a RuntimeError: unusable for good."""

    stuck = False

    def _guard(self, call: Callable[[], None]) -> None:
        if self.stuck:
            raise RuntimeError(f"{self.name}: stuck after a timeout")
        try:
            call()
        except ThrottlerTimeout:
            self.stuck = True
            raise

    def set_throttle_percent(self, percent: int) -> None:
        self._guard(lambda: Throttler.set_throttle_percent(self, percent))

    def shutdown(self) -> None:
        self._guard(lambda: Throttler.shutdown(self))

    def handover(self) -> None:
        self._guard(lambda: Throttler.handover(self))


class _NoJoinThread:
    """A thread whose join() returns at once, reporting it exited."""

    def __init__(self, inner: Thread) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    def join(self, timeout_ns: int | None = None) -> bool:
        return True

    def is_alive(self) -> bool:
        return self.inner.is_alive()


class LeakyRuntime:
    """A runtime whose threads linger 1 ms after their target and whose join() does not wait:
    the throttler's shutdown() returns with its worker thread alive."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def now_ns(self) -> int:
        return self.rt.now_ns()

    def channel(self) -> Channel[Any]:
        return self.rt.channel()

    def sleep_ns(self, duration_ns: int) -> None:
        self.rt.sleep_ns(duration_ns)

    def spawn(self, name: str, target: Callable[[], None]) -> Thread:
        def body() -> None:
            target()
            self.rt.sleep_ns(MS)

        return _NoJoinThread(self.rt.spawn(name, body))


def leaks_its_thread(vcpus: Vcpus, *, runtime: Runtime, **kw: Any) -> Throttler:
    return Throttler(vcpus, runtime=LeakyRuntime(runtime), **kw)


def shutdown_never_returns(vcpus: Vcpus, *, runtime: Runtime, **kw: Any) -> Throttler:
    class NeverReturns(Throttler):
        def shutdown(self) -> None:
            runtime.channel().get(None)  # nothing ever arrives

    return NeverReturns(vcpus, runtime=runtime, **kw)


class HidesRelease(SoakVcpus):
    """A backend wrapper that swallows the harness's release of a hang."""

    def release(self) -> None:
        pass


def _counter(runs: int, counter: str, faults: frozenset[str], **kw: Any) -> int:
    return soak(runs, callers=3, faults=faults, seed=1000, **kw).counters[counter]


@pytest.mark.parametrize(("counter", "runs", "variant"), [
    ("vcpus_left_paused", 100, {"throttler_factory": ShutdownLeavesPaused}),
    ("leaked_threads", 100, {"throttler_factory": leaks_its_thread}),
    ("failures", 100, {"throttler_factory": AcceptsBadInput}),
    ("failures", 100, {"throttler_factory": DropsFirstEvent}),
    ("hangs", 20, {"throttler_factory": shutdown_never_returns}),
], ids=["shutdown-skips-resume", "leaks-its-thread", "accepts-bad-input", "bad-trace",
        "shutdown-never-returns"])
def test_a_broken_throttler_is_caught_where_the_real_one_is_clean(
        counter: str, runs: int, variant: dict[str, Any]) -> None:
    """Fault-free programs: the real throttler keeps the counter at zero; the broken one
    raises it."""
    assert _counter(runs, counter, NO_FAULTS) == 0
    assert _counter(runs, counter, NO_FAULTS, **variant) > 0


def test_a_handover_that_does_not_pause_is_caught() -> None:
    """The real throttler has no false handover (issue #15 defect 2, a rare race, is fixed);
    a handover() that shuts down instead has one for every handover that returns."""
    real = _counter(200, "false_handover", NO_FAULTS)
    broken = _counter(200, "false_handover", NO_FAULTS, throttler_factory=HandoverDoesNotPause)
    assert real == 0 and broken > 10


def test_a_wrapper_that_hides_the_release_of_a_hang_is_caught() -> None:
    real = _counter(200, "hangs", HANGS)
    broken = _counter(200, "hangs", HANGS, adapter_factory=HidesRelease)
    assert real == 0 and broken > 10


def test_every_run_with_a_timeout_counts_as_unusable_when_the_handle_stays_stuck() -> None:
    """StuckAfterTimeout refuses every call after a ThrottlerTimeout; every run where a
    caller saw one must count ``unusable_after_timeout`` (the real throttler counts none:
    the issue soak above)."""
    timed_out = 0
    for seed in range(2000, 2200):
        r = run_fake(seed, 3, HANGS, throttler_factory=StuckAfterTimeout)
        if any(k.endswith(":ThrottlerTimeout") for k, _ in r.outcomes):
            timed_out += 1
            assert "unusable_after_timeout" in r.counters, (seed, r.details)
    assert timed_out >= 10


# --- replay ------------------------------------------------------------------------------------


def test_a_seed_replays_to_the_same_record() -> None:
    first = [run_fake(seed) for seed in range(40)]
    again = [run_fake(seed) for seed in reversed(range(40))][::-1]
    assert first == again
    assert len({r.fingerprint for r in first}) == 40


def test_the_failing_seeds_of_a_soak_replay() -> None:
    results: list[RunResult] = []
    report = soak(60, seed=3000, throttler_factory=HandoverDoesNotPause,
                  on_run=lambda r, _: results.append(r))
    failing = [r for r in results if r.counters]
    assert report.failing_seeds == len(failing) > 0
    for r in failing[:5]:
        assert run_fake(r.seed, throttler_factory=HandoverDoesNotPause) == r


# --- the command line --------------------------------------------------------------------------


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    try:
        code = cli_main.main(["soak-throttler", *args])
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize(("args", "needle"), [
    (["--runs", "0"], "--runs"),
    (["--runs", "many"], "--runs"),
    (["--callers", "0"], "--callers"),
    (["--faults", "raise,explode"], "explode"),
    (["--faults", ""], "--faults"),
    (["--backend", "xen"], "--backend"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "1", "--replay", "2"], "--replay"),
    (["--replay", "2", "--runs", "5"], "--runs"),
])
def test_bad_arguments_are_one_line_and_exit_2(
        args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(args, capsys)
    assert code == EXIT_USAGE and len(err) == 1 and needle in err[0], (code, err)
    assert not out


def test_kvm_unavailable_is_one_line_and_exit_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(soak_module, "DEV_KVM", "/nonexistent/kvm")
    code, out, err = _cli(["--backend", "kvm", "--runs", "1", "--quiet"], capsys)
    assert code == EXIT_USAGE and len(err) == 1, err
    assert "--backend kvm" in err[0] and "/nonexistent/kvm" in err[0] and not out


def test_json_prints_the_counters_and_the_exit_code_follows_them(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(["--runs", "30", "--seed", "7", "--faults", "none", "--json",
                           "--quiet"], capsys)
    report = json.loads(out)
    assert {"runs", *COUNTERS} <= set(report)
    assert report["runs"] == 30 and report["seed"] == 7 and report["backend"] == "fake"
    assert {"elapsed_s", "outcomes", "first_failures"} <= set(report)
    found = any(report[c] for c in COUNTERS)
    assert code == (EXIT_VIOLATED if found else EXIT_OK)
    assert len(err) == len({f["seed"] for f in report["first_failures"]})  # a line per run


def test_replay_prints_the_same_run_twice(capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for _ in range(2):
        code, out, err = _cli(["--replay", "71", "--json"], capsys)
        outs.append(json.loads(out))
    for o in outs:
        o.pop("elapsed_s")
        o.pop("runs_per_s")
    assert outs[0] == outs[1] and outs[0]["runs"] == 1 and outs[0]["replay"] == 71
    assert code == (EXIT_VIOLATED if outs[0]["details"] else EXIT_OK)


# --- KVM ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kvm_soak() -> SoakReport:
    return soak(20, callers=3, faults=ALL_FAULTS, backend="kvm", seed=0)


@pytest.mark.kvm
def test_a_kvm_soak_strikes_faults_and_leaves_nothing_behind(kvm_soak: SoakReport) -> None:
    assert kvm_soak.runs == 20
    assert any(k.startswith("fault:") for k in kvm_soak.outcomes)
    assert kvm_soak.counters["leaked_fds"] == 0
    assert kvm_soak.extra["fd_growth"] == 0 and kvm_soak.extra["fds_end_minus_start"] == 0
    assert kvm_soak.extra["thread_growth"] == 0
    assert kvm_soak.extra["threads_end_minus_start"] == 0


@pytest.mark.kvm
def test_a_kvm_soak_finds_nothing(kvm_soak: SoakReport) -> None:
    found = {c: n for c, n in kvm_soak.counters.items() if n}
    assert not found, f"{found}; first: {kvm_soak.first_failures[:3]}"
