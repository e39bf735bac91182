"""Z3 proofs of the phase-duration arithmetic in :mod:`autoconverge.spec.timing`.

The very functions the implementation calls (``pause_share_ns``, ``pause_sleep_ns``,
``run_sleep_ns``, ``compensable``) are evaluated on Z3 integers ``p`` (percent), ``T``
(timeslice, ns), ``cp``/``cr`` (measured pause/resume cost, ns). Every obligation is proved
for all values in range at once (nonlinear integer arithmetic: ``p * T``), not sampled:

- inside the compensable range (``cp, cr >= 0``, ``cp + cr <= floor(p*T/100)``), for
  ``p`` in 1..99 and ``T`` in [MIN_TIMESLICE_NS, MAX_TIMESLICE_NS]: both sleeps are
  non-negative, ``cp + pause_sleep + cr + run_sleep = T``, and the paused share
  ``cp + pause_sleep + cr`` equals ``floor(p*T/100)``, i.e. ``p*T/100`` to the clock's
  granularity;
- the smallest percent at the smallest timeslice still pauses, and the guest always runs;
- outside the compensable range the pause sleep is clamped to 0, the run share is kept and
  the slice only grows (never a negative sleep);
- the Z3 branch of ``pause_share_ns`` agrees with Python's integer floor division.

Each obligation's hypotheses are also checked satisfiable (no vacuous proof). Every check
runs under a Z3 resource limit with fixed seeds (:data:`RLIMIT`), never a wall-clock
timeout, so the verdict does not depend on the machine's load.

:func:`prove_timing` returns a :class:`TimingProof` of :class:`TimingObligation` records
(``as_dict()``: the JSON form).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import z3

from autoconverge.spec import timing
from autoconverge.spec.lifecycle import MAX_PERCENT, MIN_PERCENT

from .z3_obligations import limited

RLIMIT = 10_000_000
"""Z3 resource limit of one timing check; the hardest needs about 15 k."""
PROVED = "proved"


@dataclass(frozen=True)
class TimingObligation:
    """One timing obligation: ``hypotheses => goal`` for all values in range."""

    name: str
    formula: str
    verdict: str
    """``proved``, ``failed`` (with a counterexample) or ``unknown``."""
    detail: str
    hypotheses_satisfiable: bool
    witness: str | None
    """A model of the hypotheses (None: they are unsatisfiable, the proof vacuous)."""
    time_s: float

    @property
    def holds(self) -> bool:
        return self.verdict == PROVED

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "formula": self.formula, "holds": self.holds,
            "verdict": self.verdict, "detail": self.detail,
            "hypotheses_satisfiable": self.hypotheses_satisfiable, "witness": self.witness,
            "time_s": self.time_s,
        }


@dataclass(frozen=True)
class TimingProof:
    """Every timing obligation; ``holds`` iff all are proved and none is vacuous."""

    obligations: tuple[TimingObligation, ...]
    ranges: dict[str, Any]
    """The ranges proved over: ``percent``, ``timeslice_ns`` ([min, max]) and
    ``clock_granularity_ns``."""
    time_s: float
    name: str = "TimingArithmetic"
    method: str = "z3 (nonlinear integer)"

    @property
    def holds(self) -> bool:
        return all(o.holds and o.hypotheses_satisfiable for o in self.obligations)

    @property
    def failed_obligations(self) -> list[str]:
        """The obligations not proved."""
        return [o.name for o in self.obligations if not o.holds]

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "holds": self.holds, "method": self.method,
            "ranges": self.ranges, "obligations": [o.as_dict() for o in self.obligations],
            "time_s": self.time_s,
        }


def _check(name: str, formula: str, hyps: list[Any], goal: Any) -> TimingObligation:
    t0 = time.perf_counter()
    s = limited(z3.Solver(), RLIMIT)
    s.add(*hyps)
    s.push()
    s.add(z3.Not(goal))
    r = s.check()
    s.pop()
    verdict = PROVED if r == z3.unsat else "failed" if r == z3.sat else "unknown"
    detail = "z3: unsat (no counterexample exists)"
    if r == z3.sat:
        detail = f"counterexample: {s.model()}"
    elif r == z3.unknown:
        detail = f"not proved: z3 {s.reason_unknown()}"
    hyp_sat = s.check()
    witness = str(s.model()) if hyp_sat == z3.sat else None
    return TimingObligation(name, formula, verdict, detail, hyp_sat == z3.sat, witness,
                            round(time.perf_counter() - t0, 4))


def prove_timing(impl: Any = timing) -> TimingProof:
    """Every timing obligation, with verdicts; ``holds`` iff all proved and non-vacuous.

    ``impl`` is the module whose functions are proved (tests pass broken copies to show the
    obligations can fail).
    """
    t0 = time.perf_counter()
    timing_ = impl
    p, T, cp, cr = z3.Ints("p T cp cr")
    share = timing_.pause_share_ns(p, T)
    ps = timing_.pause_sleep_ns(p, T, cp, cr)
    rs = timing_.run_sleep_ns(p, T)
    gran = timing_.CLOCK_GRANULARITY_NS
    in_range = [timing_.valid_percent(p), timing_.valid_timeslice(T)]
    comp = [*in_range, timing_.compensable(p, T, cp, cr)]
    over = [*in_range, cp >= 0, cr >= 0, z3.Not(timing_.compensable(p, T, cp, cr))]
    paused = cp + ps + cr
    obligations = (
        _check("floor-division", "pause_share_ns(p, T) = (p * T) div 100 (Z3 branch = "
               "Python //)", in_range, share == (p * T) / 100),
        _check("pause-sleep-non-negative", "compensable => pause_sleep >= 0", comp, ps >= 0),
        _check("run-sleep-positive", "compensable => run_sleep > 0 (the guest always runs)",
               comp, rs > 0),
        _check("slice-sums-to-timeslice", "compensable => cp + pause_sleep + cr + run_sleep = T",
               comp, cp + ps + cr + rs == T),
        _check("paused-share-exact", "compensable => cp + pause_sleep + cr = floor(p*T/100)",
               comp, paused == share),
        _check("paused-share-to-granularity",
               f"compensable => |100*(cp + pause_sleep + cr) - p*T| < 100*{gran} ns",
               comp, z3.And(100 * paused <= p * T, p * T < 100 * paused + 100 * gran)),
        _check("smallest-percent-pauses",
               f"pause_share({MIN_PERCENT} %, {timing_.MIN_TIMESLICE_NS} ns) > 0 "
               "(and > 0 for every valid percent and timeslice)",
               in_range, z3.And(share > 0, timing_.pause_share_ns(
                   z3.IntVal(MIN_PERCENT), z3.IntVal(timing_.MIN_TIMESLICE_NS)) > 0)),
        _check("largest-percent-runs",
               f"run_sleep({MAX_PERCENT} %, T) > 0 for every valid timeslice",
               [timing_.valid_timeslice(T)], timing_.run_sleep_ns(z3.IntVal(MAX_PERCENT), T) > 0),
        _check("costs-compensable-at-minimum",
               "some positive costs are compensable at the smallest percent and timeslice "
               "(the compensable range is not empty)",
               [], z3.Exists([cp, cr], z3.And(cp > 0, cr > 0, timing_.compensable(
                   z3.IntVal(MIN_PERCENT), z3.IntVal(timing_.MIN_TIMESLICE_NS), cp, cr)))),
        _check("uncompensable-clamped", "not compensable => pause_sleep = 0 (never negative)",
               over, ps == 0),
        _check("uncompensable-run-kept", "not compensable => run_sleep = T - floor(p*T/100) > 0",
               over, z3.And(rs == T - share, rs > 0)),
        _check("uncompensable-slice-grows", "not compensable => cp + pause_sleep + cr + "
               "run_sleep >= T (the pause runs over its share, the run share is kept)",
               over, cp + ps + cr + rs >= T),
    )
    return TimingProof(
        obligations,
        ranges={"percent": [MIN_PERCENT, MAX_PERCENT],
                "timeslice_ns": [timing_.MIN_TIMESLICE_NS, timing_.MAX_TIMESLICE_NS],
                "clock_granularity_ns": gran},
        time_s=round(time.perf_counter() - t0, 4),
    )
