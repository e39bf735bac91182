"""Soak the migration: back-to-back real migrations, one injected fault each, end-state checks.

One job: the campaign behind ``autoconverge soak``. Each *run* is one seed:

- the seed draws the run's fault (:func:`plan_for`): the kind is round-robin over the kinds
  asked for (seed modulo their number, so every kind comes up), then ``random.Random(seed)``
  draws the side, the step (uniformly among the side's steps where that kind can act,
  :data:`FAULT_STEPS`) and, for the steps that repeat, which occurrence. Kinds:
  ``sigkill_destination`` (the receiver SIGKILLs itself at the step), ``connection_reset``
  (either side closes the connection with SO_LINGER 0), ``cancel`` (``MigrationSource.
  cancel()``), ``timeout`` (the source's migration timeout expires at the step, strategy
  cancel), ``pause_failure`` / ``resume_failure`` (the next ``pause()``/``resume()`` the
  throttler makes at the source raises ``VcpuError``). The mechanism is
  :mod:`autoconverge.impl.migration.fault_points`;
- the destination is a real ``python -m autoconverge receive --json`` process (the plan
  reaches it through ``AUTOCONVERGE_FAULT_PLAN``); the source runs in this process, on a
  fresh guest (``kvm``: the built-in KVM guest, 32 MiB, 1 vCPU writing a 6 MiB working set
  as fast as it can; ``fake``: the simulated guest on the wall clock, same shape, and a
  ``receive --backend sim``: no KVM needed), with the real threaded throttler (its vCPU
  calls go through :class:`~autoconverge.impl.migration.fault_points.FaultyVcpus`), the
  ``predictive`` policy, a 100 ms downtime limit and a 32 MiB/s link cap, so that a
  fault-free run takes two to four delta passes with throttling and ends in a second or
  two (the receiver lets the guest run 0.05 s before its report);
- then the checks (:func:`_check`). Right after ``run()`` returned: the throttler is shut
  down (closed), the guest is paused exactly when the result says it does not run, dirty
  logging is off, an ``in_doubt`` source is paused. Then the soak plays operator for an
  ``in_doubt`` result, as the README prescribes: it reads the receiver's JSON result; if the
  receiver resumed the guest (status ``completed``), the paused source copy is discarded,
  otherwise (it failed, or the process is gone) the source copy is resumed. Last the end
  state: where the guest runs. The receiver runs the guest if its status is ``completed`` or
  its error says ``guest resumed, but: ...`` (what it writes when something failed after it
  started the guest), so a receiver misreporting a started guest shows as ``guest_twice``.

Counters (:data:`COUNTERS` and :data:`FAILURES`), each a number of runs unless said:
``completed`` / ``cancelled`` (a timeout too; ``timed_out`` counts those) / ``failed`` /
``in_doubt``: the source's status; ``unverified``: completed without a memory hash;
``guest_twice``: the receiver resumed the guest while the source guest runs, right after
``run()`` returned or after the operator's decision; ``guest_lost``: at the end neither
runs it - except when the injected SIGKILL hit the receiver after it started the guest
(``destination_died_running``, not a failure: the guest died with its host);
``source_left_throttled``: after ``run()`` the throttler is not shut down, or the source
guest is paused while the result says it runs; ``source_state_wrong``: the guest runs while
the result says it is paused (or its state is unknown); ``in_doubt_source_running``: an
in-doubt source whose guest is not paused; ``dirty_log_left_on``; ``hash_mismatch``: a
completed run whose memory hashes differ (the source's comparison, or the receiver's
reported hash against the source's); ``destination_crashed``: the receiver ended without a
result and not by the injected SIGKILL; ``harness_errors``: the harness could not run the
migration (e.g. no receiver); ``hangs``: a run not over within ``run_timeout_s`` (wall
clock) - the receiver is killed and the run counted; if the source does not end within a
grace period after that, the campaign stops there (``stopped_early``), since a stuck thread
would blur every later count; ``leaked_threads`` / ``leaked_fds``: live threads and open
file descriptors of this process after the last run, minus their number after the first
run (measured after ``gc.collect()``; a run after which they exceed the baseline and every
earlier count is listed as a finding of that run). Every receiver process is reaped each
run. ``not_fired``: runs whose fault never took effect (its step or occurrence did not come,
e.g. no third pass, or no pause after an armed pause failure). ``trace_mismatch``: the
source's trace and the receiver's (none when it was killed: any prefix of a behaviour) are
not the projections of one behaviour of the migration spec
(:func:`~autoconverge.model.migration_tracecheck.check_traces`).

A campaign passes when every counter of :data:`FAILURES` is zero.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

from autoconverge.impl.migration import fault_points
from autoconverge.impl.migration.backends import make_source_guest
from autoconverge.impl.migration.fault_points import INJECTION_STEPS, FaultPlan
from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.handshake import client_handshake
from autoconverge.impl.migration.policy import make_policy
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult, MigrationSource
from autoconverge.impl.migration.throttling import RealThrottle, ThrottleControl
from autoconverge.impl.migration.transport import CancellableSocket, connect
from autoconverge.impl.throttler import Throttler

from .migration_tracecheck import check_traces

Backend = Literal["kvm", "fake"]
BACKENDS: Final[tuple[Backend, ...]] = ("kvm", "fake")
FAULT_KINDS: Final = ("sigkill_destination", "connection_reset", "cancel", "timeout",
                      "pause_failure", "resume_failure")
_SOURCE_STEPS = INJECTION_STEPS["source"]
_DEST_STEPS = INJECTION_STEPS["destination"]
FAULT_STEPS: Final[dict[str, tuple[fault_points.Action,
                                   dict[fault_points.Side, tuple[str, ...]]]]] = {
    "sigkill_destination": ("sigkill", {"destination": _DEST_STEPS}),
    "connection_reset": ("reset", {"source": _SOURCE_STEPS, "destination": _DEST_STEPS}),
    "cancel": ("cancel", {"source": _SOURCE_STEPS}),  # after COMMIT: must be ignored
    # the timeout is checked during pre-copy only
    "timeout": ("timeout", {"source": ("send_layout", "recv_ready", "send_pass")}),
    # the throttler pauses while throttling and at the handover, resumes while throttling
    "pause_failure": ("pause_failure",
                      {"source": ("recv_ready", "send_pass", "start_handover")}),
    "resume_failure": ("resume_failure", {"source": ("recv_ready", "send_pass")}),
}
"""Each fault kind: its fault_points action, and the steps of each side where it can act."""
MAX_OCCURRENCE: Final[dict[tuple[str, str], int]] = {
    ("source", "send_pass"): 3,
    ("destination", "recv_pages"): 24,
}
"""Steps that repeat: the occurrence is drawn from 1..this (the first full pass alone is
some 20 PAGES frames; a later occurrence may not come, the run then counts as not fired)."""

COUNTERS: Final = ("completed", "cancelled", "failed", "hangs", "guest_lost", "guest_twice",
                   "source_left_throttled", "leaked_threads", "leaked_fds")
"""The contract's keys besides ``runs`` and ``per_fault``."""
FAILURES: Final = ("hangs", "guest_lost", "guest_twice", "source_left_throttled",
                   "leaked_threads", "leaked_fds", "dirty_log_left_on", "hash_mismatch",
                   "in_doubt_source_running", "source_state_wrong", "destination_crashed",
                   "harness_errors", "trace_mismatch")
"""A campaign fails (exit 1) if any of these is not zero."""
OUTCOMES: Final = ("in_doubt", "timed_out", "unverified", "destination_died_running",
                   "in_doubt_resumed", "in_doubt_discarded", "not_fired", "throttled")
"""Counted, never a failure (``throttled``: runs in which the source throttled)."""
FIRST_FAILURES: Final = 20
KEY_ENV: Final = "AUTOCONVERGE_KEY"
"""The receiver reads its pre-shared key from here (``autoconverge receive``)."""
DEV_KVM: Final = "/dev/kvm"
MiB: Final = 1024 * 1024


class KvmUnavailable(Exception):
    """The KVM backend cannot run here."""


@dataclass(frozen=True)
class SoakSettings:
    """The shape of every run (the defaults: a short, busy, throttled migration)."""

    backend: Backend = "kvm"
    faults: tuple[str, ...] = FAULT_KINDS
    memory_bytes: int = 32 * MiB
    working_set_bytes: int = 6 * MiB
    vcpus: int = 1
    max_bandwidth_bps: float = 32 * MiB
    downtime_limit_s: float = 0.1
    policy: str = "predictive"
    run_after_s: float = 0.05
    io_timeout_s: float = 5.0
    cleanup_timeout_s: float = 5.0
    migration_timeout_s: float = 30.0
    run_timeout_s: float = 60.0
    """Wall-clock limit of one run (source, then the receiver's exit): past it, a hang."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if not self.faults or unknown:
            raise ValueError(f"unknown fault kind {', '.join(unknown) or '(none given)'}; "
                             f"known: {', '.join(FAULT_KINDS)}")
        if not 1.0 <= self.run_timeout_s <= 3600:
            raise ValueError("run timeout must be within 1..3600 s")


@dataclass(frozen=True)
class RunPlan:
    seed: int
    kind: str
    fault: FaultPlan

    @property
    def text(self) -> str:
        return f"{self.kind} at {self.fault.side}:{self.fault.step}#{self.fault.occurrence}"


def plan_for(seed: int, faults: tuple[str, ...] = FAULT_KINDS) -> RunPlan:
    """The fault of the run with this seed: same seed and kinds, same plan."""
    kind = faults[seed % len(faults)]
    rng = random.Random(seed)
    action, sides = FAULT_STEPS[kind]
    side = rng.choice(sorted(sides))
    step = rng.choice(sides[side])
    occurrence = rng.randint(1, MAX_OCCURRENCE.get((side, step), 1))
    return RunPlan(seed, kind, FaultPlan(side, step, action, occurrence))


def seed_for(kind: str, side: str, step: str, occurrence: int = 1,
             faults: tuple[str, ...] = FAULT_KINDS, limit: int = 100_000) -> int:
    """The smallest seed whose plan is this one (tests and hand-picked replays)."""
    for seed in range(limit):
        p = plan_for(seed, faults)
        if (p.kind, p.fault.side, p.fault.step, p.fault.occurrence) == (kind, side, step,
                                                                        occurrence):
            return seed
    raise ValueError(f"no seed below {limit} plans {kind} at {side}:{step}#{occurrence}")


@dataclass
class RunRecord:
    """What one run did and found."""

    seed: int
    kind: str
    plan: str
    """The fault plan (``side:step#occurrence:action``)."""
    fired: bool = False
    source_status: str | None = None
    source_outcome: str | None = None
    source_error: str | None = None
    iterations: int = 0
    """The source's delta passes."""
    max_throttle_percent: int = 0
    dest_status: str = "none"
    """The receiver's result status, ``killed`` (the injected SIGKILL), ``crashed`` (no
    result otherwise), ``none`` (never started)."""
    dest_exit_code: int | None = None
    dest_error: str | None = None
    in_doubt_action: str | None = None
    """``resumed`` / ``discarded``: what the soak as operator did with an in-doubt source."""
    guest_at: str = "?"
    trace_ok: bool | None = None
    """Both sides' traces are a behaviour of the migration spec."""
    """Where the guest runs at the end: ``source``, ``destination``, ``both``, ``nowhere``,
    ``died_with_destination``."""
    findings: list[tuple[str, str]] = field(default_factory=list)
    """(counter of :data:`FAILURES`, what was seen)."""
    seconds: float = 0.0
    stuck: bool = False
    """The source never ended, even after the receiver was killed: the campaign stops."""

    def found(self, counter: str, detail: str) -> None:
        self.findings.append((counter, detail))

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for c, _ in self.findings))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["findings"] = [{"counter": c, "detail": t} for c, t in self.findings]
        return d


# --- the pieces of one run ---------------------------------------------------------------


class ObservedThrottle(RealThrottle):
    """The production throttle; the soak looks at its throttler after the run."""

    @property
    def throttler(self) -> Throttler:
        return self._throttler


SourceFactory = Callable[..., MigrationSource]
"""Builds the source: ``(vm, channel, policy, throttle_factory, config, link=...,
cancel_event=...)`` (:class:`MigrationSource` or a deliberately broken subclass)."""


def _fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


def _is_paused(vm: Any) -> bool | None:
    """The guest's own truth; None when it is closed (discarded)."""
    if getattr(vm, "closed", False):
        return None
    return bool(vm.is_paused())


def _dirty_logging(vm: Any) -> bool:
    if getattr(vm, "closed", False):
        return False
    if hasattr(vm, "dirty_log_enabled"):
        return bool(vm.dirty_log_enabled)
    return bool(getattr(vm, "logging", False))


class Receiver:
    """A ``python -m autoconverge receive --json`` child process, with the fault plan in its
    environment when the fault is the destination's."""

    def __init__(self, settings: SoakSettings, key: bytes, plan: FaultPlan | None) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="autoconverge-soak-")
        port_file = os.path.join(self.tmpdir, "port")
        cmd = [sys.executable, "-m", "autoconverge", "receive", "--listen", "127.0.0.1:0",
               "--port-file", port_file,
               "--backend", "kvm" if settings.backend == "kvm" else "sim",
               "--json", "--run-after", repr(settings.run_after_s),
               "--accept-timeout", "30", "--io-timeout", repr(settings.io_timeout_s),
               "--max-memory", str(max(4 * settings.memory_bytes, 64 * MiB))]
        env = {k: v for k, v in os.environ.items() if k != fault_points.PLAN_ENV}
        env[KEY_ENV] = key.decode()
        if plan is not None:
            env[fault_points.PLAN_ENV] = plan.encode()
        self.out = ""
        self.err = ""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env)
        self.port = self._wait_port(port_file, 30.0)

    def _wait_port(self, port_file: str, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, ValueError):
                with open(port_file) as f:
                    text = f.read().strip()
                if text:
                    return int(text)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the receiver process did not start: "
                                   f"{self.err.strip()[-300:]}")
            time.sleep(0.01)

    def collect(self, timeout_s: float) -> bool:
        """Wait for its exit and read its output; False if it had to be killed."""
        try:
            self.out, self.err = self.proc.communicate(timeout=max(timeout_s, 0.1))
            return True
        except subprocess.TimeoutExpired:
            self.kill()
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.kill()
        with contextlib.suppress(Exception):
            out, err = self.proc.communicate(timeout=30)
            self.out, self.err = self.out + (out or ""), self.err + (err or "")

    def result(self) -> dict[str, Any] | None:
        for line in self.out.splitlines()[::-1]:
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if isinstance(d, dict):
                    return d
        return None

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class _SourceRun:
    """The source side of one run, on its own thread (so a hang can be noticed)."""

    def __init__(self, settings: SoakSettings, guest: Any, port: int, key: bytes,
                 plan: FaultPlan, source_factory: SourceFactory) -> None:
        self.settings = settings
        self.guest = guest
        self.port = port
        self.key = key
        self.plan = plan
        self.source_factory = source_factory
        self.throttles: list[ObservedThrottle] = []
        self.src: MigrationSource | None = None
        self.result: MigrationResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="soak-source", daemon=True)

    def _throttle(self, vm: Any) -> ThrottleControl:
        t = ObservedThrottle(fault_points.FaultyVcpus(vm))
        self.throttles.append(t)
        return t

    def _run(self) -> None:
        s = self.settings
        cfg = MigrationConfig(downtime_limit_s=s.downtime_limit_s,
                              max_bandwidth_bps=s.max_bandwidth_bps,
                              timeout_s=s.migration_timeout_s, timeout_strategy="cancel",
                              cleanup_timeout_s=s.cleanup_timeout_s)
        try:
            sock = connect("127.0.0.1", self.port, timeout_s=s.io_timeout_s)
            stream = CancellableSocket(sock, threading.Event(), io_timeout_s=s.io_timeout_s)
            try:
                stream.deadline = time.monotonic() + s.io_timeout_s
                channel = client_handshake(stream, self.key)
                stream.deadline = None
                src = self.source_factory(self.guest.vm, channel, make_policy(s.policy),
                                          self._throttle, cfg, link=stream,
                                          cancel_event=stream.cancel)
                self.src = src
                fault_points.install(self.plan if self.plan.side == "source" else None,
                                     source=src)
                self.result = src.run()
            finally:
                stream.close()
        except BaseException as exc:  # the harness reports it; nothing may escape a thread
            self.error = exc


# --- one run -------------------------------------------------------------------------------


def run_one(seed: int, settings: SoakSettings | None = None, *,
            source_factory: SourceFactory = MigrationSource) -> RunRecord:
    """One migration with the fault of ``seed``; the checks; everything it made is gone
    afterwards (receiver reaped, guest closed, throttlers shut down) unless ``stuck``."""
    s = settings or SoakSettings()
    rp = plan_for(seed, s.faults)
    rec = RunRecord(seed, rp.kind, rp.fault.encode())
    t0 = time.monotonic()
    key = secrets.token_hex(16).encode()
    rx: Receiver | None = None
    guest: Any = None
    run: _SourceRun | None = None
    try:
        rx = Receiver(s, key, rp.fault if rp.fault.side == "destination" else None)
        guest = make_source_guest(
            "kvm" if s.backend == "kvm" else "sim",
            GuestConfig(s.memory_bytes, s.vcpus, "worst", s.working_set_bytes, fill="zero"))
        run = _SourceRun(s, guest, rx.port, key, rp.fault, source_factory)
        run.thread.start()
        _run_and_check(rec, rp, s, rx, guest, run, t0)
    except Exception as exc:
        rec.found("harness_errors", f"{type(exc).__name__}: {exc}")
    finally:
        if not rec.stuck:
            _clean_up(rec, rx, guest, run)
        rec.seconds = round(time.monotonic() - t0, 3)
    return rec


def _run_and_check(rec: RunRecord, rp: RunPlan, s: SoakSettings, rx: Receiver, guest: Any,
                   run: _SourceRun, t0: float) -> None:
    deadline = t0 + s.run_timeout_s
    run.thread.join(max(deadline - time.monotonic(), 0.0))
    if run.thread.is_alive():
        rec.found("hangs", f"the source did not finish within {s.run_timeout_s:g} s; "
                           f"receiver killed")
        rx.kill()
        run.thread.join(s.io_timeout_s + s.cleanup_timeout_s + 10.0)
        if run.thread.is_alive():
            rec.stuck = True
            rec.found("hangs", "the source did not end after the receiver was killed")
            return
    if run.error is not None or run.result is None:
        rec.found("harness_errors", f"the source side raised {run.error!r}")
        rx.kill()
        return
    r = run.result
    vm = guest.vm
    rec.source_status, rec.source_outcome, rec.source_error = r.status, r.outcome, r.error
    rec.iterations, rec.max_throttle_percent = r.iterations, r.max_throttle_percent
    if rp.fault.side == "source":
        rec.fired = fault_points.state().fired
    # --- the source, right after run() returned
    for t in run.throttles:
        thr = t.throttler
        if not thr.closed:
            rec.found("source_left_throttled",
                      f"throttler not shut down after the run (worker {thr.worker_state}, "
                      f"{thr.percent} %)")
    paused = _is_paused(vm)
    if r.source_running is True and paused:
        rec.found("source_left_throttled", "the source guest is paused but the result says "
                                           "it runs")
    elif r.source_running is False and paused is False:
        rec.found("source_state_wrong", "the source guest runs but the result says it is "
                                        "paused")
    elif r.source_running is None:
        rec.found("source_state_wrong", f"the result does not know the source guest's "
                                        f"state: {r.error}")
    if r.status == "in_doubt" and paused is not True:
        rec.found("in_doubt_source_running", "in doubt, but the source guest is not paused")
    if _dirty_logging(vm) or not r.dirty_log_stopped:
        rec.found("dirty_log_left_on", f"dirty logging on after the run (result says "
                                       f"stopped={r.dirty_log_stopped})")
    if r.status == "completed" and r.memory_hash_match is False:
        rec.found("hash_mismatch", f"memory hashes differ: source {r.source_hash}, "
                                   f"destination {r.dest_hash}")
    # --- the receiver's side
    if not rx.collect(deadline - time.monotonic()):
        rec.found("hangs", f"the receiver did not exit within {s.run_timeout_s:g} s of the "
                           f"run's start; killed")
    rec.dest_exit_code = rx.proc.returncode
    dest = rx.result()
    killed = rx.proc.returncode == -signal.SIGKILL
    if rp.fault.side == "destination":
        rec.fired = "fault injected:" in rx.err
    if dest is not None:
        rec.dest_status, rec.dest_error = str(dest.get("status")), dest.get("error")
    elif killed and rp.fault.action == "sigkill" and rec.fired:
        rec.dest_status = "killed"
    else:
        rec.dest_status = "crashed"
        rec.found("destination_crashed", f"the receiver exited {rx.proc.returncode} without "
                                         f"a result: {rx.err.strip()[-300:]}")
    # the operator goes by the receiver's status; where the guest runs, by everything it
    # said (a receiver whose error says it resumed the guest runs it, whatever its status)
    reported_running = rec.dest_status == "completed"
    dest_runs = reported_running or str((dest or {}).get("error") or "").startswith(
        "guest resumed")
    dest_started = dest_runs or (rec.dest_status == "killed" and rp.fault.step == "send_report")
    if (dest is not None and r.status == "completed" and r.source_hash and
            dest.get("memory_hash") and dest["memory_hash"] != r.source_hash):
        rec.found("hash_mismatch", f"the receiver reports hash {dest['memory_hash']}, the "
                                   f"source has {r.source_hash}")
    if paused is False and dest_runs:
        rec.found("guest_twice", f"the source guest ran on after the run (source {r.status}) "
                                 f"while the receiver resumed it (receiver {rec.dest_status}: "
                                 f"{rec.dest_error or 'no error'})")
    # --- both traces against the spec (a killed receiver printed none: None, any prefix)
    dest_trace = None if dest is None else list(dest.get("trace") or [])
    check = check_traces(list(r.trace), dest_trace)
    rec.trace_ok = check.ok
    if not check.ok:
        rec.found("trace_mismatch", f"the traces are no behaviour of the migration spec: "
                                    f"{check.explain()}")
    # --- the operator, for an in-doubt result: the receiver's word decides
    if r.status == "in_doubt":
        if reported_running:
            rec.in_doubt_action = "discarded"
            guest.close()
        else:
            rec.in_doubt_action = "resumed"
            try:
                vm.resume()
            except Exception as exc:
                rec.found("source_state_wrong", f"the operator could not resume the in-doubt "
                                                f"source guest: {exc}")
    # --- where the guest runs now
    source_runs = _is_paused(vm) is False
    if source_runs and dest_runs:
        rec.guest_at = "both"
        rec.found("guest_twice", f"the source guest runs (source {r.status}, in doubt: "
                                 f"{rec.in_doubt_action or '-'}) and the receiver resumed it "
                                 f"(receiver {rec.dest_status}: {rec.dest_error or 'no error'})")
    elif source_runs:
        rec.guest_at = "source"
    elif dest_runs:
        rec.guest_at = "destination"
    elif dest_started:
        rec.guest_at = "died_with_destination"
    else:
        rec.guest_at = "nowhere"
        rec.found("guest_lost", f"neither side runs the guest (source {r.status}: {r.error}; "
                                f"receiver {rec.dest_status}: "
                                f"{(dest or {}).get('error') or rx.err.strip()[-200:]})")


def _clean_up(rec: RunRecord, rx: Receiver | None, guest: Any, run: _SourceRun | None) -> None:
    """Leave nothing to the next run."""
    if rx is not None:
        rx.close()
    if run is not None:
        for t in run.throttles:
            with contextlib.suppress(Exception):
                t.shutdown()
    if guest is not None:
        try:
            guest.close()
        except Exception as exc:
            rec.found("harness_errors", f"closing the source guest failed: {exc}")
    fault_points.clear()


# --- a campaign ----------------------------------------------------------------------------


def _per_fault_row() -> dict[str, int]:
    return dict.fromkeys(("runs", "fired", "completed", "cancelled", "failed", "in_doubt",
                          "timed_out", "unverified", "dest_completed", "dest_failed",
                          "dest_cancelled", "dest_killed", "dest_crashed", "failing"), 0)


@dataclass
class SoakReport:
    settings: SoakSettings
    seed: int
    runs: int = 0
    counters: Counter[str] = field(default_factory=Counter)
    per_fault: dict[str, dict[str, int]] = field(default_factory=dict)
    first_failures: list[dict[str, Any]] = field(default_factory=list)
    failing_runs: int = 0
    seconds: float = 0.0
    threads_baseline: int | None = None
    fds_baseline: int | None = None
    max_thread_growth: int = 0
    max_fd_growth: int = 0
    stopped_early: str | None = None
    records: list[RunRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.counters[k] for k in FAILURES) and self.stopped_early is None

    def add(self, rec: RunRecord) -> None:
        self.runs += 1
        c = self.counters
        row = self.per_fault.setdefault(rec.kind, _per_fault_row())
        row["runs"] += 1
        status = rec.source_status
        bucket = {"completed": "completed", "cancelled": "cancelled", "timeout": "cancelled",
                  "failed": "failed", "in_doubt": "in_doubt"}.get(status or "")
        if bucket:
            c[bucket] += 1
            row[bucket] += 1
        if status == "timeout":
            c["timed_out"] += 1
            row["timed_out"] += 1
        if rec.source_outcome == "unverified":
            c["unverified"] += 1
            row["unverified"] += 1
        if rec.max_throttle_percent > 0:
            c["throttled"] += 1
        if rec.fired:
            row["fired"] += 1
        else:
            c["not_fired"] += 1
        dest_key = f"dest_{rec.dest_status}"
        if dest_key in row:
            row[dest_key] += 1
        if rec.guest_at == "died_with_destination":
            c["destination_died_running"] += 1
        if rec.in_doubt_action:
            c[f"in_doubt_{rec.in_doubt_action}"] += 1
        for counter in rec.failing:
            if counter not in ("leaked_threads", "leaked_fds"):  # those: growth at the end
                c[counter] += 1
        if rec.failing:
            self.failing_runs += 1
            row["failing"] += 1
        for counter, detail in rec.findings:
            if len(self.first_failures) < FIRST_FAILURES:
                self.first_failures.append({"seed": rec.seed, "fault": rec.plan,
                                            "counter": counter, "detail": detail})

    def as_dict(self, details: bool = False) -> dict[str, Any]:
        c = self.counters
        out: dict[str, Any] = {"runs": self.runs}
        out.update({k: c[k] for k in COUNTERS})
        out["per_fault"] = {k: self.per_fault[k] for k in FAULT_KINDS if k in self.per_fault}
        out.update({k: c[k] for k in OUTCOMES})
        out.update({k: c[k] for k in FAILURES if k not in COUNTERS})
        out.update({
            "ok": self.ok, "failing_runs": self.failing_runs, "seed": self.seed,
            "backend": self.settings.backend, "faults": list(self.settings.faults),
            "seconds": round(self.seconds, 1),
            "max_thread_growth": self.max_thread_growth, "max_fd_growth": self.max_fd_growth,
            "stopped_early": self.stopped_early, "first_failures": self.first_failures,
        })
        if details:
            out["details"] = [r.as_dict() for r in self.records]
        return out


def check_backend(backend: Backend) -> None:
    """Raise :class:`KvmUnavailable` when ``kvm`` cannot run here."""
    if backend != "kvm":
        return
    if not os.path.exists(DEV_KVM):
        raise KvmUnavailable(f"{DEV_KVM} is absent on this machine")
    if not os.access(DEV_KVM, os.R_OK | os.W_OK):
        raise KvmUnavailable(f"{DEV_KVM} is not readable and writable by this user")


def _settle(baseline: int, count: Callable[[], int], limit_s: float = 2.0) -> int:
    """The count once it is back at ``baseline`` (threads and fds of a finished run are
    released by their owners' joins and closes, a moment later at worst), or after
    ``limit_s``."""
    deadline = time.monotonic() + limit_s
    n = count()
    while n > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
        gc.collect()
        n = count()
    return n


def soak(runs: int, *, seed: int = 0, settings: SoakSettings | None = None,
         source_factory: SourceFactory = MigrationSource, keep_records: bool = False,
         on_run: Callable[[RunRecord, SoakReport], None] | None = None) -> SoakReport:
    """``runs`` runs with seeds ``seed``, ``seed + 1``, ...; ``on_run`` sees each record."""
    s = settings or SoakSettings()
    check_backend(s.backend)
    report = SoakReport(s, seed)
    start = time.monotonic()
    try:
        for i in range(runs):
            rec = run_one(seed + i, s, source_factory=source_factory)
            _measure_leaks(report, rec, first=i == 0)
            report.add(rec)
            if keep_records:
                report.records.append(rec)
            if on_run is not None:
                on_run(rec, report)
            if rec.stuck:
                report.stopped_early = (f"run {rec.seed} left a source thread stuck; the "
                                        f"campaign stopped after {report.runs} runs")
                break
    finally:
        fault_points.clear()
        report.seconds = time.monotonic() - start
    if report.threads_baseline is not None and report.fds_baseline is not None \
            and report.stopped_early is None:
        gc.collect()
        report.counters["leaked_threads"] = max(
            _settle(report.threads_baseline, threading.active_count)
            - report.threads_baseline, 0)
        report.counters["leaked_fds"] = max(
            _settle(report.fds_baseline, _fd_count) - report.fds_baseline, 0)
    return report


def _measure_leaks(report: SoakReport, rec: RunRecord, *, first: bool) -> None:
    gc.collect()
    if first:
        report.threads_baseline = threading.active_count()
        report.fds_baseline = _fd_count()
        return
    assert report.threads_baseline is not None and report.fds_baseline is not None
    threads = _settle(report.threads_baseline, threading.active_count) \
        - report.threads_baseline
    fds = _settle(report.fds_baseline, _fd_count) - report.fds_baseline
    if threads > report.max_thread_growth:
        rec.found("leaked_threads", f"{threads} more live threads than after the first run")
        report.max_thread_growth = threads
    if fds > report.max_fd_growth:
        rec.found("leaked_fds", f"{fds} more open file descriptors than after the first run")
        report.max_fd_growth = fds


def plans(seed: int, runs: int, faults: tuple[str, ...] = FAULT_KINDS) -> Mapping[int, str]:
    """Each seed's plan, as :attr:`RunPlan.text` (what a campaign would inject)."""
    return {s: plan_for(s, faults).text for s in range(seed, seed + runs)}
