"""``ProcessTreeVcpus``: a Linux process and its descendants, throttled as if they were vCPUs.

A backend for the throttler (and the conformance kit) without KVM: ``pause()`` stops every
process of the tree, ``resume()`` continues them, both block until the kernel reports it
done (bounded: :class:`~autoconverge.impl.vcpus.VcpuTimeout`). Two mechanisms:

- ``"cgroup"``: the cgroup v2 freezer. The tree moves into a new child cgroup of the root
  process's own cgroup (so its resource limits still apply); ``pause()`` writes
  ``cgroup.freeze`` and waits for ``frozen 1`` in ``cgroup.events``, which is also
  ``is_paused()`` (frozen tasks show ``S`` in ``/proc/PID/stat``, so the freezer's own state
  is the truth). Processes forked later are frozen with the rest. :meth:`close` thaws, moves
  the processes back and removes the cgroup. Needs a writable cgroup v2 hierarchy.
- ``"signal"``: ``SIGSTOP`` / ``SIGCONT`` to every process of the tree (found through
  ``/proc/PID/task/*/children``, or a ``/proc`` scan where that file is missing);
  ``is_paused()`` reads each thread's state in ``/proc/PID/task/TID/stat`` (``T``/``t``:
  stopped). Visible to the process (a shell reports it stopped) and undone by anyone's
  ``SIGCONT``; a process stopped before ``pause()`` is continued by ``resume()``.

``"auto"`` (default) picks the cgroup freezer where it is usable, else signals.
``progress()`` is the tree's CPU time in clock ticks (``utime + stime`` of each process, and
``cutime + cstime``, the reaped children's, from ``/proc/PID/stat``): it grows while the
processes run (and want the CPU), not while they are stopped.

Never leaves a process stopped: :meth:`close` (also on leaving the ``with``) resumes; a
caller must arrange for it to run (the CLI resumes on SIGTERM/SIGHUP and Ctrl-C; a SIGKILL of
the caller leaves the tree stopped or frozen). The tree never includes the calling process,
and a root that is the caller or one of its ancestors is refused.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Literal, Self

from .vcpus import VcpuError, VcpuTimeout

Mechanism = Literal["auto", "cgroup", "signal"]
MECHANISMS: Final = ("auto", "cgroup", "signal")
PROC: Final = Path("/proc")
STOPPED: Final = frozenset("Tt")
"""/proc thread states of a stopped thread (job control, or ptrace stop)."""
DEAD: Final = frozenset("ZXx")
_POLL_S: Final = 0.0002
_POLL_MAX_S: Final = 0.002
_cgroup_names = itertools.count()


class ProcessGone(VcpuError):
    """The root process of the tree exited."""


def stat_fields(pid: int, tid: int | None = None) -> list[str]:
    """``/proc/PID/stat`` (or a thread's) after the command name: ``[state, ppid, ...]``."""
    path = PROC / str(pid) / ("stat" if tid is None else f"task/{tid}/stat")
    text = path.read_text()
    return text[text.rindex(")") + 2:].split()


def ancestors(pid: int) -> list[int]:
    """``pid`` and its ancestors up to (and including) pid 1."""
    out = [pid]
    while pid > 1:
        try:
            pid = int(stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
        if pid <= 0:
            break
        out.append(pid)
    return out


def _children(pid: int) -> list[int] | None:
    """The children of ``pid`` via /proc/PID/task/*/children; None if the kernel lacks it."""
    out: list[int] = []
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except FileNotFoundError:
        return []
    for tid in tids:
        try:
            out += [int(c) for c in (PROC / str(pid) / "task" / tid / "children").read_text()
                    .split()]
        except FileNotFoundError:
            if not (PROC / str(pid)).exists():
                return out
            return None  # CONFIG_PROC_CHILDREN is off
        except OSError:
            continue
    return out


def _scan_children() -> dict[int, list[int]]:
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir(PROC):
        if entry.isdigit():
            try:
                ppid = int(stat_fields(int(entry))[1])
            except (OSError, ValueError, IndexError):
                continue
            by_parent.setdefault(ppid, []).append(int(entry))
    return by_parent


def descendants(root: int, exclude: frozenset[int] = frozenset()) -> list[int]:
    """``root`` and every live descendant (breadth first), minus ``exclude`` and below."""
    out: list[int] = []
    todo = [root]
    scanned: dict[int, list[int]] | None = None
    while todo:
        pid = todo.pop(0)
        if pid in exclude or pid in out:
            continue
        out.append(pid)
        kids = _children(pid)
        if kids is None:
            scanned = scanned if scanned is not None else _scan_children()
            kids = scanned.get(pid, [])
        todo += kids
    return out


def thread_states(pid: int) -> list[str]:
    """The /proc state letter of every thread of ``pid`` ([] if it is gone)."""
    states = []
    try:
        tids = os.listdir(PROC / str(pid) / "task")
    except FileNotFoundError:
        return []
    for tid in tids:
        try:
            states.append(stat_fields(pid, int(tid))[0])
        except (OSError, IndexError):
            continue
    return states


def cgroup2_mount() -> tuple[Path, str] | None:
    """(mount point, root within the hierarchy) of the cgroup v2 mount, if any."""
    try:
        lines = (PROC / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        if right.split()[:1] == ["cgroup2"]:
            fields = left.split()
            return Path(fields[4]), fields[3]
    return None


def cgroup2_dir(pid: int) -> Path | None:
    """The cgroup v2 folder ``pid`` is in, if the hierarchy is mounted."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    point, root = mount
    try:
        lines = (PROC / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((ln[3:] for ln in lines if ln.startswith("0::")), None)
    if rel is None:
        return None
    if root != "/" and rel.startswith(root):
        rel = rel[len(root):]
    folder = point / rel.lstrip("/")
    return folder if folder.is_dir() else None


class ProcessTreeVcpus:
    """Throttle the process ``pid`` and its descendants (see the module docstring).

    ``mechanism``: ``"auto"``, ``"cgroup"`` or ``"signal"``; :attr:`mechanism` says which is
    in use. ``timeout_s`` bounds each pause/resume. ``owned``: a child process this object
    started and kills in :meth:`close`.
    """

    def __init__(self, pid: int, *, mechanism: Mechanism = "auto", timeout_s: float = 1.0,
                 owned: subprocess.Popen[bytes] | None = None) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ValueError(f"pid must be a positive int, got {pid!r}")
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {mechanism!r}")
        if not (PROC / str(pid)).is_dir():
            raise ProcessLookupError(f"no process {pid}")
        if pid in ancestors(os.getpid()):
            raise ValueError(f"process {pid} is this process or one of its ancestors: "
                             "stopping it would stop the caller")
        self.pid = pid
        self.timeout_s = float(timeout_s)
        self._owned = owned
        self._exclude = frozenset({os.getpid()})
        self._closed = False
        self._cgroup: Path | None = None
        self._home: Path | None = None
        self.mechanism: Literal["cgroup", "signal"] = "signal"
        os.kill(pid, 0)  # PermissionError if we may not signal it
        if mechanism in ("auto", "cgroup"):
            try:
                self._enter_cgroup()
                self.mechanism = "cgroup"
            except OSError as exc:
                if mechanism == "cgroup":
                    raise VcpuError(f"cgroup v2 freezer not usable for {pid}: {exc}") from exc

    # the Vcpus protocol --------------------------------------------------------------------
    def pause(self) -> None:
        """Stop every process of the tree; return once the kernel reports them stopped."""
        self._check_open()
        if self._cgroup is not None:
            (self._cgroup / "cgroup.freeze").write_text("1")
            self._wait(lambda: self._frozen() is True, "pause")
            return
        for _ in self._until("pause"):
            tree = self.tree()
            running = [p for p in tree if not self._stopped(p)]
            if not running and self.tree() == tree:
                return
            for p in running:
                self._signal(p, signal.SIGSTOP)

    def resume(self) -> None:
        """Continue every process of the tree; return once none is stopped."""
        self._check_open()
        if self._cgroup is not None:
            (self._cgroup / "cgroup.freeze").write_text("0")
            self._wait(lambda: self._frozen() is False, "resume")
            return
        for _ in self._until("resume"):
            stopped = [p for p in self.tree() if any(s in STOPPED for s in thread_states(p))]
            if not stopped:
                return
            for p in stopped:
                self._signal(p, signal.SIGCONT)

    def is_paused(self) -> bool:
        """The kernel's view: the cgroup is frozen / every thread of the tree is stopped."""
        self._check_alive()
        if self._cgroup is not None:
            return self._frozen() is True
        return all(self._stopped(p) for p in self.tree())

    def progress(self) -> int:
        """The tree's CPU time so far, in clock ticks (see the module docstring)."""
        self._check_alive()
        total = 0
        for p in self.tree():
            try:
                f = stat_fields(p)
            except (OSError, IndexError):
                continue
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        return total

    # lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Resume (never leave the tree stopped), leave the cgroup, kill an owned child."""
        if self._closed:
            return
        tree = self.tree() if self._owned is not None else []
        try:
            if self._alive():
                self.resume()
        finally:
            self._closed = True
            try:
                self._leave_cgroup()
            finally:
                if self._owned is not None:
                    for p in reversed(tree):  # the owned child's own children first
                        if p != self._owned.pid:
                            self._signal(p, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        self._owned.kill()
                    self._owned.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ProcessTreeVcpus pid {self.pid} via {self.mechanism}>"

    # internals -------------------------------------------------------------------------------
    def tree(self) -> list[int]:
        """The root and its live descendants now (never the calling process)."""
        return descendants(self.pid, self._exclude)

    @staticmethod
    def _stopped(pid: int) -> bool:
        states = thread_states(pid)
        return all(s in STOPPED or s in DEAD for s in states)

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    def _alive(self) -> bool:
        try:
            return stat_fields(self.pid)[0] not in DEAD
        except (OSError, IndexError):
            return False

    def _check_alive(self) -> None:
        if not self._alive():
            raise ProcessGone(f"process {self.pid} exited")

    def _check_open(self) -> None:
        if self._closed:
            raise VcpuError(f"{self!r} is closed")
        self._check_alive()

    def _until(self, action: str) -> Iterator[None]:
        """Yield until the caller returns; sleep a little between rounds; time out."""
        deadline = time.monotonic() + self.timeout_s
        delay = _POLL_S
        while True:
            yield
            if time.monotonic() > deadline:
                raise VcpuTimeout(f"pid {self.pid}", action, self.timeout_s)
            time.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)

    def _wait(self, done: Callable[[], bool], action: str) -> None:
        for _ in self._until(action):
            if done():
                return

    def _frozen(self) -> bool | None:
        assert self._cgroup is not None
        for line in (self._cgroup / "cgroup.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "frozen":
                return value.strip() == "1"
        return None

    def _enter_cgroup(self) -> None:
        home = cgroup2_dir(self.pid)
        if home is None:
            raise OSError(errno.ENOENT, "no cgroup v2 hierarchy for the process")
        if not os.access(home, os.W_OK):
            raise OSError(errno.EACCES, f"{home} is not writable")
        path = home / f"autoconverge-{self.pid}-{os.getpid()}-{next(_cgroup_names)}"
        path.mkdir()
        self._cgroup, self._home = path, home
        try:
            if not (path / "cgroup.freeze").exists():
                raise OSError(errno.ENOTSUP, "no cgroup.freeze (kernel older than 5.2)")
            for _ in range(10):  # until no process of the tree is left outside
                outside = [p for p in self.tree() if cgroup2_dir(p) != path]
                if not outside:
                    return
                for p in outside:
                    with contextlib.suppress(ProcessLookupError):
                        (path / "cgroup.procs").write_text(str(p))
            raise OSError(errno.EAGAIN, "the process tree kept changing")
        except BaseException:
            self._leave_cgroup()
            raise

    def _leave_cgroup(self) -> None:
        path, home = self._cgroup, self._home
        if path is None or home is None:
            return
        with contextlib.suppress(OSError):
            (path / "cgroup.freeze").write_text("0")
        for _ in range(100):
            try:
                pids = (path / "cgroup.procs").read_text().split()
            except OSError:
                break
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(OSError):
                    (home / "cgroup.procs").write_text(p)
        with contextlib.suppress(OSError):
            path.rmdir()
        self._cgroup = None


BUSY_LOOP: Final = (
    "import os\n"
    "parent = os.getppid()\n"
    "while os.getppid() == parent:\n"
    "    for _ in range(100_000):\n"
    "        pass\n"
)
"""A busy child that exits once orphaned (so a crashed test cannot leak a spinning process)."""


def spawn_busy(mechanism: Mechanism = "auto", children: int = 0) -> ProcessTreeVcpus:
    """A busy Python process (plus ``children`` busy children of its own), owned: closing the
    backend kills it. The conformance kit's factories below use it."""
    code = BUSY_LOOP
    if children:
        code = f"import os\nfor _ in range({children}):\n    if os.fork() == 0:\n" \
               "        break\n" + code
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)
    try:
        return ProcessTreeVcpus(child.pid, mechanism=mechanism, owned=child)
    except BaseException:
        child.kill()
        child.wait(5)
        raise


def busy_process() -> ProcessTreeVcpus:
    """A conformance-kit factory: a busy child process, cgroup freezer where usable."""
    return spawn_busy("auto")


def busy_process_signals() -> ProcessTreeVcpus:
    """A conformance-kit factory: a busy child process, SIGSTOP/SIGCONT."""
    return spawn_busy("signal")
