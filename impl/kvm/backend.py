"""The KVM guest as a conformance-kit backend: :func:`small_guest`, a zero-argument factory.

:class:`~.guest_vm.GuestVm` already keeps the kit's backend contract (``pause()``,
``resume()``, ``is_paused()`` from the vCPU threads' own state, ``progress()`` per vCPU from
guest memory, ``close()``); this only picks a small guest:
``autoconverge conformance autoconverge.impl.kvm.backend:small_guest``.
"""

from __future__ import annotations

from . import guest
from .guest_vm import GuestVm

MEMORY = 16 << 20
VCPUS = 1


def small_guest() -> GuestVm:
    """A 16 MiB guest with one vCPU counting and writing a 64-page working set (one vCPU
    leaves a core to the throttler on small hosts; the kit works with any count)."""
    return GuestVm(MEMORY, VCPUS, workload=guest.preset("moderate", 64))
