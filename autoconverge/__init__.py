"""autoconverge: verified vCPU throttling (auto-converge) for pre-copy live migration.

The embeddable API, re-exported here (it needs only ``transitions``)::

    from autoconverge import Throttler, RealRuntime

    with Throttler(vcpus, runtime=RealRuntime()) as t:   # vcpus: pause(), resume()
        t.set_throttle_percent(30)    # 1..99 throttles, 0 aborts (returns with vCPUs running)
        t.handover()                  # exit leaving the vCPUs paused for the switch-over

Every error raised on purpose derives from :class:`AutoconvergeError`. The subpackages -
``spec`` (the lifecycles, declared once), ``model`` (exploration), ``proofs`` (Z3, SPIN,
TLC), ``impl`` (the throttler, KVM, the migration) and ``cli`` (the ``autoconverge`` command,
also ``python -m autoconverge``) - are imported only when used; checkers, KVM and migration
need the extras named in the README.
"""

from autoconverge.impl.errors import AutoconvergeError
from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.runtime import ChannelTimeout, JoinTimeout, Runtime
from autoconverge.impl.throttler import (
    SpecViolation,
    Throttler,
    ThrottlerClosed,
    ThrottlerError,
    ThrottlerStats,
    ThrottlerTimeout,
    ThrottleWorkerError,
)
from autoconverge.impl.vcpus import VcpuError, Vcpus, VcpuTimeout
from autoconverge.impl.virtualtime import VirtualRuntime

__all__ = [
    "AutoconvergeError",
    "ChannelTimeout",
    "JoinTimeout",
    "RealRuntime",
    "Runtime",
    "SpecViolation",
    "ThrottleWorkerError",
    "Throttler",
    "ThrottlerClosed",
    "ThrottlerError",
    "ThrottlerStats",
    "ThrottlerTimeout",
    "VcpuError",
    "VcpuTimeout",
    "Vcpus",
    "VirtualRuntime",
]
