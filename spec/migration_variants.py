"""The migration's bug zoo: deliberately broken variants of :data:`MIGRATION_SPEC`.

Each reproduces a defect a migration protocol can have (some found in this project's own
source and destination, issue 16's campaign), as a small override of the declaration; every
checker must find each one. ``violates`` names the properties a checker is expected to report
(at least one of them), ``max_trace`` the longest shortest counterexample the explorer
should need.
"""

from __future__ import annotations

from .core import Spec
from .expr import And, Not
from .migration import (
    ABORTED,
    ABORTING,
    AWAITING_RESUMED,
    COMMIT_UNANSWERED,
    DONE,
    DST_RUNNING,
    DVM_RUNNING,
    FINISH_ABORT,
    PREPARED,
    RECEIVING,
    RECV_DONE,
    SEND_STATE,
    STOP_DIRTY_LOG,
    STOP_THROTTLER,
    STOPPED,
    THR_CLOSED,
    THR_SHUT,
    VM_GONE,
    VM_RUNNING,
    in_states_int,
    to_destination,
    to_source,
)
from .variants import Variant


def _resumes_after_commit_timeout(spec: Spec) -> Spec:
    return spec.with_transitions(replace={(COMMIT_UNANSWERED, AWAITING_RESUMED): {
        "dest": ABORTING, "effect": lambda s: {"may_run": False},
    }})


def _destination_runs_before_commit(spec: Spec) -> Spec:
    return spec.with_transitions(replace={(RECV_DONE, RECEIVING): {
        "dest": DST_RUNNING,
        "effect": lambda s: {"sd": 0, "mem_ok": s.done_clean, "dvm": DVM_RUNNING, "ran": True,
                             **to_source(s, PREPARED)},
    }})


def _cancel_leaves_throttler_running(spec: Spec) -> Spec:
    return spec.with_transitions(
        remove=((STOP_THROTTLER, ABORTING),),
        replace={(FINISH_ABORT, ABORTING): {
            "guard": lambda s: And(s.vm == VM_RUNNING, Not(s.dlog))}},
    )


def _cleanup_skips_stop_dirty_log(spec: Spec) -> Spec:
    return spec.with_transitions(
        remove=((STOP_DIRTY_LOG, ABORTING),),
        replace={(FINISH_ABORT, ABORTING): {
            "guard": lambda s: And(s.vm == VM_RUNNING, Not(s.throttled),
                                   in_states_int(s.thr, THR_CLOSED))}},
    )


def _no_recovery_after_lost_resumed(spec: Spec) -> Spec:
    return spec.with_transitions(replace={(COMMIT_UNANSWERED, AWAITING_RESUMED): {
        "dest": ABORTED,
        "effect": lambda s: {"vm": VM_GONE, "thr": THR_SHUT, "dlog": False},
    }})


def _no_final_sync(spec: Spec) -> Spec:
    return spec.with_transitions(replace={(SEND_STATE, STOPPED): {
        "effect": lambda s: {**to_destination(s, DONE), "done_clean": Not(s.dirty)},
    }})


MIGRATION_VARIANTS: tuple[Variant, ...] = (
    Variant("resumes_after_commit_timeout",
            "The source resumes its guest when COMMIT goes unanswered, although the "
            "destination may have started it: the guest runs twice.",
            ("NeverRunsTwice", "AbortDiscardsDestination"), 18,
            _resumes_after_commit_timeout),
    Variant("destination_runs_before_commit",
            "The destination starts the guest on DONE instead of waiting for COMMIT.",
            ("NeverRunsTwice", "AbortDiscardsDestination", "NoDeadlock"), 14,
            _destination_runs_before_commit),
    Variant("cancel_leaves_throttler_running",
            "An aborted migration's cleanup does not shut the throttler down.",
            ("AbortLeavesSourceRunning", "ThrottlerClosedAtEnd", "CancelCompletes",
             "NoDeadlock"), 9,
            _cancel_leaves_throttler_running),
    Variant("cleanup_skips_stop_dirty_log",
            "The cleanup on an error path does not stop the dirty log.",
            ("AbortLeavesSourceRunning",), 7, _cleanup_skips_stop_dirty_log),
    Variant("no_recovery_after_lost_resumed",
            "A lost RESUMED ends the migration as failed and destroys the paused source, "
            "although the destination may never have got COMMIT: the guest is lost "
            "(issue 16, defect 1).",
            ("GuestNeverLost", "AbortLeavesSourceRunning", "AbortDiscardsDestination",
             "AbortsOnlyBeforeCommit"), 14,
            _no_recovery_after_lost_resumed),
    Variant("no_final_sync",
            "The source sends DONE without the final dirty sync: pages written after the "
            "last pass never reach the destination (issue 16, defect 6).",
            ("RunsOnlyWhatItReceived",), 11, _no_final_sync),
)
