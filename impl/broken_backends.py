"""Backends that break the conformance kit's contract on purpose, one way each.

They show the kit (:mod:`autoconverge.model.conformance`) able to fail: each is a
:class:`~autoconverge.impl.fakes.ClockVcpus` (progress is the time it ran) with one defect,
and :data:`EXPECTED` names the contract property the kit must report for it. Every one has a
zero-argument factory, so ``autoconverge conformance autoconverge.impl.broken_backends:NAME``
runs the kit on it (exit 1, naming the property).
"""

from __future__ import annotations

import threading
import time

from .fakes import ClockVcpus


class IgnoresResume(ClockVcpus):
    """``resume()`` call number ``ignore`` silently does nothing (``is_paused()`` is truthful)."""

    def __init__(self, ignore: int = 2) -> None:
        super().__init__()
        self._ignore = ignore
        self._resumes = 0

    def resume(self) -> None:
        self._resumes += 1
        if self._resumes != self._ignore:
            super().resume()


class EarlyPause(ClockVcpus):
    """``pause()`` returns at once; the vCPUs stop ``delay_s`` later (an asynchronous stop
    not waited for). ``is_paused()`` and ``progress()`` tell the truth."""

    def __init__(self, delay_s: float = 0.005) -> None:
        super().__init__()
        self._delay_ns = int(delay_s * 1e9)
        self._stop_at: int | None = None
        self._guard = threading.Lock()

    def _settle(self) -> None:
        with self._guard:
            if self._stop_at is not None and time.monotonic_ns() >= self._stop_at:
                self._stop_at = None
                self._stop()

    def pause(self) -> None:
        self._settle()
        with self._guard:
            if not super().is_paused() and self._stop_at is None:
                self._stop_at = time.monotonic_ns() + self._delay_ns

    def resume(self) -> None:
        with self._guard:
            self._stop_at = None  # a stop still pending is cancelled
        self._start()

    def is_paused(self) -> bool:
        self._settle()
        return super().is_paused()

    def progress(self) -> int:
        self._settle()
        return super().progress()


class LyingIsPaused(IgnoresResume):
    """``is_paused()`` reports what was last asked for, not the truth - and ``resume()`` call
    number ``ignore`` silently does nothing, so the two differ. Only ``progress()`` tells."""

    def __init__(self, ignore: int = 2) -> None:
        super().__init__(ignore)
        self._believed = False

    def pause(self) -> None:
        super().pause()
        self._believed = True

    def resume(self) -> None:
        super().resume()
        self._believed = False

    def is_paused(self) -> bool:
        return self._believed


class Hangs(ClockVcpus):
    """``pause()`` call number ``hang`` never returns (until :meth:`close` releases it)."""

    def __init__(self, hang: int = 2) -> None:
        super().__init__()
        self._hang = hang
        self._pauses = 0
        self._release = threading.Event()

    def pause(self) -> None:
        self._pauses += 1
        if self._pauses == self._hang:
            self._release.wait()
        super().pause()

    def close(self) -> None:
        self._release.set()


def ignores_resume() -> IgnoresResume:
    return IgnoresResume()


def early_pause() -> EarlyPause:
    return EarlyPause()


def lying_is_paused() -> LyingIsPaused:
    return LyingIsPaused()


def hangs() -> Hangs:
    return Hangs()


EXPECTED: dict[str, str] = {
    "ignores_resume": "ResumeRuns",
    "early_pause": "PauseStops",
    "lying_is_paused": "IsPausedTruthful",
    "hangs": "CallsReturn",
}
"""factory name -> the contract property the kit must report as failed."""
