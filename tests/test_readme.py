"""The README's generated blocks match the spec and the tests; its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

from autoconverge.proofs.report import missing_coverage, sync_readme
from autoconverge.spec.specs import SPECS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_generated_blocks_are_up_to_date() -> None:
    stale = sync_readme(SPECS.values(), README, write=False)
    assert stale == [], f"run: autoconverge report --readme README.md  (stale: {stale})"


def test_every_property_is_exercised_by_some_test() -> None:
    assert {name: missing_coverage(spec) for name, spec in SPECS.items()} == {
        name: [] for name in SPECS}


def test_relative_links_resolve() -> None:
    links = re.findall(r"\]\(([^)#:]+)\)", README.read_text())
    assert links
    missing = [link for link in links if not (ROOT / link).exists()]
    assert missing == []
