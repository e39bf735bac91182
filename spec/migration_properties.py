"""The migration lifecycle's named properties: a one-line statement, a formula, a kind.

Kinds as in :mod:`.properties` (invariant, step, deadlock, leadsto). Leads-to properties
assume :data:`FAIRNESS`: weak fairness of the source's thread, the destination process, a
throttler call returning and the operator (an in-doubt result is eventually decided); none
on cancels, timeouts, guest writes, a late pause or failures.
"""

from __future__ import annotations

from .core import Property, Transition, fairness_formula
from .expr import And, Implies, Not, Or, Value, in_states, is_state
from .migration import (
    ABORTED,
    BEFORE_COMMIT,
    COMPLETED,
    DEAD,
    DOUBT_CLOSING,
    DVM_DISCARDED,
    DVM_GONE,
    DVM_NONE,
    DVM_RUNNING,
    FAIRNESS_GROUPS,
    IN_DOUBT,
    OPERATOR_RESUME,
    RESOLVED,
    SOURCE_ENDED,
    THR_CLOSED,
    UNVERIFIED,
    VM_GONE,
    VM_PAUSED,
    VM_RUNNING,
    MigrationState,
    in_states_int,
)

FAIRNESS = fairness_formula(FAIRNESS_GROUPS)
"""The leads-to properties' fairness assumption, printed from :data:`FAIRNESS_GROUPS`."""


def _resume_only_when_safe(pre: MigrationState, t: Transition, post: MigrationState) -> Value:
    """A step that (re)starts the source guest happens only when the destination cannot run
    it: before COMMIT, after the destination refused it, or on the operator's word that it
    never started the guest."""
    starts = And(pre.vm != VM_RUNNING, post.vm == VM_RUNNING)
    if t.trigger == OPERATOR_RESUME:
        return True
    return Implies(starts, Not(pre.may_run))


MIGRATION_PROPERTIES: tuple[Property, ...] = (
    Property(
        "NeverRunsTwice",
        "The guest never runs on both hosts at once.",
        "invariant",
        "~(vm = running /\\ dvm = running)",
        invariant=lambda s: Not(And(s.vm == VM_RUNNING, s.dvm == DVM_RUNNING)),
    ),
    Property(
        "AbortLeavesSourceRunning",
        "A migration that ends before the commit point leaves the source guest running, "
        "unthrottled, the throttler shut down and the dirty log stopped.",
        "invariant",
        "src = aborted => vm = running /\\ ~throttled /\\ thr \\in {none, shut} /\\ ~dlog",
        invariant=lambda s: Implies(
            is_state(s.src, ABORTED),
            And(s.vm == VM_RUNNING, Not(s.throttled), in_states_int(s.thr, THR_CLOSED),
                Not(s.dlog))),
    ),
    Property(
        "AbortDiscardsDestination",
        "After an abort the destination's VM is eventually discarded (or gone with its "
        "process).",
        "leadsto",
        "src = aborted ~> dvm \\in {none, discarded, gone}",
        leads_from=lambda s: is_state(s.src, ABORTED),
        leads_to=lambda s: in_states_int(s.dvm, (DVM_NONE, DVM_DISCARDED, DVM_GONE)),
        fairness=FAIRNESS,
    ),
    Property(
        "ThrottlerClosedAtEnd",
        "Every run of the source ends with the throttler shut down (after a handover too), "
        "never left throttling or leaked.",
        "invariant",
        "src \\in Ended => thr \\in {none, shut} /\\ ~throttled",
        invariant=lambda s: Implies(
            in_states(s.src, SOURCE_ENDED),
            And(in_states_int(s.thr, THR_CLOSED), Not(s.throttled))),
    ),
    Property(
        "CancelCompletes",
        "A cancel (or a timeout with strategy cancel) always ends the source's run.",
        "leadsto",
        "cancel ~> src \\in Ended",
        leads_from=lambda s: s.cancel,
        leads_to=lambda s: in_states(s.src, SOURCE_ENDED),
        fairness=FAIRNESS,
        notes="After the commit point the cancel is ignored and the run ends as the "
              "commit's answer decides.",
    ),
    Property(
        "NoDeadlock",
        "Every state but a finished migration has a step other than a failure.",
        "deadlock",
        "~Terminal => ENABLED Next",
    ),
    Property(
        "RunsOnlyWhatItReceived",
        "The destination runs the guest only with the whole memory and vCPU state as at the "
        "source's stop.",
        "invariant",
        "dvm = running => mem_ok",
        invariant=lambda s: Implies(s.dvm == DVM_RUNNING, s.mem_ok),
    ),
    Property(
        "ResumesOnlyWhenDestinationCannotRun",
        "The source guest is resumed only while the destination cannot be running it (before "
        "COMMIT, after COMMIT was refused, or on the operator's word).",
        "step",
        "vm # running /\\ vm' = running => ~may_run \\/ operator_resume",
        step=_resume_only_when_safe,
    ),
    Property(
        "InDoubtKeepsSourcePaused",
        "While the outcome is in doubt the source guest stays paused (neither resumed nor "
        "destroyed).",
        "invariant",
        "src \\in {doubt_closing, in_doubt} => vm = paused",
        invariant=lambda s: Implies(in_states(s.src, (DOUBT_CLOSING, IN_DOUBT)),
                                    s.vm == VM_PAUSED),
    ),
    Property(
        "GuestNeverLost",
        "The source's copy is destroyed only once the destination started the guest.",
        "invariant",
        "vm = gone => ran",
        invariant=lambda s: Implies(s.vm == VM_GONE, s.ran),
    ),
    Property(
        "CompletedMeansDestinationRuns",
        "A completed result (verified or not) means the destination started the guest.",
        "invariant",
        "src \\in {completed, unverified} => ran",
        invariant=lambda s: Implies(in_states(s.src, (COMPLETED, UNVERIFIED)), s.ran),
    ),
    Property(
        "InDoubtResolved",
        "An in-doubt result is eventually resolved by the operator.",
        "leadsto",
        "src = in_doubt ~> src = resolved",
        leads_from=lambda s: is_state(s.src, IN_DOUBT),
        leads_to=lambda s: is_state(s.src, RESOLVED),
        fairness=FAIRNESS,
    ),
    Property(
        "ExactlyOneHostAfterResolution",
        "Once resolved, the guest runs on exactly one host, unless the destination died "
        "after starting it.",
        "invariant",
        "src = resolved => ((vm = running) # (dvm = running) \\/ (ran /\\ dst = dead))",
        invariant=lambda s: Implies(
            is_state(s.src, RESOLVED),
            Or(And(s.vm == VM_RUNNING, s.dvm != DVM_RUNNING),
               And(s.vm != VM_RUNNING, s.dvm == DVM_RUNNING),
               And(s.ran, is_state(s.dst, DEAD)))),
    ),
    Property(
        "AbortsOnlyBeforeCommit",
        "The source reports an abort only if COMMIT never left it, or the destination "
        "refused it.",
        "invariant",
        "src = aborted => ~may_run",
        invariant=lambda s: Implies(is_state(s.src, ABORTED), Not(s.may_run)),
    ),
)

__all__ = ["BEFORE_COMMIT", "FAIRNESS", "MIGRATION_PROPERTIES"]
