"""The throttler corrects its pause share from the vCPUs' own parked time (virtual time).

A fake whose vCPUs restart late after every resume (as a vCPU thread that waits for a busy
CPU does) is held paused longer than the calls' durations say. With ``parked_ns()`` the
throttler sees that and the achieved share meets the setpoint; the same fake without it (the
correction unavailable) misses by about the delay's share - so the check can fail.
"""

from __future__ import annotations

import pytest

from autoconverge.impl.fakes import RecordingVcpus
from autoconverge.impl.runtime import Runtime
from autoconverge.impl.throttler import Throttler
from autoconverge.impl.virtualtime import VirtualRuntime

MS = 1_000_000
TIMESLICE_NS = 100 * MS
RESTART_DELAY_NS = 3 * MS


class LateRestartVcpus(RecordingVcpus):
    """vCPUs that stop at the start of pause() and run again ``delay`` after resume() ends;
    ``parked_ns()`` is that parked time so far (the interval in progress included)."""

    def __init__(self, runtime: Runtime, delay_ns: int) -> None:
        super().__init__(runtime, pause_cost_ns=100_000, resume_cost_ns=100_000)
        self._rt = runtime
        self._delay_ns = delay_ns
        self._parked_total = 0
        self._stopped_at: int | None = None
        self._restart_at: int | None = None

    def pause(self) -> None:
        self._settle(self._rt.now_ns())
        if self._stopped_at is None:
            self._stopped_at = self._restart_at if self._restart_at is not None \
                else self._rt.now_ns()
            self._restart_at = None
        super().pause()

    def resume(self) -> None:
        super().resume()
        self._restart_at = self._rt.now_ns() + self._delay_ns

    def _settle(self, now: int) -> None:
        if self._restart_at is not None and self._stopped_at is not None \
                and now >= self._restart_at:
            self._parked_total += self._restart_at - self._stopped_at
            self._stopped_at = self._restart_at = None

    def parked_ns(self) -> int:
        now = self._rt.now_ns()
        self._settle(now)
        if self._stopped_at is None:
            return self._parked_total
        end = now if self._restart_at is None else min(now, self._restart_at)
        return self._parked_total + end - self._stopped_at


class WithoutParkedTime:
    """The same vCPUs seen through the plain protocol: no ``parked_ns()`` to correct from."""

    def __init__(self, inner: LateRestartVcpus) -> None:
        self.inner = inner

    def pause(self) -> None:
        self.inner.pause()

    def resume(self) -> None:
        self.inner.resume()


def _achieved_share(percent: int, *, correct: bool) -> float:
    rt = VirtualRuntime(seed=3)
    out: list[float] = []

    def main() -> None:
        vcpus = LateRestartVcpus(rt, RESTART_DELAY_NS)
        with Throttler(vcpus if correct else WithoutParkedTime(vcpus),  # type: ignore[arg-type]
                       runtime=rt, timeslice_ns=TIMESLICE_NS) as t:
            t.set_throttle_percent(percent)
            rt.sleep_ns(10 * TIMESLICE_NS)  # settle
            t0, p0 = rt.now_ns(), vcpus.parked_ns()
            rt.sleep_ns(40 * TIMESLICE_NS)
            out.append(100 * (vcpus.parked_ns() - p0) / (rt.now_ns() - t0))

    rt.run(main, max_steps=2_000_000)
    return out[0]


@pytest.mark.parametrize("percent", [10, 50, 90, 99])
def test_the_parked_time_correction_meets_the_setpoint(percent: int) -> None:
    assert abs(_achieved_share(percent, correct=True) - percent) < 0.3


@pytest.mark.parametrize("percent", [10, 50, 90])
def test_without_the_vcpus_parked_time_the_share_is_off(percent: int) -> None:
    # each cycle's run loses the restart delay: about delay / timeslice more paused
    assert _achieved_share(percent, correct=False) - percent > 1.5
