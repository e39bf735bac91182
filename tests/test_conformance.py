"""The conformance kit: it accepts conformant backends and rejects each broken one by name.

Accepted: the fakes (with and without ``progress()``), a process tree throttled through the
cgroup v2 freezer (where writable) and through SIGSTOP/SIGCONT, and a KVM guest. Rejected,
each naming the contract property it breaks: the backends of ``impl/broken_backends.py``
(a resume() ignored, a pause() that returns before the stop, an is_paused() that reports
the request instead of the truth, a pause() that hangs), plus a factory that breaks the
shape of the contract. The Hypothesis stage alone also finds and shrinks a failure.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

from autoconverge.impl import broken_backends, fakes
from autoconverge.impl.process_tree import busy_process, busy_process_signals
from autoconverge.model.conformance import (
    PROPERTIES,
    STAGES,
    FactoryError,
    KitConfig,
    Report,
    load_factory,
    run_conformance,
)

pytestmark = pytest.mark.realtime

FAST = KitConfig(examples=4, steps=10, seed=12345, call_timeout_s=1.0, duty_seconds=0.6)
"""Small and short: CI runs the whole kit on each backend in a few seconds."""


def _run(factory: Callable[[], Any], **kw: Any) -> Report:
    report = run_conformance(factory, config=kw.pop("config", FAST), **kw)
    json.loads(report.to_json())  # always serializable
    return report


def _status(report: Report) -> dict[str, str]:
    return {p.name: p.status for p in report.properties}


def _accepts(report: Report, *, progress: bool) -> None:
    assert report.ok, report.table()
    status = _status(report)
    assert list(status) == list(PROPERTIES)
    skipped = {"IsPausedTruthful", "DutyCycle"} if not progress else set()
    if progress and status["DutyCycle"] == "skip":
        # a busy host (other work on this machine) makes an off duty cycle inconclusive
        duty = next(p for p in report.properties if p.name == "DutyCycle")
        assert duty.checked.startswith("inconclusive on a busy host"), duty.checked
        skipped = {"DutyCycle"}
    assert {n for n, s in status.items() if s == "skip"} == skipped, report.table()
    assert [s.status for s in report.stages if s.name != "duty"] == ["pass"] * 4
    assert "PASS" in report.table()


def test_the_clock_fake_conforms_on_every_property() -> None:
    report = _run(fakes.clock_backend)
    _accepts(report, progress=True)
    assert report.duty is not None
    assert abs(report.duty["achieved_progress_percent"] - 50) <= 10
    rows = {p.name: p.checked for p in report.properties}
    assert "lifecycle scenarios: 11;" in rows["Lifecycle"]
    programs = re.search(r"(\d+) Hypothesis programs", rows["Lifecycle"])
    assert programs is not None and int(programs.group(1)) >= FAST.examples
    assert "fault scenarios: 4;" in rows["FaultRecovery"]


def test_the_recording_fake_conforms_and_progress_checks_are_skipped() -> None:
    report = _run(fakes.recording_backend)
    _accepts(report, progress=False)
    assert report.duty is None


@pytest.mark.parametrize("name", sorted(broken_backends.EXPECTED))
def test_each_broken_backend_is_rejected_naming_its_property(name: str) -> None:
    factory = getattr(broken_backends, name)
    report = _run(factory, fail_fast=True)
    expected = broken_backends.EXPECTED[name]
    assert not report.ok
    assert [p.name for p in report.failed] == [expected], report.table()
    failure = next(p for p in report.properties if p.name == expected).failure
    assert failure is not None and failure.found_in.startswith("the contract check")
    assert f"FAIL {expected}" in report.table()
    # the stages after the failure are skipped, and say why
    assert all(s.status == "skip" for s in report.stages[1:])


def test_a_hang_stops_the_run_even_without_fail_fast() -> None:
    report = _run(broken_backends.hangs)
    assert [p.name for p in report.failed] == ["CallsReturn"]
    assert "did not return within 1 s" in report.failed[0].failure.message  # type: ignore[union-attr]
    assert [s.note for s in report.stages[1:]] == ["skipped: a backend call hung"] * 4


def test_the_hypothesis_machine_alone_finds_and_shrinks_an_early_pause() -> None:
    report = _run(broken_backends.early_pause, stages=("machine",))
    (failed,) = report.failed
    assert failed.name == "PauseStops"
    f = failed.failure
    assert f is not None and f.seed == FAST.seed and "Hypothesis machine" in f.found_in
    assert f.program[0] == "state = Conformance()" and f.program[-1] == "state.teardown()"
    api = [s for s in f.program[1:-1] if not s.startswith("state.start(")]
    assert 1 <= len(api) <= 2, f.program  # one call that pauses (and maybe a wait)
    text = report.table()
    assert "shortest failing program" in text and "--seed 12345" in text


def test_a_backend_that_stops_on_its_own_between_calls_is_caught() -> None:
    class PausesOnItsOwn(fakes.ClockVcpus):
        """resume() works, but the vCPUs stop again 5 ms later without a call."""

        def resume(self) -> None:
            super().resume()
            import threading

            threading.Timer(0.005, self._stop).start()

    report = _run(PausesOnItsOwn, stages=("lifecycle",), fail_fast=True)
    assert [p.name for p in report.failed] == ["ResumeRuns"], report.table()


def test_a_factory_breaking_the_shape_fails_the_first_property() -> None:
    class NoIsPaused:
        def pause(self) -> None: ...

        def resume(self) -> None: ...

    report = _run(NoIsPaused)
    assert [p.name for p in report.failed] == ["FactoryMakesBackends"]
    assert "is_paused()" in report.failed[0].failure.message  # type: ignore[union-attr]
    assert all(s.status == "skip" for s in report.stages[1:])

    def raising() -> Any:
        raise RuntimeError("no hypervisor here")

    report = _run(raising)
    assert [p.name for p in report.failed] == ["FactoryMakesBackends"]
    assert "no hypervisor here" in report.failed[0].failure.message  # type: ignore[union-attr]

    started_paused = fakes.ClockVcpus
    report = _run(lambda: _paused(started_paused()))
    assert [p.name for p in report.failed] == ["FactoryMakesBackends"]


def _paused(v: fakes.ClockVcpus) -> fakes.ClockVcpus:
    v.pause()
    return v


def test_load_factory_refuses_what_is_not_a_factory() -> None:
    assert load_factory("autoconverge.impl.fakes:clock_backend") is fakes.clock_backend
    assert load_factory("autoconverge.impl.fakes:ClockVcpus.progress") \
        is fakes.ClockVcpus.progress
    for bad, needle in (("nocolon", "MODULE:FACTORY"), (":x", "MODULE:FACTORY"),
                        ("no_such_module_xyz:f", "cannot import"),
                        ("autoconverge.impl.fakes:nope", "no attribute"),
                        ("autoconverge.impl.fakes:HANG_NS", "not callable")):
        with pytest.raises(FactoryError, match=needle):
            load_factory(bad)


def test_unknown_stages_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown stages"):
        run_conformance(fakes.clock_backend, stages=("contract", "bogus"))
    assert STAGES == ("contract", "lifecycle", "faults", "machine", "duty")


@pytest.mark.parametrize("factory", [busy_process, busy_process_signals],
                         ids=["auto", "signal"])
def test_a_process_tree_conforms(factory: Callable[[], Any]) -> None:
    report = _run(factory)
    _accepts(report, progress=True)
    assert report.backend is not None and "ProcessTreeVcpus" in report.backend
    if factory is busy_process_signals:
        assert "via signal" in report.backend
    assert not _leftover_cgroups()


def _leftover_cgroups() -> list[str]:
    from autoconverge.impl.process_tree import cgroup2_dir

    home = cgroup2_dir(os.getpid())
    if home is None:
        return []
    return [n for n in os.listdir(home) if n.startswith("autoconverge-")]


@pytest.mark.kvm
def test_a_kvm_guest_conforms() -> None:
    from autoconverge.impl.kvm.backend import small_guest

    report = _run(small_guest)
    _accepts(report, progress=True)
    assert report.backend is not None and "GuestVm" in report.backend
