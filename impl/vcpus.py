"""The two-method protocol between the throttler and whatever owns the vCPUs.

The throttler only ever calls ``pause()`` and ``resume()``, strictly alternately (a property
of the spec). Implementations: ``autoconverge.impl.fakes.RecordingVcpus`` for tests and
``autoconverge.impl.kvm.guest_vm.GuestVm`` for real KVM vCPUs.

Contract for implementations:
- ``pause()`` returns only once every vCPU is parked outside guest mode; ``resume()`` returns
  once every vCPU is back in its run loop. Both are idempotent.
- Both bound their own waiting and raise :class:`VcpuTimeout` (naming the vCPU that did not
  answer) instead of hanging; any other failure raises :class:`VcpuError`.

What the conformance kit (``autoconverge conformance``, :mod:`autoconverge.model.conformance`)
also reads, to check a backend against the spec: ``is_paused()``, the backend's own truth
(the hypervisor's or kernel's view, never a copy of the last request); optionally
``progress()``, a counter (or per-vCPU counters) that grows only while the vCPUs run; and
optionally ``close()``, called once when the kit is done with a backend.

What the throttler also reads when present: ``parked_ns()``, the time each vCPU spent
stopped since it started (mean over the vCPUs, by the vCPUs' own stop and restart
timestamps); it then corrects its pause share from it (see ``Throttler``), instead of relying
on call durations alone.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .errors import AutoconvergeError


class VcpuError(AutoconvergeError, RuntimeError):
    """pause() or resume() failed."""


class VcpuTimeout(VcpuError):
    """A vCPU did not acknowledge pause/resume within the bound."""

    def __init__(self, vcpu: str, action: str, timeout_s: float) -> None:
        super().__init__(
            f"vCPU {vcpu} did not acknowledge {action} within {timeout_s * 1e3:.1f} ms"
        )
        self.vcpu = vcpu
        self.action = action
        self.timeout_s = timeout_s


@runtime_checkable
class Vcpus(Protocol):
    """What the throttler needs from the vCPUs: pause all, resume all."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...
