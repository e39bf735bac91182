"""autoconverge.spec: the throttle thread's lifecycle, declared once, with its properties.

``SPEC`` is the shipped specification; ``variants.VARIANTS`` are deliberately broken copies.
"""

from __future__ import annotations

from .lifecycle import (
    ABORT_PERCENT,
    CMD_ABORT,
    CMD_EXIT,
    CMD_HANDOVER,
    CONTROLLER_STATES,
    INITIAL,
    MAX_PERCENT,
    MIN_PERCENT,
    WORKER_STATES,
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
    "CONTROLLER_STATES",
    "FAIRNESS",
    "INITIAL",
    "MAX_PERCENT",
    "MIN_PERCENT",
    "PROPERTIES",
    "SPEC",
    "WORKER_STATES",
    "Property",
    "Spec",
    "State",
    "Transition",
    "declared_transitions",
    "terminal",
]
