"""Shared test configuration: Hypothesis profiles, the KVM marker's skip rule."""

from __future__ import annotations

import os

import pytest

try:
    from autoconverge.model.hypothesis_profiles import register_profiles
except ImportError:  # pragma: no cover - model/ not installed yet
    register_profiles = None

if register_profiles is not None:
    register_profiles()


def _kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm is absent on this machine"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is present but not readable and writable by this user"
    return True, ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ok, why = _kvm_usable()
    if ok:
        return
    skip = pytest.mark.skip(reason=f"KVM test skipped: {why}")
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)
