"""What migration needs from a VM, as protocols: the source side and the destination side.

The source needs guest memory, a dirty log, pause/resume (also handed to the throttler as
its two-method vCPU protocol), vCPU state and progress counters. The destination needs to
create an empty VM of the announced layout, write memory, load vCPU state, start the vCPUs
and, on failure, discard the VM. Implementations: the clock-driven fake in
:mod:`autoconverge.impl.migration.fakes` (tests) and the KVM adapter in
:mod:`autoconverge.impl.migration.kvm_guest`.

Dirty log contract: ``fetch_dirty_bitmap()`` returns a little-endian bit array (bit ``i`` of
byte ``i // 8`` is page ``i``), ``ceil(pages / 8)`` bytes or more, of the pages written since
the previous fetch (or since ``start_dirty_log``), and clears it atomically with respect to
guest writes: a write after the fetch shows up in the next one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from .messages import Layout


class MigratableVm(Protocol):
    """A running VM as seen by the migration source."""

    @property
    def memory_size(self) -> int: ...

    @property
    def page_size(self) -> int: ...

    @property
    def vcpu_count(self) -> int: ...

    @property
    def vcpu_state_size(self) -> int: ...

    @property
    def guest_kind(self) -> str: ...

    def memory(self) -> memoryview:
        """The whole guest memory, contiguous, ``memory_size`` bytes (writable)."""
        ...

    def start_dirty_log(self) -> None: ...

    def fetch_dirty_bitmap(self) -> np.ndarray:
        """Get-and-clear the dirty log (uint8 array, see the module docstring)."""
        ...

    def stop_dirty_log(self) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def is_paused(self) -> bool: ...

    def save_vcpu_state(self) -> list[bytes]:
        """Each vCPU's registers (``vcpu_state_size`` bytes each); only while paused."""
        ...

    def progress(self) -> list[int]:
        """The guest's per-vCPU progress counters (read from guest memory)."""
        ...


class DestinationVm(Protocol):
    """An empty VM created by the destination for an announced layout, not yet running.

    Its memory must read as all zeros when created (the receiver skips zero pages it never
    wrote).
    """

    def memory(self) -> memoryview: ...

    def load_vcpu_state(self, states: Sequence[bytes]) -> None: ...

    def start(self) -> None:
        """Start the vCPUs from the loaded state (the guest runs on)."""
        ...

    def progress(self) -> list[int]: ...

    def close(self) -> None:
        """Stop and discard the VM (idempotent)."""
        ...


VmFactory = Callable[[Layout], DestinationVm]


def layout_of(vm: MigratableVm) -> Layout:
    return Layout(vm.memory_size, vm.page_size, vm.vcpu_count, vm.vcpu_state_size,
                  vm.guest_kind)
