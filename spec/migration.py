"""The pre-copy migration's lifecycle, declared once, as data (the second spec).

Two ``transitions`` machines share one record (:class:`MigrationState`):

- the **source** (``src``): connect and send LAYOUT, start the dirty log and the throttler on
  READY, copy passes while the guest runs (and the throttler throttles it), hand over (the
  throttler pauses the guest and gives it to the source), send the final sync, the vCPU state
  and DONE, commit on PREPARED, wait for RESUMED and the REPORT, and clean up: shut the
  throttler down, resume the guest (before the commit point), stop the dirty log. Its end
  states tell where the guest runs: ``completed`` / ``unverified`` (the destination runs it),
  ``aborted`` (the source runs it), ``in_doubt`` (COMMIT was sent and never answered: the
  source keeps its copy paused until an operator decides, ``resolved``);
- the **destination** (``dst``): on LAYOUT create the VM and answer READY, receive the
  memory, load the vCPU state on DONE and answer PREPARED, start the guest only on COMMIT and
  answer RESUMED, then REPORT; on an ERROR or EOF before the guest started, discard the VM
  (and say ERROR when the link allows). It may die at any step (``dst_die``).

Other actors step the source machine's record without changing its state: the
**throttler** as seen through its API contract (``thr``: a handover returns, or a
timed-out handover lands late), the **guest** (it dirties memory while it runs and the
dirty log is on), the **user** (``cancel``), the **clock** (the migration's timeout, a
handover call timing out), the **network** (the link breaks: what is in flight is lost) and
the **operator** (resolves ``in_doubt`` by asking the destination whether it started the
guest). The channels carry at most one message each way (the protocol is lock-step: each
side answers before the other sends its next control message), plus an ERROR that may
follow it (``sd_err`` / ``ds_err``); PAGES and ITERATION_END are abstracted into the
``dirty`` flag: a pass sends what is dirty, DONE carries the final sync.

The throttler contract abstracts the throttle spec (:mod:`.lifecycle`); each of its steps is
what a throttle property guarantees of the API: ``handover_returns`` (HandoverCompletes,
HandoverMeansOwnedPause: the caller owns paused vCPUs), a timed-out handover
(``handover_timeout``) whose late pause may still land (``late_pause``), and ``shutdown``
that returns with the vCPUs running unless a handover returned (ShutdownCompletes,
ReturnsOnlyAfterJoin). The safety half is checked mechanically, bounded and without
failing vCPU calls: :mod:`autoconverge.model.contract_refinement` explores the throttle spec
as the migration uses it and maps every step to the contract's moves; liveness rests on the
throttle's leads-to properties.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .core import FairnessGroup, MachineDecl, Schema, Transition
from .expr import And, If, Not, Or, Value, in_states, is_state

# --- codes --------------------------------------------------------------------------------

# messages source -> destination (sd) and destination -> source (ds); 0: none in flight
NO_MSG = 0
LAYOUT = 1
DONE = 2
COMMIT = 3
READY = 1
PREPARED = 2
RESUMED = 3
REPORT = 4
SD_NAMES: dict[int, str] = {NO_MSG: "-", LAYOUT: "LAYOUT", DONE: "DONE", COMMIT: "COMMIT"}
DS_NAMES: dict[int, str] = {NO_MSG: "-", READY: "READY", PREPARED: "PREPARED",
                            RESUMED: "RESUMED", REPORT: "REPORT"}

# the source guest (vm)
VM_GONE = 0
VM_RUNNING = 1
VM_PAUSED = 2
VM_NAMES: dict[int, str] = {VM_GONE: "gone", VM_RUNNING: "running", VM_PAUSED: "paused"}

# the destination's VM (dvm)
DVM_NONE = 0
DVM_LOADED = 1
DVM_RUNNING = 2
DVM_DISCARDED = 3
DVM_GONE = 4
DVM_NAMES: dict[int, str] = {DVM_NONE: "none", DVM_LOADED: "loaded", DVM_RUNNING: "running",
                             DVM_DISCARDED: "discarded", DVM_GONE: "gone"}

# the throttler, through its API contract (thr)
THR_NONE = 0
THR_RUNNING = 1
THR_HANDING = 2
THR_HANDED = 3
THR_LATE = 4
THR_SHUT = 5
THR_NAMES: dict[int, str] = {THR_NONE: "none", THR_RUNNING: "running", THR_HANDING: "handing",
                             THR_HANDED: "handed", THR_LATE: "late", THR_SHUT: "shut"}
THR_CLOSED: tuple[int, ...] = (THR_NONE, THR_SHUT)
"""Never started, or shut down: nothing left running or leaked."""

# --- machine states -----------------------------------------------------------------------

START = "start"
SETUP = "setup"
PRECOPY = "precopy"
HANDING_OVER = "handing_over"
STOPPED = "stopped"
AWAITING_PREPARED = "awaiting_prepared"
PREPARED_STATE = "ready_to_commit"
AWAITING_RESUMED = "awaiting_resumed"
VERIFYING = "verifying"
ABORTING = "aborting"
CLOSING = "closing"
DOUBT_CLOSING = "doubt_closing"
COMPLETED = "completed"
UNVERIFIED = "unverified"
ABORTED = "aborted"
IN_DOUBT = "in_doubt"
RESOLVED = "resolved"
SOURCE_STATES: tuple[str, ...] = (
    START, SETUP, PRECOPY, HANDING_OVER, STOPPED, AWAITING_PREPARED, PREPARED_STATE,
    AWAITING_RESUMED, VERIFYING, ABORTING, CLOSING, DOUBT_CLOSING, COMPLETED, UNVERIFIED,
    ABORTED, IN_DOUBT, RESOLVED,
)
BEFORE_COMMIT: tuple[str, ...] = (
    START, SETUP, PRECOPY, HANDING_OVER, STOPPED, AWAITING_PREPARED, PREPARED_STATE,
)
"""The source has not sent COMMIT: every way out is an abort."""
SOURCE_ENDED: tuple[str, ...] = (COMPLETED, UNVERIFIED, ABORTED, IN_DOUBT, RESOLVED)
"""``run()`` returned: the result is out (in_doubt: waiting for the operator)."""
SOURCE_FINAL: tuple[str, ...] = (COMPLETED, UNVERIFIED, ABORTED, RESOLVED)

LISTENING = "listening"
RECEIVING = "receiving"
DST_PREPARED = "prepared"
DST_RUNNING = "running"
REPORTED = "reported"
DISCARDED = "discarded"
DEAD = "dead"
DESTINATION_STATES: tuple[str, ...] = (
    LISTENING, RECEIVING, DST_PREPARED, DST_RUNNING, REPORTED, DISCARDED, DEAD,
)
DESTINATION_FINAL: tuple[str, ...] = (REPORTED, DISCARDED, DEAD)

# --- triggers -----------------------------------------------------------------------------

SEND_LAYOUT = "send_layout"
RECV_READY = "recv_ready"
SEND_PASS = "send_pass"
THROTTLE_UP = "throttle_up"
START_HANDOVER = "start_handover"
HANDOVER_RETURNED = "handover_returned"
SEND_STATE = "send_state"
RECV_PREPARED = "recv_prepared"
SEND_COMMIT = "send_commit"
RECV_RESUMED = "recv_resumed"
RECV_REPORT = "recv_report"
REPORT_MISSING = "report_missing"
ABORT = "abort"
COMMIT_REFUSED = "commit_refused"
COMMIT_UNANSWERED = "commit_unanswered"
STOP_THROTTLER = "stop_throttler"
RESUME_GUEST = "resume_guest"
STOP_DIRTY_LOG = "stop_dirty_log"
FINISH = "finish"
FINISH_UNVERIFIED = "finish_unverified"
FINISH_ABORT = "finish_abort"
FINISH_IN_DOUBT = "finish_in_doubt"
OPERATOR_RESUME = "operator_resume"
OPERATOR_DISCARD = "operator_discard"
HANDOVER_RETURNS = "handover_returns"
HANDOVER_TIMEOUT = "handover_timeout"
LATE_PAUSE = "late_pause"
GUEST_WRITE = "guest_write"
CANCEL = "cancel"
TIMEOUT = "timeout"
LINK_BREAK = "link_break"
RECV_LAYOUT = "recv_layout"
RECV_DONE = "recv_done"
RECV_COMMIT = "recv_commit"
SEND_REPORT = "send_report"
DISCARD = "discard"
START_FAILS = "start_fails"
REFUSE = "refuse"
DST_DIE = "dst_die"
SOURCE_ERROR = "source_error"

FAULT_TRIGGERS: tuple[str, ...] = (LINK_BREAK, DST_DIE, START_FAILS, REFUSE, SOURCE_ERROR)
"""Failures: the link breaking, the destination process dying, its VM failing to start, the
destination refusing (a layout, memory or vCPU state it cannot take, its own cancel), the
source failing itself (a vCPU, VM, policy or throttler error before the commit point)."""

# --- fairness -----------------------------------------------------------------------------

SOURCE_GROUP = FairnessGroup("source", "the source's migration thread (weakly fair)",
                             "WF(source)", "source")
DESTINATION_GROUP = FairnessGroup("destination", "the destination process (weakly fair)",
                                  "WF(destination)", "destination")
THROTTLER_GROUP = FairnessGroup(
    "throttler", "a throttler call in progress returns (weakly fair)", "WF(throttler)",
    "throttler", (HANDOVER_RETURNS,),
)
"""The throttle spec proves a handover returns under its own fairness (HandoverCompletes)."""
OPERATOR_GROUP = FairnessGroup("operator", "the operator resolves an in-doubt result "
                               "(weakly fair)", "WF(operator)", "operator")
USER_GROUP = FairnessGroup("user", "the user's cancel (no fairness)", "no fairness on cancel",
                           "user", weak=False)
CLOCK_GROUP = FairnessGroup("clock", "timeouts (no fairness)", "no fairness on timeouts",
                            "clock", weak=False)
LATE_GROUP = FairnessGroup("late", "a timed-out handover's late pause (no fairness)",
                           "no fairness on a late pause", "throttler", (LATE_PAUSE,), weak=False)
GUEST_GROUP = FairnessGroup("guest", "the guest writing memory (no fairness)",
                            "no fairness on guest writes", "guest", weak=False)
FAULT_GROUP = FairnessGroup("faults", "the link breaking, the destination dying or its VM "
                            "failing to start (no fairness)", "no fairness on failures",
                            "network", weak=False)
CRASH_GROUP = FairnessGroup("crash", "the destination failing (no fairness)",
                            "no fairness on the destination failing", "crash", weak=False)
FAILURE_GROUP = FairnessGroup("failure", "the source failing itself (no fairness)",
                              "no fairness on the source failing", "failure", weak=False)
FAIRNESS_GROUPS: tuple[FairnessGroup, ...] = (
    SOURCE_GROUP, DESTINATION_GROUP, THROTTLER_GROUP, OPERATOR_GROUP,
    USER_GROUP, CLOCK_GROUP, LATE_GROUP, GUEST_GROUP, FAULT_GROUP, CRASH_GROUP, FAILURE_GROUP,
)
"""The weakly fair groups first (the order checkers number them by); the user's is the
first unfair group (what a bound counts as user calls)."""

# --- the state record -----------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationState:
    """One global state of a migration (values concrete, Z3 terms or Terms)."""

    src: Value
    """source machine state"""
    dst: Value
    """destination machine state"""
    vm: Value
    """the source guest: VM_RUNNING, VM_PAUSED or VM_GONE (destroyed after completion)"""
    thr: Value
    """the source's throttler through its API contract (THR_*)"""
    throttled: Value
    """the throttler holds a percent > 0 (the guest loses CPU time while it runs)"""
    dlog: Value
    """the source's dirty log is on"""
    dirty: Value
    """the source guest has pages not yet in the stream"""
    sd: Value
    """the message in flight source -> destination (LAYOUT, DONE, COMMIT; 0: none)"""
    sd_err: Value
    """an ERROR follows it (the source aborted and said so)"""
    ds: Value
    """the message in flight destination -> source (READY, PREPARED, RESUMED, REPORT)"""
    ds_err: Value
    """an ERROR follows it (the destination discarded its VM and said so)"""
    link: Value
    """the connection is up"""
    done_clean: Value
    """the DONE in flight carries every page (nothing was dirty when it was sent)"""
    dvm: Value
    """the destination's VM (DVM_*)"""
    mem_ok: Value
    """the destination holds the whole memory and vCPU state as at the source's stop"""
    ran: Value
    """the destination started the guest (history: stays true)"""
    committed: Value
    """the commit point passed: COMMIT left the source whole (cancel is ignored)"""
    may_run: Value
    """the source counts on the destination possibly running the guest (COMMIT sent and not
    refused): it must never resume its own copy"""
    cancel: Value
    """a cancel (or a timeout with strategy cancel) was requested"""
    error: Value
    """the source failed itself (before the commit point): it aborts"""
    verified: Value
    """the destination's REPORT arrived"""


VARIABLES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MigrationState))

INITIAL = MigrationState(
    src=START, dst=LISTENING, vm=VM_RUNNING, thr=THR_NONE, throttled=False, dlog=False,
    dirty=False, sd=NO_MSG, sd_err=False, ds=NO_MSG, ds_err=False, link=True,
    done_clean=False, dvm=DVM_NONE, mem_ok=False, ran=False, committed=False, may_run=False,
    cancel=False, error=False, verified=False,
)

# --- guard helpers ------------------------------------------------------------------------


def to_destination(s: MigrationState, msg: int) -> dict[str, Value]:
    """Send ``msg`` to the destination: in flight if the link is up, lost otherwise."""
    return {"sd": If(s.link, msg, NO_MSG)}


def to_source(s: MigrationState, msg: int) -> dict[str, Value]:
    return {"ds": If(s.link, msg, NO_MSG)}


def source_sees_end(s: MigrationState) -> Value:
    """The source's next read fails: nothing in flight and the link broken or the
    destination's process gone (EOF)."""
    return And(s.ds == NO_MSG, Not(s.ds_err), Or(Not(s.link), is_state(s.dst, DEAD)))


def source_sees_error(s: MigrationState) -> Value:
    """The destination's ERROR is next to read."""
    return And(s.ds == NO_MSG, s.ds_err)


def destination_sees_end(s: MigrationState) -> Value:
    """The destination's next read fails: an ERROR is next, or nothing is in flight and the
    link is broken or the source closed it (its run ended)."""
    return And(s.sd == NO_MSG,
               Or(s.sd_err, Not(s.link), in_states(s.src, SOURCE_ENDED)))


def source_must_stop(s: MigrationState) -> Value:
    """Before the commit point the source stops on a cancel, its own failure, an ERROR or
    an EOF."""
    return Or(s.cancel, s.error, source_sees_error(s), source_sees_end(s))


def terminal(s: MigrationState) -> Value:
    """Both sides finished: the source's result is final and the destination is done."""
    return And(in_states(s.src, SOURCE_FINAL), in_states(s.dst, DESTINATION_FINAL))


# --- the source -----------------------------------------------------------------------------


def _abort_effect(s: MigrationState) -> dict[str, Value]:
    """Stop before the commit point: say ERROR if the link is up (the destination discards)."""
    return {"sd_err": s.link}


def _source_transitions() -> list[Transition]:
    def go(s: MigrationState) -> Value:
        """The happy path's common guard: no cancel, no failure of its own."""
        return And(Not(s.cancel), Not(s.error))

    ts = [
        Transition(SEND_LAYOUT, START, SETUP, "source", guard=go,
                   effect=lambda s: to_destination(s, LAYOUT),
                   doc="connect and announce the guest's layout"),
        Transition(RECV_READY, SETUP, PRECOPY, "source",
                   guard=lambda s: And(go(s), s.ds == READY),
                   effect=lambda s: {"ds": NO_MSG, "dlog": True, "dirty": True,
                                     "thr": THR_RUNNING},
                   doc="READY: start the dirty log and the throttler; every page is to send"),
        Transition(SEND_PASS, PRECOPY, PRECOPY, "source",
                   guard=lambda s: And(go(s), s.dirty, s.link),
                   effect=lambda s: {"dirty": False},
                   doc="one pass: send every page dirty so far (the guest may dirty more)"),
        Transition(THROTTLE_UP, PRECOPY, PRECOPY, "source",
                   guard=lambda s: And(go(s), s.thr == THR_RUNNING, Not(s.throttled)),
                   effect=lambda s: {"throttled": True},
                   doc="the policy sets a throttle percent (the guest loses CPU time)"),
        Transition(START_HANDOVER, PRECOPY, HANDING_OVER, "source",
                   guard=lambda s: And(go(s), s.thr == THR_RUNNING),
                   effect=lambda s: {"thr": THR_HANDING},
                   doc="converged (or forced): ask the throttler to hand over the paused guest"),
        Transition(HANDOVER_RETURNED, HANDING_OVER, STOPPED, "source",
                   guard=lambda s: s.thr == THR_HANDED,
                   doc="handover() returned: the guest is paused and the source owns it"),
        Transition(SEND_STATE, STOPPED, AWAITING_PREPARED, "source",
                   guard=lambda s: And(go(s), s.link),
                   effect=lambda s: {**to_destination(s, DONE), "dirty": False,
                                     "done_clean": True},
                   doc="final sync (every page dirtied since the last pass), the vCPU "
                       "state, DONE"),
        Transition(RECV_PREPARED, AWAITING_PREPARED, PREPARED_STATE, "source",
                   guard=lambda s: And(go(s), s.ds == PREPARED),
                   effect=lambda s: {"ds": NO_MSG},
                   doc="PREPARED: the destination holds everything and waits for COMMIT"),
        Transition(SEND_COMMIT, PREPARED_STATE, AWAITING_RESUMED, "source",
                   guard=lambda s: And(go(s), s.link, s.ds == NO_MSG, Not(s.ds_err),
                                       Not(is_state(s.dst, DEAD))),
                   effect=lambda s: {**to_destination(s, COMMIT), "committed": True,
                                     "may_run": True},
                   doc="the commit point: COMMIT leaves whole (a destination that spoke or "
                       "left since PREPARED never got it: abort instead)"),
        Transition(RECV_RESUMED, AWAITING_RESUMED, VERIFYING, "source",
                   guard=lambda s: s.ds == RESUMED,
                   effect=lambda s: {"ds": NO_MSG},
                   doc="RESUMED: the guest runs at the destination"),
        Transition(COMMIT_REFUSED, AWAITING_RESUMED, ABORTING, "source",
                   guard=source_sees_error,
                   effect=lambda s: {"ds_err": False, "may_run": False},
                   doc="ERROR for COMMIT: the destination discarded its VM before saying so; "
                       "the guest is only here"),
        Transition(COMMIT_UNANSWERED, AWAITING_RESUMED, DOUBT_CLOSING, "source",
                   guard=source_sees_end,
                   doc="no answer to COMMIT (EOF): in doubt; keep the source guest paused"),
        Transition(RECV_REPORT, VERIFYING, CLOSING, "source",
                   guard=lambda s: s.ds == REPORT,
                   effect=lambda s: {"ds": NO_MSG, "verified": True},
                   doc="the destination's REPORT (memory hash, counters)"),
        Transition(REPORT_MISSING, VERIFYING, CLOSING, "source",
                   guard=source_sees_end,
                   doc="no REPORT (EOF): completed but unverified"),
    ]
    for st in BEFORE_COMMIT:
        if st == HANDING_OVER:
            continue  # blocked in handover(): it returns or times out first
        ts.append(Transition(ABORT, st, ABORTING, "source", guard=source_must_stop,
                             effect=_abort_effect,
                             doc="cancel, ERROR or EOF before the commit point: abort"))
    for st in (ABORTING, CLOSING, DOUBT_CLOSING):
        ts.append(Transition(
            STOP_THROTTLER, st, st, "source",
            guard=lambda s: in_states_int(s.thr, (THR_RUNNING, THR_HANDED, THR_LATE)),
            effect=lambda s: {"thr": THR_SHUT, "throttled": False,
                              "vm": If(s.thr == THR_LATE, VM_RUNNING, s.vm)},
            doc="shutdown(): it resumes vCPUs it paused (a late handover's too), never a "
                "returned handover's"))
        ts.append(Transition(STOP_DIRTY_LOG, st, st, "source", guard=lambda s: s.dlog,
                             effect=lambda s: {"dlog": False}, doc="stop the dirty log"))
    ts += [
        Transition(RESUME_GUEST, ABORTING, ABORTING, "source",
                   guard=lambda s: And(s.vm == VM_PAUSED, in_states_int(s.thr, THR_CLOSED),
                                       Not(s.may_run)),
                   effect=lambda s: {"vm": VM_RUNNING},
                   doc="the guest is the source's again: resume it"),
        Transition(FINISH_ABORT, ABORTING, ABORTED, "source",
                   guard=lambda s: And(in_states_int(s.thr, THR_CLOSED), s.vm == VM_RUNNING,
                                       Not(s.dlog)),
                   doc="aborted: the source runs the guest, nothing left behind"),
        Transition(FINISH, CLOSING, COMPLETED, "source",
                   guard=lambda s: And(in_states_int(s.thr, THR_CLOSED), Not(s.dlog),
                                       s.verified),
                   effect=lambda s: {"vm": VM_GONE},
                   doc="completed: the source's copy is destroyed"),
        Transition(FINISH_UNVERIFIED, CLOSING, UNVERIFIED, "source",
                   guard=lambda s: And(in_states_int(s.thr, THR_CLOSED), Not(s.dlog),
                                       Not(s.verified)),
                   effect=lambda s: {"vm": VM_GONE},
                   doc="completed without the report: said so (exit 4)"),
        Transition(FINISH_IN_DOUBT, DOUBT_CLOSING, IN_DOUBT, "source",
                   guard=lambda s: And(in_states_int(s.thr, THR_CLOSED), Not(s.dlog)),
                   doc="in doubt: the result says so, the source guest stays paused"),
        Transition(OPERATOR_RESUME, IN_DOUBT, RESOLVED, "operator",
                   guard=lambda s: Not(s.ran),
                   effect=lambda s: {"vm": VM_RUNNING},
                   doc="the destination never started the guest: resume the source copy"),
        Transition(OPERATOR_DISCARD, IN_DOUBT, RESOLVED, "operator",
                   guard=lambda s: s.ran,
                   effect=lambda s: {"vm": VM_GONE},
                   doc="the destination started the guest: destroy the source copy"),
    ]
    return ts


def in_states_int(x: Value, codes: tuple[int, ...]) -> Value:
    """``x`` is one of the integer ``codes``."""
    return Or(*(x == c for c in codes))


# --- the environment: throttler, guest, user, clock, network (self-loops of the source) ----


def _environment_transitions() -> list[Transition]:
    ts: list[Transition] = []
    for st in SOURCE_STATES:
        ts += [
            Transition(HANDOVER_RETURNS, st, st, "throttler",
                       guard=lambda s: s.thr == THR_HANDING,
                       effect=lambda s: {"thr": THR_HANDED, "vm": VM_PAUSED,
                                         "throttled": False},
                       doc="the handover's pause() ends: vCPUs paused, owned by the caller"),
            Transition(LATE_PAUSE, st, st, "throttler",
                       guard=lambda s: And(s.thr == THR_LATE, s.vm == VM_RUNNING),
                       effect=lambda s: {"vm": VM_PAUSED},
                       doc="a timed-out handover's pause() lands late"),
            Transition(GUEST_WRITE, st, st, "guest",
                       guard=lambda s: And(s.vm == VM_RUNNING, s.dlog, Not(s.dirty)),
                       effect=lambda s: {"dirty": True},
                       doc="the running guest dirties a page"),
            Transition(LINK_BREAK, st, st, "network",
                       guard=lambda s: And(s.link, Not(is_state(s.dst, DEAD)),
                                           Not(in_states(s.src, SOURCE_ENDED))),
                       effect=lambda s: {"link": False, "sd": NO_MSG, "sd_err": False,
                                         "ds": NO_MSG, "ds_err": False},
                       doc="the connection breaks: whatever is in flight is lost"),
        ]
    for st in BEFORE_COMMIT:
        ts.append(Transition(CANCEL, st, st, "user", guard=lambda s: Not(s.cancel),
                             effect=lambda s: {"cancel": True},
                             doc="the user cancels (Ctrl-C, SIGTERM, the API)"))
        if st != HANDING_OVER:  # inside handover(): a failure is handover_timeout's case
            ts.append(Transition(
                SOURCE_ERROR, st, st, "failure", guard=lambda s: Not(s.error),
                effect=lambda s: {"error": True},
                doc="the source fails itself (a vCPU, VM, policy or throttler error)"))
    ts += [
        Transition(TIMEOUT, PRECOPY, PRECOPY, "clock", guard=lambda s: Not(s.cancel),
                   effect=lambda s: {"cancel": True},
                   doc="the migration timeout with strategy cancel (strategy ignore: never "
                       "taken, a subset of these behaviours)"),
        Transition(HANDOVER_TIMEOUT, HANDING_OVER, ABORTING, "clock",
                   guard=lambda s: s.thr == THR_HANDING,
                   effect=lambda s: {"thr": THR_LATE, **_abort_effect(s)},
                   doc="handover() times out (a slow pause()) or fails: abort; nothing was "
                       "handed over and its pause may land later"),
    ]
    return ts


# --- the destination --------------------------------------------------------------------------


def _destination_transitions() -> list[Transition]:
    ts = [
        Transition(RECV_LAYOUT, LISTENING, RECEIVING, "destination",
                   guard=lambda s: s.sd == LAYOUT,
                   effect=lambda s: {"sd": NO_MSG, "dvm": DVM_LOADED,
                                     **to_source(s, READY)},
                   doc="LAYOUT accepted: create the VM, answer READY"),
        Transition(RECV_DONE, RECEIVING, DST_PREPARED, "destination",
                   guard=lambda s: s.sd == DONE,
                   effect=lambda s: {"sd": NO_MSG, "mem_ok": s.done_clean,
                                     **to_source(s, PREPARED)},
                   doc="the last pages, the vCPU state and DONE: load them, answer PREPARED"),
        Transition(RECV_COMMIT, DST_PREPARED, DST_RUNNING, "destination",
                   guard=lambda s: s.sd == COMMIT,
                   effect=lambda s: {"sd": NO_MSG, "dvm": DVM_RUNNING, "ran": True,
                                     **to_source(s, RESUMED)},
                   doc="COMMIT: start the guest, answer RESUMED"),
        Transition(SEND_REPORT, DST_RUNNING, REPORTED, "destination",
                   guard=lambda s: s.ds == NO_MSG,
                   effect=lambda s: to_source(s, REPORT),
                   doc="after running a while: the REPORT (memory hash, counters)"),
        Transition(START_FAILS, DST_PREPARED, DISCARDED, "crash",
                   guard=lambda s: s.sd == COMMIT,
                   effect=lambda s: {"sd": NO_MSG, "dvm": DVM_DISCARDED, "ds_err": s.link},
                   doc="COMMIT, but the VM does not start: discard it, then say ERROR"),
    ]
    for st in (LISTENING, RECEIVING, DST_PREPARED):
        ts.append(Transition(
            REFUSE, st, DISCARDED, "crash",
            guard=(lambda s: s.sd == LAYOUT) if st == LISTENING else (lambda s: True),
            effect=lambda s: {"sd": NO_MSG, "sd_err": False,
                              "dvm": If(s.dvm == DVM_LOADED, DVM_DISCARDED, s.dvm),
                              "ds_err": s.link},
            doc="the destination refuses (a layout, memory or vCPU state it cannot take, "
                "its own cancel): discard the VM, then say ERROR"))
        ts.append(Transition(
            DISCARD, st, DISCARDED, "destination", guard=destination_sees_end,
            effect=lambda s: {"sd_err": False,
                              "dvm": If(s.dvm == DVM_LOADED, DVM_DISCARDED, s.dvm),
                              "ds_err": s.link},
            doc="ERROR or EOF before the guest started: discard the VM, then say ERROR"))
    for st in (LISTENING, RECEIVING, DST_PREPARED, DST_RUNNING, REPORTED):
        ts.append(Transition(
            DST_DIE, st, DEAD, "crash",
            guard=lambda s: Not(in_states(s.src, SOURCE_FINAL)),
            effect=lambda s: {"dvm": If(s.dvm == DVM_NONE, DVM_NONE, DVM_GONE)},
            doc="the destination process dies (its VM, running or not, with it)"))
    return ts


def declared_transitions() -> tuple[Transition, ...]:
    return (*_source_transitions(), *_environment_transitions(), *_destination_transitions())


MIGRATION_SCHEMA = Schema(
    name="migration",
    record=MigrationState,
    initial=INITIAL,
    machines=(
        MachineDecl("source", "src", SOURCE_STATES, SOURCE_FINAL),
        MachineDecl("destination", "dst", DESTINATION_STATES, DESTINATION_FINAL),
    ),
    actors={"source": "source", "throttler": "source", "guest": "source", "user": "source",
            "clock": "source", "network": "source", "operator": "source", "failure": "source",
            "destination": "destination", "crash": "destination"},
    fairness_groups=FAIRNESS_GROUPS,
    terminal=terminal,
    fault_triggers=FAULT_TRIGGERS,
    value_names={"sd": SD_NAMES, "ds": DS_NAMES, "vm": VM_NAMES, "dvm": DVM_NAMES,
                 "thr": THR_NAMES},
    abstracts="memory is one dirty flag (a pass sends it, DONE carries the final sync), one "
              "message is in flight each way, the throttler is its API contract (refined by the "
              "throttle spec: checked bounded, without failing vCPU calls), the source process "
              "does not die",
)
"""The migration's schema: the record, the source and destination machines (the
environment's steps are declared on the source machine), fairness, faults."""
