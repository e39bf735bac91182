"""Fault injection at named protocol steps of a migration (what ``autoconverge soak`` uses).

One job: at a named step of one side of a migration, do one planned fault. The source and the
destination call :func:`hit` just before each protocol step (:data:`INJECTION_STEPS`); without
a plan that call returns at once and does nothing. A plan (:class:`FaultPlan`) names a side,
a step, which occurrence of it (``send_pass`` and ``recv_pages`` happen many times) and an
action:

- ``sigkill`` (destination): the process SIGKILLs itself at the step (exact and replayable);
- ``reset`` (either side): the connection is closed with ``SO_LINGER`` 0, so the peer gets a
  TCP reset; this side's own later I/O on it fails (its descriptor is left pointing at
  /dev/null, so no descriptor number is freed under the socket object that owns it);
- ``cancel`` (source): ``MigrationSource.cancel()`` at the step;
- ``timeout`` (source): the source's migration timeout expires at the step (its
  ``MigrationConfig.timeout_s`` is lowered to practically zero; with strategy ``cancel``
  its next timeout check raises ``MigrationTimeout``);
- ``pause_failure`` / ``resume_failure`` (source): from the step on, the next ``pause()`` /
  ``resume()`` of the vCPUs the throttler drives raises :class:`~autoconverge.impl.vcpus.
  VcpuError` (once; the vCPUs are not touched by that call). The throttler must be given the
  VM through :class:`FaultyVcpus` for this.

How a plan gets in: the destination (a ``receive`` process) reads it from the environment
variable :data:`PLAN_ENV` (``side:step[#occurrence]:action``, e.g.
``destination:recv_done:sigkill``) at its first :func:`hit`, and writes one line to stderr when
the fault fires; the source's process installs it with :func:`install`, handing over the
:class:`~.source.MigrationSource` the actions work on. The state is per process (module
globals behind a lock): one plan, one fault, at most once.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import stat
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from autoconverge.impl.vcpus import VcpuError

Side = Literal["source", "destination"]
Action = Literal["sigkill", "reset", "cancel", "timeout", "pause_failure", "resume_failure"]

# These must equal the migration spec's trigger names, side by side (a test will assert it):
# each hit(side, step) is where the spec transition of that name is to fire. (Exception as
# of this writing: spec/migration.py has no ``recv_pages`` trigger - the destination's
# receiving state absorbs the PAGES frames - so that test must allow it, or the spec gain it.)
INJECTION_STEPS: Final[dict[Side, tuple[str, ...]]] = {
    "source": ("send_layout", "recv_ready", "send_pass", "start_handover",
               "handover_returned", "send_state", "recv_prepared", "send_commit",
               "recv_resumed", "recv_report"),
    "destination": ("recv_layout", "recv_pages", "recv_done", "recv_commit", "send_report"),
}
"""The protocol steps of each side, in protocol order. Source: ``send_layout``;
``recv_ready`` (then the dirty log and the throttler start); ``send_pass`` (before each
pre-copy pass); ``start_handover`` (the throttler's handover call); ``handover_returned``;
``send_state`` (final sync, vCPU state, DONE); ``recv_prepared``; ``send_commit``;
``recv_resumed``; ``recv_report``. Destination: ``recv_layout`` (VM created, READY sent);
``recv_pages`` (each PAGES frame); ``recv_done`` (vCPU state loaded, PREPARED sent);
``recv_commit`` (guest started, RESUMED sent); ``send_report``."""

ACTIONS: Final[dict[Action, tuple[Side, ...]]] = {
    "sigkill": ("destination",),
    "reset": ("source", "destination"),
    "cancel": ("source",),
    "timeout": ("source",),
    "pause_failure": ("source",),
    "resume_failure": ("source",),
}
"""Each action and the sides it can be planned on."""

PLAN_ENV: Final = "AUTOCONVERGE_FAULT_PLAN"
INJECTED_TIMEOUT_S: Final = 1e-6
"""What ``timeout`` lowers the source's migration timeout to."""


@dataclass(frozen=True)
class FaultPlan:
    """One fault: ``action`` at the ``occurrence``-th (1-based) ``hit(side, step)``."""

    side: Side
    step: str
    action: Action
    occurrence: int = 1

    def __post_init__(self) -> None:
        if self.side not in INJECTION_STEPS:
            raise ValueError(f"fault plan: unknown side {self.side!r}")
        if self.step not in INJECTION_STEPS[self.side]:
            raise ValueError(f"fault plan: {self.side} has no step {self.step!r} (steps: "
                             f"{', '.join(INJECTION_STEPS[self.side])})")
        if self.action not in ACTIONS:
            raise ValueError(f"fault plan: unknown action {self.action!r} (actions: "
                             f"{', '.join(ACTIONS)})")
        if self.side not in ACTIONS[self.action]:
            raise ValueError(f"fault plan: {self.action} cannot be planned on the {self.side}")
        if isinstance(self.occurrence, bool) or not isinstance(self.occurrence, int) \
                or self.occurrence < 1:
            raise ValueError(f"fault plan: occurrence must be >= 1, got {self.occurrence!r}")

    def encode(self) -> str:
        """``side:step#occurrence:action`` (what :data:`PLAN_ENV` holds)."""
        return f"{self.side}:{self.step}#{self.occurrence}:{self.action}"

    @classmethod
    def parse(cls, text: str) -> FaultPlan:
        parts = text.strip().split(":")
        if len(parts) != 3:
            raise ValueError(f"fault plan {text!r}: expected side:step[#occurrence]:action")
        side, step, action = parts
        occurrence = 1
        if "#" in step:
            step, _, n = step.partition("#")
            try:
                occurrence = int(n)
            except ValueError:
                raise ValueError(f"fault plan {text!r}: bad occurrence {n!r}") from None
        return cls(cast(Side, side), step, cast(Action, action), occurrence)


@dataclass(frozen=True)
class Fired:
    """What happened to the installed plan so far (:func:`state`)."""

    plan: FaultPlan | None
    hits: dict[str, int]
    """``side:step`` -> how often it was hit since the plan was installed."""
    reached: bool
    """The planned occurrence of the step was hit (the action was taken or armed)."""
    fired: bool
    """The fault took effect (for the vCPU failures: a pause()/resume() raised)."""


_lock = threading.Lock()
_plan: FaultPlan | None = None
_env_read = False
_source: Any = None
_log: Callable[[str], None] | None = None
_hits: Counter[str] = Counter()
_reached = False
_fired = False
_armed: str | None = None
"""``pause`` or ``resume``: the next such vCPU call raises."""


def install(plan: FaultPlan | None, *, source: Any = None,
            log: Callable[[str], None] | None = None) -> None:
    """Use ``plan`` in this process from now on (None: no fault); the hit counts restart.

    ``source`` is the :class:`~.source.MigrationSource` the source-side actions work on
    (cancel, timeout, reset); ``log`` is told each fault as it fires."""
    global _plan, _env_read, _source, _log, _reached, _fired, _armed
    with _lock:
        _plan, _env_read, _source, _log = plan, True, source, log
        _hits.clear()
        _reached = _fired = False
        _armed = None


def clear() -> None:
    """No plan, no source held (what a run leaves behind)."""
    install(None)


def state() -> Fired:
    with _lock:
        return Fired(_plan, dict(_hits), _reached, _fired)


def _stderr_log(text: str) -> None:
    print(f"autoconverge: fault injected: {text}", file=sys.stderr, flush=True)


def _read_env() -> None:
    """The first hit of a process without :func:`install`: the plan from the environment."""
    global _plan, _env_read, _log
    _env_read = True
    text = os.environ.get(PLAN_ENV)
    if text:
        _plan = FaultPlan.parse(text)  # a bad plan fails loudly, at the first step
        _log = _stderr_log


def hit(side: Side, step: str) -> None:
    """The protocol step ``step`` of ``side`` is about to happen: do the planned fault if
    this is its occurrence. Without a plan: nothing."""
    global _reached, _fired, _armed
    if _plan is None and _env_read:
        return
    with _lock:
        if not _env_read:
            _read_env()
        plan = _plan
        if plan is None:
            return
        if step not in INJECTION_STEPS.get(side, ()):
            raise ValueError(f"fault_points.hit: {side} has no step {step!r}")
        key = f"{side}:{step}"
        _hits[key] += 1  # every step of both sides is counted while a plan is installed
        if (plan.side, plan.step) != (side, step) or _hits[key] != plan.occurrence \
                or _reached:
            return
        _reached = True
        action, source, log = plan.action, _source, _log
        if action in ("pause_failure", "resume_failure"):
            _armed = "pause" if action == "pause_failure" else "resume"
        else:
            _fired = True
    if log is not None:
        log(plan.encode())
    if action == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "reset":
        _reset(source)
    elif action == "cancel":
        _need(source, action).cancel(f"soak: cancel injected at {side}:{step}")
    elif action == "timeout":
        src = _need(source, action)
        src.cfg = dataclasses.replace(src.cfg, timeout_s=INJECTED_TIMEOUT_S)


def _need(source: Any, action: str) -> Any:
    if source is None:
        raise RuntimeError(f"fault_points: {action} needs install(plan, source=...)")
    return source


def _reset(source: Any) -> None:
    """Reset this side's migration connection: the source's own socket, or (destination,
    no source installed) every connected TCP socket of this process - the receiver has
    exactly one once the source authenticated (a ``unix:`` connection is not found)."""
    if source is not None:
        fds = [source.channel.stream.sock.fileno()]
    else:
        fds = [fd for fd in _fds() if _connected_stream_socket(fd)]
    for fd in fds:
        if fd >= 0:
            _reset_fd(fd)


def _fds() -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir("/proc/self/fd"))
    except OSError:
        return []


def _connected_stream_socket(fd: int) -> bool:
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        if s.type != socket.SOCK_STREAM or s.family not in (socket.AF_INET,
                                                              socket.AF_INET6):
            return False
        s.getpeername()
        return True
    except OSError:
        return False
    finally:
        s.close()


def _reset_fd(fd: int) -> None:
    """Close the socket behind ``fd`` with SO_LINGER 0 (a TCP reset), leaving ``fd`` open on
    /dev/null: the owner's socket object keeps a valid number, its I/O fails (ENOTSOCK), and
    its close() closes /dev/null - no number is freed for reuse under it."""
    try:
        dup = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    finally:
        dup.close()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)  # the socket's last descriptor: closed now, with the reset
    finally:
        os.close(null)


def _vcpu_call(action: str) -> None:
    global _armed, _fired
    if _armed is None:
        return
    with _lock:
        if _armed != action:
            return
        _armed = None
        _fired = True
        plan = _plan
    raise VcpuError(f"soak: {action}() failure injected "
                    f"({plan.encode() if plan is not None else 'no plan'})")


class FaultyVcpus:
    """The VM as the throttler sees it: ``pause()``/``resume()`` raise once when a planned
    vCPU failure is armed (before touching the vCPUs); everything else is the VM's."""

    def __init__(self, vm: Any) -> None:
        self._vm = vm

    def pause(self) -> None:
        _vcpu_call("pause")
        self._vm.pause()

    def resume(self) -> None:
        _vcpu_call("resume")
        self._vm.resume()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._vm, name)
