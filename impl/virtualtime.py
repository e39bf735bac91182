"""A deterministic cooperative scheduler with a virtual clock, for unit tests.

:class:`VirtualRuntime` implements :class:`autoconverge.impl.runtime.Runtime`. Every managed
thread is a real Python thread, but only one of them runs at a time: a baton (one lock per
thread) is passed at each *scheduling point*, and the scheduler decides who gets it.

Scheduling points are all runtime operations: ``Channel.put/get/get_nowait/empty``,
``spawn``, ``Thread.join/is_alive``, ``now_ns`` and ``sleep_ns``. At each point the thread
announces what it waits for (nothing, an item on a channel, another thread's exit, a virtual
deadline) and the scheduler picks one *enabled* thread (in creation order) to continue: with
``random.Random(seed)`` by default, an explicit ``chooser(names) -> index``, or a ``replay``
list of earlier choices. Only real choices (two or more enabled threads) consult the chooser
and are recorded in :attr:`VirtualRuntime.choices`; ``VirtualRuntime(replay=rt.choices)``
repeats a run exactly (after the replay list is used up, choices fall back to the chooser or
the seeded generator).

Virtual time advances only when no thread is enabled: the clock then jumps to the earliest
pending deadline. So code runs infinitely fast, and a timeout never fires while some thread
could still act at the current instant. With no enabled thread and no deadline the run is a
deadlock: :class:`VirtualDeadlock` is raised from :meth:`VirtualRuntime.run`, listing every
thread and what it waits for. Bounds on steps (:class:`VirtualStepLimit`) and virtual time
(:class:`VirtualTimeLimit`) turn livelocks into errors, and a wall-clock watchdog
(:class:`VirtualStall`) catches a thread that blocks outside the runtime.

Guarantees:

- Same program, same seed (or replay list) -> same interleaving, same trace and same clock
  readings, as long as the program itself is deterministic between runtime operations.
- No real sleeping: waiting costs no wall-clock time beyond the baton hand-offs.
- :meth:`run` leaves no OS thread behind, whether it returns or raises: threads still alive
  at the end get :class:`ThreadKilled` (a ``BaseException``) raised at their scheduling
  point, and every later runtime operation in them raises it again until they exit.
- Semantics follow ``threading``: :meth:`run` returns once ``main`` *and* every other thread
  have exited (threads are non-daemon), unless ``kill_leftover=True``. An uncaught exception
  in any thread is re-raised by :meth:`run` (main's first, then in order of occurrence).

Limits:

- Only code that goes through the runtime is interleaved. Pure Python code between two
  runtime operations runs atomically; shared state touched without a runtime operation in
  between cannot race here even if it could race on real threads.
- A managed thread that blocks outside the runtime (a ``threading.Lock`` held by another
  managed thread, ``time.sleep``, I/O) stops the whole run: the watchdog reports
  :class:`VirtualStall` after ``stall_timeout_s`` wall-clock seconds (such a thread may leak).
- Timeouts have the lowest priority (infinitely fast CPU): races that need a computation to
  be slower than a timeout are not explored unless the code models its cost with
  ``sleep_ns``. When an item is available and the deadline has passed, ``get`` returns the
  item.

:func:`autoconverge.impl.schedules.explore_schedules` enumerates the choices systematically
(depth-first, bounded number of preemptions, as in CHESS) instead of sampling them.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, NamedTuple, TypeVar, cast

from .runtime import ChannelTimeout

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_STEPS = 500_000
DEFAULT_STALL_TIMEOUT_S = 10.0
_TRACE_TAIL = 12


class SchedulerEvent(NamedTuple):
    """One runtime operation as executed: virtual time, thread, what happened."""

    time_ns: int
    thread: str
    op: str


class VirtualRuntimeError(RuntimeError):
    """A run of the virtual runtime could not complete (see the subclasses)."""


class VirtualDeadlock(VirtualRuntimeError):
    """No thread can run and no timed wait is pending, but some thread has not exited."""


class VirtualStepLimit(VirtualRuntimeError):
    """The run took more scheduling steps than ``max_steps``."""


class VirtualTimeLimit(VirtualRuntimeError):
    """The virtual clock would pass ``max_virtual_ns``."""


class VirtualStall(VirtualRuntimeError):
    """A managed thread ran for ``stall_timeout_s`` wall-clock seconds without a runtime op."""


class ReplayDivergence(VirtualRuntimeError):
    """A replayed choice does not fit the choice point (the program is not deterministic)."""


class ThreadKilled(BaseException):
    """Raised inside a managed thread that the runtime terminates; do not swallow it."""


class VirtualThread:
    """A managed thread (implements :class:`autoconverge.impl.runtime.Thread`)."""

    __slots__ = (
        "_name",
        "_rt",
        "_target",
        "baton",
        "done",
        "error",
        "key",
        "killed",
        "os_thread",
        "result",
        "w_chan",
        "w_deadline",
        "w_op",
        "w_thread",
    )

    def __init__(
        self, rt: VirtualRuntime, key: str, name: str, target: Callable[[], object]
    ) -> None:
        self._rt = rt
        self._name = name
        self._target = target
        self.key = key
        """Unique name within the run (``name``, or ``name#2`` ... for repeated names)."""
        self.baton = threading.Lock()
        self.baton.acquire()
        self.done = False
        self.killed = False
        self.error: BaseException | None = None
        self.result: object = None
        self.os_thread: threading.Thread | None = None
        # what the thread waits for at its current scheduling point
        self.w_op = "start"
        self.w_chan: VirtualChannel[Any] | None = None
        self.w_thread: VirtualThread | None = None
        self.w_deadline: int | None = None

    @property
    def name(self) -> str:
        return self._name

    def join(self, timeout_ns: int | None = None) -> bool:
        return self._rt._join(self, timeout_ns)

    def is_alive(self) -> bool:
        return self._rt._is_alive(self)

    def __repr__(self) -> str:
        return f"<VirtualThread {self.key!r} done={self.done}>"


class VirtualChannel(Generic[T]):
    """Unbounded FIFO whose operations are scheduling points of its runtime."""

    __slots__ = ("_items", "_rt", "name")

    def __init__(self, rt: VirtualRuntime, name: str) -> None:
        self._rt = rt
        self.name = name
        self._items: deque[T] = deque()

    def put(self, item: T) -> None:
        rt = self._rt
        me = rt._me("put")
        if me is not None:
            rt._point(me, "put")
            if rt._tracing:
                rt._ev(me, "put " + self.name)
        self._items.append(item)

    def get(self, timeout_ns: int | None = None) -> T:
        rt = self._rt
        me = rt._me("get")
        if me is None:  # outside run(): nothing can arrive
            if self._items:
                return self._items.popleft()
            raise RuntimeError(f"get on empty {self.name} outside VirtualRuntime.run() would block")
        deadline = None if timeout_ns is None else rt._now + max(timeout_ns, 0)
        rt._point(me, "get", chan=self, deadline=deadline)
        if self._items:
            if rt._tracing:
                rt._ev(me, "get " + self.name)
            return self._items.popleft()
        if rt._tracing:
            rt._ev(me, "get " + self.name + " timeout")
        raise ChannelTimeout(f"nothing on {self.name} within {timeout_ns} ns")

    def get_nowait(self) -> T:
        rt = self._rt
        me = rt._me("get_nowait")
        if me is not None:
            rt._point(me, "get_nowait")
        if self._items:
            if rt._tracing and me is not None:
                rt._ev(me, "get_nowait " + self.name)
            return self._items.popleft()
        if rt._tracing and me is not None:
            rt._ev(me, "get_nowait " + self.name + " empty")
        raise ChannelTimeout(f"{self.name} is empty")

    def empty(self) -> bool:
        rt = self._rt
        me = rt._me("empty")
        if me is not None:
            rt._point(me, "empty")
            if rt._tracing:
                rt._ev(me, "empty " + self.name)
        return not self._items

    @property
    def queued(self) -> int:
        """Items waiting (not a scheduling point; for assertions after a run)."""
        return len(self._items)

    def __repr__(self) -> str:
        return f"<VirtualChannel {self.name} len={len(self._items)}>"


class VirtualRuntime:
    """Seeded cooperative scheduler with a virtual clock (see the module docstring).

    ``chooser(names) -> index`` is called at each choice point with the enabled threads'
    names (creation order); it must not call runtime operations (it may read
    :attr:`current_thread_name` and :attr:`last_can_continue`). ``replay`` is a list of
    indices as recorded in :attr:`choices`. ``trace=False`` skips recording :attr:`trace`
    (faster for long runs).
    """

    def __init__(
        self,
        seed: int = 0,
        chooser: Callable[[list[str]], int] | None = None,
        *,
        replay: Sequence[int] | None = None,
        start_ns: int = 0,
        trace: bool = True,
        stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
    ) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._chooser = chooser
        self._replay = list(replay) if replay is not None else []
        self._replay_pos = 0
        self._stall_timeout_s = stall_timeout_s
        self._tracing = trace
        self._now = start_ns
        self.choices: list[int] = []
        """Every choice made, as an index into the enabled threads (replayable)."""
        self.trace: list[SchedulerEvent] = []
        self.errors: list[tuple[str, BaseException]] = []
        """Uncaught exceptions of the last run, as (thread, exception)."""
        self.steps = 0
        """Scheduling points passed in the last run."""
        self.leaked: list[str] = []
        """Threads of the last run whose OS thread did not end (only after a VirtualStall)."""
        self._tls = threading.local()
        self._nchannels = 0
        self._running = False
        self._killing = False
        self._failure: VirtualRuntimeError | None = None
        self._live: list[VirtualThread] = []
        self._all: list[VirtualThread] = []
        self._names: dict[str, int] = {}
        self._current: VirtualThread | None = None
        self._main: VirtualThread | None = None
        self._driver = threading.Lock()
        self._max_steps = DEFAULT_MAX_STEPS
        self._time_limit: int | None = None
        self._fail_fast = False
        self._kill_leftover = False
        self._last_continues = True

    # the Runtime protocol ------------------------------------------------------------------
    def now_ns(self) -> int:
        me = self._me("now_ns")
        if me is not None:
            self._point(me, "now_ns")
            if self._tracing:
                self._ev(me, "now")
        return self._now

    def channel(self, name: str | None = None) -> VirtualChannel[T]:
        """A new channel (not a scheduling point); named ``ch0``, ``ch1``... by default."""
        if name is None:
            name = f"ch{self._nchannels}"
        self._nchannels += 1
        return VirtualChannel(self, name)

    def spawn(self, name: str, target: Callable[[], object]) -> VirtualThread:
        me = self._me_required("spawn")
        self._point(me, "spawn")
        t = self._new_thread(name, target)
        if self._tracing:
            self._ev(me, "spawn " + t.key)
        return t

    def sleep_ns(self, duration_ns: int) -> None:
        me = self._me_required("sleep_ns")
        self._point(me, "sleep", deadline=self._now + max(duration_ns, 0))
        if self._tracing:
            self._ev(me, f"slept {duration_ns}")

    # introspection ---------------------------------------------------------------------------
    @property
    def current_thread_name(self) -> str | None:
        """The thread holding the baton (at a choice point: the one that asks to switch)."""
        cur = self._current
        return cur.key if cur is not None else None

    @property
    def last_can_continue(self) -> bool:
        """At a choice point: whether :attr:`current_thread_name` could go on without the
        clock advancing (picking another thread is then a preemption)."""
        return self._last_continues

    @property
    def threads(self) -> list[VirtualThread]:
        """All threads of the current (or last) run, in creation order."""
        return list(self._all)

    # running -------------------------------------------------------------------------------
    def run(
        self,
        main: Callable[[], R],
        *,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_virtual_ns: int | None = None,
        fail_fast: bool = False,
        kill_leftover: bool = False,
    ) -> R:
        """Run ``main`` as managed thread "main" until every thread exits; return its result.

        Raises main's exception, else the first uncaught exception of another thread, else
        nothing; or a :class:`VirtualRuntimeError` (deadlock, step/time limit, stall) whose
        ``__cause__`` is the first uncaught thread exception if any. ``max_virtual_ns`` bounds
        the time advanced in this run. ``fail_fast`` ends the run at the first uncaught thread
        exception; ``kill_leftover`` ends it when main exits (other threads are killed).
        """
        if self._running:
            raise RuntimeError("VirtualRuntime.run() is already running (nested run?)")
        self._running = True
        self._killing = False
        self._failure = None
        self._live = []
        self._all = []
        self._names = {}
        self.errors = []
        self.leaked = []
        self.steps = 0
        self._max_steps = max_steps
        self._time_limit = None if max_virtual_ns is None else self._now + max_virtual_ns
        self._fail_fast = fail_fast
        self._kill_leftover = kill_leftover
        self._driver = threading.Lock()  # released once by the thread that ends the run
        self._driver.acquire()
        try:
            main_t = self._new_thread("main", main)
            self._main = main_t
            self._current = main_t
            main_t.baton.release()
            self._wait_driver()
        finally:
            self._terminate()
        return cast(R, self._outcome(main_t))

    def _wait_driver(self) -> None:
        seen = -1
        while not self._driver.acquire(timeout=self._stall_timeout_s):
            if self.steps == seen:
                cur = self._current
                self._fail(
                    VirtualStall(
                        f"thread {cur.key if cur else '?'!r} ran for more than "
                        f"{self._stall_timeout_s:g} s of wall-clock time without a runtime "
                        f"operation (blocked on a real lock, I/O or time.sleep, or looping?)"
                        f"{self._state_report()}"
                    )
                )
                return
            seen = self.steps

    def _terminate(self) -> None:
        """Kill every thread still alive, one at a time, and join all OS threads."""
        self._killing = True
        stalled = isinstance(self._failure, VirtualStall)
        for t in self._all:
            if t.done or t.os_thread is None:
                continue
            t.killed = True
            # parked at a scheduling point (or not started yet); a stalled thread that is
            # running has its baton unlocked already and dies at its next runtime op
            with contextlib.suppress(RuntimeError):
                t.baton.release()
            t.os_thread.join(timeout=1.0 if stalled else self._stall_timeout_s)
            if t.os_thread.is_alive():
                self.leaked.append(t.key)
        for t in self._all:
            if t.os_thread is not None and t.os_thread.is_alive() and t.key not in self.leaked:
                t.os_thread.join(timeout=1.0 if stalled else self._stall_timeout_s)
                if t.os_thread.is_alive():
                    self.leaked.append(t.key)
        self._live = []
        self._current = None
        self._running = False
        self._killing = False

    def _outcome(self, main_t: VirtualThread) -> object:
        errors = self.errors
        if self._failure is not None:
            failure = self._failure
            if self.leaked:
                failure.add_note(f"leaked OS threads: {', '.join(self.leaked)}")
            if errors:
                if failure.__cause__ is None:
                    failure.__cause__ = errors[0][1]
                for name, exc in errors:
                    failure.add_note(f"uncaught in thread {name!r}: {exc!r}")
            raise failure
        if main_t.error is not None:
            for name, exc in errors:
                if exc is not main_t.error:
                    main_t.error.add_note(f"also uncaught in thread {name!r}: {exc!r}")
            raise main_t.error
        if errors:
            first_name, first = errors[0]
            first.add_note(f"uncaught in virtual thread {first_name!r}")
            for name, exc in errors[1:]:
                first.add_note(f"also uncaught in thread {name!r}: {exc!r}")
            raise first
        return main_t.result

    # internals -----------------------------------------------------------------------------
    def _me(self, op: str) -> VirtualThread | None:
        me: VirtualThread | None = getattr(self._tls, "thread", None)
        if me is None and self._running:
            raise RuntimeError(
                f"{op}: called from a thread that this VirtualRuntime does not manage "
                f"while run() is active"
            )
        return me

    def _me_required(self, op: str) -> VirtualThread:
        me = self._me(op)
        if me is None:
            raise RuntimeError(f"{op} must be called inside VirtualRuntime.run()")
        return me

    def _ev(self, me: VirtualThread, op: str) -> None:
        self.trace.append(SchedulerEvent(self._now, me.key, op))

    def _new_thread(self, name: str, target: Callable[[], object]) -> VirtualThread:
        n = self._names.get(name, 0) + 1
        self._names[name] = n
        key = name if n == 1 else f"{name}#{n}"
        t = VirtualThread(self, key, name, target)
        os_t = threading.Thread(target=self._body, args=(t,), name=f"virtual:{key}", daemon=True)
        t.os_thread = os_t
        self._all.append(t)
        self._live.append(t)
        os_t.start()  # it parks on its baton at once
        return t

    def _body(self, t: VirtualThread) -> None:
        self._tls.thread = t
        t.baton.acquire()
        if not (t.killed or self._killing):
            try:
                t.result = t._target()
            except ThreadKilled:
                pass
            except BaseException as exc:
                if not (t.killed or self._killing):
                    t.error = exc
                    self.errors.append((t.key, exc))
        t.done = True
        if t.killed or self._killing:
            return  # the driver joins this OS thread
        try:
            self._live.remove(t)
            if self._tracing:
                self._ev(t, "exit" if t.error is None else f"exit with {t.error!r}")
            if (t.error is not None and self._fail_fast) or (
                t is self._main and self._kill_leftover
            ):
                nxt = None
            else:
                nxt = self._choose(t)
        except BaseException as exc:  # an internal error: end the run, never hang
            self._fail_with(exc)
            nxt = None
        if nxt is None:
            self._current = None
            self._driver.release()
            return
        self._current = nxt
        nxt.baton.release()

    def _point(
        self,
        me: VirtualThread,
        op: str,
        *,
        chan: VirtualChannel[Any] | None = None,
        thread: VirtualThread | None = None,
        deadline: int | None = None,
    ) -> None:
        """A scheduling point of ``me`` (which holds the baton)."""
        if me.killed or self._killing:
            raise ThreadKilled
        self.steps += 1
        me.w_op = op
        me.w_chan = chan
        me.w_thread = thread
        me.w_deadline = deadline
        if self.steps > self._max_steps:
            self._fail(
                VirtualStepLimit(
                    f"more than {self._max_steps} scheduling steps (livelock?)"
                    + self._state_report()
                )
            )
            nxt = None
        else:
            try:
                nxt = self._choose(me)
            except BaseException as exc:
                self._fail_with(exc)
                nxt = None
        if nxt is not me:
            if nxt is None:  # the run is over: wait to be killed
                self._driver.release()
            else:
                self._current = nxt
                nxt.baton.release()
            me.baton.acquire()
            if me.killed or self._killing:
                raise ThreadKilled
        me.w_op = "running"
        me.w_chan = None
        me.w_thread = None
        me.w_deadline = None

    def _choose(self, last: VirtualThread) -> VirtualThread | None:
        """The next thread to run, advancing the clock if needed; None: finished or failed."""
        live = self._live
        self._last_continues = True
        while True:
            now = self._now
            enabled: list[VirtualThread] = []
            for t in live:
                d = t.w_deadline
                if d is not None and d <= now:
                    enabled.append(t)
                elif t.w_chan is not None:
                    if t.w_chan._items:
                        enabled.append(t)
                elif t.w_thread is not None:
                    if t.w_thread.done:
                        enabled.append(t)
                elif d is None:
                    enabled.append(t)
            if enabled:
                break
            if not live:
                return None  # every thread has exited
            deadlines = [t.w_deadline for t in live if t.w_deadline is not None]
            if not deadlines:
                self._fail(
                    VirtualDeadlock(
                        f"deadlock at t={now} ns: no thread can run and no timed wait is pending"
                        f"{self._state_report()}"
                    )
                )
                return None
            nxt_time = min(deadlines)
            if self._time_limit is not None and nxt_time > self._time_limit:
                self._fail(
                    VirtualTimeLimit(
                        f"virtual clock would pass the limit t={self._time_limit} ns "
                        f"(next deadline t={nxt_time} ns){self._state_report()}"
                    )
                )
                return None
            self._now = nxt_time
            self._last_continues = False  # it blocked: waking it is a new, free decision
            if self._tracing:
                self.trace.append(SchedulerEvent(nxt_time, "<clock>", f"+{nxt_time - now} ns"))
        if len(enabled) == 1:
            return enabled[0]
        idx = self._decide([t.key for t in enabled])
        if idx is None:
            return None
        return enabled[idx]

    def _decide(self, names: list[str]) -> int | None:
        n = len(names)
        if self._replay_pos < len(self._replay):
            idx = self._replay[self._replay_pos]
            self._replay_pos += 1
            if not 0 <= idx < n:
                self._fail(
                    ReplayDivergence(
                        f"replayed choice #{self._replay_pos - 1} = {idx} does not fit the "
                        f"{n} enabled threads {names}"
                    )
                )
                return None
        elif self._chooser is not None:
            idx = self._chooser(names)
            if not 0 <= idx < n:
                raise ValueError(f"chooser returned {idx} for {n} threads {names}")
        else:
            idx = self._rng.randrange(n)
        self.choices.append(idx)
        return idx

    def _fail(self, err: VirtualRuntimeError) -> None:
        if self._failure is None:
            self._failure = err

    def _fail_with(self, exc: BaseException) -> None:
        """The scheduler itself (or the chooser) raised: end the run with that error."""
        if isinstance(exc, VirtualRuntimeError):
            self._fail(exc)
            return
        err = VirtualRuntimeError(f"scheduler or chooser failed: {exc!r}")
        err.__cause__ = exc
        self._fail(err)

    def _describe(self, t: VirtualThread) -> str:
        op = t.w_op
        if t.w_chan is not None:
            what = f"get({t.w_chan.name}) [empty]"
        elif t.w_thread is not None:
            what = f"join({t.w_thread.key})"
        elif op == "sleep":
            what = "sleep"
        elif op == "start":
            what = "not started"
        else:
            what = f"{op} (runnable)"
        if t.w_deadline is not None:
            what += f" until t={t.w_deadline} ns"
        elif t.w_chan is not None or t.w_thread is not None:
            what += " forever"
        return what

    def _state_report(self) -> str:
        lines = [f"\n  clock t={self._now} ns, {self.steps} steps; threads:"]
        for t in self._all:
            if t.done:
                state = "exited" if t.error is None else f"exited with {t.error!r}"
            else:
                state = self._describe(t)
            lines.append(f"    {t.key}: {state}")
        if self.trace:
            lines.append(f"  last {min(len(self.trace), _TRACE_TAIL)} events:")
            lines.extend(
                f"    t={ev.time_ns} {ev.thread}: {ev.op}" for ev in self.trace[-_TRACE_TAIL:]
            )
        return "\n".join(lines)

    def _join(self, t: VirtualThread, timeout_ns: int | None) -> bool:
        me = self._me("join")
        if me is None:
            if t.done:
                return True
            raise RuntimeError(f"join({t.key}) outside VirtualRuntime.run() would block")
        if t is me:
            raise RuntimeError(f"thread {t.key!r} cannot join itself")
        deadline = None if timeout_ns is None else self._now + max(timeout_ns, 0)
        self._point(me, "join", thread=t, deadline=deadline)
        if self._tracing:
            self._ev(me, f"join {t.key} " + ("done" if t.done else "timeout"))
        return t.done

    def _is_alive(self, t: VirtualThread) -> bool:
        me = self._me("is_alive")
        if me is not None:
            self._point(me, "is_alive")
            if self._tracing:
                self._ev(me, f"is_alive {t.key}")
        return not t.done
