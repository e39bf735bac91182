"""The KVM backend of migration: the KVM layer's ``GuestVm`` on both sides (thin adapter).

``GuestVm`` already speaks the migration protocols (memory, dirty log, pause/resume, vCPU
state, progress counters; ``paused=True, load_image=False`` makes an empty, parked
destination VM whose ``start()`` runs the loaded state). This module only chooses the
workload from a :class:`~.guest_config.GuestConfig` and wires the real throttler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..kvm import guest
from ..kvm.guest_vm import GUEST_KIND, GuestVm
from .guest_config import GuestConfig
from .messages import Layout
from .throttling import ThrottleFactory

if TYPE_CHECKING:
    from .vmapi import DestinationVm, MigratableVm, VmFactory

__all__ = ["GUEST_KIND", "KvmSourceGuest", "kvm_dest_factory", "make_kvm_source_guest"]


@dataclass
class KvmSourceGuest:
    vm: GuestVm
    throttle_factory: ThrottleFactory

    def close(self) -> None:
        self.vm.close()


def workload_for(config: GuestConfig, layout: guest.GuestLayout) -> guest.Workload:
    """The configured working set split over the vCPUs (each writes its own region)."""
    per_vcpu = max(1, config.working_set_bytes // guest.PAGE_SIZE // config.vcpus)
    return guest.preset(config.workload, min(per_vcpu, layout.region_pages))


def make_kvm_source_guest(config: GuestConfig, throttle_factory: ThrottleFactory
                          ) -> KvmSourceGuest:
    layout = guest.GuestLayout(config.memory_bytes, config.vcpus)
    vm = GuestVm(config.memory_bytes, config.vcpus, workload=workload_for(config, layout))
    return KvmSourceGuest(vm, throttle_factory)


def kvm_dest_factory() -> VmFactory:
    def make(lay: Layout) -> DestinationVm:
        if lay.page_size != guest.PAGE_SIZE:
            raise ValueError(f"KVM guests use {guest.PAGE_SIZE}-byte pages, not {lay.page_size}")
        return GuestVm(lay.memory_size, lay.vcpu_count, paused=True, load_image=False)

    return make


def _typecheck(vm: GuestVm) -> tuple[MigratableVm, DestinationVm]:
    """mypy: GuestVm satisfies both protocols."""
    return vm, vm
