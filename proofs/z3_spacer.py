"""Spacer (``SolverFor('HORN')``): let Z3 find the inductive invariant itself.

The property is posed as constrained Horn clauses over an unknown predicate ``Inv`` on the
whole state record (the same transition relation as the induction proofs, from
:class:`Encoding`)::

    Init(s)                                    => Inv(s)
    Inv(s) /\\ \\E t: T_t(s, s')                  => Inv(s')
    Inv(s)                                     => P(s)     (invariant), or
    Inv(s) /\\ \\E t: T_t(s, s') /\\ ~P(s, t, s') => false    (step property)

with ``t`` ranging over the declared transitions: one clause for the whole relation (a
disjunction), not one per transition: the same problem, which Spacer solves 4 to 25 times
faster (measured on the shipped spec and the bug zoo; see :data:`SPACER_RLIMIT`).

``sat`` means an inductive invariant exists: Spacer returns one, which is printed readably
and then re-checked independently by the ordinary solver (``Init => I``, ``I /\\ T_t => I'``,
``I => P``), so the verdict does not rest on Spacer alone. ``unsat`` means a counterexample
exists (the property is violated); ``unknown`` (out of resources) proves nothing. Spacer
handles the properties whose invariant is quantifier-free; for "every queued element is valid"
it needs a quantified invariant over the sequence and gives up, so those use the hand-written
lemmas. Spacer runs under a Z3 resource limit (:data:`SPACER_RLIMIT`) with fixed seeds, never
a wall-clock timeout, so its verdict does not depend on the machine's load.

:func:`spacer` returns a :class:`SpacerResult` (``as_dict()``: its JSON form).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import z3

from autoconverge.spec import Spec

from .encoding import Encoding, as_bool, fmt_clause
from .z3_obligations import (
    PROVED,
    RLIMIT,
    SEED,
    UNKNOWN,
    Checker,
    ObligationResult,
    Outcome,
    Query,
    Step,
    discharge,
    limited,
)

SPACER_RLIMIT = 10_000_000
"""Z3 resource limit of one Spacer query. Spacer proves every property it is asked about
(:data:`.prove.SPACER_PROPERTIES`), in the shipped spec and in every bug-zoo variant, within
2 M (with one clause per transition it needed up to 10 M, and sometimes more). Unlike the
plain solver, Spacer's operation count for the same clauses varies with what the process did
before (measured: up to 2x, even in a context of its own), so the limit keeps a wide margin:
a verdict near it could differ between a full run and a property proved alone."""
ENGINE = "spacer (SolverFor('HORN'))"
VIOLATED = "violated"


@dataclass(frozen=True)
class SpacerResult:
    """Spacer's verdict on one safety property, with the invariant it found."""

    name: str
    verdict: str
    """``proved`` (invariant found and re-checked), ``violated`` (no inductive invariant
    exists: a counterexample is reachable) or ``unknown``."""
    detail: str
    time_s: float
    invariant: tuple[str, ...] | None = None
    """The invariant's conjuncts, printed (None: Spacer found none)."""
    obligations: tuple[ObligationResult, ...] | None = None
    """The plain solver's re-check of the invariant (None: Spacer found none)."""
    engine: str = ENGINE

    @property
    def holds(self) -> bool:
        return self.verdict == PROVED

    @property
    def invariant_text(self) -> str | None:
        """The invariant, one ``/\\ conjunct`` a line."""
        if self.invariant is None:
            return None
        return "\n".join(f"  /\\ {c}" for c in self.invariant)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "engine": self.engine, "time_s": self.time_s}
        if self.invariant is not None:
            out["invariant"] = list(self.invariant)
            out["invariant_text"] = self.invariant_text
        if self.obligations is not None:
            out["obligations"] = [o.as_dict() for o in self.obligations]
        out.update(verdict=self.verdict, holds=self.holds, detail=self.detail)
        return out


def _vars(s: Any) -> list[z3.ExprRef]:
    """The record's fields, in the record's order (the spec's variables)."""
    return [getattr(s, f.name) for f in dataclasses.fields(s)]


def spacer(spec: Spec, name: str, rlimit: int = SPACER_RLIMIT,
           enc: Encoding | None = None) -> SpacerResult:
    """Ask Spacer for an inductive invariant proving the safety property ``name``."""
    t0 = time.perf_counter()
    enc = enc or Encoding(spec)
    prop = spec.property(name)
    s, s2 = enc.state("hs"), enc.state("hs'")
    ps = enc.params("hstep")
    inv = z3.Function(f"Inv_{name}", *[v.sort() for v in _vars(s)], z3.BoolSort(enc.ctx))
    pre, post = inv(*_vars(s)), inv(*_vars(s2))
    allv = _vars(s) + _vars(s2) + list(ps.values())
    # one clause for the whole relation (a disjunction over the declared transitions) and
    # one for all bad steps: Spacer is 4-25x faster on these than on a clause per transition
    # (the re-check below still discharges the invariant transition by transition)
    clauses = [z3.ForAll(_vars(s), z3.Implies(enc.init(s), pre)),
               z3.ForAll(allv, z3.Implies(z3.And(pre, enc.next(s, s2, ps)), post))]
    if prop.kind == "invariant":
        assert prop.invariant is not None
        clauses.append(z3.ForAll(_vars(s), z3.Implies(pre, as_bool(prop.invariant(s), enc.ctx))))
    elif prop.kind == "step":
        assert prop.step is not None
        bad = z3.Or(*(z3.And(enc.step(t, s, s2, ps), z3.Not(as_bool(prop.step(s, t, s2), enc.ctx)))
                      for t in enc.relation))
        clauses.append(z3.ForAll(allv, z3.Implies(z3.And(pre, bad), z3.BoolVal(False, enc.ctx))))
    else:
        raise ValueError(f"Spacer is used for invariants and step properties, not {prop.kind}")
    # Spacer runs in a Z3 context of its own: the clauses are copied into it, so its search
    # (and the resources it counts) does not depend on what else the process built before
    ctx = z3.Context()
    solver = limited(z3.SolverFor("HORN", ctx=ctx), rlimit)
    solver.set("fp.spacer.random_seed", SEED)
    for clause in clauses:
        solver.add(clause.translate(ctx))
    r = solver.check()
    if r == z3.unsat:
        return SpacerResult(name, VIOLATED,
                            "Spacer: unsat - no inductive invariant exists: a counterexample "
                            "is reachable from Init", _since(t0))
    if r == z3.unknown:
        return SpacerResult(name, UNKNOWN,
                            f"Spacer: unknown ({solver.reason_unknown()}) - proves nothing",
                            _since(t0))
    found = _interpretation(solver.model(), inv.translate(ctx),
                            [v.translate(ctx) for v in _vars(s)]).translate(enc.ctx)
    conjuncts = [found.arg(i) for i in range(found.num_args())] if z3.is_and(found) \
        else [found]
    invariant = tuple(fmt_clause(c) for c in conjuncts)
    checks = _recheck(enc, name, found)
    ok = all(o.holds for o in checks)
    return SpacerResult(
        name, PROVED if ok else UNKNOWN,
        "Spacer: sat - invariant found and re-checked by the plain solver" if ok
        else "Spacer's invariant failed the independent re-check",
        _since(t0), invariant=invariant, obligations=tuple(o.result() for o in checks),
    )


def _since(t0: float) -> float:
    return round(time.perf_counter() - t0, 4)


def _interpretation(model: z3.ModelRef, inv: z3.FuncDeclRef,
                    args: list[z3.ExprRef]) -> z3.BoolRef:
    """Spacer's interpretation of ``Inv`` applied to the state variables ``args``."""
    interp = model[inv]
    if isinstance(interp, z3.FuncInterp) and interp.num_entries() == 0:
        body = z3.substitute_vars(interp.else_value(), *args)
    else:
        body = model.eval(inv(*args), model_completion=False)
    return z3.simplify(body)


def _recheck(enc: Encoding, name: str, found: z3.BoolRef) -> list[Outcome]:
    """Independently verify Spacer's invariant ``I``: initiation, consecution, sufficiency.

    The per-transition checks share ``I(s)``: one solver holds it, each transition's query
    is asked in a ``push``/``pop`` (:class:`.z3_obligations.Checker`: its own resource
    limit per check, fixed seeds); ``unsat`` is the proof, as with a fresh solver."""
    prop = enc.spec.property(name)
    s, s2 = enc.state("rs"), enc.state("rs'")
    ps = enc.params("rstep")
    hs = enc.state("hs")
    subst = list(zip(_vars(hs), _vars(s), strict=True))
    subst2 = list(zip(_vars(hs), _vars(s2), strict=True))
    i_s, i_s2 = z3.substitute(found, *subst), z3.substitute(found, *subst2)
    out = [discharge(enc, "spacer: Init => I", "Init => I",
                     Query(ground=[enc.init(s)], goal=i_s, states={"s": s}))]
    inside = Checker(enc, [i_s], RLIMIT)
    parts = [inside.check(f"spacer: I /\\ T[{t.label}] => I'", "", [enc.step(t, s, s2, ps)],
                          i_s2, step=Step(s, s2, ps, (t,)))
             for t in enc.relation]
    ok = all(p.holds for p in parts)
    out.append(Outcome("spacer: I /\\ Next => I'", "I /\\ Next => I'",
                       PROVED if ok else UNKNOWN, sum(p.time_s for p in parts),
                       f"{len(parts)} transitions" + ("" if ok else ": failed for " + ", ".join(
                           p.name for p in parts if not p.holds))))
    if prop.kind == "invariant":
        assert prop.invariant is not None
        out.append(discharge(enc, "spacer: I => P", "I => P",
                             Query(ground=[i_s], goal=as_bool(prop.invariant(s), enc.ctx),
                                   states={"s": s})))
    else:
        assert prop.step is not None
        parts = [inside.check(f"spacer: I /\\ T[{t.label}] => P", "",
                              [enc.step(t, s, s2, ps)], as_bool(prop.step(s, t, s2), enc.ctx),
                              step=Step(s, s2, ps, (t,)))
                 for t in enc.relation]
        ok = all(p.holds for p in parts)
        out.append(Outcome("spacer: I /\\ T_t => P(s, t, s')", "I /\\ T_t => P",
                           PROVED if ok else UNKNOWN, sum(p.time_s for p in parts),
                           f"{len(parts)} transitions"))
    return out
