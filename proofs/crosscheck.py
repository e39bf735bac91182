"""Cross-check: the explorer, SPIN and TLC on the same spec at the same bounds.

:func:`cross_check` runs the explicit-state explorer (:mod:`autoconverge.model.explorer`),
SPIN on the generated Promela (:mod:`.promela`) and TLC on the generated TLA+ (:mod:`.tla`)
on one spec (either lifecycle of :data:`autoconverge.spec.specs.SPECS`, shipped, or a
variant of its bug zoo, :data:`~autoconverge.spec.specs.ZOOS`), at the explorer's bounds (a
section of ``model/explorer.toml``: by default the lifecycle's own,
:func:`~autoconverge.model.config.default_section` - ``[ci]`` for the throttle,
``[migration]`` for the migration - plus the variant's probe percents), and compares, per
property, the verdicts, and overall the distinct-state counts, the transitions and the BFS
depth where the checkers' granularity of steps matches.

It does for all three: one transition of the spec = one step (a SPIN ``d_step``, one TLA+
action); a state = the spec's record plus the number of user calls made. So the counts are
*expected to be equal* and a difference is reported as a disagreement. What differs, and is
not compared: SPIN's liveness runs (the product with the never claim, the fairness copies and
the unfair process's ``stop`` option) and SPIN's DFS depth; TLC's "states generated" (it counts
the explicit stutter steps and re-visits).

The result is a :class:`CrossCheck` built from each checker's :class:`.runs.CheckerRun`
(``as_dict()``: its JSON form). :func:`bench_checkers` times the three end to end at several
bounds (``autoconverge bench-checkers``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoconverge.model.config import (
    ExplorerConfig,
    config_sections,
    default_section,
    load_config,
)
from autoconverge.model.explorer import explore
from autoconverge.model.progress import stderr_progress
from autoconverge.spec import SPEC, Spec
from autoconverge.spec.specs import SPECS, ZOOS, variant_of
from autoconverge.spec.specs import variant as find_variant
from autoconverge.spec.variants import Variant

from . import tools
from .codegen import Bounds
from .promela import check_spin
from .runs import CheckerRun, PropertyVerdict
from .tla import check_tlc

FALLBACK_BOUNDS = Bounds(percents=(1, 50, 99), max_calls=4, channel_capacity=3, faults=True)
"""Used only when the explorer's config cannot be read."""

CHECKERS = ("explorer", "spin", "tlc")


@dataclass(frozen=True)
class PropertyAgreement:
    """One property: each checker's verdict (None: the checker did not run) and agreement."""

    name: str
    kind: str
    verdicts: dict[str, PropertyVerdict | None]
    """By checker, for every one of :data:`CHECKERS`."""

    @property
    def agree(self) -> bool:
        return len({v.holds for v in self.verdicts.values() if v is not None}) <= 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for c, v in self.verdicts.items():
            out[c] = None if v is None else {k: v.as_dict()[k] for k in ("holds", "states",
                                                                         "time_s")}
        out["agree"] = self.agree
        return out


@dataclass(frozen=True)
class CountComparison:
    """One count (distinct states, transitions, depth) per checker that ran, and whether the
    counts match (checkers that do not report it are left out of the match)."""

    counts: dict[str, int | None]
    notes: dict[str, int | None] = field(default_factory=dict)
    """Counts shown but not compared (SPIN's DFS depth)."""

    @property
    def match(self) -> bool:
        return len({v for v in self.counts.values() if v is not None}) <= 1

    def as_dict(self) -> dict[str, Any]:
        return {**self.counts, "match": self.match, **self.notes}


@dataclass(frozen=True)
class CrossCheck:
    """The explorer, SPIN and TLC on one spec at one bound, compared (see :func:`cross_check`).
    ``as_dict()``: ``{spec, variant, bounds, checkers, properties, states, transitions, depth,
    agree, skipped, seconds}`` plus ``expected``/``caught`` for a variant, else ``all_hold``."""

    spec: str
    variant: Variant | None
    bounds: Bounds
    runs: dict[str, CheckerRun]
    """By checker, in the order of :data:`CHECKERS`, for the checkers that ran."""
    properties: list[PropertyAgreement]
    skipped: dict[str, str]
    """Checker -> why it did not run."""
    wall_s: float

    @property
    def checkers(self) -> list[str]:
        return list(self.runs)

    def _counts(self, key: str) -> dict[str, int | None]:
        return {c: getattr(r, key) for c, r in self.runs.items()}

    @property
    def states(self) -> CountComparison:
        return CountComparison(self._counts("states"))

    @property
    def transitions(self) -> CountComparison:
        return CountComparison(self._counts("transitions"))

    @property
    def depth(self) -> CountComparison:
        """BFS depth (explorer, TLC); SPIN's DFS depth is shown, not compared."""
        counts = {c: d for c, d in self._counts("depth").items() if c != "spin"}
        spin = self.runs.get("spin")
        return CountComparison(counts, {} if spin is None else {"spin_dfs": spin.depth})

    @property
    def agree(self) -> bool:
        """Every verdict the same across the checkers, and the same counts."""
        return (all(p.agree for p in self.properties) and self.states.match
                and self.transitions.match)

    @property
    def expected(self) -> list[str] | None:
        """A variant's properties one of which the checkers should find violated."""
        return None if self.variant is None else list(self.variant.violates)

    @property
    def caught(self) -> dict[str, bool] | None:
        """For a variant: whether each checker reported one of ``variant.violates``."""
        if self.variant is None:
            return None
        return {c: any(not r.properties[n].holds for n in self.variant.violates
                       if n in r.properties) for c, r in self.runs.items()}

    @property
    def all_hold(self) -> dict[str, bool]:
        return {c: r.all_hold for c, r in self.runs.items()}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "spec": self.spec,
            "variant": self.variant.name if self.variant else None,
            "bounds": self.bounds.as_dict(),
            "checkers": self.checkers,
            "properties": [p.as_dict() for p in self.properties],
            "states": self.states.as_dict(),
            "transitions": self.transitions.as_dict(),
            "depth": self.depth.as_dict(),
            "agree": self.agree,
            "skipped": self.skipped,
            "seconds": {c: r.seconds for c, r in self.runs.items()} | {"wall": self.wall_s},
        }
        if self.variant is not None:
            out["expected"] = self.expected
            out["caught"] = self.caught
        else:
            out["all_hold"] = self.all_hold
        return out


@dataclass(frozen=True)
class CrossCheckAll:
    """:func:`cross_check` on a spec and on every bug-zoo variant built from it."""

    spec: CrossCheck
    variants: list[CrossCheck]

    @property
    def agree(self) -> bool:
        return self.spec.agree and all(v.agree for v in self.variants)

    @property
    def all_caught(self) -> bool:
        return all(all((v.caught or {}).values()) for v in self.variants)

    def as_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.as_dict(), "variants": [v.as_dict() for v in self.variants],
                "agree": self.agree, "all_caught": self.all_caught}


def explorer_config(section: str = "ci") -> ExplorerConfig:
    """The explorer's config section (``model/explorer.toml``)."""
    return load_config(section=section)


def bounds_for(variant: Variant | None = None, section: str = "ci") -> Bounds:
    """The explorer's bounds for a section, with the variant's probe percents added."""
    try:
        base = Bounds.from_config(explorer_config(section))
    except FileNotFoundError:
        base = FALLBACK_BOUNDS
    return base.with_percents(tuple(variant.probe_percents)) if variant else base


def family_of(variant: Variant) -> str:
    """The lifecycle whose bug zoo ``variant`` belongs to (:data:`ZOOS`)."""
    for family, zoo in ZOOS.items():
        if any(v.name == variant.name for v in zoo):
            return family
    raise KeyError(f"variant {variant.name!r} is in no bug zoo")


def _resolve(spec: Spec, variant: Variant | str | None) -> tuple[Spec, Variant | None]:
    """The spec to check and its variant: ``spec`` itself (a shipped spec, or a variant
    already built, found back by its name), or ``variant`` built from ``spec`` (which must be
    of the variant's lifecycle)."""
    if variant is None:
        return spec, variant_of(spec)
    v = find_variant(variant)[1] if isinstance(variant, str) else variant
    if spec.name == v.name:
        return spec, v  # already built (``verify --variant``)
    family = family_of(v)
    if spec.family != family:
        raise ValueError(f"variant {v.name!r} breaks the {family} lifecycle, not "
                         f"{spec.family!r} ({spec.name!r})")
    return v.build(spec), v


def run_explorer(spec: Spec, bounds: Bounds, section: str | None = None) -> CheckerRun:
    """The explorer at ``bounds`` (its config section - default: the lifecycle's own - with
    these percents and bounds)."""
    cfg = dataclasses.replace(explorer_config(section or default_section(spec)),
                              percents=bounds.percents,
                              max_calls=bounds.max_calls,
                              channel_capacity=bounds.channel_capacity, faults=bounds.faults)
    t0 = time.perf_counter()
    r = explore(spec, cfg)
    seconds = round(time.perf_counter() - t0, 4)
    st = r.stats
    return CheckerRun(
        "explorer", spec.name,
        {p.name: PropertyVerdict(p.holds, st.distinct_states, seconds) for p in r.properties},
        states=st.distinct_states, transitions=st.transitions, depth=st.depth,
        seconds={"total": seconds}, details={"config": st.config.as_dict()},
    )


def cross_check(
    spec: Spec,
    *,
    variant: Variant | str | None = None,
    bounds: Bounds | None = None,
    section: str | None = None,
    checkers: tuple[str, ...] = CHECKERS,
    workdir: Path | None = None,
    parallel: bool = True,
    timeout: float = tools.DEFAULT_TIMEOUT,
) -> CrossCheck:
    """Run the checkers on ``spec`` (or on ``variant`` built from it) and compare.

    The bounds are ``bounds`` if given, else ``section`` of the explorer's config, by default
    the lifecycle's own (:func:`~autoconverge.model.config.default_section`); a variant's
    probe percents are added either way. Per property each checker's verdict (``None`` when
    the checker was skipped); overall the distinct states, transitions and depth.
    ``agree``: every verdict of the checkers that ran is the same, and the distinct-state
    counts are equal. For a variant, ``caught[checker]`` says whether that checker reported
    at least one of ``variant.violates``. A checker whose tools are missing is skipped with
    the reason (``skipped``); ``parallel`` runs TLC in a thread next to the explorer and
    SPIN.
    """
    target, var = _resolve(spec, variant)
    section = section or default_section(target)
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
    results: dict[str, CheckerRun] = {}

    def wd(name: str) -> Path | None:
        return None if workdir is None else workdir / target.name / name

    def run_tlc() -> CheckerRun:
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
    runs = {c: results[c] for c in CHECKERS if c in results}
    props = [PropertyAgreement(p.name, p.kind,
                               {c: runs[c].properties.get(p.name) if c in runs else None
                                for c in CHECKERS})
             for p in target.properties]
    return CrossCheck(target.name, var, b, runs, props, skipped,
                      round(time.perf_counter() - t0, 4))


def cross_check_all(spec: Spec, **kwargs: Any) -> CrossCheckAll:
    """:func:`cross_check` on ``spec`` and on every variant of its lifecycle's bug zoo."""
    return CrossCheckAll(cross_check(spec, **kwargs),
                         [cross_check(spec, variant=v, **kwargs) for v in ZOOS[spec.family]])


# --- benchmark -------------------------------------------------------------------------------

BENCH_SECTIONS: tuple[str, ...] = ("small", "ci", "large", "xlarge")


def bench_bounds(name: str, spec: Spec | None = None) -> Bounds:
    """Named bounds for the benchmark: an explorer config section, or ``small`` (2 calls,
    queue 2, on top of the lifecycle's default section: ``ci`` for the throttle), or
    ``calls=N,cap=M`` on top of it."""
    base = bounds_for(None, default_section(spec if spec is not None else SPEC))
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
                   timeout: float = tools.DEFAULT_TIMEOUT, *, quiet: bool = True,
                   verify: bool = True) -> dict[str, Any]:
    """The same model at each bound: distinct states, end-to-end wall time, states/s and peak
    memory of the explorer, SPIN (generate + compile + every run) and TLC (one worker, every
    run), each in a fresh Python process of its own, one after the other (never in parallel,
    so the times do not compete for cores). Plus the wall time of a cold ``autoconverge
    verify --spec <spec> --json`` at its own bound beside SPIN's at that bound.

    A checker that runs longer than ``timeout`` is stopped and reported as timed out (not a
    failure of the run: ``states_match`` compares the checkers that finished). ``quiet``:
    no explorer progress on stderr.
    """
    target = spec if spec is not None else SPEC
    floor = _bench_child({"checker": "none", "spec": target.name}, timeout)
    rows: list[dict[str, Any]] = []
    spin_at: dict[str, Any] = {}
    for item in bounds:
        b = bench_bounds(item, target) if isinstance(item, str) else item
        name = item if isinstance(item, str) else None
        row: dict[str, Any] = {"bounds": b.as_dict(), "name": name}
        for checker in CHECKERS:
            why = tools.skip_reason(checker) if checker != "explorer" else None
            if why:
                row[checker] = {"skipped": why}
                continue
            row[checker] = _bench_checker_row(
                _bench_child({"checker": checker, "spec": target.name, "bounds": b.as_dict(),
                              "timeout": timeout, "quiet": quiet,
                              "section": name if name in config_sections() else None,
                              "label": f"explorer {name or 'bound'}"}, timeout),
                floor)
        counts = [row[c]["states"] for c in CHECKERS if "states" in row[c]]
        row["states_match"] = len(set(counts)) <= 1
        row["states_compared"] = [c for c in CHECKERS if "states" in row[c]]
        ex, sp = row["explorer"], row["spin"]
        if "states_per_second" in ex and "states_per_second" in sp:
            row["explorer_vs_spin_states_per_second"] = round(
                ex["states_per_second"] / sp["states_per_second"], 3)
        spin_at[json.dumps(b.as_dict(), sort_keys=True)] = sp
        rows.append(row)
    out: dict[str, Any] = {"spec": target.name, "tools": tools.tool_status(), "rows": rows}
    if verify:
        _add_verify_seconds(out, target, timeout, spin_at, quiet)
    out["rss_floor_bytes"] = floor.get("peak_rss_bytes")
    out["note"] = (
        "wall_s: end to end per checker inside its own process (explorer: explore() with "
        "every verdict; SPIN: generate + spin -a + gcc + pan runs; TLC: generate + JVM start "
        "+ every TLC run, one worker); process_wall_s adds the Python start and imports; "
        "peak_rss_bytes: the checker's process tree (wait4), rss_floor_bytes: a process that "
        "only imports; bytes_per_state: (peak - floor) / states; verify_full_seconds: a cold "
        "`autoconverge verify --spec <spec> --json` at its own default bound (verify_bound)")
    return out


def _bench_checker_row(r: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """One checker's cell of a row, from its child's report."""
    if r.get("timed_out") or r.get("error"):
        return {k: v for k, v in r.items() if k in ("timed_out", "error", "timeout_s",
                                                     "process_wall_s", "peak_rss_bytes")}
    states = r["states"]
    row = dict(r)
    row["states_per_second"] = round(states / r["wall_s"], 1) if r["wall_s"] > 0 else None
    peak, base = r.get("peak_rss_bytes"), floor.get("peak_rss_bytes")
    if peak is not None and states:
        row["bytes_per_state"] = round(max(0, peak - (base or 0)) / states, 1)
    return row


def _add_verify_seconds(out: dict[str, Any], target: Spec, timeout: float,
                        spin_at: dict[str, Any], quiet: bool) -> None:
    """``verify_full_seconds`` (a cold ``verify --spec`` subprocess at its own bound) next to
    SPIN's end-to-end seconds at that bound (measured here if no row has it), per row."""
    section = default_section(target)
    vb = bounds_for(None, section)
    cmd = [sys.executable, "-m", "autoconverge", "verify", "--spec", target.family, "--json"]
    if quiet:
        cmd.append("--quiet")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        verify_s: float | None = round(time.perf_counter() - t0, 3)
        verify_rc: int | None = p.returncode
    except subprocess.TimeoutExpired:
        verify_s, verify_rc = None, None
    spin = spin_at.get(json.dumps(vb.as_dict(), sort_keys=True))
    if spin is None and not tools.skip_reason("spin"):
        spin = _bench_child({"checker": "spin", "spec": target.name, "bounds": vb.as_dict(),
                             "timeout": timeout}, timeout)
    spin_s = spin.get("wall_s") if spin else None
    for row in out["rows"]:
        row["verify_full_seconds"] = verify_s
        row["verify_bound"] = section
        row["verify_exit_code"] = verify_rc
        row["spin_seconds_at_verify_bound"] = spin_s
        row["verify_vs_spin"] = (round(verify_s / spin_s, 2)
                                 if verify_s is not None and spin_s else None)


def _bench_child(job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one checker in a fresh Python process (:func:`bench_child_main`), with its own
    session, stopped after ``timeout`` s; its report plus the process tree's peak RSS."""
    code = "from autoconverge.proofs.crosscheck import bench_child_main; bench_child_main()"
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(json.dumps(job))
    p.stdin.close()
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(p.stdout.read()  # type: ignore[union-attr]
                                                           ), daemon=True)
    reader.start()
    deadline = t0 + timeout + 30.0  # the tools' own timeouts fire first
    timed_out = False
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            break
        if time.perf_counter() > deadline:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)  # the child's own session: it and its tools
            pid, status, usage = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5.0)
    wall = round(time.perf_counter() - t0, 3)
    peak = usage.ru_maxrss * 1024  # Linux: KiB, the largest process of the tree
    text = "".join(chunks).strip()
    if timed_out:
        return {"timed_out": True, "timeout_s": timeout, "process_wall_s": wall,
                "peak_rss_bytes": peak}
    try:
        report: dict[str, Any] = json.loads(text.splitlines()[-1]) if text else {}
    except json.JSONDecodeError:
        report = {"error": text[-500:]}
    if p.returncode != 0 and "error" not in report:
        report = {"error": f"exit code {p.returncode}"}
    report["process_wall_s"] = wall
    report["peak_rss_bytes"] = peak
    return report


def bench_child_main() -> None:
    """The child side of :func:`_bench_child`: read the job (JSON) on stdin, run it, print
    one JSON line. ``checker`` ``none`` only imports (the memory floor)."""
    job = json.loads(sys.stdin.read())
    checker = job["checker"]
    if checker == "none":
        print(json.dumps({}))
        return
    spec = next(s for s in SPECS.values() if s.name == job["spec"])
    b = Bounds(percents=tuple(job["bounds"]["percents"]),
               max_calls=job["bounds"]["max_calls"],
               channel_capacity=job["bounds"]["channel_capacity"],
               faults=job["bounds"]["faults"])
    timeout = float(job["timeout"])
    try:
        if checker == "explorer":
            # a named section keeps its regression data (and the progress ETA); other
            # bounds have none
            section = job.get("section")
            base = explorer_config(section) if section else dataclasses.replace(
                explorer_config(default_section(spec)), expected_states=None,
                expected_depth=None)
            cfg = dataclasses.replace(base, percents=b.percents, max_calls=b.max_calls,
                                      channel_capacity=b.channel_capacity, faults=b.faults)
            progress = None if job.get("quiet", True) else stderr_progress(job["label"])
            t0 = time.perf_counter()
            r = explore(spec, cfg, progress=progress)
            wall = round(time.perf_counter() - t0, 3)
            st = r.stats
            print(json.dumps({
                "states": st.distinct_states, "transitions": st.transitions,
                "wall_s": wall, "all_hold": r.ok, "explore_seconds": st.seconds_explore,
                "states_per_second_explore": st.states_per_second,
                "regression_ok": r.regression_ok}), flush=True)
            os._exit(0)  # skip tearing down a million-state graph: the report is out
        fn = check_spin if checker == "spin" else check_tlc
        t0 = time.perf_counter()
        run = fn(spec, b, timeout=timeout)
        print(json.dumps({"states": run.states, "transitions": run.transitions,
                          "wall_s": round(time.perf_counter() - t0, 3),
                          "seconds": run.seconds, "all_hold": run.all_hold}))
    except tools.ToolError as exc:
        timed = "timed out" in str(exc)
        print(json.dumps({"timed_out": True, "timeout_s": timeout} if timed
                         else {"error": str(exc)}))
