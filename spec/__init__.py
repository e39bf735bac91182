"""autoconverge.spec: the throttle thread's lifecycle, declared once, with its properties.

``SPEC`` is the shipped specification; ``variants.VARIANTS`` are deliberately broken copies.
Which transitions are weakly fair is declared with the lifecycle (``FAIRNESS_GROUPS``, read
per transition as :attr:`Transition.fairness`).
"""

from __future__ import annotations

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
    USER_CALL_GROUP,
    WEAK_FAIRNESS,
    WORKER_STATES,
    FairnessGroup,
    Spec,
    State,
    Transition,
    declared_transitions,
    terminal,
)
from .properties import FAIRNESS, PROPERTIES, Property

SPEC = Spec(
    name="autoconverge",
    transitions=declared_transitions(),
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
    "USER_CALL_GROUP",
    "WEAK_FAIRNESS",
    "WORKER_STATES",
    "FairnessGroup",
    "Property",
    "Spec",
    "State",
    "Transition",
    "declared_transitions",
    "terminal",
]
