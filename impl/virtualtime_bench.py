"""Benchmark of the virtual-time runtime: scheduling steps per wall-clock second.

One job: measure :class:`~autoconverge.impl.virtualtime.VirtualRuntime` on the throttler's
pattern (a worker looping on ``get(timeout)``, a controller doing put + get).
"""

from __future__ import annotations

import time

from .runtime import ChannelTimeout
from .virtualtime import VirtualChannel, VirtualRuntime


def bench(cycles: int = 2_000, seed: int = 0) -> dict[str, float]:
    """Steps/s of the throttler's pattern: a worker looping on ``get(timeout)`` and a
    controller doing put + get on a response channel."""
    rt = VirtualRuntime(seed, trace=False)

    def main() -> int:
        cmds: VirtualChannel[int] = rt.channel()
        resp: VirtualChannel[int] = rt.channel()

        def worker() -> None:
            deadline = rt.now_ns() + 1_000_000
            while True:
                try:
                    cmd = cmds.get(max(deadline - rt.now_ns(), 0))
                except ChannelTimeout:
                    deadline += 1_000_000
                    rt.sleep_ns(10_000)  # a modelled pause()/resume() cost
                    continue
                resp.put(cmd)
                if cmd < 0:
                    return

        w = rt.spawn("worker", worker)
        total = 0
        for i in range(cycles):
            cmds.put(i)
            total += resp.get(10_000_000)
            rt.sleep_ns(3_000_000)
        cmds.put(-1)
        resp.get()
        w.join()
        return total

    t0 = time.perf_counter()
    rt.run(main, max_steps=10**8)
    wall = time.perf_counter() - t0
    return {
        "steps": rt.steps,
        "choices": len(rt.choices),
        "wall_s": round(wall, 3),
        "steps_per_s": round(rt.steps / wall),
        "virtual_s": rt.now_ns() / 1e9,
        "virtual_per_wall": round(rt.now_ns() / 1e9 / wall, 1),
    }
