"""The explorer benchmark behind ``autoconverge bench-model``: throughput and verdict time.

For each config section (default: ``ci`` and ``large`` of ``model/explorer.toml``) it explores
the shipped spec and reports distinct states, transitions, depth, exploration time, states/s
and the verdict time (exploration plus every property, liveness included), best of
``--repeat`` runs; plus the time to check every bug-zoo variant at the first section's bound.
Each row also gives the process's peak RSS after the section (``resource.getrusage``: a
high-water mark, so a later, smaller section shows the earlier peak) and bytes per state
above the RSS measured before the first section. ``progress`` (e.g.
:func:`.progress.stderr_progress`) reports long explorations. A benchmark, not a test:
nothing is asserted on the timings.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable
from typing import Any

from autoconverge.spec import SPEC
from autoconverge.spec.variants import VARIANTS

from .config import load_config
from .explorer import explore
from .progress import ExploreProgress


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def bench(config_path: str | None, sections: list[str], repeat: int = 1,
          variants: bool = True,
          progress: Callable[[str], Callable[[ExploreProgress], None]] | None = None
          ) -> dict[str, Any]:
    """Benchmark ``sections``; ``progress(label)`` makes a progress callback per run."""
    floor = _peak_rss_bytes()
    out: dict[str, Any] = {"python": platform.python_version(), "rss_floor_bytes": floor,
                           "sections": {}}
    for name in sections:
        cfg = load_config(config_path, name)
        best: dict[str, Any] | None = None
        for _ in range(max(1, repeat)):
            r = explore(SPEC, cfg,
                        progress=progress(f"explorer {name}") if progress else None)
            st = r.stats
            row = {
                "max_calls": cfg.max_calls,
                "channel_capacity": cfg.channel_capacity,
                "percents": list(cfg.percents),
                "faults": cfg.faults,
                "distinct_states": st.distinct_states,
                "distinct_records": st.distinct_records,
                "transitions": st.transitions,
                "depth": st.depth,
                "explore_seconds": st.seconds_explore,
                "states_per_second": st.states_per_second,
                "verdict_seconds": st.seconds_total,
                "verdict_states_per_second": (round(st.distinct_states / st.seconds_total, 1)
                                              if st.seconds_total > 0 else None),
                "all_hold": r.ok,
                "regression_ok": r.regression_ok,
                "peak_rss_bytes": _peak_rss_bytes(),
            }
            row["bytes_per_state"] = round(max(0, _peak_rss_bytes() - floor)
                                           / max(1, st.distinct_states), 1)
            del r
            if best is None or row["verdict_seconds"] < best["verdict_seconds"]:
                best = row
        out["sections"][name] = best
    if variants and sections:
        cfg = load_config(config_path, sections[0])
        t0 = time.perf_counter()
        caught = {}
        for v in VARIANTS:
            r = explore(v.build(SPEC), cfg)
            caught[v.name] = sorted(p.name for p in r.properties if not p.holds)
        out["variants"] = {
            "section": sections[0],
            "seconds_all": round(time.perf_counter() - t0, 3),
            "violated": caught,
        }
    return out
