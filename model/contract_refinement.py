"""Does the throttle spec refine the throttler contract the migration spec assumes?

One job: a bounded simulation check between the two specs. The migration spec
(:mod:`autoconverge.spec.migration`) sees the throttler through a contract: the field ``thr``
(running, handing over, handed over, a handover timed out and its pause may land late, shut
down) and the source guest ``vm`` (running or paused). Its steps that change them -
``start_handover``, ``handover_returns``, ``handover_timeout``, ``late_pause``,
``stop_throttler`` - are read from the migration spec's reachable steps (never restated
here) as a set of allowed abstract moves ``(thr, vm) -> (thr', vm')``.

The throttle spec (:data:`autoconverge.spec.SPEC`) is explored as the migration source uses
it: one caller; ``set_throttle_percent`` with a percent, then ``handover()``, or
``shutdown()`` (an abort), then ``shutdown()`` again after a timeout; its own steps (worker,
clock, vCPU calls ending, timeouts) in any order. Each state is mapped to the contract
(:func:`abstract`): before the handover the guest runs as far as the contract knows (the
pause phases are the ``throttled`` flag's business); while ``handover()`` waits, ``handing``;
when it returned, ``handed`` (the vCPUs as they are); when it timed out, ``late`` (the vCPUs
paused only once the worker exited leaving them paused: the late pause); ``shutdown()`` is
one atomic contract step, so while it runs the state is the one it was called in, and when
it returns, ``shut`` with the vCPUs as they are. Every throttle step must map to no move or
to a sequence of the throttler's own moves with at most one call among them (a timeout that
comes after the handover's pause landed is ``handover_timeout`` then ``late_pause`` in one
step; a shutdown that returns after a late pause landed is ``late_pause`` then
``stop_throttler``) - never two calls, so a ``shutdown()`` cannot pass for a handover and a
shutdown.

Guaranteed when it passes: at this bound (percents, set calls) and without failing vCPU
calls, every behaviour of the throttle, used as the migration uses it, is a behaviour of the
contract. Not covered: failing pause()/resume() (the contract has no state for a worker that
died leaving the vCPUs paused while running; the migration maps that to its own
``source_error`` and ``handover_timeout`` steps), two callers, liveness (the throttle's
HandoverCompletes and ShutdownCompletes carry it, under the throttle's fairness).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from autoconverge.spec import SPEC, Spec, State
from autoconverge.spec import lifecycle as L
from autoconverge.spec import migration as M
from autoconverge.spec.core import Transition

Abstract = tuple[int, int]
"""(thr, vm) of the migration spec's record."""

CALL_TRIGGERS: tuple[str, ...] = (M.START_HANDOVER, M.STOP_THROTTLER)
"""The migration's calls into the throttler (handover(), shutdown())."""
CONTRACT_TRIGGERS: tuple[str, ...] = (
    *CALL_TRIGGERS, M.HANDOVER_RETURNS, M.HANDOVER_TIMEOUT, M.LATE_PAUSE,
)
"""The migration spec's steps that change the throttler contract or the guest through it."""

Move = tuple[Abstract, Abstract, bool]
"""(from, to, made by a call)."""

BEFORE, HANDING_OVER, SHUTTING = "before_handover", "after_handover", "in_shutdown"


def contract_moves(migration: Spec | None = None) -> frozenset[Move]:
    """The abstract moves the migration spec's reachable steps make (read from its graph),
    each marked as made by a call of the source or by the throttler on its own."""
    from .config import default_section, load_config
    from .explorer import explore

    spec = migration
    if spec is None:
        from autoconverge.spec.specs import MIGRATION_SPEC
        spec = MIGRATION_SPEC
    g = explore(spec, load_config(section=default_section(spec))).graph
    assert g is not None
    moves: set[Move] = set()
    for n, edges in enumerate(g.succ):
        pre: Any = g.state(n)  # a migration record (the graph types it as the throttle's)
        for m, li in edges:
            trigger = g.labels[li].transition.trigger
            if trigger in CONTRACT_TRIGGERS:
                post: Any = g.state(m)
                a, b = (pre.thr, pre.vm), (post.thr, post.vm)
                if a != b:
                    moves.add((a, b, trigger in CALL_TRIGGERS))
    return frozenset(moves)


def _vm(paused: bool) -> int:
    return M.VM_PAUSED if paused else M.VM_RUNNING


def abstract(s: State, phase: str, at_call: Abstract | None) -> Abstract | None:
    """The contract state of a throttle state in the migration's use (None: no contract
    state corresponds; reported as a mismatch)."""
    if phase == BEFORE:
        return (M.THR_RUNNING, M.VM_RUNNING)
    if phase == SHUTTING:
        if s.c == L.DONE:
            return (M.THR_SHUT, _vm(bool(s.paused)))
        return at_call
    if s.c == L.AWAITING_HANDOVER:
        return (M.THR_HANDING, M.VM_RUNNING)
    if s.c == L.DONE and s.owner != 0:
        return (M.THR_HANDED, _vm(bool(s.paused)))
    if s.c in (L.CLOSING, L.STALLED):
        left_paused = bool(s.paused) and s.w == L.EXIT and s.call == L.NO_CALL
        return (M.THR_LATE, _vm(left_paused))
    return None


@dataclass
class RefinementResult:
    states: int = 0
    steps: int = 0
    mismatches: list[str] = field(default_factory=list)
    moves_used: set[tuple[Abstract, Abstract]] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _user_allowed(t: Transition, phase: str, sets: int, max_sets: int) -> bool:
    if phase == BEFORE:
        if t.trigger == L.CALL_SET:
            return sets < max_sets
        return t.trigger in (L.CALL_HANDOVER, L.CALL_SHUTDOWN)
    return t.trigger == L.CALL_SHUTDOWN


def check_refinement(throttle: Spec = SPEC, moves: Iterable[Move] | None = None, *,
                     percents: tuple[int, ...] = (1, 50, 99), max_sets: int = 2,
                     max_mismatches: int = 5) -> RefinementResult:
    """Explore ``throttle`` as the migration source uses it and check every step against the
    contract's ``moves`` (default: read from the migration spec)."""
    allowed = _sequences(frozenset(moves) if moves is not None else contract_moves())
    domain = {"p": percents, "k": (1,)}
    start: tuple[State, str, Abstract | None, int] = (throttle.initial, BEFORE, None, 0)
    seen = {start}
    queue = deque([start])
    out = RefinementResult()
    while queue:
        s, phase, at_call, sets = queue.popleft()
        out.states += 1
        a = abstract(s, phase, at_call)
        for t, params, nxt in throttle.successors(s, domain):
            if t.is_fault:
                continue
            n_phase, n_at, n_sets = phase, at_call, sets
            if t.user_call:
                if not _user_allowed(t, phase, sets, max_sets):
                    continue
                if t.trigger == L.CALL_SET:
                    n_sets += 1
                elif t.trigger == L.CALL_HANDOVER:
                    n_phase = HANDING_OVER
                elif t.trigger == L.CALL_SHUTDOWN and phase != SHUTTING:
                    n_phase, n_at = SHUTTING, a
            b = abstract(nxt, n_phase, n_at)
            out.steps += 1
            if a is None or b is None or (a != b and (a, b) not in allowed):
                if len(out.mismatches) < max_mismatches:
                    out.mismatches.append(
                        f"{t.label}({params}) in {phase}: {_name(a)} -> {_name(b)} is no "
                        f"contract move (w={s.w}, c={s.c} -> w={nxt.w}, c={nxt.c})")
                else:
                    out.mismatches.append("...")
                    return out
            elif a != b:
                out.moves_used.add((a, b))
            key = (nxt, n_phase, n_at, n_sets)
            if key not in seen:
                seen.add(key)
                queue.append(key)
    return out


def _sequences(moves: frozenset[Move]) -> frozenset[tuple[Abstract, Abstract]]:
    """Every sequence of ``moves`` with at most one call, as (first state, last state)."""
    paths: set[Move] = set(moves)  # (first, last, a call among them)
    while True:
        more = {(a, d, c1 or c2) for a, b, c1 in paths for c, d, c2 in moves
                if b == c and not (c1 and c2)} - paths
        if not more:
            return frozenset((a, d) for a, d, _ in paths if a != d)
        paths |= more


def _name(a: Abstract | None) -> str:
    if a is None:
        return "(no contract state)"
    return f"({M.THR_NAMES[a[0]]}, {M.VM_NAMES[a[1]]})"
