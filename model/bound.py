"""A spec transition with its parameters bound: the one step type every checker labels with.

The explorer's edge labels (:class:`.graph.Label`: concrete parameters), the Hypothesis
machine's moves and the code generators' steps (:class:`autoconverge.proofs.codegen.Step`:
concrete or symbolic parameters) are all a :class:`~autoconverge.spec.Transition` plus values
for its parameters. What follows from that alone is defined here once: its label with the
arguments, its identifier in generated code, whether a user starts it, and its fairness group
(both read from the spec's declaration).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from autoconverge.spec import Transition
from autoconverge.spec.expr import Term


@dataclass(frozen=True)
class BoundTransition:
    """One transition with its parameters bound (to ints, or to syntax-tree variables)."""

    transition: Transition
    params: tuple[tuple[str, Any], ...]
    """(parameter name, value) in the order of ``transition.params``."""

    @cached_property
    def params_dict(self) -> dict[str, Any]:
        """The parameters as keyword arguments of the guard and the effect (do not mutate)."""
        return dict(self.params)

    @cached_property
    def user_call(self) -> bool:
        """A user starts it (:attr:`Transition.user_call`)."""
        return self.transition.user_call

    @cached_property
    def fairness(self) -> str | None:
        """Its weakly fair group's name, None for user calls (:attr:`Transition.fairness`)."""
        return self.transition.fairness

    @property
    def label(self) -> str:
        """``call_set@idle(p=50)``: the transition's label with its arguments."""
        args = ", ".join(f"{k}={v}" for k, v in self.params)
        return f"{self.transition.label}({args})"

    @property
    def name(self) -> str:
        """An identifier: ``<trigger>_<source>`` and each concrete parameter, e.g.
        ``call_set_idle_p50`` (symbolic parameters are left out; ``-`` becomes ``m``)."""
        t = self.transition
        concrete = [f"{k}{v}" for k, v in self.params if not isinstance(v, Term)]
        return "_".join((f"{t.trigger}_{t.source}", *concrete)).replace("-", "m")
