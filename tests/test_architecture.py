"""The package graph is a DAG: what may import what, no module cycle, README draws the graph.

Every ``import`` in the source counts, wherever it stands (module level, inside a function,
under ``TYPE_CHECKING``): a lazy import hides a cycle from the interpreter, not from the
design. Allowed package dependencies (each folder may also import its own subpackages):

- ``spec``: nothing else of the project (the declaration stands alone);
- ``impl``: ``spec`` (the throttler and the migration run on the declaration);
- ``model``: ``spec``, and ``impl`` (it explores the real code's interleavings);
- ``proofs``: ``spec`` and ``model``;
- ``cli``: everything; nothing imports ``cli`` but ``autoconverge/__main__.py``;
- the ``autoconverge`` package itself (``autoconverge/``): ``impl`` (it re-exports the
  embeddable API) and ``cli`` (for ``python -m autoconverge``).

The checker is shown to catch what it must on small synthetic graphs (a module cycle through
a lazy import, a package edge the design forbids, a package cycle).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from autoconverge.model.fairness import tarjan_scc

ROOT = Path(__file__).resolve().parent.parent
ROOT_PACKAGE = "autoconverge"
"""The folder autoconverge/ installs as the package ``autoconverge`` itself."""
PACKAGES: tuple[str, ...] = ("spec", "impl", "model", "proofs", "cli", ROOT_PACKAGE)
"""The top-level folders: ``autoconverge.<folder>``, and ``autoconverge`` itself."""
ALLOWED: Mapping[str, frozenset[str]] = {
    "spec": frozenset(),
    "impl": frozenset({"spec"}),
    "model": frozenset({"spec", "impl"}),
    "proofs": frozenset({"spec", "model"}),
    "cli": frozenset({"spec", "impl", "model", "proofs"}),
    ROOT_PACKAGE: frozenset({"cli", "impl"}),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == ROOT_PACKAGE:
        parts.pop(0)
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join(["autoconverge", *parts])


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports_of(name: str, path: Path, known: Iterable[str]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source (lazy imports included)."""
    known = set(known)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module
                       for a in node.names]
        for t in targets:
            while t and t not in known:  # `import a.b.c` names module a.b.c or a package
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (the explorer's Tarjan)."""
    names = sorted(set(graph) | {b for bs in graph.values() for b in bs})
    number = {n: i for i, n in enumerate(names)}
    succ = [[number[b] for b in sorted(graph.get(n, ()))] for n in names]
    components = tarjan_scc(range(len(names)), succ.__getitem__)
    return sorted(sorted(names[i] for i in c) for c in components if len(c) > 1)


def top_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else ROOT_PACKAGE


def package_of(module: str, graph: Mapping[str, Iterable[str]]) -> str:
    """The package a module belongs to (a package's ``__init__`` is the package itself)."""
    is_package = any(other.startswith(module + ".") for other in graph)
    return module if is_package else module.rsplit(".", 1)[0]


def package_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """Edges between packages (``autoconverge.impl.kvm`` -> ``autoconverge.impl`` etc.)."""
    out: dict[str, set[str]] = {}
    for a, targets in graph.items():
        pa = package_of(a, graph)
        out.setdefault(pa, set())
        for b in targets:
            pb = package_of(b, graph)
            if pb != pa:
                out[pa].add(pb)
    return out


def forbidden_edges(graph: Mapping[str, Iterable[str]]) -> list[str]:
    bad = []
    for a, targets in graph.items():
        for b in sorted(targets):
            ta, tb = top_package(a), top_package(b)
            if ta != tb and tb not in ALLOWED[ta]:
                bad.append(f"{a} -> {b}")
    return bad


def top_level_edges(graph: Mapping[str, Iterable[str]]) -> set[tuple[str, str]]:
    return {(top_package(a), top_package(b)) for a, bs in graph.items() for b in bs
            if top_package(a) != top_package(b)}


def mermaid(edges: set[tuple[str, str]]) -> str:
    lines = ["```mermaid", "flowchart RL"]
    lines += [f"  {a} --> {b}" for a, b in sorted(edges)]
    return "\n".join([*lines, "```"])


# --- the checks on the real tree ---------------------------------------------------------


def test_every_package_is_scanned() -> None:
    graph = import_graph()
    assert {top_package(m) for m in graph} == set(PACKAGES)
    assert len(graph) > 50  # the scan found the tree, not an empty folder


def test_no_module_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_package_import_cycle() -> None:
    assert cycles(package_graph(import_graph())) == []


def test_packages_import_only_what_the_design_allows() -> None:
    assert forbidden_edges(import_graph()) == []


def test_readme_draws_the_package_graph() -> None:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- packages:start -->\n(.*?)\n<!-- packages:end -->", text, re.S)
    assert m is not None, "README lacks the <!-- packages:start/end --> block"
    assert m.group(1) == mermaid(top_level_edges(import_graph())), (
        "README's package graph is stale; the block should read:\n"
        + mermaid(top_level_edges(import_graph())))


# --- the checker catches what it must ----------------------------------------------------


def test_a_cycle_through_a_lazy_import_is_caught(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    b = tmp_path / "b.py"
    a.write_text("from autoconverge.impl import b\n")
    b.write_text("def f():\n    from autoconverge.impl import a\n    return a\n")
    known = {"autoconverge.impl", "autoconverge.impl.a", "autoconverge.impl.b"}
    graph = {"autoconverge.impl.a": imports_of("autoconverge.impl.a", a, known),
             "autoconverge.impl.b": imports_of("autoconverge.impl.b", b, known)}
    assert cycles(graph) == [["autoconverge.impl.a", "autoconverge.impl.b"]]


def test_a_type_checking_import_counts(tmp_path: Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                 "    from ..proofs.x import Y\n")
    known = {"autoconverge.model.a", "autoconverge.proofs.x"}
    assert imports_of("autoconverge.model.a", a, known) == {"autoconverge.proofs.x"}


@pytest.mark.parametrize(("src", "dst"), [
    ("autoconverge.impl.throttler", "autoconverge.model.trace"),
    ("autoconverge.spec.lifecycle", "autoconverge.impl.runtime"),
    ("autoconverge.proofs.report", "autoconverge.impl.throttler"),
    ("autoconverge.model.declaration", "autoconverge.proofs.encoding"),
    ("autoconverge.impl.kvm.guest_vm", "autoconverge.cli.kvm"),
])
def test_a_forbidden_package_edge_is_caught(src: str, dst: str) -> None:
    assert forbidden_edges({src: {dst}, dst: set()}) == [f"{src} -> {dst}"]


def test_a_package_cycle_between_subpackages_is_caught() -> None:
    graph = {
        "autoconverge.impl.migration": set(),
        "autoconverge.impl.migration.source": {"autoconverge.impl.kvm.guest_vm"},
        "autoconverge.impl.kvm": set(),
        "autoconverge.impl.kvm.guest_vm": {"autoconverge.impl.migration.framing"},
        "autoconverge.impl.migration.framing": set(),
    }
    assert cycles(graph) == []
    assert cycles(package_graph(graph)) == [["autoconverge.impl.kvm",
                                             "autoconverge.impl.migration"]]
