"""Cross-check: the explorer, SPIN and TLC on the same spec at the same bounds.

:func:`cross_check` runs the explicit-state explorer (:mod:`autoconverge.model.explorer`),
SPIN on the generated Promela (:mod:`.promela`) and TLC on the generated TLA+ (:mod:`.tla`)
on one spec (the shipped one, or a bug-zoo variant), at the explorer's bounds (a section of
``model/explorer.toml``, ``[ci]`` by default, plus the variant's probe percents), and
compares, per property, the verdicts, and overall the distinct-state counts, the
transitions and the BFS depth where the checkers' granularity of steps matches.

It does for all three: one transition of the spec = one step (a SPIN ``d_step``, one TLA+
action); a state = the spec's record plus the number of user calls made. So the counts are
*expected to be equal* and a difference is reported as a disagreement. What differs, and is
not compared: SPIN's liveness runs (the product with the never claim, the fairness copies and
the controller's ``stop`` option) and SPIN's DFS depth; TLC's "states generated" (it counts
the explicit stutter steps and re-visits).

:func:`bench_checkers` times the three end to end at several bounds (see :mod:`.bench`).
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from autoconverge.spec import Spec
from autoconverge.spec.variants import VARIANTS, Variant
from autoconverge.spec.variants import variant as find_variant

from . import tools
from .codegen import Bounds
from .promela import check_spin
from .tla import check_tlc

FALLBACK_BOUNDS = Bounds(percents=(1, 50, 99), max_calls=4, channel_capacity=3, faults=True)
"""Used only when the explorer's config cannot be read."""

CHECKERS = ("explorer", "spin", "tlc")


def explorer_config(section: str = "ci") -> Any:
    """The explorer's config section (``model/explorer.toml``)."""
    from autoconverge.model.explorer import load_config

    return load_config(section=section)


def bounds_for(variant: Variant | None = None, section: str = "ci") -> Bounds:
    """The explorer's bounds for a section, with the variant's probe percents added."""
    try:
        base = Bounds.from_config(explorer_config(section))
    except (ImportError, FileNotFoundError):
        base = FALLBACK_BOUNDS
    return base.with_percents(tuple(variant.probe_percents)) if variant else base


def _resolve(spec: Spec, variant: Variant | str | None) -> tuple[Spec, Variant | None]:
    if variant is None:
        for v in VARIANTS:
            if v.name == spec.name:
                return spec, v
        return spec, None
    v = find_variant(variant) if isinstance(variant, str) else variant
    return v.build(spec), v


def run_explorer(spec: Spec, bounds: Bounds, section: str = "ci") -> dict[str, Any]:
    """The explorer at ``bounds`` (its config section with these percents and bounds)."""
    from autoconverge.model.explorer import explore

    cfg = dataclasses.replace(explorer_config(section), percents=bounds.percents,
                              max_calls=bounds.max_calls,
                              channel_capacity=bounds.channel_capacity, faults=bounds.faults)
    t0 = time.perf_counter()
    r = explore(spec, cfg)
    seconds = time.perf_counter() - t0
    st = r.stats
    return {
        "checker": "explorer",
        "spec": spec.name,
        "properties": {p["name"]: {"holds": bool(p["holds"]), "states": st["distinct_states"],
                                   "time_s": round(seconds, 4)} for p in r.properties},
        "states": st["distinct_states"],
        "transitions": st["transitions"],
        "depth": st["depth"],
        "seconds": {"total": round(seconds, 4)},
        "config": st.get("config"),
    }


def cross_check(
    spec: Spec,
    *,
    variant: Variant | str | None = None,
    bounds: Bounds | None = None,
    section: str = "ci",
    checkers: tuple[str, ...] = CHECKERS,
    workdir: Path | None = None,
    parallel: bool = True,
    timeout: float = tools.DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Run the checkers on ``spec`` (or on ``variant`` built from it) and compare.

    Returns ``{spec, variant, bounds, properties: [{name, kind, explorer, spin, tlc,
    agree}], states: {explorer, spin, tlc, match}, transitions, depth, agree, expected,
    caught, skipped, seconds}``; each checker entry per property is ``{holds, states,
    time_s}`` (``None`` when the checker was skipped). ``agree``: every verdict of the
    checkers that ran is the same, and the distinct-state counts are equal. For a variant,
    ``caught[checker]`` says whether that checker reported at least one of
    ``variant.violates``. A checker whose tools are missing is skipped with the reason
    (``skipped``); ``parallel`` runs TLC in a thread next to the explorer and SPIN.
    """
    target, var = _resolve(spec, variant)
    b = bounds if bounds is not None else bounds_for(var, section)
    if bounds is not None and var is not None:
        b = b.with_percents(tuple(var.probe_percents))
    skipped: dict[str, str] = {}
    for c in ("spin", "tlc"):
        why = tools.skip_reason(c) if c in checkers else "not requested"
        if why:
            skipped[c] = why
    if "explorer" not in checkers:
        skipped["explorer"] = "not requested"
    t0 = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}

    def wd(name: str) -> Path | None:
        return None if workdir is None else workdir / target.name / name

    def run_tlc() -> dict[str, Any]:
        return check_tlc(target, b, wd("tlc"), timeout=timeout)

    pool = ThreadPoolExecutor(max_workers=1) if parallel and "tlc" not in skipped else None
    try:
        fut = pool.submit(run_tlc) if pool is not None else None
        if "explorer" not in skipped:
            results["explorer"] = run_explorer(target, b, section)
        if "spin" not in skipped:
            results["spin"] = check_spin(target, b, wd("spin"), timeout=timeout)
        if fut is not None:
            results["tlc"] = fut.result()
        elif "tlc" not in skipped:
            results["tlc"] = run_tlc()
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return _compare(target, var, b, results, skipped, time.perf_counter() - t0)


def _compare(spec: Spec, var: Variant | None, b: Bounds, results: dict[str, dict[str, Any]],
             skipped: dict[str, str], seconds: float) -> dict[str, Any]:
    ran = [c for c in CHECKERS if c in results]
    props: list[dict[str, Any]] = []
    for p in spec.properties:
        entry: dict[str, Any] = {"name": p.name, "kind": p.kind}
        verdicts = []
        for c in CHECKERS:
            v = results[c]["properties"].get(p.name) if c in results else None
            entry[c] = None if v is None else {k: v[k] for k in ("holds", "states", "time_s")}
            if v is not None:
                verdicts.append(v["holds"])
        entry["agree"] = len(set(verdicts)) <= 1
        props.append(entry)

    def column(key: str) -> dict[str, Any]:
        col: dict[str, Any] = {c: results[c].get(key) for c in ran}
        vals = [v for v in col.values() if v is not None]
        col["match"] = len(set(vals)) <= 1
        return col

    states = column("states")
    transitions = column("transitions")
    depth = {c: results[c].get("depth") for c in ran if c != "spin"}
    depth["match"] = len({v for v in depth.values() if v is not None}) <= 1
    if "spin" in results:
        depth["spin_dfs"] = results["spin"]["depth"]
    out: dict[str, Any] = {
        "spec": spec.name,
        "variant": var.name if var else None,
        "bounds": b.as_dict(),
        "checkers": ran,
        "properties": props,
        "states": states,
        "transitions": transitions,
        "depth": depth,
        "agree": all(p["agree"] for p in props) and states["match"] and transitions["match"],
        "skipped": skipped,
        "seconds": {c: results[c]["seconds"] for c in ran} | {"wall": round(seconds, 4)},
    }
    if var is not None:
        out["expected"] = list(var.violates)
        out["caught"] = {
            c: any(not results[c]["properties"][n]["holds"] for n in var.violates
                   if n in results[c]["properties"]) for c in ran}
    else:
        out["all_hold"] = {c: all(v["holds"] for v in results[c]["properties"].values())
                           for c in ran}
    return out


def cross_check_all(spec: Spec, **kwargs: Any) -> dict[str, Any]:
    """:func:`cross_check` on ``spec`` and on every bug-zoo variant built from it."""
    shipped = cross_check(spec, **kwargs)
    variants = [cross_check(spec, variant=v, **kwargs) for v in VARIANTS]
    return {
        "spec": shipped,
        "variants": variants,
        "agree": shipped["agree"] and all(v["agree"] for v in variants),
        "all_caught": all(all(v["caught"].values()) for v in variants),
    }


# --- benchmark -------------------------------------------------------------------------------

BENCH_SECTIONS: tuple[str, ...] = ("small", "ci", "large")


def bench_bounds(name: str) -> Bounds:
    """Named bounds for the benchmark: an explorer config section, or ``small`` (2 calls,
    queue 2, on top of ``ci``), or ``calls=N,cap=M`` on top of ``ci``."""
    base = bounds_for(None, "ci")
    if name == "small":
        return dataclasses.replace(base, max_calls=2, channel_capacity=2)
    if "=" in name:
        kv = dict(item.split("=", 1) for item in name.split(","))
        unknown = set(kv) - {"calls", "cap"}
        if unknown:
            raise ValueError(f"unknown bound keys {sorted(unknown)} (use calls=N,cap=M)")
        return dataclasses.replace(base, max_calls=int(kv.get("calls", base.max_calls)),
                                   channel_capacity=int(kv.get("cap", base.channel_capacity)))
    return bounds_for(None, name)


def bench_checkers(bounds: list[Bounds | str], spec: Spec | None = None,
                   timeout: float = tools.DEFAULT_TIMEOUT) -> dict[str, Any]:
    """The same model at each bound: distinct states and end-to-end wall time of the
    explorer, SPIN (generate + compile + every run) and TLC (one worker, every run), run one
    after the other (not in parallel, so the times do not compete for cores)."""
    from autoconverge.spec import SPEC

    target = spec if spec is not None else SPEC
    rows: list[dict[str, Any]] = []
    for item in bounds:
        b = bench_bounds(item) if isinstance(item, str) else item
        row: dict[str, Any] = {"bounds": b.as_dict(), "name": item if isinstance(item, str)
                               else None}
        t0 = time.perf_counter()
        ex = run_explorer(target, b)
        row["explorer"] = {"states": ex["states"], "transitions": ex["transitions"],
                           "wall_s": round(time.perf_counter() - t0, 3),
                           "all_hold": all(v["holds"] for v in ex["properties"].values())}
        for name, fn in (("spin", check_spin), ("tlc", check_tlc)):
            why = tools.skip_reason(name)
            if why:
                row[name] = {"skipped": why}
                continue
            t0 = time.perf_counter()
            r = fn(target, b, timeout=timeout)
            row[name] = {"states": r["states"], "transitions": r["transitions"],
                         "wall_s": round(time.perf_counter() - t0, 3),
                         "seconds": r["seconds"],
                         "all_hold": all(v["holds"] for v in r["properties"].values())}
        counts = [row[c]["states"] for c in CHECKERS if "states" in row[c]]
        row["states_match"] = len(set(counts)) <= 1
        rows.append(row)
    return {"spec": target.name, "tools": tools.tool_status(), "rows": rows,
            "note": "wall_s: end to end per checker (SPIN: generate + spin -a + gcc + pan "
                    "runs; TLC: generate + JVM start + every TLC run, one worker)"}
