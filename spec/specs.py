"""Both lifecycles by name, and both bug zoos: what ``verify --spec`` and the checkers select.

One job: lookup. :data:`SPECS` maps a lifecycle's name to its shipped spec, :data:`ZOOS` to
its bug-zoo variants; :func:`variant` finds a variant of either by name and
:func:`variant_of` the variant a built spec was made as.
"""

from __future__ import annotations

from . import SPEC
from .core import Spec
from .migration import MIGRATION_SCHEMA
from .migration import declared_transitions as migration_transitions
from .migration_properties import MIGRATION_PROPERTIES
from .migration_variants import MIGRATION_VARIANTS
from .variants import VARIANTS
from .variants import Variant as Variant

MIGRATION_SPEC = Spec(
    name="migration",
    transitions=migration_transitions(),
    schema=MIGRATION_SCHEMA,
    properties=MIGRATION_PROPERTIES,
    description="The pre-copy migration: source x destination x channels x throttler "
                "contract x user x operator.",
)

SPECS: dict[str, Spec] = {"throttle": SPEC, "migration": MIGRATION_SPEC}
"""Each lifecycle's shipped spec, by its name (:attr:`Spec.family`)."""
ZOOS: dict[str, tuple[Variant, ...]] = {"throttle": VARIANTS, "migration": MIGRATION_VARIANTS}
"""Each lifecycle's bug zoo."""


def all_variants() -> tuple[tuple[str, Variant], ...]:
    """(lifecycle, variant) for every variant of both zoos."""
    return tuple((family, v) for family, zoo in ZOOS.items() for v in zoo)


def variant(name: str) -> tuple[Spec, Variant]:
    """The shipped spec a variant breaks, and the variant, by the variant's name."""
    for family, v in all_variants():
        if v.name == name:
            return SPECS[family], v
    known = ", ".join(v.name for _, v in all_variants())
    raise KeyError(f"unknown variant {name!r}; known: {known}")


def variant_of(spec: Spec) -> Variant | None:
    """The bug-zoo variant ``spec`` was built as (None for a shipped spec and others)."""
    return next((v for _, v in all_variants() if v.name == spec.name), None)


def probe_percents(spec: Spec) -> tuple[int, ...]:
    """The extra percents a checker should offer ``spec`` (its variant's probes, if any)."""
    v = variant_of(spec)
    return v.probe_percents if v is not None else ()
