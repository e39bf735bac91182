"""What the explicit-state explorer (:func:`.explorer.explore`) returns, as typed records.

An :class:`ExplorationResult` is a :class:`PropertyResult` per checked property plus the
run's :class:`ExplorationStats`. ``as_dict()`` gives the JSON form (``autoconverge verify
--json``: ``explorer`` is the stats, each property row's ``explorer`` its result).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .config import ExplorerConfig
from .graph import StateGraph


@dataclass(frozen=True)
class PropertyResult:
    """The explorer's verdict on one property, at its bound."""

    name: str
    kind: str
    """``invariant``, ``step``, ``deadlock`` or ``leadsto``."""
    statement: str
    holds: bool
    """No counterexample, and the exploration was not truncated."""
    distinct_states: int
    depth: int
    counterexample: dict[str, Any] | None = None
    """The shortest violating path (a lasso for ``leadsto``), JSON-ready."""
    counterexample_text: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific extras: ``deadlocked_states`` (deadlock); ``region``, ``sources``,
    ``sccs``, ``fair_sccs`` (leadsto)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "statement": self.statement,
            "holds": self.holds, "distinct_states": self.distinct_states, "depth": self.depth,
            "counterexample": self.counterexample,
            "counterexample_text": self.counterexample_text, "details": dict(self.details),
        }


@dataclass(frozen=True)
class ExplorationStats:
    """Counts and timings of one exploration, and the regression check of its state count."""

    spec: str
    distinct_states: int
    distinct_records: int
    """Distinct spec state records (a state also counts the user calls made)."""
    transitions: int
    depth: int
    terminal_states: int
    bounded_ends: int
    """States whose only moves were cut by the call bound or the channel capacity."""
    deadlocks: int
    seconds_explore: float
    seconds_total: float
    states_per_second: float
    truncated: bool
    """Stopped at ``config.max_states``: no verdict."""
    config: ExplorerConfig
    """The bound explored (the variant's probe percents included)."""
    expected_states: int | None = None
    expected_depth: int | None = None
    regression_ok: bool | None = None
    """State count and depth match the config's expectation (None: none applies)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "distinct_states": self.distinct_states,
            "distinct_records": self.distinct_records, "transitions": self.transitions,
            "depth": self.depth, "terminal_states": self.terminal_states,
            "bounded_ends": self.bounded_ends, "deadlocks": self.deadlocks,
            "seconds_explore": self.seconds_explore, "seconds_total": self.seconds_total,
            "states_per_second": self.states_per_second, "truncated": self.truncated,
            "config": self.config.as_dict(), "expected_states": self.expected_states,
            "expected_depth": self.expected_depth, "regression_ok": self.regression_ok,
        }


@dataclass(frozen=True)
class ExplorationResult:
    """Verdicts per property plus statistics. ``ok``: every checked property holds."""

    spec: str
    properties: tuple[PropertyResult, ...]
    stats: ExplorationStats
    graph: StateGraph | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return all(p.holds for p in self.properties) and not self.stats.truncated

    @property
    def regression_ok(self) -> bool | None:
        """State count and depth match the config's expectation (None: none applies)."""
        return self.stats.regression_ok

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "ok": self.ok,
                "properties": [p.as_dict() for p in self.properties],
                "stats": self.stats.as_dict()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.as_dict(), indent=indent, default=str)

    def format_text(self) -> str:
        st = self.stats
        lines = [
            f"explorer: spec {self.spec} at [{st.config.section}]: "
            f"{st.distinct_states} states ({st.distinct_records} distinct records), "
            f"{st.transitions} transitions, depth {st.depth}, "
            f"{st.seconds_total:.2f} s ({st.states_per_second:.0f} states/s)",
            f"  ends: {st.terminal_states} terminal, {st.bounded_ends} bounded "
            f"(call bound or channel capacity), {st.deadlocks} deadlocked",
        ]
        if st.regression_ok is False:
            lines.append(
                f"  REGRESSION MISMATCH: expected {st.expected_states} states / depth "
                f"{st.expected_depth}, got {st.distinct_states} / {st.depth} "
                "(update model/explorer.toml if the spec changed on purpose)"
            )
        if st.truncated:
            lines.append(f"  TRUNCATED at max_states={st.config.max_states}: no verdict")
        for p in self.properties:
            lines.append(f"  {p.name:30} {p.kind:9} {'holds' if p.holds else 'VIOLATED'}")
        for p in self.properties:
            if p.counterexample_text:
                lines.append("")
                lines.append(p.counterexample_text)
        return "\n".join(lines)
