"""Measure how fast a running guest dirties memory (before migrating it).

``autoconverge demo`` and the sweep set the link relative to this rate, so that the ratio
dirty rate / bandwidth is what they claim on any host. What matters for convergence is how
many *distinct* pages become dirty in the time the switch-over may take: a guest rewriting a
small working set fast dirties no more than that working set per window. So the rate is
measured over windows as long as the downtime limit (dirty log fetched every
:data:`SYNC_S`, the pages of a window OR'ed together), and it is measured *under dirty
logging* (it costs the guest write-protect faults, so that is the rate a migration meets).
The fastest window counts: load from elsewhere only ever slows the guest down.

With this rate ``D`` and a link of ``B``: ``D / B <= 1`` means the guest's dirty pages of
one downtime-limit window fit in what the link sends in it (no throttling needed); above 1
they do not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from .pages import bitmap_to_bool
from .vmapi import MigratableVm

SYNC_S = 0.05
"""Dirty-log fetch interval."""
MIN_WINDOWS = 3


def measure_dirty_rate(vm: MigratableVm, seconds: float, window_s: float, *,
                       sleep: Callable[[float], None] = time.sleep,
                       now: Callable[[], float] = time.monotonic) -> float:
    """The guest's dirty rate in bytes/s: distinct pages dirtied in the fastest
    ``window_s`` window over ``seconds`` (at least :data:`MIN_WINDOWS` windows). Dirty
    logging is on only while measuring."""
    pages = vm.memory_size // vm.page_size
    seconds = max(seconds, MIN_WINDOWS * window_s)
    vm.start_dirty_log()
    try:
        vm.fetch_dirty_bitmap()  # from here on
        t0 = start = now()
        seen = np.zeros(pages, dtype=np.bool_)
        best = 0.0
        while True:
            sleep(SYNC_S)
            seen |= bitmap_to_bool(vm.fetch_dirty_bitmap(), pages)
            t = now()
            if t - start >= window_s - SYNC_S / 2:  # (a fetch's jitter does not add one)
                best = max(best, int(np.count_nonzero(seen)) * vm.page_size / (t - start))
                start = t
                seen[:] = False
            if t - t0 >= seconds:
                return best
    finally:
        vm.stop_dirty_log()


def min_measure_s(window_s: float) -> float:
    return MIN_WINDOWS * window_s
