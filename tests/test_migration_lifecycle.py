"""The migration driven by its machines (issue #16): both sides fire the spec's steps, their
traces validate against the spec, a step the spec does not allow raises.

- real in-process migrations (fake guests, virtual time, a socket pair, the destination in a
  thread): completed; cancelled at every source step (the soak's fault points); a
  destination whose VM does not start on COMMIT (refused: the source gets its guest back);
  the connection closed once COMMIT left (in doubt). Each side's trace validates alone, and
  both together, against the spec;
- the validator rejects what no behaviour of the spec does: COMMIT received before DONE, a
  source resuming after COMMIT without a refusal, a source claiming RESUMED from a
  destination that discarded its VM, steps the spec does not know;
- a source that skips a step the spec requires (the dirty-log stop of an abort) or takes
  one it forbids (a lost RESUMED taken for a refusal, then resuming) raises the spec
  violation instead of finishing silently - and the guest is not resumed on it;
- the traces reach the JSON of ``migrate`` and ``receive`` (through ``demo``).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transitions import MachineError

from autoconverge.cli.main import main
from autoconverge.impl.migration import fault_points
from autoconverge.impl.migration.destination import DestinationResult, MigrationDestination
from autoconverge.impl.migration.errors import MigrationError
from autoconverge.impl.migration.fakes import (
    TEST_KEY,
    FakeClock,
    FakeThrottle,
    FakeVm,
    VirtualLink,
)
from autoconverge.impl.migration.fault_points import FaultPlan
from autoconverge.impl.migration.handshake import client_handshake, server_handshake
from autoconverge.impl.migration.lifecycle import MigrationSpecViolation, SideLifecycle
from autoconverge.impl.migration.messages import Layout, Limits
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import (
    CommitInDoubt,
    MigrationConfig,
    MigrationResult,
    MigrationSource,
)
from autoconverge.impl.migration.transport import CancellableSocket
from autoconverge.impl.throttler import SpecViolation
from autoconverge.model.migration_tracecheck import check_side, check_traces
from autoconverge.spec import migration as M

BUSY = {"rate": 20_000.0, "working_set": (64, 1024)}


@pytest.fixture(autouse=True)
def no_plan_and_no_thread_left() -> Any:
    fault_points.clear()
    before = set(threading.enumerate())
    yield
    fault_points.clear()
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left behind: {left}"


# --------------------------------------------------------------------------- the harness
@dataclass
class Run:
    result: MigrationResult | None
    source_error: BaseException | None
    source: MigrationSource
    dest: DestinationResult | None
    dest_error: BaseException | None
    vm: FakeVm
    throttles: list[FakeThrottle]
    dest_vms: list[FakeVm]

    @property
    def source_trace(self) -> list[str]:
        return self.source.result.trace

    @property
    def dest_trace(self) -> list[str]:
        assert self.dest is not None, self.dest_error
        return self.dest.trace


class NoStartVm(FakeVm):
    """A destination VM that loads the vCPU state but does not start."""

    def start(self) -> None:
        raise RuntimeError("injected: the VM does not start")


def migrate(*, policy: str = "predictive", rate: float = 0.0,
            working_set: tuple[int, int] = (64, 1024), config: MigrationConfig | None = None,
            source_class: type[MigrationSource] = MigrationSource,
            dest_vm_class: type[FakeVm] = FakeVm,
            plan: FaultPlan | None = None) -> Run:
    """A migration over a socket pair: the source here, the real destination in a thread,
    fake guests on virtual time; ``plan``: a fault injected at a step of the source."""
    src_clock, dst_clock = FakeClock(), FakeClock()
    vm = FakeVm(src_clock, pages=2048, vcpus=2, dirty_rate_pps=rate, working_set=working_set)
    dest_vms: list[FakeVm] = []
    throttles: list[FakeThrottle] = []
    a, b = socket.socketpair()
    box: dict[str, Any] = {}

    def factory(lay: Layout) -> FakeVm:
        v = dest_vm_class(dst_clock, pages=lay.page_count, page_size=lay.page_size,
                          vcpus=lay.vcpu_count, running=False, fill=0.0)
        dest_vms.append(v)
        return v

    def dest() -> None:
        ev = threading.Event()
        stream = CancellableSocket(b, ev, io_timeout_s=5.0)
        try:
            channel = server_handshake(stream, TEST_KEY)
            box["dest"] = MigrationDestination(channel, factory, Limits(guest_kinds=("fake",)),
                                               clock=dst_clock, run_after_s=0.2,
                                               cancel_event=ev).run()
        except BaseException as exc:
            box["dest_error"] = exc
        finally:
            stream.close()

    def throttle(v: Any) -> FakeThrottle:
        t = FakeThrottle(v)
        throttles.append(t)
        return t

    th = threading.Thread(target=dest, name="lifecycle-destination")
    th.start()
    ev = threading.Event()
    stream = CancellableSocket(a, ev, io_timeout_s=5.0)
    result: MigrationResult | None = None
    error: BaseException | None = None
    try:
        channel = client_handshake(stream, TEST_KEY)
        src = source_class(vm, channel, make_policy(policy), throttle,
                           config or MigrationConfig(max_bandwidth_bps=10e6, timeout_s=120.0),
                           clock=src_clock, link=VirtualLink(stream), cancel_event=ev)
        if plan is not None:
            fault_points.install(plan, source=src)
        try:
            result = src.run()
        except SpecViolation as exc:
            error = exc
    finally:
        stream.close()
        th.join(30)
    return Run(result, error, src, box.get("dest"), box.get("dest_error"), vm, throttles,
               dest_vms)


def assert_traces_valid(run: Run) -> None:
    src, dst = run.source_trace, run.dest_trace
    for side, trace in (("source", src), ("destination", dst)):
        alone = check_side(side, trace)  # type: ignore[arg-type]
        assert alone.ok, (side, alone.explain(), trace)
    both = check_traces(src, dst)
    assert both.ok, (both.explain(), src, dst)
    assert [w.split(".", 1)[1] for w in both.witness
            if w.split(".", 1)[0] in ("source", "clock", "failure")] == src


def assert_source_runs_its_guest(run: Run) -> None:
    r = run.result
    assert r is not None and r.outcome == "aborted" and r.source_running is True, r
    assert not run.vm.paused and not run.vm.logging
    assert all(t.shut for t in run.throttles)


# ------------------------------------------------------------------ real runs, valid traces
def test_a_completed_migration_fires_every_step_of_the_happy_path() -> None:
    run = migrate(**BUSY)  # type: ignore[arg-type]
    r = run.result
    assert r is not None, run.source_error
    assert r.status == "completed" and r.outcome == "completed", r.error
    assert r.max_throttle_percent > 0
    src = run.source_trace
    assert src[:3] == ["send_layout@start", "recv_ready@setup", "send_pass@precopy"]
    assert src.count("throttle_up@precopy") == 1  # the spec's one throttle_up
    assert src.count("send_pass@precopy") == r.iterations + 1
    assert src[-10:] == [
        "start_handover@precopy", "handover_returned@handing_over", "send_state@stopped",
        "recv_prepared@awaiting_prepared", "send_commit@ready_to_commit",
        "recv_resumed@awaiting_resumed", "recv_report@verifying", "stop_throttler@closing",
        "stop_dirty_log@closing", "finish@closing"]
    assert run.dest_trace == ["recv_layout@listening", "recv_done@receiving",
                              "recv_commit@prepared", "send_report@running"]
    assert_traces_valid(run)
    d = r.to_dict()
    assert d["trace"] == src and json.loads(json.dumps(d))["trace"] == src


def test_an_idle_guest_migrates_without_a_throttle_step() -> None:
    run = migrate(policy="ch")
    assert run.result is not None and run.result.status == "completed"
    assert "throttle_up@precopy" not in run.source_trace
    assert_traces_valid(run)


CANCEL_STEPS = [
    # (the step whose fault point the cancel lands at - before the step's I/O -, the state
    # the source aborts from)
    ("send_layout", M.SETUP),
    ("recv_ready", M.SETUP),
    ("send_pass", M.PRECOPY),
    ("start_handover", M.STOPPED),  # handover() does not look at the cancel
    ("handover_returned", M.STOPPED),
    ("send_state", M.STOPPED),
    ("recv_prepared", M.AWAITING_PREPARED),
    ("send_commit", M.PREPARED_STATE),  # before COMMIT leaves: still an abort
]


@pytest.mark.parametrize(("step", "aborts_from"), CANCEL_STEPS)
def test_a_cancel_at_each_step_before_the_commit_point_aborts_by_the_spec(
        step: str, aborts_from: str) -> None:
    run = migrate(plan=FaultPlan("source", step, "cancel"), **BUSY)  # type: ignore[arg-type]
    assert fault_points.state().fired
    assert run.result is not None and run.result.status == "cancelled", run.result
    assert_source_runs_its_guest(run)
    src = run.source_trace
    assert f"abort@{aborts_from}" in src, src
    assert src[-1] == "finish_abort@aborting"
    started = aborts_from != M.SETUP  # READY came: dirty log and throttler on
    assert ("stop_dirty_log@aborting" in src) == started
    assert ("stop_throttler@aborting" in src) == started
    assert ("resume_guest@aborting" in src) == (aborts_from in (M.STOPPED,
                                                                M.AWAITING_PREPARED,
                                                                M.PREPARED_STATE))
    assert run.dest_trace[-1].startswith("discard@")
    assert_traces_valid(run)


def test_a_cancel_once_commit_left_is_ignored_and_the_run_completes() -> None:
    run = migrate(plan=FaultPlan("source", "recv_resumed", "cancel"))
    assert run.result is not None, run.source_error
    assert run.result.status == "completed", run.result.error
    assert "abort" not in " ".join(run.source_trace)
    assert run.source_trace[-1] == "finish@closing"
    assert_traces_valid(run)


def test_the_migration_timeout_aborts_from_precopy() -> None:
    run = migrate(policy="none", config=MigrationConfig(max_bandwidth_bps=10e6, timeout_s=1.0),
                  **BUSY)  # type: ignore[arg-type]
    assert run.result is not None and run.result.status == "timeout"
    assert "abort@precopy" in run.source_trace
    assert_source_runs_its_guest(run)
    assert_traces_valid(run)


def test_a_destination_refusing_commit_gives_the_guest_back_by_the_spec() -> None:
    run = migrate(dest_vm_class=NoStartVm)
    r = run.result
    assert r is not None and r.status == "failed" and r.dest_running is False, r
    assert_source_runs_its_guest(run)
    assert run.source_trace[-6:] == [
        "send_commit@ready_to_commit", "commit_refused@awaiting_resumed",
        "stop_throttler@aborting", "resume_guest@aborting", "stop_dirty_log@aborting",
        "finish_abort@aborting"]
    assert run.dest_trace == ["recv_layout@listening", "recv_done@receiving",
                              "start_fails@prepared"]
    assert_traces_valid(run)


def test_the_link_closed_once_commit_left_is_in_doubt_by_the_spec() -> None:
    run = migrate(plan=FaultPlan("source", "recv_resumed", "reset"))
    r = run.result
    assert r is not None and r.status == "in_doubt" and r.outcome == "in_doubt", r
    assert run.vm.paused and r.source_running is False and r.dest_running is None
    assert run.source_trace[-5:] == [
        "send_commit@ready_to_commit", "commit_unanswered@awaiting_resumed",
        "stop_throttler@doubt_closing", "stop_dirty_log@doubt_closing",
        "finish_in_doubt@doubt_closing"]
    assert "resume_guest" not in " ".join(run.source_trace)
    assert run.dest_trace[:3] == ["recv_layout@listening", "recv_done@receiving",
                                  "recv_commit@prepared"]  # the guest started there
    assert_traces_valid(run)


def test_a_reset_before_commit_left_aborts() -> None:
    run = migrate(plan=FaultPlan("source", "send_commit", "reset"))
    assert run.result is not None and run.result.status == "failed", run.result
    assert_source_runs_its_guest(run)
    assert "abort@ready_to_commit" in run.source_trace
    assert "send_commit@ready_to_commit" not in run.source_trace  # never the commit point
    assert_traces_valid(run)


class NoStateVm(FakeVm):
    """A destination VM that refuses the vCPU state the source sent."""

    def load_vcpu_state(self, states: Any) -> None:
        raise RuntimeError("injected: registers this VM cannot take")


class FailingLogVm(FakeVm):
    """A source VM whose dirty-log sync fails once in pre-copy (the source's own failure)."""

    failed = False

    def sync_dirty_log(self) -> Any:
        if not FailingLogVm.failed and self.logging:
            FailingLogVm.failed = True
            raise RuntimeError("injected: the dirty-log sync failed")
        return super().sync_dirty_log()


def test_the_destination_refusing_the_vcpu_state_is_its_refuse_step() -> None:
    run = migrate(dest_vm_class=NoStateVm)
    assert_source_runs_its_guest(run)
    assert run.dest_trace == ["recv_layout@listening", "refuse@receiving"]
    assert "abort@awaiting_prepared" in run.source_trace
    assert_traces_valid(run)


def test_the_sources_own_failure_is_its_source_error_step() -> None:
    run = migrate(source_class=OwnFailureSource)
    assert_source_runs_its_guest(run)
    assert "source_error@precopy" in run.source_trace
    i = run.source_trace.index("source_error@precopy")
    assert run.source_trace[i + 1] == "abort@precopy"
    assert_traces_valid(run)


class OwnFailureSource(MigrationSource):
    """A source whose first delta pass fails with an error of its own (not the peer's)."""

    def _end_pass(self, it: int) -> None:
        if it == 0:
            raise RuntimeError("injected: the source failed itself")
        super()._end_pass(it)


# ------------------------------------------------------------------- the validator rejects
HAPPY_SOURCE = ["send_layout@start", "recv_ready@setup", "send_pass@precopy",
                "start_handover@precopy", "handover_returned@handing_over",
                "send_state@stopped", "recv_prepared@awaiting_prepared",
                "send_commit@ready_to_commit", "recv_resumed@awaiting_resumed",
                "recv_report@verifying", "stop_throttler@closing", "stop_dirty_log@closing",
                "finish@closing"]
HAPPY_DEST = ["recv_layout@listening", "recv_done@receiving", "recv_commit@prepared",
              "send_report@running"]


def test_the_validator_accepts_the_happy_path_and_partial_traces() -> None:
    assert check_traces(HAPPY_SOURCE, HAPPY_DEST).ok
    assert check_traces([], []).ok
    # the destination killed after PREPARED; the source in doubt after COMMIT
    killed = check_traces([*HAPPY_SOURCE[:8], "commit_unanswered@awaiting_resumed"],
                          HAPPY_DEST[:2])
    assert killed.ok, killed.explain()
    assert any(w.startswith("crash.dst_die") or w.startswith("network.link_break")
               for w in killed.witness)
    # a SIGKILLed receiver prints no trace: unknown (None), not "no step" ([])
    assert check_traces(HAPPY_SOURCE, None).ok
    assert not check_traces(HAPPY_SOURCE[:2], []).ok  # READY from a destination that did nothing


def test_commit_received_before_done_is_rejected() -> None:
    broken = ["recv_layout@listening", "recv_commit@receiving"]
    alone = check_side("destination", broken)
    assert not alone.ok and alone.destination_matched == 1
    assert alone.first_unmatched is not None and alone.first_unmatched.index == 1
    assert "recv_commit@receiving" in alone.explain()
    skipped = ["recv_layout@listening", "recv_commit@prepared"]  # pretends to be prepared
    assert not check_traces(HAPPY_SOURCE, skipped).ok


def test_a_source_resuming_after_commit_without_a_refusal_is_rejected() -> None:
    in_doubt = [*HAPPY_SOURCE[:8], "commit_unanswered@awaiting_resumed",
                "stop_throttler@doubt_closing", "resume_guest@doubt_closing"]
    v = check_side("source", in_doubt)
    assert not v.ok and v.source_matched == 10
    assert "source: stop_dirty_log@doubt_closing" in v.possible
    aborting_after_commit = [*HAPPY_SOURCE[:8], "abort@awaiting_resumed"]
    assert not check_side("source", aborting_after_commit).ok


def test_the_sides_must_agree() -> None:
    """Each trace is a behaviour of the spec alone, but no behaviour has both: the source
    says RESUMED came, the destination discarded its VM without starting the guest."""
    dest = ["recv_layout@listening", "recv_done@receiving", "discard@prepared"]
    assert check_side("source", HAPPY_SOURCE).ok and check_side("destination", dest).ok
    both = check_traces(HAPPY_SOURCE, dest)
    assert not both.ok
    assert {u.side for u in both.unmatched} <= {"source", "destination"} and both.unmatched
    # and a refusal the destination never sent
    refused = [*HAPPY_SOURCE[:8], "commit_refused@awaiting_resumed"]
    assert not check_traces(refused, HAPPY_DEST).ok


def test_unknown_steps_are_rejected() -> None:
    assert not check_side("source", ["teleport@start"]).ok
    assert not check_side("source", ["recv_layout@listening"]).ok  # the other side's step
    with pytest.raises(ValueError):
        check_side("operator", [])  # type: ignore[arg-type]


# ---------------------------------------------------------- sources that break the spec
class SkipsDirtyLogStop(MigrationSource):
    """Deliberately broken: an abort's clean-up forgets to stop the dirty log."""

    def _stop_dirty_log(self, problems: list[str]) -> None:
        pass


class TakesSilenceForRefusal(MigrationSource):
    """Deliberately broken: a lost RESUMED taken for a refusal (then it would resume)."""

    def _await_resumed(self) -> None:
        try:
            super()._await_resumed()
        except CommitInDoubt as exc:
            self._dest_may_run = False
            raise MigrationError(f"taken for a refusal: {exc}") from exc


def test_finishing_an_abort_without_stopping_the_dirty_log_raises() -> None:
    run = migrate(source_class=SkipsDirtyLogStop, plan=FaultPlan("source", "send_pass",
                                                                 "cancel"))
    assert run.result is None
    assert isinstance(run.source_error, MigrationSpecViolation), run.source_error
    assert "finish_abort" in str(run.source_error) and "dlog=True" in str(run.source_error)
    assert run.source_trace[-1] == "stop_throttler@aborting"  # no finish step
    assert not run.vm.paused and all(t.shut for t in run.throttles)  # still cleaned up


def test_resuming_after_a_lost_resumed_raises_and_the_guest_stays_paused() -> None:
    run = migrate(source_class=TakesSilenceForRefusal,
                  plan=FaultPlan("source", "recv_resumed", "reset"))
    assert isinstance(run.source_error, MigrationSpecViolation), run.source_error
    assert "commit_refused" in str(run.source_error)
    assert run.vm.paused, "resumed on a step the spec refused"
    assert run.source.result.source_running is False
    assert run.source_trace[-1] == "send_commit@ready_to_commit"
    assert run.dest_trace[2] == "recv_commit@prepared"  # the guest runs there


# ------------------------------------------------------------------ the lifecycle itself
def test_the_lifecycle_refuses_what_the_spec_does_not_allow() -> None:
    life = SideLifecycle("destination")
    try:
        with pytest.raises(MigrationSpecViolation, match="not allowed in state 'listening'") \
                as info:
            life.fire(M.RECV_COMMIT, sd=M.COMMIT)
        assert isinstance(info.value.__cause__, MachineError)
        with pytest.raises(MigrationSpecViolation, match="earlier step"):
            life.fire(M.RECV_LAYOUT, sd=M.LAYOUT)  # broken: nothing more is taken
        assert life.trace == [] and life.state == M.LISTENING
    finally:
        life.close()
    life = SideLifecycle("destination")
    try:
        life.check(M.RECV_LAYOUT, sd=M.LAYOUT)  # allowed: nothing taken
        assert life.trace == [] and life.violation is None
        with pytest.raises(MigrationSpecViolation, match="guard of 'recv_layout'"):
            life.fire(M.RECV_LAYOUT)  # no LAYOUT observed
    finally:
        life.close()
    life = SideLifecycle("destination")
    try:
        with pytest.raises(MigrationSpecViolation, match="'recv_commit' is not allowed"):
            life.check(M.RECV_COMMIT, sd=M.COMMIT)  # before starting a guest: refused
        assert life.trace == [] and life.violation is not None
    finally:
        life.close()
    src = SideLifecycle("source")
    try:
        with pytest.raises(ValueError, match="not observed"):
            src.fire(M.SEND_LAYOUT, src=M.SETUP)
        src.fire(M.SEND_LAYOUT)
        assert src.trace == ["send_layout@start"] and src.record.sd == M.LAYOUT
        src.fire(M.ABORT, cancel=True)  # its own outgoing is counted as read: empty again
        assert src.record.sd == M.NO_MSG and src.record.sd_err is True
    finally:
        src.close()


# ------------------------------------------------------------------ the command line
def test_demo_prints_both_traces_in_its_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--backend", "sim", "--policy", "predictive", "--memory", "16M",
                 "--working-set", "4M", "--max-bandwidth", "32M", "--warmup", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    src, dst = d["trace"], d["receiver"]["trace"]  # migrate's JSON, receive --json
    assert src[-1] == "finish@closing" and dst[-1] == "send_report@running"
    assert check_traces(src, dst).ok


# ------------------------------------------- Hypothesis: the real sides vs the spec, faults drawn
PLANNABLE = [(side, step, action)
             for action, sides in fault_points.ACTIONS.items() if action in ("cancel", "reset",
                                                                              "timeout")
             for side in sides for step in fault_points.INJECTION_STEPS[side]]
"""Faults an in-process run can take (a SIGKILL needs a receiver process: the soak's)."""


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(plan=st.sampled_from(PLANNABLE), occurrence=st.integers(1, 2),
       busy=st.booleans(), dest_vm=st.sampled_from([FakeVm, NoStartVm, NoStateVm]))
@pytest.mark.covers("migration:NeverRunsTwice", "migration:AbortLeavesSourceRunning",
                    "migration:ThrottlerClosedAtEnd", "migration:InDoubtKeepsSourcePaused")
def test_real_sides_with_a_drawn_fault_follow_the_spec(
        plan: tuple[str, str, str], occurrence: int, busy: bool, dest_vm: type[FakeVm]) -> None:
    """A real source and destination, a fault drawn (kind, side, step, occurrence) and a
    destination VM drawn (normal, failing to start, refusing the vCPU state): both traces
    are one behaviour of the spec, and the end state is what its properties promise: never
    on both hosts; an abort leaves the source running with the throttler shut and the dirty
    log off; in doubt keeps it paused; completed means the destination runs it."""
    side, step, action = plan
    fault_points.clear()
    kw: dict[str, Any] = dict(BUSY) if busy else {}
    run = migrate(plan=FaultPlan(side, step, action, occurrence),  # type: ignore[arg-type]
                  dest_vm_class=dest_vm, **kw)
    assert run.source_error is None and run.dest_error is None, (run.source_error,
                                                                 run.dest_error)
    r = run.result
    assert r is not None
    assert_traces_valid(run)
    dest_runs = run.dest is not None and run.dest.vm is not None
    assert not (dest_runs and not run.vm.paused and r.outcome != "completed")
    assert all(t.shut for t in run.throttles) and not run.vm.logging
    if r.outcome == "aborted":
        assert not run.vm.paused and r.source_running is True
    elif r.outcome == "in_doubt":
        assert run.vm.paused
    else:
        assert dest_runs, (r.outcome, run.dest_trace)
