"""autoconverge.spec: the lifecycles, each declared once, with their properties.

``SPEC`` is the throttle thread's specification (:mod:`.lifecycle`, :mod:`.properties`);
``variants.VARIANTS`` are deliberately broken copies. The migration's specification is
:mod:`.migration` (``MIGRATION_SPEC``, its zoo in :mod:`.migration_variants`); :mod:`.specs`
names both for the tools that check either. Which transitions are weakly fair is declared
with each lifecycle (its schema's fairness groups, read per transition as
:attr:`Transition.fairness`); the vocabulary both share is :mod:`.core`.
"""

from __future__ import annotations

from .core import FairnessGroup, MachineDecl, Property, Schema, Spec, Transition
from .lifecycle import (
    ABORT_PERCENT,
    CMD_ABORT,
    CMD_EXIT,
    CMD_HANDOVER,
    COMMAND_NAMES,
    CONTROLLER_STATES,
    FAIRNESS_GROUPS,
    INITIAL,
    MAX_PERCENT,
    MIN_PERCENT,
    THROTTLE_SCHEMA,
    USER_CALL_GROUP,
    WEAK_FAIRNESS,
    WORKER_STATES,
    State,
    declared_transitions,
    terminal,
)
from .properties import FAIRNESS, PROPERTIES

SPEC = Spec(
    name="throttle",
    transitions=declared_transitions(),
    schema=THROTTLE_SCHEMA,
    properties=PROPERTIES,
    description="The vCPU throttle thread: controller x worker x clock x queue x vCPUs.",
)

__all__ = [
    "ABORT_PERCENT",
    "CMD_ABORT",
    "CMD_EXIT",
    "CMD_HANDOVER",
    "COMMAND_NAMES",
    "CONTROLLER_STATES",
    "FAIRNESS",
    "FAIRNESS_GROUPS",
    "INITIAL",
    "MAX_PERCENT",
    "MIN_PERCENT",
    "PROPERTIES",
    "SPEC",
    "THROTTLE_SCHEMA",
    "USER_CALL_GROUP",
    "WEAK_FAIRNESS",
    "WORKER_STATES",
    "FairnessGroup",
    "MachineDecl",
    "Property",
    "Schema",
    "Spec",
    "State",
    "Transition",
    "declared_transitions",
    "terminal",
]
