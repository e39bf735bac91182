"""The fd classes Kvm / Vm / Vcpu: capabilities, errors with errno and op, register access."""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from autoconverge.impl.kvm import abi, guest
from autoconverge.impl.kvm.bindings import Kvm, KvmError

pytestmark = pytest.mark.kvm


def test_api_version_and_the_capabilities_we_rely_on() -> None:
    with Kvm() as kvm:
        assert kvm.get_api_version() == abi.KVM_API_VERSION
        assert kvm.require_extension(abi.CAP_USER_MEMORY) > 0
        assert kvm.require_extension(abi.CAP_IMMEDIATE_EXIT) > 0
        assert kvm.max_vcpus() >= kvm.recommended_vcpus() >= 1
        assert kvm.get_vcpu_mmap_size() >= ctypes.sizeof(abi.KvmRun)


def test_a_missing_capability_is_reported_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(abi.CAP_NAMES, 0x7FFF_FFF0, "KVM_CAP_FROM_THE_FUTURE")
    with Kvm() as kvm:
        assert kvm.check_extension(0x7FFF_FFF0) == 0  # no such capability
        with pytest.raises(KvmError) as info:
            kvm.require_extension(0x7FFF_FFF0)
    assert info.value.errno == errno.EOPNOTSUPP
    assert "KVM_CAP_FROM_THE_FUTURE is not supported" in str(info.value)


def test_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KvmError) as info:
        Kvm(str(tmp_path / "kvm"))
    assert info.value.errno == errno.ENOENT
    assert "KVM is not available" in str(info.value)


def test_a_device_that_is_not_kvm_fails_the_api_version_ioctl() -> None:
    with pytest.raises(KvmError) as info:
        Kvm("/dev/null")
    assert info.value.op == "KVM_GET_API_VERSION"
    assert info.value.errno == errno.ENOTTY


def test_no_permission_is_a_clear_error(tmp_path: Path) -> None:
    device = tmp_path / "kvm"
    device.write_bytes(b"")
    device.chmod(0)
    code = (
        "import os, sys\n"
        "from autoconverge.impl.kvm.bindings import Kvm, KvmError\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534); os.setuid(65534)  # root can open anything: drop to nobody\n"
        "try:\n"
        f"    Kvm({str(device)!r})\n"
        "except KvmError as exc:\n"
        "    print(exc.errno, exc); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{errno.EACCES} ")
    assert "no read/write permission" in out.stdout


def test_ioctl_errors_carry_errno_and_the_ioctl_name() -> None:
    with Kvm() as kvm, kvm.create_vm() as vm:
        region = abi.KvmUserspaceMemoryRegion(slot=0, flags=0, guest_phys_addr=0,
                                              memory_size=4095, userspace_addr=0)
        with pytest.raises(KvmError) as info:
            vm.set_user_memory_region(region)  # size not page aligned
        assert info.value.errno == errno.EINVAL
        assert info.value.op == "KVM_SET_USER_MEMORY_REGION"
        with pytest.raises(TypeError, match="KvmUserspaceMemoryRegion"):
            vm.set_user_memory_region(cast(Any, abi.KvmRegs()))
    with pytest.raises(KvmError) as closed:
        kvm.check_extension(abi.CAP_USER_MEMORY)
    assert closed.value.errno == errno.EBADF


def test_registers_round_trip_through_the_vcpu() -> None:
    layout = guest.GuestLayout(1 << 20, 1)
    with Kvm() as kvm, kvm.create_vm() as vm:
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_sregs(guest.initial_sregs(layout))
            vcpu.set_regs(guest.initial_regs(layout, 0))
            regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            assert regs.rip == guest.CODE_ADDR and regs.rbx == layout.control(0)
            assert sregs.cs.selector == guest.USER_CS and sregs.cs.dpl == 3 and sregs.cs.l == 1
            assert sregs.efer & guest.EFER_LMA and sregs.cr3 == guest.PML4_ADDR
            assert vcpu.kvm_run.immediate_exit == 0
        finally:
            vcpu.close()
        assert vcpu.closed
        with pytest.raises(KvmError):
            vcpu.get_regs()


def test_fds_are_closed_with_the_objects() -> None:
    before = len(os.listdir("/proc/self/fd"))
    with Kvm() as kvm, kvm.create_vm() as vm:
        vm.create_vcpu(0).close()
    assert len(os.listdir("/proc/self/fd")) == before
