"""Systematic schedule exploration on the virtual-time runtime (CHESS-style, bounded preemptions).

One job: run a test under every schedule of the
:class:`~autoconverge.impl.virtualtime.VirtualRuntime` that has at most a given number of
preemptions, depth-first over its choice points, and report the first failing schedule as
a replayable list of choices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .virtualtime import ReplayDivergence, SchedulerEvent, VirtualRuntime


@dataclass
class ScheduleExploration:
    """What :func:`explore_schedules` found."""

    schedules: int
    """Complete runs executed."""
    complete: bool
    """True if every schedule within the preemption bound was run (no failure, no cap hit)."""
    failure: BaseException | None = None
    failing_choices: list[int] | None = None
    """Replay with ``VirtualRuntime(replay=failing_choices)``."""
    failing_trace: list[SchedulerEvent] = field(default_factory=list)
    max_depth: int = 0
    """Most choice points seen in one run."""

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass
class _ChoicePoint:
    """One choice point of the search: the enabled threads, the order they are tried in,
    which of those choices preempt, the one being tried, the preemptions spent before it."""

    names: list[str]
    order: list[int]
    preemptive: list[bool]
    pos: int
    preemptions_before: int


def explore_schedules(
    make_and_run: Callable[[VirtualRuntime], object],
    *,
    preemption_bound: int = 2,
    max_schedules: int = 10_000,
) -> ScheduleExploration:
    """Run ``make_and_run(rt)`` under every schedule with at most ``preemption_bound``
    preemptions (depth-first over the choice points), stopping at the first failure.

    ``make_and_run`` builds its system on the fresh runtime, calls ``rt.run(...)`` and
    asserts; any exception counts as a failure. A *preemption* is choosing a thread other
    than the one that reached the choice point while that one is still enabled; switches
    where it blocked or exited (including choices after the clock advanced) are free. At
    each point the non-preemptive choice is tried first. The program must be deterministic
    given the choices (else ReplayDivergence).
    """
    stack: list[_ChoicePoint] = []
    schedules = 0
    max_depth = 0
    while schedules < max_schedules:
        depth = 0
        preemptions = 0
        holder: list[VirtualRuntime] = []

        def chooser(names: list[str], holder: list[VirtualRuntime] = holder) -> int:
            nonlocal depth, preemptions
            if depth < len(stack):
                node = stack[depth]
                if node.names != names:
                    raise ReplayDivergence(
                        f"choice point {depth}: enabled threads {names}, "
                        f"expected {node.names} (is the test deterministic?)"
                    )
            else:
                rt_ = holder[0]
                last = rt_.current_thread_name if rt_.last_can_continue else None
                default = names.index(last) if last in names else 0
                order = [default, *(i for i in range(len(names)) if i != default)]
                preemptive = [last in names and i != default for i in order]
                node = _ChoicePoint(names, order, preemptive, 0, preemptions)
                stack.append(node)
            depth += 1
            if node.preemptive[node.pos]:
                preemptions += 1
            return node.order[node.pos]

        rt = VirtualRuntime(chooser=chooser)
        holder.append(rt)
        failure: BaseException | None = None
        try:
            make_and_run(rt)
        except Exception as exc:
            failure = exc
        schedules += 1
        max_depth = max(max_depth, depth)
        if failure is not None:
            return ScheduleExploration(
                schedules, False, failure, list(rt.choices), list(rt.trace), max_depth
            )
        del stack[depth:]
        # backtrack to the deepest node with an untried alternative within the bound
        while stack:
            node = stack[-1]
            node.pos += 1
            while node.pos < len(node.order) and (
                node.preemptions_before + node.preemptive[node.pos] > preemption_bound
            ):
                node.pos += 1
            if node.pos < len(node.order):
                break
            stack.pop()
        if not stack:
            return ScheduleExploration(schedules, True, max_depth=max_depth)
    return ScheduleExploration(schedules, False, max_depth=max_depth)
