"""What one model checker found on one spec at one bound, as typed records.

SPIN (:func:`.promela.check_spin`), TLC (:func:`.tla.check_tlc`) and the explicit-state
explorer (:func:`.crosscheck.run_explorer`) each return a :class:`CheckerRun`: a
:class:`PropertyVerdict` per property plus the distinct states, transitions and depth, which
the cross-check (:mod:`.crosscheck`) compares. ``as_dict()`` gives the JSON form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class PropertyVerdict:
    """One checker's verdict on one property."""

    holds: bool
    states: int | None
    """Distinct states of the run that decided it."""
    time_s: float
    run: str | None = None
    """SPIN/TLC: which run decided it (``safety``, ``liveness -N <name>``, ``MC0.cfg``)."""
    trail: str | None = None
    """SPIN, when asked to replay: the counterexample's replay."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"holds": self.holds, "states": self.states, "time_s": self.time_s}
        if self.run is not None:
            out["run"] = self.run
        if self.trail is not None:
            out["trail"] = self.trail
        return out


@dataclass(frozen=True)
class CheckerRun:
    """One checker on one spec at one bound: verdicts per property and the counts."""

    checker: str
    """``explorer``, ``spin`` or ``tlc``."""
    spec: str
    properties: dict[str, PropertyVerdict]
    states: int
    transitions: int | None
    """None where the checker does not count them comparably (TLC)."""
    depth: int | None
    """BFS depth (SPIN: its DFS depth, not comparable)."""
    seconds: dict[str, float]
    bounds: dict[str, Any] | None = None
    workdir: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Checker-specific extras: the explorer's ``config``, TLC's ``runs``."""

    @property
    def all_hold(self) -> bool:
        return all(v.holds for v in self.properties.values())

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "checker": self.checker, "spec": self.spec,
            "properties": {n: v.as_dict() for n, v in self.properties.items()},
            "states": self.states, "transitions": self.transitions, "depth": self.depth,
            "seconds": dict(self.seconds),
        }
        if self.bounds is not None:
            out["bounds"] = self.bounds
        if self.workdir is not None:
            out["workdir"] = self.workdir
        return out | self.details
