"""Pieces of ``bench-kvm`` that decide what its figures mean: the background load, the floor
the API latencies are compared with, and the transitions baseline of the worker step."""

from __future__ import annotations

import os

import pytest

from autoconverge.impl.kvm import bench


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_background_load_runs_a_busy_process_only_inside_the_block() -> None:
    with bench.background_load(True) as info:
        pid = info["pid"]
        assert _alive(pid)
    assert not _alive(pid)  # killed and reaped at the end
    assert info["busy_process_cpu_s"] is not None
    with bench.background_load(False) as info:
        assert info == {"enabled": False}


def test_background_load_is_killed_when_the_bench_fails() -> None:
    with pytest.raises(RuntimeError), bench.background_load(True) as info:
        raise RuntimeError("bench failed")
    assert not _alive(info["pid"])


def test_the_api_floor_is_the_same_vcpu_counts_kick_and_wake() -> None:
    rows = [{"vcpus": n, "floor_pause_us": {"p99": 10.0 * n},
             "floor_resume_us": {"p99": 5.0 * n}} for n in (1, 2)]
    floor = bench._floor_of(rows, 2)
    assert floor is not None
    assert floor["vcpus"] == 2 and floor["round_trip_p99_us"] == 30.0
    assert bench._floor_of(rows, 3) is None


def test_transitions_baseline_counts_its_samples() -> None:
    out = bench.bench_transitions_trigger(20)
    assert out["plain_trigger_us"]["samples"] == 40
    assert out["spec_machine_trigger_us"]["samples"] == 20
