"""What the Z3 proofs of a spec's properties return, as typed records.

- :class:`ProofResult`: one property's proof (:func:`.prove.prove_property`, built by
  :meth:`.z3_safety.SafetyProver.prove` and :meth:`.z3_liveness.LivenessProver.prove`,
  merged with Spacer's verdict by :mod:`.prove`);
- :class:`VacuityCheck`: one non-vacuity check of a property's proof
  (:func:`.prove.check_vacuity`).

The obligations are :class:`.z3_obligations.ObligationResult`, Spacer's verdict a
:class:`.z3_spacer.SpacerResult`, the timing proof :class:`.timing_proofs.TimingProof`.
``as_dict()`` gives the JSON form (``autoconverge verify --json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .z3_lemmas import Lemma
from .z3_obligations import ObligationResult
from .z3_spacer import SpacerResult

PROVED = "proved"
"""Every obligation discharged: the property holds, unbounded."""
VIOLATED = "violated"
"""An obligation failed and a real counterexample from Init is attached."""
NOT_PROVED = "not proved"
"""An obligation failed or ran out of its resource limit, and no counterexample was found:
neither by Z3's search within its depth nor by the explorer at its bound. Never holds."""


def _failed(obligations: tuple[ObligationResult, ...]) -> list[str]:
    return [o.name for o in obligations if not o.holds]


@dataclass(frozen=True)
class RankingArgument:
    """A liveness proof's argument, as text (:class:`.z3_liveness.RankPlan`)."""

    fairness: dict[str, str]
    """The fairness assumed: group name -> statement."""
    during: str
    """H: holds from p until q."""
    rank: str
    helpful: str
    """Which fair group decreases the rank, by state."""


@dataclass(frozen=True)
class InductionAttempt:
    """The hand-written strengthening's proof, when Spacer's invariant replaced it."""

    verdict: str
    obligations: tuple[ObligationResult, ...]

    @property
    def failed_obligations(self) -> list[str]:
        return _failed(self.obligations)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict,
                "obligations": [o.as_dict() for o in self.obligations],
                "failed_obligations": self.failed_obligations}


@dataclass(frozen=True)
class ProofResult:
    """One property's unbounded proof: verdict, method and every obligation.

    ``holds`` is true only for ``proved``: an obligation that ran out of resources is never
    reported as proved, and ``not proved`` never counts as holding.

    How the verdict was reached is part of the record: ``counterexample_source`` (which search
    produced the counterexample of a ``violated`` verdict), ``bmc_depth`` (how many steps
    from Init Z3's counterexample search covers for this property), ``rlimit`` and ``seed``
    (the Z3 resource limit of each obligation check and the solvers' random seed). With the
    same spec, bound and limits the verdict is the same, whatever ran before.
    """

    name: str
    kind: str
    """``invariant``, ``step``, ``deadlock`` or ``leadsto``."""
    method: str
    """``induction``, ``induction+spacer``, ``spacer`` or ``ranking`` (hand-written lemmas and
    ranking plans, the throttle); ``certificate``, ``certificate+spacer`` or
    ``certificate+ranking`` (a finite lifecycle: :mod:`.z3_certificate`)."""
    verdict: str
    """:data:`PROVED`, :data:`VIOLATED` or :data:`NOT_PROVED`."""
    obligations: tuple[ObligationResult, ...]
    time_s: float
    statement: str
    formula: str
    strengthening: tuple[Lemma, ...] | None = None
    """The lemmas of ``Inv`` (None: no proof was attempted)."""
    ranking: RankingArgument | None = None
    """Liveness: the ranking argument."""
    counterexample: dict[str, Any] | None = None
    """A real behaviour from Init violating the property (``verdict`` violated)."""
    spacer: SpacerResult | None = None
    """Safety: Spacer's independent verdict, when it was asked."""
    induction_attempt: InductionAttempt | None = None
    """Method ``spacer``: the strengthening's failed proof that Spacer's invariant replaced."""
    note: str | None = None
    counterexample_source: str | None = None
    """Who found ``counterexample``: ``z3-bmc`` (Z3's safety search), ``z3-lasso`` (Z3's fair
    lasso search) or ``explorer-replay`` (the explorer's shortest counterexample, replayed
    through the Z3 encoding); None without a counterexample."""
    bmc_depth: int | None = None
    """Steps from Init Z3's counterexample search covers for this property (BMC for safety,
    prefix + cycle for a lasso); None: no search applies."""
    rlimit: int | None = None
    """Z3 resource limit of each obligation check (Z3's operation count, not time)."""
    seed: int | None = None
    """Random seed of every Z3 solver of the proof."""
    certificate: dict[str, Any] | None = None
    """Methods ``certificate`` / ``certificate+ranking`` (:mod:`.z3_certificate`): what the
    certificate is, where it came from, what Z3 checked and what the proof relies on."""

    @property
    def holds(self) -> bool:
        return self.verdict == PROVED

    @property
    def failed_obligations(self) -> list[str]:
        return _failed(self.obligations)

    @property
    def counterexample_text(self) -> str | None:
        return None if self.counterexample is None else str(self.counterexample["text"])

    @property
    def strengthening_text(self) -> str:
        return " /\\ ".join(lem.name for lem in self.strengthening or ()) or "TRUE"

    @property
    def search(self) -> dict[str, Any]:
        """How the verdict was searched for: source, depth, Z3 limits (JSON-ready)."""
        return {"counterexample_source": self.counterexample_source,
                "bmc_depth": self.bmc_depth, "rlimit": self.rlimit, "seed": self.seed}

    def as_dict(self) -> dict[str, Any]:
        head: dict[str, Any] = {"name": self.name, "kind": self.kind}
        obligations = [o.as_dict() for o in self.obligations]
        tail = {"statement": self.statement, "formula": self.formula}
        if self.strengthening is None:  # nothing attempted (e.g. no ranking function)
            out0 = head | {"holds": self.holds, "verdict": self.verdict, "method": self.method,
                           "obligations": obligations}
            if self.counterexample is not None:
                out0["counterexample"] = self.counterexample
                out0["counterexample_text"] = self.counterexample_text
            return out0 | {"time_s": self.time_s} | self.search | {"note": self.note} | tail
        out = head | {"method": self.method, "holds": self.holds, "verdict": self.verdict}
        lemmas = [{"name": lem.name, "formula": lem.formula, "statement": lem.statement}
                  for lem in self.strengthening]
        if self.ranking is not None:
            out |= {"fairness": dict(self.ranking.fairness), "strengthening": lemmas,
                    "during": self.ranking.during, "rank": self.ranking.rank,
                    "helpful": self.ranking.helpful}
        else:
            out |= {"strengthening": lemmas, "strengthening_text": self.strengthening_text}
        if self.certificate is not None:
            out["certificate"] = self.certificate
        out["obligations"] = obligations
        if self.failed_obligations:
            out["failed_obligations"] = self.failed_obligations
        if self.ranking is not None and self.note is not None:
            out["note"] = self.note
        if self.counterexample is not None:
            out["counterexample"] = self.counterexample
            out["counterexample_text"] = self.counterexample_text
        out["time_s"] = self.time_s
        out |= self.search
        if self.spacer is not None:
            out["spacer"] = self.spacer.as_dict()
        if self.induction_attempt is not None:
            out["induction_attempt"] = self.induction_attempt.as_dict()
        if self.ranking is None and self.note is not None:
            out["note"] = self.note
        return out | tail


@dataclass(frozen=True)
class ReachTarget:
    """One antecedent of a property: reached from Init, and in how many steps."""

    target: str
    reached: bool
    depth: int | None

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "reached": self.reached, "depth": self.depth}


@dataclass(frozen=True)
class VacuityCheck:
    """One non-vacuity check of a property's proof: its obligations' hypotheses are
    satisfiable (``check`` hypotheses), or its antecedents are reachable from Init
    (``check`` reachability)."""

    name: str
    property: str
    check: str
    """``hypotheses`` or ``reachability``."""
    holds: bool
    detail: str
    time_s: float
    queries: int | None = None
    """Hypotheses: the number of Z3 queries checked."""
    targets: tuple[ReachTarget, ...] | None = None
    """Reachability: each antecedent."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "property": self.property,
                               "check": self.check, "holds": self.holds}
        if self.queries is not None:
            out["queries"] = self.queries
        if self.targets is not None:
            out["targets"] = [t.as_dict() for t in self.targets]
        out.update(detail=self.detail, time_s=self.time_s)
        return out
