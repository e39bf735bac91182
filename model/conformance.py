"""The conformance kit: check *your* vCPU backend against the throttler's property suite.

**The backend contract.** A backend is any object with

- ``pause()``: returns only once every vCPU is stopped (blocking until the stop took effect,
  not merely requested), and they stay stopped until ``resume()``;
- ``resume()``: returns only once every vCPU runs again, and they keep running until
  ``pause()``; calling it on running vCPUs is harmless (after a failed ``pause()`` the
  throttler resumes best-effort);
- ``is_paused()``: the backend's own truth - what the vCPUs are doing, read from the thing
  itself (the hypervisor, the kernel), never a copy of what was last asked for;
- optionally ``progress()``: a counter (an int, or a sequence of ints that is summed) that
  grows while the vCPUs run and stands still while they are stopped, e.g. guest loop
  iterations or CPU time; with it the kit also checks that ``is_paused()`` tells the truth
  and measures the achieved duty cycle;
- optionally ``close()``: called once when the kit is done with the backend.

``pause()`` and ``resume()`` are called from the throttler's worker thread, strictly
alternately, one at a time; they should bound their own waiting and raise (e.g.
:class:`~autoconverge.impl.vcpus.VcpuError`) rather than hang. A *factory* is a zero-argument
callable returning a fresh backend whose vCPUs run.

**What the kit runs** (:func:`run_conformance`; ``autoconverge conformance MODULE:FACTORY``
and the pytest fixture ``autoconverge_conformance`` are front ends), each stage on fresh
backends from the factory, every backend call bounded:

1. ``contract``: direct pause/resume cycles without a throttler
   (:func:`~.conformance_scenarios.check_contract`);
2. ``lifecycle``: the lifecycle scenarios on real threads;
3. ``faults``: pause()/resume() failures injected in each place the worker makes one;
4. ``machine``: the Hypothesis impl-vs-spec machine on real threads, a fresh backend per
   program; a failure is shrunk to the shortest failing API program;
5. ``duty``: throttled at 50 % for about a second at a 100 ms timeslice (with
   ``progress()`` only).

Every run's event log is validated against the spec, and after every step the backend's
``is_paused()`` is compared with the spec. The result is a :class:`Report`: one row per
property of :data:`~.conformance_probe.PROPERTIES` (pass, fail with where and how, or skip).
A hanging call stops the whole run (every later stage is skipped).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from .conformance_duty import DutyResult, measure_duty
from .conformance_machine import conformance_machine
from .conformance_probe import (
    AGREES,
    CALLS_RETURN,
    DUTY,
    FACTORY,
    FAULTS,
    LIFECYCLE,
    PAUSE_STOPS,
    PROPERTIES,
    RESUME_RUNS,
    TRACE,
    TRUTHFUL,
    ContractViolation,
    Hung,
    progress_of,
)
from .conformance_run import Backends, KitConfig, Run, Tally
from .conformance_scenarios import (
    FAULT_PROP,
    FAULT_SCENARIOS,
    LIFECYCLE_SCENARIOS,
    check_contract,
    landed_in,
)

STAGES: Final = ("contract", "lifecycle", "faults", "machine", "duty")
Status = Literal["pass", "fail", "skip"]


class FactoryError(ValueError):
    """``MODULE:FACTORY`` does not name an importable zero-argument callable."""


def load_factory(spec: str) -> Callable[[], Any]:
    """``"package.module:name"`` (``name`` may be dotted) -> the callable it names."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise FactoryError(f"expected MODULE:FACTORY, got {spec!r}")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, "")  # like python -m: the current folder's modules are found
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise FactoryError(f"cannot import {module_name!r}: {type(exc).__name__}"
                           + (f": {first}" if first else "")) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FactoryError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise FactoryError(f"{spec} is not callable (type {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def factory_name(factory: Callable[[], Any]) -> str:
    """``module:qualname`` (what the CLI takes) where it names the factory, else its repr."""
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        return f"{module}:{qualname}"
    return repr(factory)


@dataclass(frozen=True)
class Finding:
    """Why a property failed: the message, where it was found, the program and the seed."""

    message: str
    found_in: str
    program: tuple[str, ...] = ()
    seed: int | None = None
    occurrences: int = 1
    """In how many checks the property failed (the first is described)."""

    def as_dict(self) -> dict[str, Any]:
        return {"message": self.message, "found_in": self.found_in,
                "program": list(self.program), "seed": self.seed,
                "occurrences": self.occurrences}


@dataclass(frozen=True)
class PropertyResult:
    name: str
    statement: str
    status: Status
    checked: str
    failure: Finding | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "statement": self.statement,
                "checked": self.checked,
                "failure": self.failure.as_dict() if self.failure else None}


@dataclass(frozen=True)
class StageResult:
    name: str
    status: Status
    seconds: float
    note: str = ""


@dataclass
class Report:
    """The kit's verdict on one backend factory."""

    factory: str
    backend: str | None
    seed: int
    config: KitConfig
    properties: list[PropertyResult]
    stages: list[StageResult]
    duty: dict[str, Any] | None
    seconds: float

    @property
    def ok(self) -> bool:
        return all(p.status != "fail" for p in self.properties)

    @property
    def failed(self) -> list[PropertyResult]:
        return [p for p in self.properties if p.status == "fail"]

    def replay_command(self) -> str:
        return (f"autoconverge conformance {self.factory} --seed {self.seed} "
                f"--examples {self.config.examples}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "factory": self.factory, "backend": self.backend,
            "seed": self.seed, "examples": self.config.examples,
            "properties": [p.as_dict() for p in self.properties],
            "stages": [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3),
                        "note": s.note} for s in self.stages],
            "duty_cycle": self.duty, "seconds": round(self.seconds, 3),
            "replay": self.replay_command(),
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def table(self) -> str:
        """The report as text: one row per property, then each failure in full."""
        width = max(len(p.name) for p in self.properties)
        lines = [f"conformance of {self.factory}"
                 + (f" ({self.backend})" if self.backend else ""),
                 f"seed {self.seed}, {self.config.examples} Hypothesis programs, "
                 f"{self.seconds:.1f} s", "",
                 f"{'property':<{width}}  result  checked"]
        lines += [f"{p.name:<{width}}  {p.status:<6}  {p.checked}" for p in self.properties]
        for p in self.failed:
            assert p.failure is not None
            f = p.failure
            lines += ["", f"FAIL {p.name}: {p.statement}", f"  {f.message}",
                      f"  found in: {f.found_in}"
                      + (f" (and {f.occurrences - 1} more checks)" if f.occurrences > 1
                         else "")]
            if f.program:
                lines.append("  shortest failing program (Hypothesis):")
                lines += [f"    {step}" for step in f.program]
            if f.seed is not None:
                lines.append(f"  seed {f.seed}; replay: {self.replay_command()}")
        lines += ["", "PASS: the backend conforms" if self.ok else
                  f"FAIL: {', '.join(p.name for p in self.failed)}"]
        return "\n".join(lines)


# running the kit ------------------------------------------------------------------------------
@dataclass
class _Kit:
    factory_name: str
    backends: Backends
    cfg: KitConfig
    tally: Tally
    fail_fast: bool
    findings: dict[str, Finding] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    """The property of every failed check, in order."""
    hung: bool = False
    has_progress: bool | None = None
    duty: dict[str, Any] | None = None

    def found(self, v: ContractViolation, where: str, program: Sequence[str] = (),
              seed: int | None = None) -> None:
        self.failures.append(v.prop)
        first = self.findings.get(v.prop)
        if first is None:
            self.findings[v.prop] = Finding(v.message, where, tuple(program), seed)
        elif program and not first.program:
            # keep the first description, add the replayable program of a later one
            self.findings[v.prop] = replace(first, program=tuple(program), seed=seed,
                                            occurrences=first.occurrences + 1)
        else:
            self.findings[v.prop] = replace(first, occurrences=first.occurrences + 1)

    def guard(self, where: str, fn: Callable[[], None]) -> bool:
        """Run one check; a violation becomes a finding. False if it failed."""
        try:
            fn()
        except ContractViolation as v:
            self.found(v, where)
            return False
        except Hung as h:
            self.found(h.violation, where)
            self.hung = True
            return False
        return True

    @property
    def stop(self) -> bool:
        return self.hung or FACTORY in self.findings or (self.fail_fast and bool(self.findings))


def _stage_contract(kit: _Kit) -> str:
    def run() -> None:
        with kit.backends.fresh() as backend:
            kit.has_progress = progress_of(backend) is not None
            check_contract(backend, kit.cfg, kit.tally)
        with kit.backends.fresh() as a, kit.backends.fresh() as b:
            if a is b:
                raise ContractViolation(FACTORY, "the factory returned the same object twice")

    kit.guard("the contract check (direct pause/resume cycles)", run)
    return f"{kit.cfg.cycles} direct cycles"


def _scenario_once(kit: _Kit, name: str, scenario: Callable[[Run], None],
                   prop: str | None) -> Run:
    """One scenario on a fresh backend; the run is closed (quietly if the scenario failed,
    not at all if a call hung)."""
    with kit.backends.fresh() as backend:
        r = Run(backend, kit.cfg, kit.tally, name, prop=prop)
        try:
            scenario(r)
        except Hung:
            raise
        except BaseException:
            with contextlib.suppress(Exception, Hung):
                r.close()
            raise
        r.close()
        return r


def _stage_lifecycle(kit: _Kit) -> str:
    off_target = []
    for name, (scenario, target) in LIFECYCLE_SCENARIOS.items():
        if kit.stop:
            break
        where = f"lifecycle scenario {name!r}"

        def run(name: str = name, scenario: Any = scenario, target: str | None = target) -> None:
            kit.tally.add("scenarios_started")
            for _attempt in range(5):  # until the final command lands in the target state
                r = _scenario_once(kit, name, scenario, None)
                if target is None or landed_in(name, r) == target:
                    break
            else:
                off_target.append(name)
            kit.tally.add("scenarios")

        kit.guard(where, run)
    return (f"{len(LIFECYCLE_SCENARIOS)} scenarios"
            + (f"; not in the target state: {', '.join(off_target)}" if off_target else ""))


def _stage_faults(kit: _Kit) -> str:
    for name, scenario in FAULT_SCENARIOS.items():
        if kit.stop:
            break

        def run(name: str = name, scenario: Any = scenario) -> None:
            kit.tally.add("fault_scenarios_started")
            _scenario_once(kit, name, scenario, FAULT_PROP)
            kit.tally.add("fault_scenarios")

        kit.guard(f"fault scenario {name!r}", run)
    return f"{len(FAULT_SCENARIOS)} scenarios"


def _stage_machine(kit: _Kit) -> str:
    cfg = kit.cfg
    assert cfg.seed is not None
    machine = seed(cfg.seed)(conformance_machine(kit.backends, cfg, kit.tally))
    where = f"the Hypothesis machine (seed {cfg.seed})"
    try:
        run_state_machine_as_test(machine, settings=settings(
            settings.get_profile("default"), max_examples=cfg.examples,
            stateful_step_count=cfg.steps, deadline=None, database=None, derandomize=False,
            suppress_health_check=list(HealthCheck), print_blob=False,
            report_multiple_bugs=False, verbosity=Verbosity.normal,
            phases=(Phase.explicit, Phase.generate, Phase.shrink)))
    except Hung as h:
        kit.found(h.violation, where + ", not shrunk: a call hung", seed=cfg.seed)
        kit.hung = True
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        v = _attribute(exc, kit.tally)
        kit.found(v, where, _program(exc), cfg.seed)
    return f"{kit.tally.counts['programs']} programs"


def _stage_duty(kit: _Kit) -> str:

    if kit.has_progress is False:
        return "skipped: the backend has no progress()"
    cfg = kit.cfg

    def run() -> None:
        with kit.backends.fresh() as backend:
            progress = progress_of(backend)
            if progress is None:
                kit.has_progress = False
                return
            result = measure_duty(backend, progress, cfg.duty_percent, cfg.duty_seconds,
                                  cfg.duty_timeslice_ns,
                                  call_timeout_ns=int(cfg.call_timeout_s * 1e9),
                                  name="conformance-duty")
        kit.duty = result.as_dict()
        status, verdict = judge_duty(result, cfg.duty_tolerance_pp)
        kit.duty.update(status=status, verdict=verdict)
        if result.error_pp() is None:
            raise ContractViolation(TRUTHFUL, verdict)
        if status == "fail":
            raise ContractViolation(DUTY, verdict)

    kit.guard("the duty-cycle measurement", run)
    if kit.duty is not None and kit.duty["status"] == "skip":
        return "skipped: inconclusive on a busy host"
    return f"{cfg.duty_percent} % for {cfg.duty_seconds:g} s"


LEAK_TOLERANCE_PERCENT: Final = 5.0
"""Most of a throttled run's progress that may fall inside the paused intervals."""
BUSY_PRESSURE_PERCENT: Final = 10.0
"""Host CPU pressure (PSI "some") above which a duty cycle that is off is inconclusive."""


def judge_duty(r: DutyResult, tolerance_pp: float) -> tuple[Status, str]:
    """The DutyCycle verdict on a measurement (see conformance_duty): pass, fail, or skip
    when a busy host makes an off result inconclusive."""
    error = r.error_pp()
    if error is None or r.progress_while_paused_percent is None:
        return "fail", "progress() did not grow while unthrottled"
    leak = r.progress_while_paused_percent
    held = r.paused_time_share_percent
    evidence = (f"the calls held the vCPUs paused {held:.1f} % of the time and {leak:.1f} % "
                "of the progress was made while paused")
    if abs(error) <= tolerance_pp:
        return "pass", f"progress dropped by {r.achieved_progress_percent:.1f} %"
    if (error < 0 and leak <= LEAK_TOLERANCE_PERCENT
            and abs(held - r.requested_percent) <= tolerance_pp):
        return "pass", (f"progress dropped by {r.achieved_progress_percent:.1f} % only, but "
                        f"{evidence}: the vCPUs catch up in their run phases on a busy host")
    off = (f"progress dropped by {r.achieved_progress_percent:.1f} % at a "
           f"{r.requested_percent} % setpoint ({error:+.1f} points); {evidence}")
    pressure = r.host_cpu_pressure_percent
    if pressure is not None and pressure >= BUSY_PRESSURE_PERCENT:
        return "skip", (f"inconclusive: {off}, but the host was busy (CPU pressure "
                        f"{pressure:.0f} % during the run)")
    return "fail", off


STAGE_RUNNERS: Final[dict[str, Callable[[_Kit], str]]] = {
    "contract": _stage_contract, "lifecycle": _stage_lifecycle, "faults": _stage_faults,
    "machine": _stage_machine, "duty": _stage_duty,
}


def run_conformance(factory: Callable[[], Any], *, name: str | None = None,
                    config: KitConfig | None = None, stages: Sequence[str] = STAGES,
                    fail_fast: bool = False) -> Report:
    """Run the kit on ``factory`` (see the module docstring); never raises for a bad backend.

    ``stages``: a subset of :data:`STAGES`, run in that order. ``fail_fast``: skip the
    stages after the first failing one (a hang or a broken factory always stops the run).
    """
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown}; known: {STAGES}")
    cfg = config or KitConfig()
    if cfg.seed is None:
        cfg = replace(cfg, seed=random.randrange(2**32))
    assert cfg.seed is not None
    start = time.monotonic()
    tally = Tally()
    kit = _Kit(name or factory_name(factory),
               Backends(factory, cfg, tally), cfg, tally, fail_fast)
    stage_results = []
    for stage in STAGES:
        if stage not in stages:
            continue
        if kit.stop:
            why = ("a backend call hung" if kit.hung else
                   "the factory failed" if FACTORY in kit.findings else "an earlier failure")
            stage_results.append(StageResult(stage, "skip", 0.0, f"skipped: {why}"))
            continue
        t0 = time.monotonic()
        before = len(kit.failures)
        note = STAGE_RUNNERS[stage](kit)
        failed = sorted(set(kit.failures[before:]))
        if failed:
            note += f"; failed: {', '.join(failed)}"
        status: Status = ("fail" if failed else
                          "skip" if note.startswith("skipped") else "pass")
        stage_results.append(StageResult(stage, status, time.monotonic() - t0, note))
    return Report(
        factory=kit.factory_name, backend=kit.backends.description, seed=cfg.seed,
        config=cfg, properties=_rows(kit), stages=stage_results, duty=kit.duty,
        seconds=time.monotonic() - start)


# attribution and the report's rows -----------------------------------------------------------
def _attribute(exc: BaseException, tally: Tally) -> ContractViolation:
    """The property a failure of the Hypothesis machine breaks."""
    found = _find(exc, ContractViolation)
    if isinstance(found, ContractViolation):
        return found
    last = tally.probes[-1] if tally.probes else None
    if last is not None and last.violation is not None:
        return last.violation
    inner = _find(exc, AssertionError) or exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    return ContractViolation(LIFECYCLE, f"{type(inner).__name__}"
                                        + (f": {text}" if text else "")
                                        + " (in a Hypothesis program)")


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    for inner in getattr(exc, "exceptions", ()) or ():
        found = _find(inner, kind)
        if found is not None:
            return found
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        return _find(exc.__cause__, kind)
    return None


INVARIANTS: Final = ("backend_agrees_with_spec", "implementation_follows_spec",
                     "implementation_state_equals_model_state")
"""The machine's invariants: Hypothesis lists their checks as steps; they run after every
step anyway, so the program leaves them out."""


def _program(exc: BaseException) -> list[str]:
    """Hypothesis's replayable program, from the notes it attaches to the failure."""
    notes: list[str] = []
    stack = [exc]
    while stack and not notes:
        e = stack.pop()
        notes = [n for n in getattr(e, "__notes__", []) if n.startswith("state")
                 and not any(n == f"state.{name}()" for name in INVARIANTS)]
        stack += list(getattr(e, "exceptions", ()) or ())
    return notes


def _rows(kit: _Kit) -> list[PropertyResult]:
    c = kit.tally.counts
    t = kit.tally
    cfg = kit.cfg
    calls = t.probe_total("pause") + t.probe_total("resume") + c["direct_calls"]
    checked = {
        FACTORY: (f"{c['backends']} backends made, each running at first", True),
        CALLS_RETURN: (f"{calls} pause()/resume() calls, each within {cfg.call_timeout_s:g} s",
                       calls > 0),
        PAUSE_STOPS: (f"is_paused() after {t.probe_total('checked') + c['direct_calls']} "
                      "call returns and between calls at every step",
                      calls > 0),
        RESUME_RUNS: ("the same checks after each resume(), and after "
                      f"{c['handover_resumes']} handovers", calls > 0),
        TRUTHFUL: (f"progress() sampled {cfg.window_s * 1e3:.0f} ms paused and running in "
                   f"{c['truthful_cycles']} direct cycles",
                   c["truthful_cycles"] > 0),
        AGREES: (f"is_paused() against the spec at {c['quiescent']} quiescent steps",
                 c["quiescent"] > 0),
        TRACE: (f"{c['events']} events of {c['runs'] + c['programs']} runs validated",
                c["runs"] + c["programs"] > 0),
        LIFECYCLE: (f"lifecycle scenarios: {_of(c['scenarios'], c['scenarios_started'])}; "
                    f"{c['programs']} Hypothesis programs ({c['program_steps']} steps)",
                    c["scenarios"] + c["programs"] > 0),
        FAULTS: (f"fault scenarios: {_of(c['fault_scenarios'], c['fault_scenarios_started'])}; "
                 f"{c['injected']} failures injected", c["fault_scenarios"] > 0),
        DUTY: (_duty_text(kit), kit.duty is not None),
    }
    rows = []
    for name, statement in PROPERTIES.items():
        text, exercised = checked[name]
        finding = kit.findings.get(name)
        if finding is not None:
            rows.append(PropertyResult(name, statement, "fail", text, finding))
        elif name == TRUTHFUL and kit.has_progress is False:
            rows.append(PropertyResult(name, statement, "skip", "no progress() to compare"))
        elif name == DUTY and kit.duty is not None and kit.duty["status"] == "skip":
            rows.append(PropertyResult(name, statement, "skip", _duty_text(kit)))
        elif name == DUTY and kit.duty is None:
            why = ("no progress() to measure" if kit.has_progress is False else
                   "not measured" + (f": {', '.join(sorted(set(kit.failures)))} failed first"
                                     if kit.failures else ""))
            rows.append(PropertyResult(name, statement, "skip", why))
        else:
            rows.append(PropertyResult(name, statement, "pass" if exercised else "skip",
                                       text if exercised else "not exercised"))
    return rows


def _of(done: int, started: int) -> str:
    """``n`` when every started check completed, else ``done of started completed``."""
    return str(done) if done == started else f"{done} of {started} completed"


def _duty_text(kit: _Kit) -> str:
    d = kit.duty
    if d is None:
        return ""
    achieved = d["achieved_progress_percent"]
    if achieved is None:
        return "no unthrottled progress"
    pressure = d["host_cpu_pressure_percent"]
    text = (f"{d['requested_percent']} % for {d['seconds']:g} s at {d['timeslice_ms']:g} ms: "
            f"progress dropped by {achieved:.1f} %, paused time share "
            f"{d['paused_time_share_percent']:.1f} % with "
            f"{d['progress_while_paused_percent']:.1f} % of the progress in it, "
            f"{d['cycles']} cycles"
            + (f", host CPU pressure {pressure:.0f} %" if pressure is not None else ""))
    if d.get("status") == "skip":
        return "inconclusive on a busy host: " + text
    if "busy host" in d.get("verdict", ""):
        return text + "; judged by the stopped share (the vCPUs catch up on a busy host)"
    return text


__all__ = [
    "AGREES", "CALLS_RETURN", "DUTY", "FACTORY", "FAULTS", "LIFECYCLE", "PAUSE_STOPS",
    "PROPERTIES", "RESUME_RUNS", "STAGES", "TRACE", "TRUTHFUL", "FactoryError", "Finding",
    "KitConfig", "PropertyResult", "Report", "StageResult", "load_factory", "run_conformance",
]
