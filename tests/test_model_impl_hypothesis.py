"""The real throttler (fake vCPUs, virtual time) against the spec, driven by Hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from autoconverge.model.hypothesis_impl import ThrottlerVsSpec

pytestmark = [pytest.mark.covers("safety", "AbortCompletes", "ShutdownCompletes",
                                  "HandoverCompletes")]

TestThrottlerVsSpec = ThrottlerVsSpec.TestCase
TestThrottlerVsSpec.settings = settings(
    settings(),  # the active profile (ci in CI: derandomized, no database)
    stateful_step_count=40,
    suppress_health_check=[HealthCheck.too_slow],
)
