"""``autoconverge verify`` and ``autoconverge diagram``: every check on the specs, one table.

``verify`` runs, on both shipped specs (the throttle thread's and the migration's; ``--spec``
selects one) or on one bug-zoo variant of either:

1. declaration checks (every state reachable, every transition enabled somewhere, no
   overlapping guards, exit the only state without a way out) - ``autoconverge.model``;
2. the explicit-state explorer (every property, bounded, under the spec's fairness);
3. the Z3 proofs (unbounded), the timing arithmetic proof (the throttle's) and vacuity
   checks - ``autoconverge.proofs``; the proofs and vacuity checks of every selected spec
   together, spread over ``--jobs`` processes (default: every CPU available;
   :mod:`autoconverge.proofs.z3_parallel`), reported in the same order whatever the number;
4. with ``--cross-check``: SPIN and TLC on code generated from the same spec.

Progress goes to stderr (phase lines, the explorer's states, states/s, queue and ETA);
``--quiet`` silences it and leaves stdout as it is. A property holds only if every method
that checked it says so. Exit 0: all hold; 1: a
property is violated or an obligation failed; 2: usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

from autoconverge.spec import SPEC, FairnessGroup, Spec
from autoconverge.spec.diagram import DiagramError, diagram
from autoconverge.spec.specs import SPECS, Variant, all_variants, variant

from .arguments import input_file, integer, output_file
from .errors import EXIT_OK, EXIT_VIOLATED, UsageError


def register(sub: Any) -> None:
    p = sub.add_parser("verify", help="check every property of both specs (or of a variant)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--spec", choices=tuple(SPECS), metavar="|".join(SPECS),
                   help="check one spec only (default: both)")
    p.add_argument("--variant", metavar="NAME",
                   help="check a bug-zoo variant (of either spec) instead")
    p.add_argument("--list-variants", action="store_true",
                   help="list the bug-zoo variants of both specs")
    p.add_argument("--cross-check", action="store_true", help="also run SPIN and TLC")
    p.add_argument("--no-proofs", action="store_true", help="skip the Z3 proofs")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("--jobs", type=integer(1, 64), default=None, metavar="N",
                   help="processes for the Z3 proofs (default: every CPU available)")
    p.set_defaults(func=cmd_verify)

    r = sub.add_parser("report", help="write the Markdown proof report for reviewers")
    r.add_argument("--output", "-o", metavar="FILE", default="-", type=output_file(),
                   help="where to write it (default: stdout)")
    r.add_argument("--spec", choices=tuple(SPECS), metavar="|".join(SPECS),
                   help="report on one spec only (default: both)")
    r.add_argument("--variant", metavar="NAME", help="report on a bug-zoo variant")
    r.add_argument("--cross-check", action="store_true", help="include SPIN and TLC")
    r.add_argument("--traceability", action="store_true",
                   help="print only the README's traceability table")
    r.add_argument("--readme", metavar="FILE", type=input_file,
                   help="refresh the generated blocks (diagrams, traceability) of a README")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr")
    r.set_defaults(func=cmd_report)

    d = sub.add_parser("diagram", help="the state diagram generated from the spec")
    d.add_argument("--format", choices=("mermaid", "svg"), default="mermaid")
    d.add_argument("--spec", choices=tuple(SPECS), default="throttle", metavar="|".join(SPECS),
                   help="whose machine (default: throttle)")
    d.add_argument("--machine", default=None, metavar="NAME",
                   help="the machine: worker|controller (throttle, default worker), "
                        "source|destination (migration, default source)")
    d.add_argument("--output", "-o", metavar="FILE", type=output_file(),
                   help="write to FILE instead of stdout")
    d.set_defaults(func=cmd_diagram)


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self._t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _require_checkers() -> None:
    """``--cross-check`` needs SPIN and TLC: say in one line what is missing and how to get it."""
    from autoconverge.proofs import tools

    missing = [f"{c}: {why}" for c in ("spin", "tlc") if (why := tools.skip_reason(c))]
    if missing:
        raise UsageError("--cross-check needs SPIN and TLC, not available here: "
                         + "; ".join(missing))


def _selected_specs(args: argparse.Namespace
                    ) -> list[tuple[Spec, str | None, tuple[int, ...]]]:
    """(spec, variant name, probe percents) for each spec to check."""
    if args.variant is None:
        names = [args.spec] if getattr(args, "spec", None) else list(SPECS)
        return [(SPECS[n], None, ()) for n in names]
    try:
        shipped, v = variant(args.variant)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if getattr(args, "spec", None) and args.spec != shipped.family:
        raise UsageError(f"variant {v.name!r} is a variant of the {shipped.family} spec, "
                         f"not of {args.spec}")
    return [(v.build(shipped), v.name, v.probe_percents)]


def run_verify(spec: Spec, *, variant_name: str | None = None,
               probe_percents: tuple[int, ...] = (), proofs: bool = True,
               cross_check: bool = False,
               progress: Callable[[str], None] = lambda _m: None,
               jobs: int | None = None) -> dict[str, Any]:
    """Run every available check on one spec; return the JSON-ready report."""
    return run_verify_all([(spec, variant_name, probe_percents)], proofs=proofs,
                          cross_check=cross_check, progress=progress, jobs=jobs)[0]


def run_verify_all(selected: list[tuple[Spec, str | None, tuple[int, ...]]], *,
                   proofs: bool = True, cross_check: bool = False,
                   progress: Callable[[str], None] = lambda _m: None,
                   explorer_progress: bool = False,
                   jobs: int | None = None) -> list[dict[str, Any]]:
    """Run every available check on each (spec, variant name, probe percents); one
    JSON-ready report per spec, in order. The Z3 proofs and vacuity checks of all of them
    run together on ``jobs`` processes (:func:`autoconverge.proofs.z3_parallel
    .prove_and_check`; default: every CPU this process may use)."""
    from autoconverge.model.config import default_section
    from autoconverge.model.explorer import explore, load_config
    from autoconverge.proofs.declaration import check_declaration

    staged: list[tuple[Spec, dict[str, Any], dict[str, dict[str, Any]], Any, bool]] = []
    for spec, variant_name, probe_percents in selected:
        family = spec.family
        report: dict[str, Any] = {"spec": family, "variant": variant_name}
        rows: dict[str, dict[str, Any]] = {
            p.name: {
                "spec": family,
                "name": p.name, "kind": p.kind, "statement": p.statement,
                "formula": p.formula, "fairness": p.fairness or None, "holds": True,
                "methods": [],
            }
            for p in spec.properties
        }
        config = load_config(section=default_section(spec), probe_percents=probe_percents)
        progress(f"{family}: declaration checks")
        declaration = check_declaration(spec, config)
        report["declaration"] = [c.as_dict() for c in declaration]
        checks_ok = all(c.holds for c in declaration)

        progress(f"{family}: explicit-state exploration")
        result = explore(spec, config, progress=_explorer_progress(family, explorer_progress))
        report["explorer"] = result.stats.as_dict()
        for prop in result.properties:
            _merge(rows, family, prop.name, "explorer", prop.holds, prop.as_dict())
            rows[prop.name]["distinct_states"] = prop.distinct_states
            rows[prop.name]["depth"] = prop.depth
        staged.append((spec, report, rows, result, checks_ok))

    if proofs:
        from autoconverge.proofs.prove import prove_timing, z3_search_limits
        from autoconverge.proofs.z3_parallel import default_workers, prove_and_check

        workers = default_workers() if jobs is None else jobs
        names = ", ".join(spec.family for spec, *_ in staged)
        progress(f"Z3 proofs (unbounded) and vacuity checks of {names} "
                 f"({workers} process{'es' if workers > 1 else ''})")
        checked = prove_and_check([(spec, result) for spec, _, _, result, _ in staged],
                                  workers=workers)
        for i, ((spec, report, rows, result, checks_ok), z3_out) in enumerate(
                zip(staged, checked, strict=True)):
            family = spec.family
            for proof in z3_out.proofs:
                _merge(rows, family, proof["name"], "proof", proof["holds"], proof)
            report["z3_search"] = z3_search_limits(spec)
            if family == SPEC.family:  # the throttle's timeslice arithmetic
                progress(f"{family}: Z3 timing arithmetic")
                timing = prove_timing()
                report["timing"] = timing.as_dict()
                checks_ok = checks_ok and timing.holds
            report["vacuity"] = [v.as_dict() for v in z3_out.vacuity]
            checks_ok = checks_ok and z3_out.vacuity_holds
            staged[i] = (spec, report, rows, result, checks_ok)

    reports: list[dict[str, Any]] = []
    for (spec, report, rows, _result, checks_ok), (_, variant_name, _) in zip(
            staged, selected, strict=True):
        family = spec.family
        if cross_check:
            from autoconverge.proofs.crosscheck import cross_check as run_cross_check

            progress(f"{family}: SPIN and TLC")
            cc = run_cross_check(spec, variant=variant_name)
            for agreement in cc.properties:
                evidence = agreement.as_dict()
                for tool in ("spin", "tlc"):
                    verdict = agreement.verdicts.get(tool)
                    if verdict is not None:
                        _merge(rows, family, agreement.name, tool, verdict.holds,
                               evidence[tool])
            report["cross_check"] = {k: v for k, v in cc.as_dict().items()
                                     if k != "properties"}
            checks_ok = checks_ok and cc.agree
            if not cc.agree:
                progress("the explorer, SPIN and TLC DISAGREE")

        report["properties"] = list(rows.values())
        report["ok"] = checks_ok and all(r["holds"] for r in report["properties"])
        reports.append(report)
    return reports


def _merge(rows: dict[str, dict[str, Any]], family: str, name: str, method: str,
           holds: bool, evidence: dict[str, Any]) -> None:
    """One method's verdict on a property into its row (a property holds only if every
    method that checked it says so)."""
    row = rows.setdefault(name, {"spec": family, "name": name, "kind": "other",
                                 "holds": True, "methods": []})
    row[method] = evidence
    row["methods"].append(method)
    row["holds"] = bool(row["holds"] and holds)


def _explorer_progress(family: str, show: bool) -> Any:
    """The explorer's progress on stderr (states, states/s, queue, ETA), or None."""
    if not show:
        return None
    from autoconverge.model.progress import stderr_progress

    return stderr_progress(f"  {family} explorer")


def _cell(ev: dict[str, Any] | None) -> str:
    if ev is None:
        return "-"
    if ev.get("holds"):
        return "ok"
    return "unproved" if ev.get("verdict") == "not proved" else "FAIL"


def _group_what(g: FairnessGroup) -> str:
    """A fairness group's statement without its trailing "(weakly fair)"/"(no fairness)"."""
    return re.sub(r"\s*\([^()]*\)$", "", g.statement)


def scope_text(width: int = 96, spec: Spec = SPEC) -> str:
    """What the verdicts on ``spec`` cover: the bounds, the fairness assumption (printed from
    the spec's fairness groups, never restated here) and what the model abstracts."""
    groups = spec.fairness_groups
    weak = "; ".join(_group_what(g) for g in groups if g.weak)
    unfair = " or on ".join(_group_what(g) for g in groups if not g.weak)
    text = (f"scope ({spec.family}): explorer/SPIN/TLC are exhaustive up to the bounds of "
            "model/explorer.toml; Z3 proofs are unbounded; liveness assumes weak fairness per "
            f"thread ({weak}), and none on {unfair}; {spec.schema.abstracts} "
            "(autoconverge report).")
    return textwrap.fill(text, width=width, subsequent_indent="  ", break_on_hyphens=False)


def _table(report: dict[str, Any], final: bool = True) -> str:
    """One spec's report as text (``final``: with the closing verdict line)."""
    cols = ["explorer", "proof", "spin", "tlc"]
    present = [c for c in cols if any(c in r for r in report["properties"])]
    head = f"{'property':30} {'kind':9} {'holds':6} " + " ".join(f"{c:9}" for c in present)
    lines = [head, "-" * len(head)]
    for r in report["properties"]:
        cells = []
        for c in present:
            ev = r.get(c)
            cells.append(f"{_cell(ev):9}")
        lines.append(f"{r['name']:30} {r['kind']:9} {r['holds']!s:6} " + " ".join(cells))
    for c in report.get("declaration", []):
        lines.append(f"declaration: {c['name']:40} {'ok' if c['holds'] else 'FAIL'}")
    if "timing" in report:
        lines.append(f"timing arithmetic (Z3): {'ok' if report['timing'].get('holds') else 'FAIL'}")
    if "vacuity" in report:
        bad = [v["name"] for v in report["vacuity"] if not v.get("holds")]
        lines.append(f"vacuity: {'ok' if not bad else 'FAIL ' + ', '.join(bad)}")
    if "z3_search" in report:
        z = report["z3_search"]
        lines.append(f"Z3 limits: counterexample search {z['bmc_depth']} steps (lasso "
                     f"{z['lasso_depth']}, {z['depth_from']}); rlimit {z['rlimit']} per "
                     f"obligation, {z['search_rlimit']} per search depth; seed {z['seed']}; "
                     "no wall-clock timeouts")
    stats = report.get("explorer", {})
    if stats:
        lines.append(
            "explorer: " + ", ".join(f"{k}={v}" for k, v in stats.items()
                                     if not isinstance(v, (dict, list)))
        )
    for r in report["properties"]:
        for method in ("explorer", "proof", "spin", "tlc"):
            ev = r.get(method) or {}
            cex = ev.get("counterexample_text") or ev.get("counterexample")
            if not r["holds"] and cex:
                source = ev.get("counterexample_source")
                by = f"{method}, {source}" if source else method
                lines.append(f"\ncounterexample for {r['name']} ({by}):")
                lines.append(cex if isinstance(cex, str) else json.dumps(cex, indent=1))
                break
    lines.append("\n" + scope_text(spec=SPECS.get(report.get("spec") or "", SPEC)))
    if final:
        lines.append(_verdict(report))
    return "\n".join(lines)


def _verdict(report: dict[str, Any]) -> str:
    return (f"\n{'ALL PROPERTIES HOLD' if report['ok'] else 'VIOLATIONS FOUND'}"
            + (f" (variant {report['variant']})" if report.get("variant") else ""))


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One JSON object for several specs: every property (each names its ``spec``), each
    spec's own evidence under ``specs``, ``ok`` only if every spec's is."""
    if len(reports) == 1:
        return reports[0]
    return {
        "spec": "+".join(r["spec"] for r in reports),
        "variant": None,
        "specs": {r["spec"]: {k: v for k, v in r.items() if k != "properties"}
                  for r in reports},
        "properties": [p for r in reports for p in r["properties"]],
        "ok": all(r["ok"] for r in reports),
    }


def _text(reports: list[dict[str, Any]]) -> str:
    if len(reports) == 1:
        return _table(reports[0])
    parts = [f"== {r['spec']} ==\n" + _table(r, final=False) for r in reports]
    return "\n\n".join(parts) + _verdict(combine(reports))


def cmd_verify(args: argparse.Namespace) -> int:
    if args.list_variants:
        listed: list[tuple[str, Variant]] = [
            (family, v) for family, v in all_variants() if args.spec in (None, family)]
        if args.json:
            print(json.dumps([{"spec": family, "name": v.name, "description": v.description,
                               "violates": list(v.violates), "max_trace": v.max_trace}
                              for family, v in listed], indent=2))
        else:
            for family, v in listed:
                print(f"{family:10} {v.name:34} {v.description}")
        return EXIT_OK
    selected = _selected_specs(args)
    if args.cross_check:
        _require_checkers()
    progress = _Progress(args.quiet)
    reports = run_verify_all(selected, proofs=not args.no_proofs,
                             cross_check=args.cross_check, progress=progress,
                             explorer_progress=not args.quiet, jobs=args.jobs)
    report = combine(reports)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(_text(reports))
    return EXIT_OK if report["ok"] else EXIT_VIOLATED


def cmd_report(args: argparse.Namespace) -> int:
    from autoconverge.proofs.report import proof_report, traceability_table

    selected = _selected_specs(args)
    if args.cross_check:
        _require_checkers()
    if args.readme:
        from pathlib import Path

        from autoconverge.proofs.report import sync_readme

        stale = sync_readme([s for s, _, _ in selected], Path(args.readme), write=True)
        print(f"{args.readme}: refreshed {', '.join(stale) or 'nothing (up to date)'}",
              file=sys.stderr)
        return EXIT_OK
    if args.traceability:
        text = traceability_table([s for s, _, _ in selected]) + "\n"
    else:
        progress = _Progress(args.quiet)
        reports = run_verify_all(selected, cross_check=args.cross_check, progress=progress,
                                 explorer_progress=not args.quiet)
        text = "\n".join(proof_report(spec, report)
                         for (spec, _, _), report in zip(selected, reports, strict=True))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def cmd_diagram(args: argparse.Namespace) -> int:
    spec = SPECS[args.spec]
    machines = [m.name for m in spec.schema.machines]
    machine = args.machine or machines[0]
    if machine not in machines:
        raise UsageError(f"--machine: the {spec.family} spec has no machine {machine!r}; "
                         f"its machines: {', '.join(machines)}")
    try:
        out = diagram(spec, machine, args.format)
    except DiagramError as exc:
        raise UsageError(str(exc)) from None
    if args.output:
        mode = "wb" if isinstance(out, bytes) else "w"
        with open(args.output, mode) as f:
            f.write(out)
    elif isinstance(out, bytes):
        sys.stdout.buffer.write(out)
    else:
        print(out)
    return EXIT_OK
