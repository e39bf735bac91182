"""Hypothesis settings profiles shared by the whole test suite.

- ``ci``: loaded automatically when the ``CI`` environment variable is set: derandomized (the
  same examples every run, so a red CI replays locally with ``CI=1``), no example database,
  no deadline (CI machines are slow and noisy), failure blobs printed
  (``@reproduce_failure``);
- ``dev``: the default locally: random, with the local example database (failures are
  replayed first on the next run), no deadline;
- ``thorough``: long local runs (``HYPOTHESIS_PROFILE=thorough pytest ...``).

``HYPOTHESIS_PROFILE`` overrides the choice. ``tests/conftest.py`` calls
:func:`register_profiles` once.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILES = ("ci", "dev", "thorough")


def register_profiles(load: bool = True) -> str:
    """Register the profiles (idempotent) and, if ``load``, load the selected one."""
    settings.register_profile(
        "ci", derandomize=True, database=None, deadline=None, print_blob=True,
        max_examples=100, suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile("dev", deadline=None, print_blob=True, max_examples=100)
    settings.register_profile(
        "thorough", deadline=None, print_blob=True, max_examples=2_000,
        stateful_step_count=200, suppress_health_check=[HealthCheck.too_slow],
    )
    name = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    if name not in PROFILES:
        raise ValueError(f"HYPOTHESIS_PROFILE={name!r}: known profiles are {PROFILES}")
    if load:
        settings.load_profile(name)
    return name
