"""The migration soak (``autoconverge soak``, :mod:`autoconverge.model.soak_migration`) and its
injection mechanism (:mod:`autoconverge.impl.migration.fault_points`).

- fault_points: a plan reads and writes as ``side:step#n:action``, a bad plan is refused, a
  migration passes every injection step of both sides, a planned vCPU failure strikes once,
  a receiver process takes its plan from the environment;
- on KVM (``kvm`` marker: skipped, with the reason, only where /dev/kvm is unusable) a
  20-run soak through the command line exits 0, prints every key, and every fault kind is
  injected and fires;
- the checks catch what they must: each deliberately broken source below makes its counter
  non-zero (exit 1), where the real source on the same seed keeps every counter zero (fake
  backend: simulated guest, ``receive --backend sim``);
- ``--replay SEED`` runs the fault and step of that seed's run in a campaign, and a failing
  run prints its seed, its fault and the replay command line;
- the bug the soak found: a receiver whose RESUMED could not be sent reported ``failed`` (and
  "the VM was discarded") for a guest it had started.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from typing import Any

import pytest

from autoconverge.cli import main as cli_main
from autoconverge.cli import soak as soak_cli
from autoconverge.cli.errors import EXIT_OK, EXIT_USAGE, EXIT_VIOLATED
from autoconverge.impl.migration import fault_points
from autoconverge.impl.migration.fakes import FakeClock, FakeVm, run_fake_migration
from autoconverge.impl.migration.fault_points import INJECTION_STEPS, FaultPlan, FaultyVcpus
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult, MigrationSource
from autoconverge.impl.vcpus import VcpuError
from autoconverge.model.soak_migration import (
    COUNTERS,
    FAILURES,
    FAULT_KINDS,
    FAULT_STEPS,
    SoakReport,
    SoakSettings,
    plan_for,
    seed_for,
    soak,
)

FAKE = SoakSettings(backend="fake")
CONTRACT_KEYS = {"runs", "completed", "cancelled", "failed", "hangs", "guest_lost",
                 "guest_twice", "source_left_throttled", "leaked_threads", "leaked_fds",
                 "per_fault"}


@pytest.fixture(autouse=True)
def no_plan_left() -> Any:
    fault_points.clear()
    yield
    fault_points.clear()


# --- fault_points -----------------------------------------------------------------------------


def test_a_plan_reads_back_what_it_writes() -> None:
    for side, steps in INJECTION_STEPS.items():
        for step in steps:
            for action, sides in fault_points.ACTIONS.items():
                if side in sides:
                    plan = FaultPlan(side, step, action, 3)
                    assert FaultPlan.parse(plan.encode()) == plan
    assert FaultPlan.parse("destination:recv_done:sigkill") == FaultPlan(
        "destination", "recv_done", "sigkill", 1)


@pytest.mark.parametrize("text", ["destination:recv_done", "nowhere:recv_done:sigkill",
                                  "destination:send_layout:sigkill",
                                  "source:send_layout:sigkill", "source:send_pass#0:cancel",
                                  "source:send_pass#x:cancel", "source:send_pass:explode"])
def test_a_bad_plan_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="fault plan"):
        FaultPlan.parse(text)


def test_every_fault_kind_acts_only_where_it_can() -> None:
    for kind, (action, sides) in FAULT_STEPS.items():
        for side, steps in sides.items():
            assert side in fault_points.ACTIONS[action], kind
            assert set(steps) <= set(INJECTION_STEPS[side]), kind


def test_a_migration_passes_every_injection_step_of_both_sides() -> None:
    never = FaultPlan("source", "send_pass", "cancel", 10**9)
    fault_points.install(never)
    run = run_fake_migration(make_policy("predictive"), rate_pps=20_000.0,
                             config=MigrationConfig(max_bandwidth_bps=10e6, timeout_s=60.0))
    assert run.result.status == "completed", run.result.error
    st = fault_points.state()
    assert not st.reached and not st.fired
    for side, steps in INJECTION_STEPS.items():
        for step in steps:
            assert st.hits.get(f"{side}:{step}", 0) >= 1, (side, step, st.hits)
    assert st.hits["source:send_pass"] == run.result.iterations + 1


def test_without_a_plan_a_hit_does_nothing() -> None:
    fault_points.hit("source", "send_layout")
    assert fault_points.state().hits == {}


def test_a_planned_vcpu_failure_strikes_once_after_its_step() -> None:
    vm = FakeVm(FakeClock(), pages=16, vcpus=1)
    vcpus = FaultyVcpus(vm)
    fault_points.install(FaultPlan("source", "send_pass", "resume_failure", 2))
    vcpus.pause()
    vcpus.resume()
    fault_points.hit("source", "send_pass")
    vcpus.pause()
    vcpus.resume()  # the first occurrence: not armed yet
    fault_points.hit("source", "send_pass")
    assert fault_points.state().reached and not fault_points.state().fired
    vcpus.pause()
    with pytest.raises(VcpuError, match="resume"):
        vcpus.resume()
    assert vm.paused and fault_points.state().fired  # the failing call did not resume
    vcpus.resume()
    assert not vm.paused
    assert vcpus.vcpu_count == 1  # the rest is the VM's


def test_a_receiver_process_reads_its_plan_from_the_environment() -> None:
    env = dict(os.environ)
    env[fault_points.PLAN_ENV] = "destination:recv_layout:reset"
    code = ("from autoconverge.impl.migration import fault_points as f\n"
            "f.hit('destination', 'recv_layout')\n"
            "print(f.state().fired)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=60, check=True)
    assert r.stdout.strip() == "True"
    assert "fault injected: destination:recv_layout#1:reset" in r.stderr


# --- the soak on KVM, through the command line ------------------------------------------------


@pytest.mark.kvm
def test_a_20_run_kvm_soak_exits_0_and_injects_every_fault_kind() -> None:
    r = subprocess.run([sys.executable, "-m", "autoconverge", "soak", "--runs", "20",
                        "--seed", "0", "--json"], capture_output=True, text=True,
                       timeout=900, stdin=subprocess.DEVNULL, check=False)
    out = json.loads(r.stdout)
    assert r.returncode == EXIT_OK, (out["first_failures"], r.stderr[-2000:])
    assert set(out) >= CONTRACT_KEYS
    assert out["runs"] == 20 and out["backend"] == "kvm"
    for key in FAILURES:
        assert out[key] == 0, (key, out["first_failures"])
    assert set(out["per_fault"]) == set(FAULT_KINDS)
    for kind, row in out["per_fault"].items():
        assert row["runs"] >= 3 and row["fired"] >= 1, (kind, row)
    assert out["completed"] + out["cancelled"] + out["failed"] + out["in_doubt"] == 20
    assert out["throttled"] > 0
    assert "20/20 runs" in r.stderr


# --- the checks catch broken sources -----------------------------------------------------------


class LeavesThrottlerRunning(MigrationSource):
    """Deliberately broken: the clean-up never shuts the throttler down."""

    def _shutdown_throttle(self, problems: list[str]) -> bool:
        return True


class NoResumeOnAbort(MigrationSource):
    """Deliberately broken: an abort after the switch-over paused the guest leaves it paused
    (and says so)."""

    def _cleanup(self, err: BaseException | None) -> None:
        was_paused = self.vm.is_paused()
        super()._cleanup(err)
        if was_paused and self.result.outcome == "aborted":
            self.vm.pause()
            self.result.source_running = False


class ResumesInDoubt(MigrationSource):
    """Deliberately broken: COMMIT unanswered, it resumes its guest anyway."""

    def _cleanup(self, err: BaseException | None) -> None:
        super()._cleanup(err)
        if self.result.status == "in_doubt":
            self.vm.resume()
            self.result.source_running = True


class DiscardsInDoubt(MigrationSource):
    """Deliberately broken: COMMIT unanswered (RESUMED lost), it destroys its guest."""

    def _cleanup(self, err: BaseException | None) -> None:
        super()._cleanup(err)
        if self.result.status == "in_doubt":
            self.vm.close()


class SkipsHandoverInTrace(MigrationSource):
    """Deliberately broken bookkeeping: the recorded trace leaves out the handover steps (a
    source whose state changes bypass its machine), so it is no behaviour of the spec."""

    def run(self) -> MigrationResult:
        r = super().run()
        r.trace = [t for t in r.trace if not t.startswith(("start_handover", "handover_"))]
        return r


def _one(seed: int, source: type[MigrationSource] = MigrationSource) -> SoakReport:
    return soak(1, seed=seed, settings=FAKE, source_factory=source, keep_records=True)


def _found(report: SoakReport) -> dict[str, int]:
    return {k: report.counters[k] for k in FAILURES if report.counters[k]}


@pytest.mark.parametrize(("broken", "plan", "counter"), [
    pytest.param(LeavesThrottlerRunning, ("cancel", "source", "send_pass"),
                 "source_left_throttled", id="throttler-left-running"),
    pytest.param(NoResumeOnAbort, ("cancel", "source", "send_state"), "guest_lost",
                 id="no-resume-on-abort"),
    pytest.param(ResumesInDoubt, ("connection_reset", "source", "recv_resumed"),
                 "guest_twice", id="resumes-in-doubt"),
    pytest.param(SkipsHandoverInTrace, ("cancel", "source", "recv_prepared"),
                 "trace_mismatch", id="trace-not-a-behaviour"),
])
def test_the_soak_catches_a_broken_source(broken: type[MigrationSource],
                                          plan: tuple[str, str, str], counter: str) -> None:
    seed = seed_for(*plan)
    good = _one(seed)
    assert good.ok, (good.first_failures, good.records[0])
    bad = _one(seed, broken)
    assert bad.counters[counter] == 1, (_found(bad), bad.records[0])
    assert not bad.ok


def test_the_soak_catches_a_source_that_discards_its_guest_in_doubt() -> None:
    """The receiver SIGKILLs itself after PREPARED, before reading COMMIT: the source sends
    COMMIT unless it saw the receiver's death first (a race; the first is the rule), then
    it is in doubt and the guest runs nowhere but in the paused source copy."""
    seeds = [s for s in range(200) if plan_for(s).fault.encode() ==
             "destination:recv_commit#1:sigkill"][:3]
    assert len(seeds) == 3
    in_doubt = 0
    for seed in seeds:
        rec = _one(seed, DiscardsInDoubt).records[0]
        if rec.source_status == "in_doubt":
            in_doubt += 1
            assert "guest_lost" in rec.failing, rec
        else:
            assert rec.source_status == "failed" and not rec.findings, rec
    assert in_doubt >= 1


def test_a_lost_resumed_is_resolved_from_the_receivers_result() -> None:
    """The source resets the connection once COMMIT left: in doubt. The receiver got COMMIT,
    started the guest and (when the reset arrived first, which is the rule) failed to send
    RESUMED; before the fix it then reported ``failed`` ("the VM was discarded") for a guest it
    runs, and the soak, as operator, resumed the source: guest_twice. Now it reports the
    resumed guest, whichever came first, and the source copy is discarded."""
    rec = _one(seed_for("connection_reset", "source", "recv_resumed")).records[0]
    assert rec.source_status == "in_doubt", rec
    assert rec.dest_status == "completed", rec
    assert rec.in_doubt_action == "discarded" and rec.guest_at == "destination"
    assert not rec.findings


# --- replay and the command line ---------------------------------------------------------------


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any],
                                                                         str]:
    code = cli_main.main(argv)
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else {}, err


def test_replay_runs_the_fault_of_that_seed(capsys: pytest.CaptureFixture[str]) -> None:
    code, campaign, _ = _cli(["soak", "--backend", "fake", "--runs", "3", "--seed", "40",
                              "--json", "--details", "--quiet"], capsys)
    assert code == EXIT_OK, campaign["first_failures"]
    assert [d["seed"] for d in campaign["details"]] == [40, 41, 42]
    code, replay, _ = _cli(["soak", "--backend", "fake", "--replay", "41", "--json",
                            "--quiet"], capsys)
    assert code == EXIT_OK and replay["runs"] == 1 and replay["replay"] == 41
    original = campaign["details"][1]
    assert (replay["run"]["kind"], replay["run"]["plan"]) == (original["kind"],
                                                             original["plan"])
    assert replay["run"]["fired"] is True


def test_a_failing_run_prints_its_seed_fault_and_replay(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(soak_cli, "soak", functools.partial(soak,
                                                            source_factory=NoResumeOnAbort))
    seed = seed_for("cancel", "source", "send_state", faults=("cancel",))
    code, out, err = _cli(["soak", "--backend", "fake", "--faults", "cancel", "--runs", "1",
                           "--seed", str(seed), "--json"], capsys)
    assert code == EXIT_VIOLATED
    assert out["guest_lost"] == 1 and not out["ok"]
    line = next(ln for ln in err.splitlines() if ln.startswith("soak: seed"))
    assert f"seed {seed}" in line and "source:send_state#1:cancel" in line
    assert f"autoconverge soak --backend fake --faults cancel --replay {seed}" in line


@pytest.mark.parametrize(("argv", "needle"), [
    (["--runs", "0"], "--runs"),
    (["--faults", "cancel,explode"], "--faults"),
    (["--backend", "xen"], "--backend"),
    (["--seed", "1", "--replay", "2"], "--replay"),
    (["--replay", "2", "--runs", "5"], "--runs"),
    (["--run-timeout", "0"], "--run-timeout"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv: list[str], needle: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli_main.main(["soak", *argv])
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err


def test_the_json_keys_are_the_contract() -> None:
    assert set(COUNTERS) | {"runs", "per_fault"} == CONTRACT_KEYS
    d = SoakReport(FAKE, 0).as_dict()
    assert set(d) >= CONTRACT_KEYS and set(FAILURES) <= set(d)


def test_the_injection_steps_are_the_spec_steps_of_each_side() -> None:
    """Every injection point is a transition of that side in the migration spec (except the
    destination's ``recv_pages``, one PAGES frame: a step inside ``receiving`` that the
    abstraction folds into the dirty flag), and every protocol step of the happy path is one."""
    from autoconverge.spec.specs import MIGRATION_SPEC

    own = {side: {t.trigger for t in MIGRATION_SPEC.relation() if t.actor == side}
           for side in ("source", "destination")}
    assert set(INJECTION_STEPS["source"]) <= own["source"]
    assert set(INJECTION_STEPS["destination"]) - {"recv_pages"} <= own["destination"]
    happy = {"send_layout", "recv_ready", "send_pass", "start_handover", "handover_returned",
             "send_state", "recv_prepared", "send_commit", "recv_resumed", "recv_report"}
    assert happy <= set(INJECTION_STEPS["source"])
    assert {"recv_layout", "recv_done", "recv_commit", "send_report"} <= set(
        INJECTION_STEPS["destination"])
