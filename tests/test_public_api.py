"""The embeddable library: the public API at ``autoconverge``, its dependencies, its errors.

A VMM author imports ``from autoconverge import Throttler, RealRuntime``; creating, using and
shutting down a throttler must not import the checkers' or the migration's dependencies, the
distribution's unconditional requirements are ``transitions`` only, every documented error
derives from one base class, and what the worker measured is a typed read-only view.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import subprocess
import sys

import pytest

import autoconverge
from autoconverge import (
    AutoconvergeError,
    ChannelTimeout,
    JoinTimeout,
    SpecViolation,
    Throttler,
    ThrottlerClosed,
    ThrottlerError,
    ThrottlerStats,
    ThrottlerTimeout,
    ThrottleWorkerError,
    VcpuError,
    VcpuTimeout,
    VirtualRuntime,
)
from autoconverge.impl.fakes import RecordingVcpus

HEAVY = ("z3", "hypothesis", "pytest", "numpy", "cryptography", "matplotlib")
"""What the embeddable throttler must never import."""

EMBED = """
import sys, threading
from autoconverge import Throttler, RealRuntime

class Vcpus:
    def __init__(self): self.paused = False
    def pause(self): self.paused = True
    def resume(self): self.paused = False

v = Vcpus()
with Throttler(v, runtime=RealRuntime(), timeslice_ns=20_000_000) as t:
    t.set_throttle_percent(50)
    t.set_throttle_percent(0)
    t.set_throttle_percent(30)
assert not v.paused and t.closed and t.stats.cycles >= 0
print(",".join(m for m in HEAVY if m in sys.modules) or "none")
""".replace("HEAVY", repr(HEAVY))


def test_the_public_api_is_listed_and_importable() -> None:
    assert set(autoconverge.__all__) >= {"Throttler", "RealRuntime", "VirtualRuntime",
                                         "AutoconvergeError", "ThrottlerStats"}
    for name in autoconverge.__all__:
        assert getattr(autoconverge, name) is not None


def test_embedding_imports_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", EMBED], capture_output=True, text=True,
                         timeout=60, check=True, cwd=os.path.dirname(autoconverge.__file__))
    assert out.stdout.strip() == "none", f"heavy modules imported: {out.stdout.strip()}"


def test_the_only_unconditional_requirement_is_transitions() -> None:
    requires = importlib.metadata.requires("autoconverge") or []
    unconditional = [r for r in requires if "extra ==" not in r]
    assert [r.split(">")[0].split("=")[0].strip() for r in unconditional] == ["transitions"]


@pytest.mark.parametrize("error", [ThrottlerError, SpecViolation, ThrottlerClosed,
                                   ThrottleWorkerError, ThrottlerTimeout, JoinTimeout,
                                   ChannelTimeout, VcpuError, VcpuTimeout])
def test_every_documented_error_derives_from_one_base(error: type[Exception]) -> None:
    assert issubclass(error, AutoconvergeError)


def test_kvm_and_migration_errors_derive_from_the_base_too() -> None:
    from autoconverge.impl.kvm.bindings import KvmError
    from autoconverge.impl.migration.errors import MigrationError

    assert issubclass(KvmError, AutoconvergeError) and issubclass(KvmError, OSError)
    assert issubclass(MigrationError, AutoconvergeError)


def test_no_public_attribute_hands_out_a_private_object() -> None:
    rt = VirtualRuntime(0)

    def main() -> None:
        t = Throttler(RecordingVcpus(rt), runtime=rt, timeslice_ns=20_000_000)
        try:
            for name in dir(t):
                if name.startswith("_"):
                    continue
                value = getattr(t, name)
                assert not type(value).__name__.startswith("_"), name
        finally:
            t.shutdown()

    rt.run(main)


def test_stats_count_the_time_the_vcpus_were_held_paused() -> None:
    rt = VirtualRuntime(3)
    timeslice = 20_000_000
    seen: dict[str, ThrottlerStats] = {}

    def main() -> None:
        t = Throttler(RecordingVcpus(rt), runtime=rt, timeslice_ns=timeslice)
        t.set_throttle_percent(25)
        rt.sleep_ns(20 * timeslice)
        seen["running"] = t.stats
        t.shutdown()
        seen["done"] = t.stats

    rt.run(main)
    running, done = seen["running"], seen["done"]
    assert dataclasses.is_dataclass(running)
    with pytest.raises(dataclasses.FrozenInstanceError):
        running.cycles = 0  # type: ignore[misc]
    assert 19 <= running.cycles <= 21
    # a quarter of 20 timeslices, within one timeslice (phase alignment at the ends)
    assert abs(running.paused_ns - 5 * timeslice) <= timeslice
    assert done.paused_ns >= running.paused_ns and done.cycles >= running.cycles


def test_cross_check_without_spin_is_one_line_and_exit_2(tmp_path: os.PathLike[str]) -> None:
    bindir = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "AUTOCONVERGE_TLA2TOOLS"}
    env["PATH"] = bindir  # the venv only: no spin, gcc or java
    r = subprocess.run([sys.executable, "-m", "autoconverge", "verify", "--cross-check",
                        "--quiet"], capture_output=True, text=True, timeout=120, env=env,
                       cwd=tmp_path, check=False)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "spin" in lines[0] and "apt-get install" in lines[0] and "Traceback" not in r.stderr


def test_every_extra_the_cli_names_is_declared() -> None:
    from autoconverge.cli.main import COMMAND_MODULES

    declared = set(importlib.metadata.metadata("autoconverge").get_all("Provides-Extra") or [])
    assert {extra for _, extra in COMMAND_MODULES} <= declared
