"""The KVM userspace ABI (x86-64) in one place: ioctl numbers, ctypes structs, constants.

Only what this package uses is declared. Ioctl numbers are written as the kernel's literal
values (``linux/kvm.h``: ``_IO/_IOR/_IOW/_IOWR(KVMIO, nr, type)``); :func:`check_abi` decodes
each one and checks that the direction, type byte and the size encoded in bits 16..29 match
the ctypes struct we pass, so a wrong field layout is caught at import time instead of
corrupting memory in an ioctl. ``tests/test_kvm_abi.py`` additionally compares every number,
size and field offset with the installed ``linux/kvm.h`` when a C compiler is present.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Final

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
u64 = ctypes.c_uint64

KVMIO: Final = 0xAE
KVM_API_VERSION: Final = 12

# _IOC encoding (asm-generic/ioctl.h): dir in bits 30..31, size 16..29, type 8..15, nr 0..7.
IOC_NONE: Final = 0
IOC_WRITE: Final = 1
IOC_READ: Final = 2
IOC_SIZEMASK: Final = (1 << 14) - 1


def ioc(direction: int, nr: int, size: int, type_: int = KVMIO) -> int:
    """``_IOC(dir, type, nr, size)``."""
    if not 0 <= size <= IOC_SIZEMASK:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


def ioc_dir(number: int) -> int:
    return (number >> 30) & 3


def ioc_size(number: int) -> int:
    return (number >> 16) & IOC_SIZEMASK


def ioc_type(number: int) -> int:
    return (number >> 8) & 0xFF


def ioc_nr(number: int) -> int:
    return number & 0xFF


# --------------------------------------------------------------------------------------------
# structs (field names as in the kernel headers)


class KvmUserspaceMemoryRegion(ctypes.Structure):
    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


class KvmDirtyLog(ctypes.Structure):
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class KvmClearDirtyLog(ctypes.Structure):
    _fields_ = [("slot", u32), ("num_pages", u32), ("first_page", u64), ("dirty_bitmap", u64)]


class KvmEnableCap(ctypes.Structure):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


REG_NAMES: Final = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags",
)


class KvmRegs(ctypes.Structure):
    _fields_ = [(name, u64) for name in REG_NAMES]


class KvmSegment(ctypes.Structure):
    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(ctypes.Structure):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


KVM_NR_INTERRUPTS: Final = 256
SEGMENT_NAMES: Final = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class KvmSregs(ctypes.Structure):
    _fields_ = [
        *[(name, KvmSegment) for name in SEGMENT_NAMES],
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmCpuidEntry2(ctypes.Structure):
    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


class KvmCpuid2(ctypes.Structure):
    """Header of ``struct kvm_cpuid2`` (the entries follow it; see :func:`cpuid2_buffer`)."""

    _fields_ = [("nent", u32), ("padding", u32)]


def cpuid2_buffer(nent: int) -> ctypes.Array[ctypes.c_char]:
    """A zeroed buffer holding a ``kvm_cpuid2`` header followed by ``nent`` entries."""
    buf = ctypes.create_string_buffer(
        ctypes.sizeof(KvmCpuid2) + nent * ctypes.sizeof(KvmCpuidEntry2)
    )
    KvmCpuid2.from_buffer(buf).nent = nent
    return buf


def cpuid2_entries(buf: ctypes.Array[ctypes.c_char]) -> ctypes.Array[KvmCpuidEntry2]:
    nent = KvmCpuid2.from_buffer(buf).nent
    entries: ctypes.Array[KvmCpuidEntry2] = (KvmCpuidEntry2 * nent).from_buffer(
        buf, ctypes.sizeof(KvmCpuid2))
    return entries


# kvm_run (the vCPU's shared page): the exit-reason union is 256 bytes; we name the members
# we read and keep the rest as padding.


class KvmRunIo(ctypes.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32),
                ("data_offset", u64)]


class KvmRunMmio(ctypes.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class KvmRunFailEntry(ctypes.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class KvmRunInternal(ctypes.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class KvmRunExit(ctypes.Union):
    _fields_ = [
        ("hardware_exit_reason", u64),
        ("fail_entry", KvmRunFailEntry),
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("internal", KvmRunInternal),
        ("padding", ctypes.c_char * 256),
    ]


KVM_SYNC_REGS_SIZE_BYTES: Final = 2048


class KvmRun(ctypes.Structure):
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("s", ctypes.c_char * KVM_SYNC_REGS_SIZE_BYTES),
    ]


# --------------------------------------------------------------------------------------------
# ioctls: literal kernel numbers plus what we pass, checked by check_abi()


@dataclass(frozen=True)
class Ioctl:
    """One ioctl: its number, the fd it is issued on, the struct passed (None: an int/none)."""

    name: str
    number: int
    fd: str  # "system", "vm" or "vcpu"
    direction: int
    struct: type[ctypes.Structure] | None = None


KVM_GET_API_VERSION: Final = Ioctl("KVM_GET_API_VERSION", 0xAE00, "system", IOC_NONE)
KVM_CREATE_VM: Final = Ioctl("KVM_CREATE_VM", 0xAE01, "system", IOC_NONE)
KVM_CHECK_EXTENSION: Final = Ioctl("KVM_CHECK_EXTENSION", 0xAE03, "system", IOC_NONE)
KVM_GET_VCPU_MMAP_SIZE: Final = Ioctl("KVM_GET_VCPU_MMAP_SIZE", 0xAE04, "system", IOC_NONE)
KVM_GET_SUPPORTED_CPUID: Final = Ioctl("KVM_GET_SUPPORTED_CPUID", 0xC008AE05, "system",
                                       IOC_READ | IOC_WRITE, KvmCpuid2)
KVM_CREATE_VCPU: Final = Ioctl("KVM_CREATE_VCPU", 0xAE41, "vm", IOC_NONE)
KVM_GET_DIRTY_LOG: Final = Ioctl("KVM_GET_DIRTY_LOG", 0x4010AE42, "vm", IOC_WRITE, KvmDirtyLog)
KVM_SET_USER_MEMORY_REGION: Final = Ioctl("KVM_SET_USER_MEMORY_REGION", 0x4020AE46, "vm",
                                          IOC_WRITE, KvmUserspaceMemoryRegion)
KVM_ENABLE_CAP: Final = Ioctl("KVM_ENABLE_CAP", 0x4068AEA3, "vm", IOC_WRITE, KvmEnableCap)
KVM_CLEAR_DIRTY_LOG: Final = Ioctl("KVM_CLEAR_DIRTY_LOG", 0xC018AEC0, "vm",
                                   IOC_READ | IOC_WRITE, KvmClearDirtyLog)
KVM_RUN: Final = Ioctl("KVM_RUN", 0xAE80, "vcpu", IOC_NONE)
KVM_GET_REGS: Final = Ioctl("KVM_GET_REGS", 0x8090AE81, "vcpu", IOC_READ, KvmRegs)
KVM_SET_REGS: Final = Ioctl("KVM_SET_REGS", 0x4090AE82, "vcpu", IOC_WRITE, KvmRegs)
KVM_GET_SREGS: Final = Ioctl("KVM_GET_SREGS", 0x8138AE83, "vcpu", IOC_READ, KvmSregs)
KVM_SET_SREGS: Final = Ioctl("KVM_SET_SREGS", 0x4138AE84, "vcpu", IOC_WRITE, KvmSregs)
KVM_SET_CPUID2: Final = Ioctl("KVM_SET_CPUID2", 0x4008AE90, "vcpu", IOC_WRITE, KvmCpuid2)

IOCTLS: Final[tuple[Ioctl, ...]] = (
    KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CHECK_EXTENSION, KVM_GET_VCPU_MMAP_SIZE,
    KVM_GET_SUPPORTED_CPUID, KVM_CREATE_VCPU, KVM_GET_DIRTY_LOG, KVM_SET_USER_MEMORY_REGION,
    KVM_ENABLE_CAP, KVM_CLEAR_DIRTY_LOG, KVM_RUN, KVM_GET_REGS, KVM_SET_REGS, KVM_GET_SREGS,
    KVM_SET_SREGS, KVM_SET_CPUID2,
)

KVM_RUN_SIZE: Final = 2352
"""``sizeof(struct kvm_run)`` on x86-64 (it is mmap'd, not passed to an ioctl)."""

EXPECTED_SIZES: Final[dict[str, int]] = {
    # sizes from the x86-64 headers, for the structs no ioctl number encodes
    "KvmRun": KVM_RUN_SIZE,
    "KvmSegment": 24,
    "KvmDtable": 16,
    "KvmCpuidEntry2": 40,
}

# --------------------------------------------------------------------------------------------
# constants

# capabilities (KVM_CHECK_EXTENSION)
CAP_USER_MEMORY: Final = 3
CAP_EXT_CPUID: Final = 7
CAP_NR_VCPUS: Final = 9
CAP_NR_MEMSLOTS: Final = 10
CAP_MAX_VCPUS: Final = 66
CAP_IMMEDIATE_EXIT: Final = 136
CAP_MANUAL_DIRTY_LOG_PROTECT2: Final = 168

CAP_NAMES: Final[dict[int, str]] = {
    CAP_USER_MEMORY: "KVM_CAP_USER_MEMORY",
    CAP_EXT_CPUID: "KVM_CAP_EXT_CPUID",
    CAP_NR_VCPUS: "KVM_CAP_NR_VCPUS",
    CAP_NR_MEMSLOTS: "KVM_CAP_NR_MEMSLOTS",
    CAP_MAX_VCPUS: "KVM_CAP_MAX_VCPUS",
    CAP_IMMEDIATE_EXIT: "KVM_CAP_IMMEDIATE_EXIT",
    CAP_MANUAL_DIRTY_LOG_PROTECT2: "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2",
}

# memory region flags / manual dirty-log protection
KVM_MEM_LOG_DIRTY_PAGES: Final = 1 << 0
KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: Final = 1 << 0
KVM_DIRTY_LOG_INITIALLY_SET: Final = 1 << 1

# exit reasons
EXIT_UNKNOWN: Final = 0
EXIT_EXCEPTION: Final = 1
EXIT_IO: Final = 2
EXIT_HLT: Final = 5
EXIT_MMIO: Final = 6
EXIT_SHUTDOWN: Final = 8
EXIT_FAIL_ENTRY: Final = 9
EXIT_INTR: Final = 10
EXIT_INTERNAL_ERROR: Final = 17

EXIT_NAMES: Final[dict[int, str]] = {
    EXIT_UNKNOWN: "KVM_EXIT_UNKNOWN",
    EXIT_EXCEPTION: "KVM_EXIT_EXCEPTION",
    EXIT_IO: "KVM_EXIT_IO",
    EXIT_HLT: "KVM_EXIT_HLT",
    EXIT_MMIO: "KVM_EXIT_MMIO",
    EXIT_SHUTDOWN: "KVM_EXIT_SHUTDOWN",
    EXIT_FAIL_ENTRY: "KVM_EXIT_FAIL_ENTRY",
    EXIT_INTR: "KVM_EXIT_INTR",
    EXIT_INTERNAL_ERROR: "KVM_EXIT_INTERNAL_ERROR",
}

KVM_EXIT_IO_IN: Final = 0
KVM_EXIT_IO_OUT: Final = 1


def exit_name(reason: int) -> str:
    return EXIT_NAMES.get(reason, f"exit reason {reason}")


class AbiMismatch(AssertionError):
    """A ctypes struct does not match the size/direction encoded in its ioctl number."""


def check_abi() -> None:
    """Check every ioctl number against the struct passed with it (raises AbiMismatch)."""
    problems: list[str] = []
    for io in IOCTLS:
        if ioc_type(io.number) != KVMIO:
            problems.append(f"{io.name}: type byte {ioc_type(io.number):#x} is not KVMIO")
        if ioc_dir(io.number) != io.direction:
            problems.append(f"{io.name}: direction {ioc_dir(io.number)} != {io.direction}")
        want = ctypes.sizeof(io.struct) if io.struct is not None else 0
        if ioc_size(io.number) != want:
            problems.append(
                f"{io.name}: number {io.number:#x} encodes size {ioc_size(io.number)}, "
                f"but {io.struct.__name__ if io.struct else 'no argument'} has size {want}"
            )
    for name, size in EXPECTED_SIZES.items():
        actual = ctypes.sizeof(globals()[name])
        if actual != size:
            problems.append(f"{name}: size {actual} != {size}")
    if problems:
        raise AbiMismatch("KVM ABI mismatch: " + "; ".join(problems))


check_abi()
