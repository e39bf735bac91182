"""How the migration source drives vCPU throttling, and how stolen guest CPU is measured.

The source talks to a :class:`ThrottleControl` (set a percentage, hand the paused vCPUs over
at switch-over, shut down). :class:`RealThrottle` is the production one: the threaded
:class:`autoconverge.impl.throttler.Throttler` on the real runtime, fed with a
:class:`PauseAccounting` wrapper around the VM so the vCPU time the throttle takes from the
guest is *measured* (wall time between each pause() and the following resume(), times the
vCPU count), not inferred from the setpoint.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Protocol

from autoconverge.spec.timing import DEFAULT_TIMESLICE_NS

from .vmapi import MigratableVm


class ThrottleControl(Protocol):
    def set_throttle_percent(self, percent: int) -> None:
        """0..99; 0 stops throttling (vCPUs running when it returns)."""
        ...

    def handover(self) -> None:
        """Stop throttling, leave every vCPU paused; the caller owns them afterwards.

        If it raises, nothing is handed over: the vCPUs are not the caller's, and
        ``shutdown()`` (which resumes them) is still due."""
        ...

    def shutdown(self) -> None:
        """Stop throttling, vCPUs running; idempotent, a no-op after a handover that
        returned. Raises ``ThrottlerTimeout`` while a vCPU call is stuck: call it again."""
        ...

    def stolen_vcpu_seconds(self) -> float:
        """vCPU time taken from the guest by throttling so far (not the switch-over)."""
        ...


ThrottleFactory = Callable[[MigratableVm], ThrottleControl]


class PauseAccounting:
    """A two-method vCPU object (pause/resume) that forwards to the VM and times the pauses."""

    def __init__(self, vm: MigratableVm, now: Callable[[], float] = time.monotonic) -> None:
        self._vm = vm
        self._now = now
        # guards _since, _total, _frozen, pauses (throttle worker vs the migration source)
        self._accounting_lock = threading.Lock()
        self._since: float | None = None
        self._total = 0.0
        self._frozen = False
        self.pauses = 0

    def pause(self) -> None:
        self._vm.pause()
        with self._accounting_lock:
            if not self._frozen and self._since is None:
                self._since = self._now()
                self.pauses += 1

    def resume(self) -> None:
        with self._accounting_lock:
            if self._since is not None:
                self._total += self._now() - self._since
                self._since = None
        self._vm.resume()

    def freeze(self) -> None:
        """Stop counting (switch-over pauses are downtime, not throttling)."""
        with self._accounting_lock:
            if self._since is not None:
                self._total += self._now() - self._since
                self._since = None
            self._frozen = True

    def paused_seconds(self) -> float:
        with self._accounting_lock:
            extra = self._now() - self._since if self._since is not None else 0.0
            return self._total + extra

    def stolen_vcpu_seconds(self) -> float:
        return self.paused_seconds() * self._vm.vcpu_count


class RealThrottle:
    """The project's threaded :class:`~autoconverge.impl.throttler.Throttler` on the real
    runtime, with measured pause accounting.

    A handover that times out (a pause() slower than the call timeout) or fails hands
    nothing over: ``handover()`` then asks the throttler to shut down at once, which waits
    for the worker's late exit and resumes the vCPUs if the worker left them paused. If the
    vCPU call is still stuck, that raises ``ThrottlerTimeout`` and the throttler stays open,
    so the caller's ``shutdown()`` tries again (the migration source retries it for
    ``MigrationConfig.cleanup_timeout_s``).
    """

    def __init__(self, vm: MigratableVm, timeslice_ns: int = DEFAULT_TIMESLICE_NS,
                 call_timeout_ns: int | None = None) -> None:
        from ..realtime import RealRuntime
        from ..throttler import Throttler

        self._acct = PauseAccounting(vm)
        if call_timeout_ns is None:  # the throttler's default
            self._throttler = Throttler(self._acct, runtime=RealRuntime(),
                                        timeslice_ns=timeslice_ns)
        else:
            self._throttler = Throttler(self._acct, runtime=RealRuntime(),
                                        timeslice_ns=timeslice_ns,
                                        call_timeout_ns=call_timeout_ns)

    def set_throttle_percent(self, percent: int) -> None:
        self._throttler.set_throttle_percent(percent)

    def handover(self) -> None:
        self._acct.freeze()
        try:
            self._throttler.handover()
        except BaseException:
            # not handed over: the vCPUs are not ours. shutdown() resumes them once the
            # worker is gone; if it is still stuck (ThrottlerTimeout), the caller's
            # shutdown() tries again
            with contextlib.suppress(Exception):
                self._throttler.shutdown()
            raise

    def shutdown(self) -> None:
        self._throttler.shutdown()  # idempotent; a no-op after a handover that returned

    def stolen_vcpu_seconds(self) -> float:
        return self._acct.stolen_vcpu_seconds()

    def pause_rounds(self) -> int:
        """Throttle rounds so far (pauses counted by the accounting; optional in the
        protocol: the source reads the time per round from it when present)."""
        return self._acct.pauses


def real_throttle_factory(timeslice_ns: int = DEFAULT_TIMESLICE_NS,
                          call_timeout_ns: int | None = None) -> ThrottleFactory:
    def make(vm: MigratableVm) -> ThrottleControl:
        return RealThrottle(vm, timeslice_ns, call_timeout_ns)

    return make
