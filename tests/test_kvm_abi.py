"""The KVM ABI module: ioctl numbers vs struct sizes, and vs the installed linux/kvm.h."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from autoconverge.impl.kvm import abi

KVM_H = Path("/usr/include/linux/kvm.h")

C_NAMES: dict[type[ctypes.Structure], str] = {
    abi.KvmUserspaceMemoryRegion: "kvm_userspace_memory_region",
    abi.KvmDirtyLog: "kvm_dirty_log",
    abi.KvmClearDirtyLog: "kvm_clear_dirty_log",
    abi.KvmEnableCap: "kvm_enable_cap",
    abi.KvmRegs: "kvm_regs",
    abi.KvmSregs: "kvm_sregs",
    abi.KvmSegment: "kvm_segment",
    abi.KvmDtable: "kvm_dtable",
    abi.KvmCpuid2: "kvm_cpuid2",
    abi.KvmCpuidEntry2: "kvm_cpuid_entry2",
    abi.KvmRun: "kvm_run",
}
"""Our structs and their C names; the union members of kvm_run are compared by offset."""

EXIT_MEMBERS = {
    # our kvm_run.exit union members -> fields checked against the C anonymous union
    "io": [f for f, *_ in abi.KvmRunIo._fields_],
    "mmio": [f for f, *_ in abi.KvmRunMmio._fields_],
    "fail_entry": [f for f, *_ in abi.KvmRunFailEntry._fields_],
    "internal": ["suberror", "ndata", "data"],
}


def test_every_ioctl_number_encodes_the_size_of_its_struct() -> None:
    abi.check_abi()
    for io in abi.IOCTLS:
        assert abi.ioc_type(io.number) == abi.KVMIO, io.name
        size = ctypes.sizeof(io.struct) if io.struct else 0
        assert abi.ioc_size(io.number) == size, io.name
        assert abi.ioc(io.direction, abi.ioc_nr(io.number), size) == io.number, io.name


def test_sizes_measured_on_these_machines() -> None:
    # the sizes in /work/shared/reference/facts.md (x86-64)
    assert ctypes.sizeof(abi.KvmRegs) == 144
    assert ctypes.sizeof(abi.KvmSregs) == 312
    assert ctypes.sizeof(abi.KvmRun) == 2352
    assert ctypes.sizeof(abi.KvmUserspaceMemoryRegion) == 32
    assert ctypes.sizeof(abi.KvmDirtyLog) == 16
    assert ctypes.sizeof(abi.KvmClearDirtyLog) == 24
    assert abi.KvmRun.immediate_exit.offset == 1
    assert abi.KvmRun.exit_reason.offset == 8
    assert abi.KVM_RUN.number == 0xAE80 and abi.KVM_ENABLE_CAP.number == 0x4068AEA3


def test_check_abi_reports_a_struct_that_does_not_match_its_number(
        monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = abi.Ioctl("KVM_GET_REGS", abi.KVM_GET_REGS.number, "vcpu", abi.IOC_READ,
                      abi.KvmSregs)
    monkeypatch.setattr(abi, "IOCTLS", (*abi.IOCTLS, wrong))
    with pytest.raises(abi.AbiMismatch, match=r"KVM_GET_REGS.*encodes size 144.*KvmSregs"):
        abi.check_abi()


def test_ioc_rejects_a_size_that_does_not_fit() -> None:
    with pytest.raises(ValueError, match="14 bits"):
        abi.ioc(abi.IOC_READ, 1, 1 << 14)


def _header_ioctls(text: str) -> dict[str, tuple[str, int, str | None]]:
    text = text.replace("\\\n", " ")
    pattern = re.compile(
        r"#define\s+(KVM_\w+)\s+_IO(WR|W|R)?\(\s*KVMIO\s*,\s*(0x[0-9a-fA-F]+)\s*"
        r"(?:,\s*struct\s+(\w+)\s*)?\)"
    )
    return {m[1]: (m[2] or "", int(m[3], 16), m[4]) for m in pattern.finditer(text)}


@pytest.mark.skipif(not KVM_H.exists(), reason=f"{KVM_H} is not installed")
def test_ioctls_are_declared_the_same_way_in_linux_kvm_h() -> None:
    declared = _header_ioctls(KVM_H.read_text())
    kinds = {"": abi.IOC_NONE, "W": abi.IOC_WRITE, "R": abi.IOC_READ,
             "WR": abi.IOC_READ | abi.IOC_WRITE}
    for io in abi.IOCTLS:
        assert io.name in declared, f"{io.name} not in {KVM_H}"
        kind, nr, struct_name = declared[io.name]
        assert kinds[kind] == io.direction, io.name
        assert nr == abi.ioc_nr(io.number), io.name
        assert struct_name == (C_NAMES[io.struct] if io.struct else None), io.name


def _c_program() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <linux/kvm.h>",
             "int main(void) {"]
    for struct, c_name in C_NAMES.items():
        lines.append(f'printf("size {c_name} %zu\\n", sizeof(struct {c_name}));')
        for field, *_ in struct._fields_:
            # kvm_run's exit union is anonymous in C; its first member is ``hw``
            c_field = "hw" if (struct is abi.KvmRun and field == "exit") else field
            lines.append(f'printf("offset {c_name}.{field} %zu\\n", '
                         f"offsetof(struct {c_name}, {c_field}));")
    for member, fields in EXIT_MEMBERS.items():
        for field in fields:
            lines.append(f'printf("offset kvm_run.{member}.{field} %zu\\n", '
                         f"offsetof(struct kvm_run, {member}.{field}));")
    for io in abi.IOCTLS:
        lines.append(f'printf("ioctl {io.name} %lu\\n", (unsigned long){io.name});')
    lines += ["return 0;", "}"]
    return "\n".join(lines)


@pytest.mark.skipif(not KVM_H.exists(), reason=f"{KVM_H} is not installed")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to read linux/kvm.h")
def test_layouts_and_numbers_match_the_compiled_header(tmp_path: Path) -> None:
    src = tmp_path / "layout.c"
    src.write_text(_c_program())
    exe = tmp_path / "layout"
    subprocess.run(["cc", "-o", str(exe), str(src)], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    facts = dict(line.rsplit(" ", 1) for line in out.splitlines())
    for struct, c_name in C_NAMES.items():
        assert int(facts[f"size {c_name}"]) == ctypes.sizeof(struct), c_name
        for field, *_ in struct._fields_:
            assert int(facts[f"offset {c_name}.{field}"]) == getattr(struct, field).offset, \
                f"{c_name}.{field}"
    exit_base = abi.KvmRun.exit.offset
    for member, fields in EXIT_MEMBERS.items():
        inner = {f[0]: f[1] for f in abi.KvmRunExit._fields_}[member]
        for field in fields:
            ours = exit_base + getattr(abi.KvmRunExit, member).offset + getattr(inner, field).offset
            assert int(facts[f"offset kvm_run.{member}.{field}"]) == ours, f"{member}.{field}"
    for io in abi.IOCTLS:
        assert int(facts[f"ioctl {io.name}"]) == io.number, io.name
