"""Each side of a migration driven by its machine of the migration spec (issue #16).

One job: the binding between the real source / destination and ``MIGRATION_SPEC``. A
:class:`SideLifecycle` is a model bound to ``MIGRATION_SPEC.machine("source")`` or
``machine("destination")`` holding a *local view* of the spec's record
(:class:`~autoconverge.spec.migration.MigrationState`):

- the side's own variables come from its real state, read at every step through the
  ``real`` callback the side passes in (source: ``thr`` - the throttler's contract state as
  the source tracks it -, ``vm`` - read from the VM only while no throttler call can be
  pausing it -, ``dlog``, ``committed``, ``may_run``); the rest of its own variables
  (``throttled``, ``verified``, the destination's ``dvm``, ``mem_ok``, ``ran``) follow the
  spec's effects;
- the other side and the network as the side has *observed* them: :meth:`SideLifecycle.fire`
  takes them as keywords (the source read READY: ``ds=READY``; its read failed on EOF or a
  broken or garbled connection: ``link=False``; it read an ERROR: ``ds_err=True``; the
  source acted on a cancel: ``cancel=True``). Observations persist (a broken link stays
  broken). A side never sees its own outgoing channel: it counts what it sent as read by the
  peer before it acts again (TCP buffers it, and the lock-step protocol has the peer read it
  before answering), so the outgoing message (``sd`` for the source, ``ds`` for the
  destination) is empty in its view.

:meth:`SideLifecycle.fire` calls the step's fault point (:func:`.fault_points.hit`, for the
steps :data:`.fault_points.INJECTION_STEPS` declares; a step whose I/O comes before its
transition - a receive, or a send whose transition is the frame having left - announces its
fault point with :meth:`SideLifecycle.before` instead, so every step hits once, before its
I/O), fires the trigger through the machine - the guard evaluated on the local view - and
records ``trigger@state`` in :attr:`SideLifecycle.trace`. A step the spec does not allow
(not declared from the current state, or its guard false) raises
:class:`MigrationSpecViolation` and changes nothing; after one, every later :meth:`fire`
raises too (the side is broken: it releases what it holds but takes no further step).
Environment steps a side cannot see - the guest's writes, the link breaking, the throttler
handing over, the other side's steps, the operator - are never fired here;
:mod:`autoconverge.model.migration_tracecheck` puts them back when it validates traces.

What the spec does not model, and how it is mapped here (each one is a spec gap, named where
it is mapped): a failure of the source itself before the commit point (a vCPU, VM, policy
or throttler error) aborts as a cancel does (:func:`source_observation`); a handover that
fails rather than times out is a ``handover_timeout`` (the throttler contract: nothing was
handed over); a failure of the destination itself before the guest started (no memory, a
layout or vCPU state it refuses, its own cancel) discards as on a broken link
(:func:`destination_observation`); garbage, a bad MAC or a stalled peer is a broken link.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from transitions import MachineError

from autoconverge.impl.throttler import SpecViolation
from autoconverge.spec import migration as M
from autoconverge.spec.core import Spec
from autoconverge.spec.expr import Value
from autoconverge.spec.specs import MIGRATION_SPEC

from . import fault_points
from .errors import (
    AuthenticationError,
    MigrationCancelled,
    PeerError,
    ProtocolError,
    TransportError,
)

Side = Literal["source", "destination"]

OUTGOING: dict[Side, str] = {"source": "sd", "destination": "ds"}
"""The channel each side writes and never sees: empty in its own view."""


class MigrationSpecViolation(SpecViolation):
    """A side of the migration attempted a step its machine of the migration spec does not
    allow (a bug, never silent)."""


class SideLifecycle:
    """One side's model bound to its machine of the migration spec (see the module doc)."""

    state: str
    """The machine's state (kept by ``transitions``)."""
    trigger: Callable[..., bool]
    """Fire a trigger by name (bound by the machine in ``add_model``)."""

    def __init__(self, side: Side, real: Callable[[], Mapping[str, Value]] | None = None,
                 spec: Spec = MIGRATION_SPEC) -> None:
        if side not in OUTGOING:
            raise ValueError(f"a migration side is 'source' or 'destination', not {side!r}")
        self.side: Side = side
        self._spec = spec
        self._var = spec.schema.machine(side).var
        self._real = real
        self._record: M.MigrationState = spec.initial
        self._updates: dict[str, Value] = {}
        self._announced: str | None = None
        self._attached = True
        self.trace: list[str] = []
        """Every fired step, ``trigger@state`` (the state it left), in order."""
        self.violation: MigrationSpecViolation | None = None
        """The first step the spec refused (None: none so far)."""
        spec.machine(side).add_model(self)

    # --- what the spec's callbacks need (SpecModel) ------------------------------------------
    def spec_view(self) -> M.MigrationState:
        """The local view: the record as this side knows it, its machine's state included."""
        return dataclasses.replace(self._record, **{self._var: self.state})

    def apply_updates(self, updates: Mapping[str, Value]) -> None:
        self._updates = dict(updates)

    # --- stepping -------------------------------------------------------------------------------
    @property
    def record(self) -> M.MigrationState:
        """The local view after the last step."""
        return self.spec_view()

    def before(self, trigger: str) -> None:
        """The step ``trigger`` is about to start its I/O (a read, or a send whose transition
        is the frame having left): its fault point now; the :meth:`fire` of that step that
        follows does not hit again."""
        self._hit(trigger)
        self._announced = trigger

    def fire(self, trigger: str, **observed: Value) -> None:
        """Take the step ``trigger`` with what this side has observed (record fields): its
        fault point (unless announced by :meth:`before`), then the machine's transition;
        anything the spec refuses raises :class:`MigrationSpecViolation`."""
        if self.violation is not None:
            raise MigrationSpecViolation(
                f"{self.side}: {trigger!r} not taken: an earlier step violated the spec "
                f"({self.violation})")
        if self._var in observed:
            raise ValueError(f"{self.side}: the machine's state {self._var!r} is not observed")
        announced, self._announced = self._announced, None
        if announced != trigger:
            self._hit(trigger)
        self._record = self._seen(observed)
        source = self.state
        self._updates = {}
        try:
            ok = self.trigger(trigger)
        except (MachineError, AttributeError) as exc:
            raise self._refuse(f"{self.side}: {trigger!r} is not allowed in state "
                               f"{source!r}") from exc
        if not ok:
            raise self._refuse(f"{self.side}: the guard of {trigger!r} in state {source!r} is "
                               f"false for the local view {self._describe()}")
        self._record = dataclasses.replace(self._record, **self._updates)
        self._updates = {}
        self.trace.append(f"{trigger}@{source}")

    def check(self, trigger: str, **observed: Value) -> None:
        """Raise :class:`MigrationSpecViolation` now if :meth:`fire` with these observations
        would be refused; nothing is taken, recorded or hit. For a step whose action must
        come before its transition (the destination starts the guest, then fires
        ``recv_commit``: a start that fails is ``start_fails`` instead)."""
        if self.violation is not None:
            raise MigrationSpecViolation(
                f"{self.side}: {trigger!r} not taken: an earlier step violated the spec "
                f"({self.violation})")
        view = dataclasses.replace(self._seen(observed), **{self._var: self.state})
        declared = [t for t in self._spec.relation() if t.machine == self.side
                    and t.trigger == trigger and t.source == self.state]
        if not declared:
            raise self._refuse(f"{self.side}: {trigger!r} is not allowed in state "
                               f"{self.state!r}")
        if not any(t.guard(view) for t in declared):
            raise self._refuse(f"{self.side}: the guard of {trigger!r} in state "
                               f"{self.state!r} is false for the local view "
                               f"{self._describe(view)}")

    def close(self) -> None:
        """Leave the shared machine (it would otherwise keep every model ever bound)."""
        if self._attached:
            self._attached = False
            self._spec.machine(self.side).remove_model(self)

    # --- helpers -------------------------------------------------------------------------------
    def _hit(self, trigger: str) -> None:
        if trigger in fault_points.INJECTION_STEPS[self.side]:
            fault_points.hit(self.side, trigger)

    def _refuse(self, text: str) -> MigrationSpecViolation:
        exc = MigrationSpecViolation(text)
        if self.violation is None:
            self.violation = exc
        return exc

    def _seen(self, observed: Mapping[str, Value]) -> M.MigrationState:
        """The record with the side's real state and these observations (its outgoing
        channel counted as read)."""
        if self._var in observed:
            raise ValueError(f"{self.side}: the machine's state {self._var!r} is not observed")
        own = dict(self._real()) if self._real is not None else {}
        return dataclasses.replace(self._record, **own, **observed,
                                   **{OUTGOING[self.side]: M.NO_MSG})

    def _describe(self, view: M.MigrationState | None = None) -> str:
        view = view if view is not None else self.spec_view()
        names = self._spec.schema.value_names
        parts = []
        for f in dataclasses.fields(view):
            v: Any = getattr(view, f.name)
            if f.name in names and isinstance(v, int) and not isinstance(v, bool):
                v = names[f.name].get(v, v)
            parts.append(f"{f.name}={v}")
        return "(" + ", ".join(parts) + ")"


# --- what a side observed, from how its run ended ---------------------------------------------

_LINK_DOWN: dict[str, Value] = {"link": False}


def _peer_broke(exc: BaseException | None) -> bool:
    """EOF, a broken or stalled connection, garbage or a bad MAC: the connection is over (a
    misbehaving peer is a broken link to the spec)."""
    return isinstance(exc, TransportError | ProtocolError | AuthenticationError)


def own_failure(exc: BaseException | None) -> bool:
    """The side failed itself: not the peer's doing (its ERROR, a broken or garbled
    connection) and not a cancel (MigrationCancelled, a timeout with strategy cancel, an
    interruption such as Ctrl-C, which the CLI turns into a cancel)."""
    if exc is None or isinstance(exc, PeerError | MigrationCancelled | KeyboardInterrupt):
        return False
    return not _peer_broke(exc)


def source_observation(exc: BaseException | None) -> dict[str, Value]:
    """What the source observed when ``exc`` ended its run before the commit point (None: it
    was interrupted): the destination's ERROR, the end of the connection, or a cancel. Its
    own failure is the spec's ``source_error`` step, taken before the abort
    (:func:`own_failure`)."""
    if isinstance(exc, PeerError):
        return {"ds": M.NO_MSG, "ds_err": True}
    if _peer_broke(exc):
        return dict(_LINK_DOWN)
    if own_failure(exc):
        return {}
    return {"cancel": True}  # MigrationCancelled (a timeout too) or an interruption


def destination_observation(exc: BaseException | None) -> dict[str, Value]:
    """What the destination observed when ``exc`` ended its run before the guest started: the
    source's ERROR, or the end of the connection. Its own failure (no memory or VM for the
    layout, a vCPU state it cannot load, its own cancel) is the spec's ``refuse`` step
    instead (:func:`destination_refuses`)."""
    if isinstance(exc, PeerError):
        return {"sd": M.NO_MSG, "sd_err": True}
    return {"sd": M.NO_MSG, **_LINK_DOWN}  # EOF, a broken link, garbage


def destination_refuses(exc: BaseException | None) -> bool:
    """The destination ended by its own decision or failure (cancel included), not the
    source's ERROR or the connection's end."""
    return exc is not None and not isinstance(exc, PeerError) and not _peer_broke(exc)


def refusal_observation(life: SideLifecycle) -> dict[str, Value]:
    """What the destination has read when it refuses: in ``listening`` the LAYOUT it
    refuses (it reads nothing else there)."""
    return {"sd": M.LAYOUT} if life.state == M.LISTENING else {}
