"""The reviewers' Markdown proof report and the README's traceability table.

For each property of a spec (the throttle's or the migration's): its statement, kind,
formula and fairness (from ``spec/properties.py`` or ``spec/migration_properties.py``), the
explorer's verdict at its bound, the Z3 obligations with their
verdicts, the SPIN/TLC verdicts when cross-checked, which tests exercise it, and what the
checks abstract away. Which tests exercise a property is declared by the tests themselves
with ``@pytest.mark.covers("PropertyName", ...)`` (or a module-level ``pytestmark``), read
here from the test sources, so the table cannot drift from the suite. An unqualified name or
group (``"*"``, a kind) means the throttle spec's; ``"migration:Name"`` / ``"migration:*"``
name the migration spec's.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autoconverge.spec import Spec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFINED_IN: dict[str, str] = {"throttle": "spec/properties.py",
                              "migration": "spec/migration_properties.py"}
UNQUALIFIED = "throttle"
"""The spec a ``covers`` argument without a ``family:`` prefix refers to."""
MODEL_CHECKED_IN = ("model/explorer.py", "proofs/promela.py", "proofs/tla.py")
PROVED_IN = {
    "invariant": "proofs/z3_safety.py",
    "step": "proofs/z3_safety.py",
    "deadlock": "proofs/z3_safety.py",
    "leadsto": "proofs/z3_liveness.py",
}

THROTTLE_ABSTRACTIONS = (
    "Time is abstracted by the clock actor: a phase ends by an `expire` event that weak "
    "fairness makes happen; durations are proved separately (timing arithmetic).",
    "The vCPUs are all-or-nothing (`paused`): a pause()/resume() is a start (the transition) "
    "and an end (`call_return`, or `fault` with its best-effort resume and `resume_failed`), "
    "and a call that failed part-way leaves them `paused` as far as the model knows.",
    "Callers: two caller threads (`k`), one API lock; a caller's timeout is a `timeout` step "
    "the model may take at any point of a blocking call (the call timeout's length is not "
    "modelled).",
    "The explorer, SPIN and TLC are bounded (user calls, queue capacity, percent domain: "
    "model/explorer.toml); the Z3 proofs are not (all percents, queue lengths, call counts).",
)

MIGRATION_ABSTRACTIONS = (
    "Memory is one `dirty` flag: a pass sends what is dirty, the guest may dirty more while "
    "it runs with the dirty log on, DONE carries the final sync; page contents, passes and "
    "the policy's convergence estimate are not modelled (`start_handover` may happen at "
    "any time in pre-copy).",
    "The channels hold one control message each way plus a trailing ERROR (the protocol is "
    "lock-step); a broken link loses what is in flight; the destination may die at any "
    "step; the source process does not die.",
    "The throttler is its API contract (running, a handover in progress, handed over, a "
    "handover timed out whose pause may land late, shut down). The throttle spec, used as "
    "the migration uses it (one caller; set, handover, shutdown; timeouts), refines it: "
    "model/contract_refinement.py maps every throttle step to a contract move, bounded "
    "(percents 1/50/99, two set calls) and without failing vCPU calls (the contract has no "
    "state for a worker that died leaving the vCPUs paused); liveness rests on the throttle's "
    "HandoverCompletes and ShutdownCompletes.",
    "The finite model needs no bound: the explorer, SPIN and TLC see every reachable state.",
)

ABSTRACTIONS: dict[str, tuple[str, ...]] = {"throttle": THROTTLE_ABSTRACTIONS,
                                            "migration": MIGRATION_ABSTRACTIONS}
"""What each spec's checks abstract away (the fairness line is added from the spec)."""


def abstractions(spec: Spec) -> tuple[str, ...]:
    return (*ABSTRACTIONS.get(spec.family, ()),
            "Liveness assumes: " + ", ".join(g.statement for g in spec.fairness_groups) + ".")


def _covers_args(node: ast.expr) -> list[str]:
    """The string arguments of a ``...covers(...)`` call expression, else []."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
            and node.func.attr == "covers":
        return [a.value for a in node.args if isinstance(a, ast.Constant)
                and isinstance(a.value, str)]
    return []


def covering_tests(tests_dir: Path) -> dict[str, list[str]]:
    """{property name: ["tests/file.py::test_name", ...]} from ``covers`` markers."""
    out: dict[str, list[str]] = {}
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        rel = f"tests/{path.name}"
        module_marks: list[str] = []
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets
            ):
                values = stmt.value.elts if isinstance(stmt.value, (ast.List, ast.Tuple)) \
                    else [stmt.value]
                for v in values:
                    module_marks += _covers_args(v)
        for name in module_marks:
            out.setdefault(name, []).append(rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                for dec in node.decorator_list:
                    for name in _covers_args(dec):
                        out.setdefault(name, []).append(f"{rel}::{node.name}")
    return out


GROUPS = ("*", "invariant", "step", "deadlock", "leadsto", "safety")
"""Marker arguments that stand for several properties: all, or all of a kind."""


def _expand(spec: Spec, tests: Mapping[str, list[str]]) -> dict[str, list[str]]:
    prefixes = [f"{spec.family}:"] + ([""] if spec.family == UNQUALIFIED else [])
    out: dict[str, list[str]] = {}
    for p in spec.properties:
        names = [p.name, "*", p.kind]
        if p.kind != "leadsto":
            names.append("safety")
        out[p.name] = sorted({t for pre in prefixes for n in names
                              for t in tests.get(pre + n, [])})
    return out


def _link(path: str) -> str:
    return f"[{path}]({path})"


def traceability_table(specs: Spec | Iterable[Spec], tests_dir: Path | None = None) -> str:
    """The README's table: spec, property -> defined in -> model-checked in -> proved in ->
    tested in, for each of ``specs``."""
    specs = [specs] if isinstance(specs, Spec) else list(specs)
    found = covering_tests(tests_dir or REPO_ROOT / "tests")
    lines = [
        "| spec | property | kind | defined in | model-checked in | proved in | tested in |",
        "|---|---|---|---|---|---|---|",
    ]
    for spec in specs:
        tests = _expand(spec, found)
        for p in spec.properties:
            tested = tests.get(p.name, [])
            files = sorted({t.split("::")[0] for t in tested})
            lines.append(
                f"| {spec.family} | `{p.name}` | {p.kind} | "
                f"{_link(DEFINED_IN[spec.family])} | "
                + ", ".join(_link(m) for m in MODEL_CHECKED_IN)
                + f" | {_link(proved_in(spec, p.kind))} | "
                + (", ".join(_link(f) for f in files) or "-")
                + " |"
            )
    return "\n".join(lines)


def proved_in(spec: Spec, kind: str) -> str:
    """The module whose Z3 proofs cover properties of this kind of this spec."""
    return PROVED_IN[kind] if spec.family == UNQUALIFIED else "proofs/prove.py"


def _verdict(ev: Mapping[str, Any] | None) -> str:
    if ev is None:
        return "not run"
    return "holds" if ev.get("holds") else "**violated**"


def _search(proof: Mapping[str, Any]) -> str:
    """How a Z3 verdict was searched for: counterexample source and length, depth, limits."""
    parts = []
    cex = proof.get("counterexample")
    if proof.get("counterexample_source") and cex:
        parts.append(f"counterexample by {proof['counterexample_source']}, "
                     f"{cex.get('length', '?')} steps")
    if proof.get("bmc_depth") is not None:
        parts.append(f"search depth {proof['bmc_depth']}")
    if proof.get("rlimit") is not None:
        parts.append(f"rlimit {proof['rlimit']}, seed {proof.get('seed')}")
    return f" ({'; '.join(parts)})" if parts else ""


def proof_report(spec: Spec, report: Mapping[str, Any], tests_dir: Path | None = None) -> str:
    """The Markdown report of one ``run_verify`` result."""
    tests = _expand(spec, covering_tests(tests_dir or REPO_ROOT / "tests"))
    stats = report.get("explorer", {})
    out = [
        f"# Proof report: `{spec.name}`" + (f" (variant {report['variant']})"
                                            if report.get("variant") else ""),
        "",
        f"Overall: **{'all properties hold' if report.get('ok') else 'VIOLATIONS FOUND'}**.",
        "",
        f"Explorer bound: {stats.get('distinct_states', '?')} distinct states, depth "
        f"{stats.get('depth', '?')}, {stats.get('transitions', '?')} transitions "
        f"(model/explorer.toml).",
        "",
        "## What is abstracted",
        "",
        *(f"- {a}" for a in abstractions(spec)),
        "",
        "## Properties",
    ]
    rows = {r["name"]: r for r in report.get("properties", [])}
    for p in spec.properties:
        r = rows.get(p.name, {})
        out += [
            "",
            f"### {p.name}",
            "",
            f"{p.statement}",
            "",
            f"- kind: {p.kind}; formula: `{p.formula}`",
            f"- fairness: {p.fairness or 'none needed (safety)'}",
            f"- explicit-state explorer: {_verdict(r.get('explorer'))}",
        ]
        for tool in ("spin", "tlc"):
            if tool in r:
                out.append(f"- {tool.upper()}: {_verdict(r.get(tool))}")
        proof = r.get("proof")
        if proof:
            out.append(f"- Z3 ({proof.get('method', '?')}, unbounded): {_verdict(proof)}"
                       + _search(proof))
            for ob in proof.get("obligations", []):
                mark = "proved" if ob.get("holds") else "**not proved**"
                out.append(f"  - {ob.get('name')}: {mark} ({ob.get('time_s', 0):.3f} s)"
                           + (f" - {ob['detail']}" if ob.get("detail") else ""))
        else:
            out.append("- Z3: not run")
        tested = tests.get(p.name, [])
        out.append("- tests: " + (", ".join(f"`{t}`" for t in tested) or "none"))
        if p.notes:
            out.append(f"- note: {p.notes}")
    for section, key in (("Timing arithmetic (Z3)", "timing"), ("Vacuity", "vacuity")):
        if key in report:
            out += ["", f"## {section}", "", "```", _compact(report[key]), "```"]
    return "\n".join(out) + "\n"


def _compact(value: Any) -> str:
    import json

    return json.dumps(value, indent=1, default=str)[:6000]


def missing_coverage(spec: Spec, tests_dir: Path | None = None) -> list[str]:
    tests = _expand(spec, covering_tests(tests_dir or REPO_ROOT / "tests"))
    return [p.name for p in spec.properties if not tests.get(p.name)]


def linked_files(table: str) -> Iterable[str]:
    import re

    return sorted(set(re.findall(r"\]\(([^)]+)\)", table)))


def readme_blocks(specs: Spec | Iterable[Spec], tests_dir: Path | None = None
                  ) -> dict[str, str]:
    """The README's generated blocks: every machine's state diagram and the traceability
    table of ``specs``."""
    from autoconverge.spec.diagram import diagram

    specs = [specs] if isinstance(specs, Spec) else list(specs)
    blocks = {}
    for spec in specs:
        for machine in (m.name for m in spec.schema.machines):
            text = str(diagram(spec, machine, "mermaid"))
            lines = text[text.index("stateDiagram"):].splitlines()
            keep = [ln for ln in lines if ln.strip()
                    and not ln.strip().startswith(("classDef", "Class "))]
            blocks[f"diagram:{machine}"] = "```mermaid\n" + "\n".join(keep) + "\n```"
    blocks["traceability"] = traceability_table(specs, tests_dir)
    return blocks


def sync_readme(specs: Spec | Iterable[Spec], readme: Path, *, write: bool) -> list[str]:
    """Fill the README's generated blocks; return the names of blocks that were stale."""
    import re

    text = readme.read_text()
    stale = []
    for name, block in readme_blocks(specs).items():
        pattern = re.compile(rf"(<!-- {re.escape(name)}:start -->\n)(.*?)(<!-- "
                             rf"{re.escape(name)}:end -->)", re.S)
        m = pattern.search(text)
        if m is None:
            stale.append(f"{name} (markers missing)")
            continue
        if m.group(2) != block + "\n":
            stale.append(name)
            text = text[:m.start(2)] + block + "\n" + text[m.end(2):]
    if write:
        readme.write_text(text)
    return stale
