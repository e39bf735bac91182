"""The Hypothesis impl-vs-spec machine on a user's backend, on real threads.

:func:`conformance_machine` subclasses :class:`~.hypothesis_impl.ThrottlerVsSpec` (every API
sequence: set, abort, bad input, shutdown, handover, injected pause/resume failures, waits)
with a session that builds a fresh backend per program and puts the kit's
:class:`~.conformance_probe.Probe` between it and the throttler. On top of the machine's own
checks (trace validation, impl state equals model state when quiescent) it checks, after
every step, the probe's findings and the backend's own ``is_paused()`` against the spec, and
raises each finding as the :class:`~.conformance_probe.ContractViolation` it is, so the
shrunk failing program names its property. Each program starts throttling at a drawn percent
(``start(seed, p)``; 0: not), since on real threads a program has only a few steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant

from autoconverge.impl.realtime import RealRuntime
from autoconverge.impl.throttler import SpecViolation, Throttler, ThrottlerTimeout
from autoconverge.spec import lifecycle as L

from .conformance_probe import AGREES, TRACE, ContractViolation, Hung, Probe, bounded
from .conformance_run import Backends, KitConfig, Tally, quiescent
from .hypothesis_impl import Session, ThrottlerVsSpec
from .tracecheck import TraceMismatch

WHERE = " (in a Hypothesis program)"


class ConformanceSession(Session):
    """One program's throttler on a fresh, probed backend."""

    quiescent_only = True

    def __init__(self, backends: Backends, cfg: KitConfig, tally: Tally) -> None:
        self._backends = backends
        self._cfg = cfg
        self._tally = tally
        self.backend = backends.make()
        self.probe = Probe(self.backend, where=WHERE)
        tally.probes.append(self.probe)
        tally.add("programs")
        try:
            self.throttler = Throttler(self.probe, runtime=RealRuntime(),
                                       timeslice_ns=cfg.timeslice_ns,
                                       call_timeout_ns=int(cfg.call_timeout_s * 1e9),
                                       trace=True, name="conformance-hypothesis")
        except BaseException:
            backends.close(self.backend)
            raise

    def call(self, fn: Callable[[Throttler], Any]) -> Any:
        try:
            return fn(self.throttler)
        except ThrottlerTimeout:
            hung = self.probe.hung_call(0)
            if hung is not None:
                raise Hung(hung) from None
            raise
        except SpecViolation as exc:
            raise ContractViolation(TRACE, f"{exc}{WHERE}") from exc

    def wait(self, ms: int) -> None:
        time.sleep(min(ms, 30) / 1000)

    def inject_failure(self, action: str, after: int) -> bool:
        self.probe.fail_on.add((action, self.probe.counts[action] + after))
        return True

    def vcpus_paused(self) -> bool | None:
        return None  # compared by the kit's own invariant, which names the property

    def close(self) -> None:
        try:
            self._tally.add("events", len(self.throttler.events))  # validated by the machine
            if not self.throttler.closed:
                try:
                    self.call(lambda t: t.shutdown())
                except Exception:
                    pass  # the machine's rules already judged the throttler
            if self.probe.in_progress is None and bounded(
                    self.probe.is_paused, self._cfg.call_timeout_s, "is_paused()"):
                bounded(self.probe.resume, self._cfg.call_timeout_s,
                        "resume() after handover")
        finally:
            self._backends.close(self.backend)
        if self.probe.violation is not None:
            raise self.probe.violation


def conformance_machine(backends: Backends, cfg: KitConfig,
                        tally: Tally) -> type[ThrottlerVsSpec]:
    """The machine class for one kit run (its sessions share ``backends`` and ``tally``)."""

    def make_session(seed: int) -> Session:
        return ConformanceSession(backends, cfg, tally)

    class Conformance(ThrottlerVsSpec):
        session_factory = make_session  # read on the class: a plain function

        @initialize(seed=st.integers(0, 2**32 - 1), p=st.integers(0, L.MAX_PERCENT))
        def start(self, seed: int, p: int) -> None:
            """The base machine's start, then throttle at ``p`` (0: not): real threads give
            a program few steps, so each starts with the vCPUs being paused and resumed."""
            super().start(seed)
            if p:
                self.set_percent(p)

        @property
        def cs(self) -> ConformanceSession:
            assert isinstance(self.session, ConformanceSession)
            return self.session

        def _raise_probe(self) -> None:
            if self.session is not None and self.cs.probe.violation is not None:
                raise self.cs.probe.violation

        def _sync(self) -> None:
            self._raise_probe()
            try:
                super()._sync()
            except TraceMismatch as exc:
                raise ContractViolation(TRACE, f"{exc}{WHERE}") from exc

        @invariant()
        def backend_agrees_with_spec(self) -> None:
            if self.session is None:
                return
            tally.add("program_steps")
            for _ in range(100):  # until no event was recorded during the read
                self._sync()
                seen = self.seen
                paused = self.cs.probe.check_between_calls(cfg.call_timeout_s)
                self._raise_probe()
                self._sync()
                if self.seen == seen:
                    break
            m = self.model
            if quiescent(m) and self.seen == seen:
                tally.add("quiescent")
                if paused != m.paused:
                    raise ContractViolation(
                        AGREES, f"the spec says the vCPUs are "
                                f"{'paused' if m.paused else 'running'} (worker {m.w}), the "
                                f"backend's is_paused() is {paused}{WHERE}")

        def teardown(self) -> None:
            if self.session is not None:
                self.session.close()

    return Conformance
