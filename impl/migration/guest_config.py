"""What guest to create for a migration run: memory, vCPUs, workload, working set, content.

One job: the guest's shape as the CLI and the benchmarks ask for it, read by both guest
backends (:mod:`.backends` for the simulated guest, :mod:`.kvm_guest` for the KVM one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GuestConfig:
    """The guest to migrate (not the throttler's lifecycle ``Spec`` of ``autoconverge.spec``)."""

    memory_bytes: int = 256 * 1024 * 1024
    vcpus: int = 1
    workload: str = "worst"
    working_set_bytes: int = 64 * 1024 * 1024
    fill: Literal["half", "random", "zero"] = "half"
    """Sim guest: static random content in half / all / none of its memory."""
