"""Guest backends for the CLI: the real KVM guest, or a simulated one for machines without KVM.

``kvm``: :mod:`autoconverge.impl.migration.kvm_guest` adapts the KVM layer's guest VM (real vCPU
threads, KVM dirty log, the real throttler). ``sim``: the clock-driven :class:`FakeVm` on the
wall clock, throttled by setting its run fraction (no vCPU threads; useful to try the
protocol and the policies anywhere, and to measure the transport alone).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from autoconverge.spec import timing

from .fakes import FakeThrottle, FakeVm
from .guest_config import GuestConfig
from .messages import Layout
from .throttling import ThrottleControl, ThrottleFactory, real_throttle_factory
from .vmapi import DestinationVm, MigratableVm, VmFactory

Backend = Literal["kvm", "sim"]
BACKENDS: tuple[Backend, ...] = ("kvm", "sim")
WORKLOADS = ("idle", "moderate", "worst")
SIM_RATES_PPS = {"idle": 0.0, "moderate": 20_000.0, "worst": 300_000.0}
"""Simulated dirty rates (pages/s), the worst close to the KVM guest's measured maximum."""


class SourceGuest(Protocol):
    """A running guest to migrate, with the throttle factory that fits it."""

    @property
    def vm(self) -> MigratableVm: ...

    @property
    def throttle_factory(self) -> ThrottleFactory: ...

    def close(self) -> None: ...


class WallClock:
    def now(self) -> float:
        return time.monotonic()


@dataclass
class SimGuest:
    vm: FakeVm
    throttle_factory: ThrottleFactory

    def close(self) -> None:
        self.vm.close()


def _sim_throttle(vm: MigratableVm) -> ThrottleControl:
    assert isinstance(vm, FakeVm)
    return FakeThrottle(vm)


def make_source_guest(backend: Backend, config: GuestConfig, *,
                      timeslice_ns: int = timing.DEFAULT_TIMESLICE_NS) -> SourceGuest:
    if backend == "sim":
        pages = config.memory_bytes // 4096
        ws_pages = max(1, min(config.working_set_bytes // 4096, pages - 2))
        vm = FakeVm(WallClock(), pages=pages, vcpus=config.vcpus,
                    dirty_rate_pps=SIM_RATES_PPS[config.workload], working_set=(1, ws_pages),
                    fill={"half": 0.5, "random": 1.0, "zero": 0.0}[config.fill])
        return SimGuest(vm, _sim_throttle)
    from .kvm_guest import make_kvm_source_guest

    return make_kvm_source_guest(config, real_throttle_factory(timeslice_ns))


def dest_factory(backend: Backend) -> tuple[VmFactory, tuple[str, ...]]:
    """The destination VM factory and the guest kinds it accepts."""
    if backend == "sim":
        def make(lay: Layout) -> DestinationVm:
            ws = (1, max(1, lay.page_count - 2))
            return FakeVm(WallClock(), pages=lay.page_count,
                          page_size=lay.page_size, vcpus=lay.vcpu_count,
                          dirty_rate_pps=SIM_RATES_PPS["moderate"], working_set=ws,
                          running=False, fill=0.0, prefault=True)

        return make, (FakeVm.guest_kind,)
    from .kvm_guest import GUEST_KIND, kvm_dest_factory

    factory: Callable[[Layout], DestinationVm] = kvm_dest_factory()
    return factory, (GUEST_KIND,)
