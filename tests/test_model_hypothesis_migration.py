"""Hypothesis on the migration spec: long random runs of the shipped spec hold every property;
every variant of the migration zoo is found (the abstract machine, model/hypothesis_model.py,
is the same one the throttle spec uses)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from autoconverge.model.config import default_section, load_config
from autoconverge.model.explorer import explore
from autoconverge.model.hypothesis_model import PropertyViolation, make_abstract_machine
from autoconverge.spec.specs import MIGRATION_SPEC, ZOOS
from autoconverge.spec.variants import Variant

MIGRATION_VARIANTS = ZOOS["migration"]

MigrationMachine = make_abstract_machine(MIGRATION_SPEC)
TestMigrationAbstractModel = MigrationMachine.TestCase
TestMigrationAbstractModel.settings = settings(stateful_step_count=60, deadline=None)

FIND = settings(
    max_examples=1000, stateful_step_count=40, derandomize=True, database=None, deadline=None,
    report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
"""Deterministic, as for the throttle zoo: a variant must be found on every run."""


@pytest.mark.parametrize("v", MIGRATION_VARIANTS, ids=[v.name for v in MIGRATION_VARIANTS])
@pytest.mark.covers("migration:*")
def test_machine_fails_on_every_migration_variant(v: Variant) -> None:
    machine = make_abstract_machine(v.build(MIGRATION_SPEC))
    with pytest.raises(PropertyViolation) as info:
        run_state_machine_as_test(machine, settings=FIND)
    names = set(info.value.prop.split(", "))
    # what it names is violated (the explorer agrees), and one of them is the variant's
    bound = load_config(section=default_section(MIGRATION_SPEC))
    explored = explore(v.build(MIGRATION_SPEC), bound)
    assert names <= {p.name for p in explored.properties if not p.holds}, names
    assert names & set(v.violates), f"{v.name}: got {names}, want one of {v.violates}"
    assert len(info.value.trace) > 1


def test_the_machine_has_a_rule_per_trigger_of_both_sides() -> None:
    rules = {name for name in vars(MigrationMachine) if not name.startswith("_")}
    assert set(MIGRATION_SPEC.triggers()) <= rules
