"""The KVM backend of migration: the KVM layer's ``GuestVm`` on both sides (thin adapter).

``GuestVm`` already speaks the migration protocols (memory, dirty log, pause/resume, vCPU
state, progress counters; ``paused=True, load_image=False`` makes an empty, parked
destination VM whose ``start()`` runs the loaded state). This module only chooses the
workload from a :class:`GuestSpec` and wires the real throttler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..kvm import guest
from ..kvm.vm import GUEST_KIND, GuestVm
from .throttling import ThrottleFactory
from .wire import Layout

if TYPE_CHECKING:
    from .backends import GuestSpec
    from .vmapi import DestinationVm, MigratableVm, VmFactory

__all__ = ["GUEST_KIND", "KvmSourceGuest", "kvm_dest_factory", "make_kvm_source_guest"]


@dataclass
class KvmSourceGuest:
    vm: GuestVm
    throttle_factory: ThrottleFactory

    def close(self) -> None:
        self.vm.close()


def workload_for(spec: GuestSpec, layout: guest.GuestLayout) -> guest.Workload:
    """The spec's working set split over the vCPUs (each writes its own region)."""
    per_vcpu = max(1, spec.working_set_bytes // guest.PAGE_SIZE // spec.vcpus)
    return guest.preset(spec.workload, min(per_vcpu, layout.region_pages))


def make_kvm_source_guest(spec: GuestSpec, throttle_factory: ThrottleFactory
                          ) -> KvmSourceGuest:
    layout = guest.GuestLayout(spec.memory_bytes, spec.vcpus)
    vm = GuestVm(spec.memory_bytes, spec.vcpus, workload=workload_for(spec, layout))
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
