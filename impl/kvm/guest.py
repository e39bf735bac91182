"""The guest: a memory layout, 64-bit user-mode CPU state and a work loop, all built in Python.

The host's ``/dev/kvm`` emulates guest ring 0 (slow) but runs guest ring 3 natively, so the
guest starts directly in 64-bit user mode: long mode on (EFER.LME/LMA, CR0.PG, CR4.PAE),
identity-mapped 2 MiB pages with the user bit at every level, a GDT with Linux-style user
selectors (CS 0x2b with L=1, SS/DS 0x23), no IDT (the loop never faults; a fault would end
as KVM_EXIT_SHUTDOWN). Accessed/dirty bits are preset in the tables and descriptors so the
CPU never writes to them. The guest talks to the host by MMIO (a write to the mapped but
memory-less 2 MiB page right after RAM gives KVM_EXIT_MMIO): port I/O from ring 3 faults on
this host even with IOPL 3.

Each vCPU runs the same loop (:func:`work_loop`) with ``rbx`` pointing at its own control
block (one page per vCPU, so counters never share a cache line)::

    top:   rcx = block.write_interval (at least 1)
    inner: block.counter += 1; if --rcx: goto inner     ; progress
           if block.doorbell: byte [block.mmio] = doorbell; block.doorbell = 0
           if block.ws_pages == 0: goto top             ; idle
           r12 = r12 < ws_pages ? r12 : 0
           byte [block.ws_base + r12 * 4096] = low byte of counter; r12 += 1
           block.pages_written += 1; goto top

All state lives in registers (rbx, rcx, rdx, r12, rip, rflags) and guest memory, so the guest
survives pause/resume and migration (copy memory + regs + sregs). The host changes the
workload at run time by writing the control block; the guest re-reads it every outer loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from . import abi

PAGE_SIZE: Final = 4096
PAGE_SHIFT: Final = 12
HUGE_PAGE: Final = 2 << 20
GIB: Final = 1 << 30

# fixed physical (= virtual) layout of the first pages
GDT_ADDR: Final = 0x1000
TSS_ADDR: Final = 0x2000
PML4_ADDR: Final = 0x3000
PDPT_ADDR: Final = 0x4000
PD_ADDR: Final = 0x5000
MAX_MEMORY_GIB: Final = 64
"""The layout reserves one page directory per GiB for up to this many GiB (+1 for MMIO)."""
CODE_ADDR: Final = PD_ADDR + (MAX_MEMORY_GIB + 1) * PAGE_SIZE
CONTROL_ADDR: Final = CODE_ADDR + PAGE_SIZE

# selectors / GDT indices (Linux-like): 1 kernel code, 2 kernel data, 4 user data, 5 user code
USER_DS: Final = 0x23
USER_CS: Final = 0x2B
TSS_SEL: Final = 0x30

# control block fields (byte offsets within a vCPU's control page)
COUNTER: Final = 0x00
WRITE_INTERVAL: Final = 0x08
WS_BASE: Final = 0x10
WS_PAGES: Final = 0x18
DOORBELL: Final = 0x20
PAGES_WRITTEN: Final = 0x28
MMIO: Final = 0x30
"""Guest physical address the loop writes its doorbell value to (a KVM_EXIT_MMIO)."""

# control registers
CR0_PE: Final = 1 << 0
CR0_MP: Final = 1 << 1
CR0_ET: Final = 1 << 4
CR0_NE: Final = 1 << 5
CR0_WP: Final = 1 << 16
CR0_PG: Final = 1 << 31
CR4_PAE: Final = 1 << 5
EFER_LME: Final = 1 << 8
EFER_LMA: Final = 1 << 10
RFLAGS_RESERVED: Final = 1 << 1

# page-table entry bits
PTE_P: Final = 1 << 0
PTE_RW: Final = 1 << 1
PTE_US: Final = 1 << 2
PTE_A: Final = 1 << 5
PTE_D: Final = 1 << 6
PTE_PS: Final = 1 << 7


# --------------------------------------------------------------------------------------------
# the work loop, assembled by hand (x86-64 encodings noted per instruction)


class _Asm:
    """Just enough of an assembler: raw bytes, labels and rel8 jumps."""

    def __init__(self) -> None:
        self.code = bytearray()
        self.labels: dict[str, int] = {}
        self.fixups: list[tuple[int, str]] = []

    def emit(self, *parts: bytes | int) -> None:
        for part in parts:
            self.code += bytes([part]) if isinstance(part, int) else part

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def jcc8(self, opcode: int, target: str) -> None:
        self.emit(opcode, 0)
        self.fixups.append((len(self.code) - 1, target))

    def assemble(self) -> bytes:
        for at, target in self.fixups:
            rel = self.labels[target] - (at + 1)
            if not -128 <= rel <= 127:
                raise ValueError(f"jump to {target} out of rel8 range")
            self.code[at] = rel & 0xFF
        return bytes(self.code)


JNZ: Final = 0x75
JZ: Final = 0x74
JB: Final = 0x72
JMP: Final = 0xEB


def work_loop() -> bytes:
    """The guest's machine code (position independent; see the module docstring)."""
    a = _Asm()
    a.label("top")
    a.emit(b"\x48\x8b\x4b", WRITE_INTERVAL)           # mov rcx, [rbx+WRITE_INTERVAL]
    a.emit(b"\x48\x85\xc9")                           # test rcx, rcx
    a.jcc8(JNZ, "inner")
    a.emit(b"\xb9", struct.pack("<I", 1))             # mov ecx, 1
    a.label("inner")
    a.emit(b"\x48\xff\x03")                           # inc qword [rbx+COUNTER]   (COUNTER=0)
    a.emit(b"\x48\xff\xc9")                           # dec rcx
    a.jcc8(JNZ, "inner")
    a.emit(b"\x48\x8b\x43", DOORBELL)                 # mov rax, [rbx+DOORBELL]
    a.emit(b"\x48\x85\xc0")                           # test rax, rax
    a.jcc8(JZ, "no_bell")
    a.emit(b"\x48\x8b\x53", MMIO)                     # mov rdx, [rbx+MMIO]
    a.emit(b"\x88\x02")                               # mov [rdx], al  (KVM_EXIT_MMIO)
    a.emit(b"\x48\xc7\x43", DOORBELL, b"\0\0\0\0")    # mov qword [rbx+DOORBELL], 0
    a.label("no_bell")
    a.emit(b"\x48\x8b\x43", WS_PAGES)                 # mov rax, [rbx+WS_PAGES]
    a.emit(b"\x48\x85\xc0")                           # test rax, rax
    a.jcc8(JZ, "top")
    a.emit(b"\x49\x39\xc4")                           # cmp r12, rax
    a.jcc8(JB, "in_range")
    a.emit(b"\x45\x31\xe4")                           # xor r12d, r12d
    a.label("in_range")
    a.emit(b"\x4c\x89\xe2")                           # mov rdx, r12
    a.emit(b"\x48\xc1\xe2", PAGE_SHIFT)               # shl rdx, 12
    a.emit(b"\x48\x03\x53", WS_BASE)                  # add rdx, [rbx+WS_BASE]
    a.emit(b"\x8a\x03")                               # mov al, [rbx+COUNTER]
    a.emit(b"\x88\x02")                               # mov [rdx], al
    a.emit(b"\x48\xff\x43", PAGES_WRITTEN)            # inc qword [rbx+PAGES_WRITTEN]
    a.emit(b"\x49\xff\xc4")                           # inc r12
    a.jcc8(JMP, "top")
    return a.assemble()


# --------------------------------------------------------------------------------------------
# workloads


@dataclass(frozen=True)
class Workload:
    """What each vCPU does: write one byte per page over ``working_set_pages`` pages, one
    write every ``write_interval`` loop iterations (the progress counter counts iterations).
    ``working_set_pages == 0`` is an idle guest (it still counts progress)."""

    working_set_pages: int
    write_interval: int

    def __post_init__(self) -> None:
        for name in ("working_set_pages", "write_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
        if self.working_set_pages < 0:
            raise ValueError(f"working_set_pages must be >= 0, got {self.working_set_pages}")
        if not 1 <= self.write_interval < 1 << 63:
            raise ValueError(f"write_interval must be >= 1, got {self.write_interval}")


IDLE_INTERVAL: Final = 1 << 16
"""Loop iterations per outer pass of an idle guest (~0.1 ms: how fast it sees a doorbell)."""


def idle() -> Workload:
    return Workload(0, IDLE_INTERVAL)


def moderate(working_set_pages: int) -> Workload:
    """One page write per 65536 iterations: a few thousand pages/s per vCPU here."""
    return Workload(working_set_pages, 1 << 16)


def worst_case(working_set_pages: int) -> Workload:
    """A page write every iteration: limited only by KVM's write-protect faults."""
    return Workload(working_set_pages, 1)


PRESETS: Final = ("idle", "moderate", "worst")


def preset(name: str, working_set_pages: int) -> Workload:
    if name == "idle":
        return idle()
    if name == "moderate":
        return moderate(working_set_pages)
    if name == "worst":
        return worst_case(working_set_pages)
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(PRESETS)}")


# --------------------------------------------------------------------------------------------
# layout


@dataclass(frozen=True)
class GuestLayout:
    """Where everything lives in guest physical memory (identity-mapped)."""

    memory_size: int
    vcpus: int

    @property
    def pages(self) -> int:
        return self.memory_size // PAGE_SIZE

    @property
    def mmio_addr(self) -> int:
        """Start of the mapped, memory-less 2 MiB page right after RAM (the doorbell)."""
        return -(-self.memory_size // HUGE_PAGE) * HUGE_PAGE

    @property
    def mapped_size(self) -> int:
        return self.mmio_addr + HUGE_PAGE

    @property
    def page_directories(self) -> int:
        return -(-self.mapped_size // GIB)

    def control(self, vcpu: int) -> int:
        """Address of vCPU ``vcpu``'s control block (its own page)."""
        return CONTROL_ADDR + vcpu * PAGE_SIZE

    @property
    def data_start(self) -> int:
        return CONTROL_ADDR + self.vcpus * PAGE_SIZE

    @property
    def data_pages(self) -> int:
        return max(0, (self.memory_size - self.data_start) // PAGE_SIZE)

    @property
    def region_pages(self) -> int:
        """Pages of the data area each vCPU owns (its working set lives there)."""
        return self.data_pages // self.vcpus

    def region(self, vcpu: int) -> int:
        return self.data_start + vcpu * self.region_pages * PAGE_SIZE

    @staticmethod
    def min_memory(vcpus: int) -> int:
        """The smallest memory holding the fixed pages and one data page per vCPU."""
        return CONTROL_ADDR + 2 * vcpus * PAGE_SIZE


def _segment(selector: int, type_: int, dpl: int, *, code64: bool = False,
             system: bool = False, base: int = 0, limit: int = 0xFFFFFFFF) -> abi.KvmSegment:
    return abi.KvmSegment(
        base=base, limit=limit, selector=selector, type=type_, present=1, dpl=dpl,
        db=0 if (code64 or system) else 1, s=0 if system else 1, l=1 if code64 else 0,
        g=0 if system else 1, avl=0, unusable=0,
    )


def _descriptor(base: int, limit: int, type_: int, dpl: int, *, s: bool, l_bit: bool,
                db: bool, g: bool) -> int:
    access = type_ | (s << 4) | (dpl << 5) | (1 << 7)
    flags = (l_bit << 1) | (db << 2) | (g << 3)
    return ((limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | (access << 40)
            | (((limit >> 16) & 0xF) << 48) | (flags << 52) | (((base >> 24) & 0xFF) << 56))


TSS_LIMIT: Final = 0x67


def gdt_bytes() -> bytes:
    entries = [
        0,
        _descriptor(0, 0xFFFFF, 0xB, 0, s=True, l_bit=True, db=False, g=True),   # 0x08
        _descriptor(0, 0xFFFFF, 0x3, 0, s=True, l_bit=False, db=True, g=True),   # 0x10
        0,                                                                        # 0x18
        _descriptor(0, 0xFFFFF, 0x3, 3, s=True, l_bit=False, db=True, g=True),   # 0x23
        _descriptor(0, 0xFFFFF, 0xB, 3, s=True, l_bit=True, db=False, g=True),   # 0x2b
        # 0x30: 64-bit busy TSS (16 bytes: low descriptor, then base 63..32)
        _descriptor(TSS_ADDR, TSS_LIMIT, 0xB, 0, s=False, l_bit=False, db=False, g=False),
        TSS_ADDR >> 32,
    ]
    return b"".join(struct.pack("<Q", e) for e in entries)


def write_image(mem: memoryview, layout: GuestLayout) -> None:
    """Write tables, GDT, TSS and code into fresh (zeroed) guest memory."""
    gdt = gdt_bytes()
    mem[GDT_ADDR:GDT_ADDR + len(gdt)] = gdt
    # TSS: only the I/O map base matters (beyond the limit: no I/O bitmap)
    mem[TSS_ADDR + 0x66:TSS_ADDR + 0x68] = struct.pack("<H", TSS_LIMIT + 1)
    upper = PTE_P | PTE_RW | PTE_US | PTE_A
    mem[PML4_ADDR:PML4_ADDR + 8] = struct.pack("<Q", PDPT_ADDR | upper)
    for gib in range(layout.page_directories):
        pd = PD_ADDR + gib * PAGE_SIZE
        mem[PDPT_ADDR + 8 * gib:PDPT_ADDR + 8 * gib + 8] = struct.pack("<Q", pd | upper)
        huge = min(512, (layout.mapped_size - gib * GIB) // HUGE_PAGE)
        entries = b"".join(
            struct.pack("<Q", (gib * GIB + i * HUGE_PAGE) | upper | PTE_D | PTE_PS)
            for i in range(huge)
        )
        mem[pd:pd + len(entries)] = entries
    code = work_loop()
    mem[CODE_ADDR:CODE_ADDR + len(code)] = code
    for vcpu in range(layout.vcpus):
        struct.pack_into("<Q", mem, layout.control(vcpu) + MMIO, layout.mmio_addr)


def write_workload(mem: memoryview, layout: GuestLayout, vcpu: int, workload: Workload) -> None:
    """Point vCPU ``vcpu``'s loop at a new workload (takes effect at its next outer pass)."""
    if workload.working_set_pages > layout.region_pages:
        raise ValueError(
            f"working set of {workload.working_set_pages} pages does not fit the "
            f"{layout.region_pages} data pages per vCPU of a {layout.memory_size >> 20} MiB "
            f"guest with {layout.vcpus} vCPUs"
        )
    block = layout.control(vcpu)
    # ws_pages last-but-one and base first, so the loop never sees a base/pages mix that
    # points outside the region (it reads ws_pages, then ws_base, each 8-byte aligned)
    struct.pack_into("<Q", mem, block + WS_PAGES, 0)
    struct.pack_into("<Q", mem, block + WS_BASE, layout.region(vcpu))
    struct.pack_into("<Q", mem, block + WRITE_INTERVAL, workload.write_interval)
    struct.pack_into("<Q", mem, block + WS_PAGES, workload.working_set_pages)


def initial_sregs(layout: GuestLayout) -> abi.KvmSregs:
    """64-bit user mode: long mode on, paging via the identity map, ring-3 segments."""
    sregs = abi.KvmSregs()
    sregs.cs = _segment(USER_CS, 0xB, 3, code64=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _segment(USER_DS, 0x3, 3))
    sregs.tr = _segment(TSS_SEL, 0xB, 0, system=True, base=TSS_ADDR, limit=TSS_LIMIT)
    sregs.ldt = abi.KvmSegment(unusable=1)
    sregs.gdt = abi.KvmDtable(base=GDT_ADDR, limit=len(gdt_bytes()) - 1)
    sregs.idt = abi.KvmDtable(base=0, limit=0)
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA
    return sregs


def initial_regs(layout: GuestLayout, vcpu: int) -> abi.KvmRegs:
    regs = abi.KvmRegs()
    regs.rip = CODE_ADDR
    regs.rbx = layout.control(vcpu)
    regs.rsp = layout.control(vcpu) + PAGE_SIZE
    regs.r12 = 0
    regs.rflags = RFLAGS_RESERVED
    return regs
