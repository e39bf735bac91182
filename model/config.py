"""Bounds of the explicit-state explorer, read from ``model/explorer.toml``.

The spec is unbounded (any number of user calls, an unbounded FIFO, any percent); the
explorer checks a finite slice of it. A config section fixes that slice: the percents offered
to ``set_throttle_percent`` (out-of-range values included, to show the API guard rejects
them), how many user calls (``call_*`` triggers) a behaviour may make, the channel capacity,
whether ``fault`` transitions (a failing ``pause()``/``resume()``) are explored, which
properties to check, and the expected distinct-state count and depth of the shipped spec at
that bound (regression data: a test asserts them, the CLI reports a mismatch).
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).with_name("explorer.toml")
DEFAULT_SECTION = "ci"
DEFAULT_SECTIONS: dict[str, str] = {"throttle": "ci", "migration": "migration"}
"""The bound each lifecycle is checked at by default (its section of explorer.toml)."""


def default_section(spec: Any) -> str:
    """The default bound's section for ``spec``'s lifecycle (its :attr:`Spec.family`)."""
    return DEFAULT_SECTIONS.get(spec.family, DEFAULT_SECTION)


@dataclass(frozen=True)
class ExplorerConfig:
    """One bound of the explorer (a section of ``explorer.toml``)."""

    percents: tuple[int, ...] = (0, 1, 50, 99, 100)
    """Domain of ``call_set``'s parameter ``p``."""
    max_calls: int = 4
    """User calls (``call_*`` triggers) per behaviour."""
    channel_capacity: int = 3
    """A step that would leave more commands queued is cut (like the call bound)."""
    faults: bool = True
    """Explore the ``fault`` transitions (a vCPU call failing)."""
    properties: tuple[str, ...] = ()
    """Names of the properties to check; empty: all of the spec's properties."""
    expected_states: int | None = None
    """Distinct states of the shipped spec at this bound (regression data)."""
    expected_depth: int | None = None
    """BFS depth of the shipped spec at this bound (regression data)."""
    expected_spec: str = "throttle"
    """The spec name the expectations are for (variants have other names)."""
    max_states: int = 5_000_000
    """Safety valve: stop (and fail) beyond this many states."""
    section: str = DEFAULT_SECTION

    def with_percents(self, extra: tuple[int, ...]) -> ExplorerConfig:
        """The same bound with ``extra`` percents added to the domain (a variant's probes)."""
        merged = tuple(dict.fromkeys((*self.percents, *extra)))
        return dataclasses.replace(self, percents=merged)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["percents"] = list(self.percents)
        d["properties"] = list(self.properties)
        return d


_KEYS = {f.name for f in dataclasses.fields(ExplorerConfig)} - {"section"}


def load_config(
    path: str | Path | None = None,
    section: str = DEFAULT_SECTION,
    *,
    probe_percents: tuple[int, ...] = (),
) -> ExplorerConfig:
    """Read one section of the config file (default: ``model/explorer.toml``, ``[ci]``).

    ``probe_percents`` (a variant's extra percents) are added to the domain.
    """
    p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    with p.open("rb") as f:
        data = tomllib.load(f)
    if section not in data:
        raise KeyError(f"no section [{section}] in {p} (have: {', '.join(sorted(data))})")
    raw: dict[str, Any] = dict(data[section])
    unknown = set(raw) - _KEYS
    if unknown:
        raise ValueError(f"unknown keys in [{section}] of {p}: {sorted(unknown)}")
    if "percents" in raw:
        raw["percents"] = tuple(int(x) for x in raw["percents"])
    if "properties" in raw:
        raw["properties"] = tuple(str(x) for x in raw["properties"])
    cfg = ExplorerConfig(section=section, **raw)
    if cfg.max_calls < 0 or cfg.channel_capacity < 0:
        raise ValueError(f"[{section}] bounds must be non-negative")
    return cfg.with_percents(probe_percents) if probe_percents else cfg


def config_sections(path: str | Path | None = None) -> tuple[str, ...]:
    p = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    with p.open("rb") as f:
        return tuple(tomllib.load(f))
