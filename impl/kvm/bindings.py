"""Thin KVM bindings in the style of rust-vmm's kvm-ioctls: one class per file descriptor.

- :class:`Kvm` owns ``/dev/kvm`` (system ioctls), :class:`Vm` a VM fd, :class:`Vcpu` a vCPU fd
  and its mmap'd ``kvm_run`` page. Each ioctl is a method of the class owning the fd.
- Every failure raises :class:`KvmError` carrying ``errno`` and the operation; a missing
  capability is ``EOPNOTSUPP``, an invalid argument ``EINVAL``.
- Every ioctl goes through ``libc.ioctl`` via ctypes (which releases the GIL), never
  ``fcntl.ioctl``: newer CPython retries ``fcntl.ioctl`` on EINTR (gh-132768), so a kicked
  ``KVM_RUN`` would silently re-enter the guest. The ctypes argument objects are kept
  referenced for the whole call.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import mmap
import os
from typing import Any, Self

from ..errors import AutoconvergeError
from . import abi

_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int

DEV_KVM = "/dev/kvm"


class KvmError(AutoconvergeError, OSError):
    """A KVM operation failed: ``errno`` (as in :class:`OSError`) and ``op`` say which/why."""

    def __init__(self, errno: int, op: str, detail: str = "") -> None:
        message = f"{op}: {os.strerror(errno)}" + (f" ({detail})" if detail else "")
        super().__init__(errno, message)
        self.op = op
        self.detail = detail

    def __str__(self) -> str:
        return str(self.strerror)


def _call(fd: int, io: abi.Ioctl, arg: Any = None) -> int:
    """Issue ``io`` on ``fd``; return the non-negative result or raise KvmError."""
    ret: int = _ioctl(fd, io.number, arg)
    if ret < 0:
        raise KvmError(ctypes.get_errno(), io.name)
    return ret


def _check_struct(io: abi.Ioctl, arg: ctypes.Structure) -> None:
    if io.struct is not None and not isinstance(arg, io.struct):
        raise TypeError(f"{io.name} takes a {io.struct.__name__}, got {type(arg).__name__}")


class _Fd:
    """An owned file descriptor, closed once."""

    _fd: int

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise KvmError(errno_mod.EBADF, f"{type(self).__name__}", "already closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class _ChecksExtensions(_Fd):
    """KVM_CHECK_EXTENSION exists on the system fd and on VM fds; both can require one."""

    def check_extension(self, cap: int) -> int:  # pragma: no cover - overridden
        raise NotImplementedError

    def require_extension(self, cap: int) -> int:
        """The capability's value, or KvmError naming it when it is missing."""
        value = self.check_extension(cap)
        if value <= 0:
            raise _missing_cap(cap)
        return value


class Kvm(_ChecksExtensions):
    """``/dev/kvm``: API version, capabilities, VM creation."""

    def __init__(self, path: str = DEV_KVM) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmError(errno_mod.ENOENT, f"open {path}",
                           "KVM is not available: the kvm module is not loaded or this is "
                           "not a KVM-capable host") from None
        except PermissionError:
            raise KvmError(errno_mod.EACCES, f"open {path}",
                           "no read/write permission: run as a member of the device's group "
                           "(usually 'kvm') or as root") from None
        except OSError as exc:
            raise KvmError(exc.errno or errno_mod.EIO, f"open {path}") from None
        super().__init__(fd)
        self.path = path
        version = self.get_api_version()
        if version != abi.KVM_API_VERSION:
            self.close()
            raise KvmError(errno_mod.EPROTO, "KVM_GET_API_VERSION",
                           f"API version {version}, expected {abi.KVM_API_VERSION}")

    def get_api_version(self) -> int:
        return _call(self.fd, abi.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION: 0 if unsupported, else a positive (capability-specific) value."""
        return _call(self.fd, abi.KVM_CHECK_EXTENSION, cap)

    def get_vcpu_mmap_size(self) -> int:
        return _call(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)

    def get_supported_cpuid(self, max_entries: int = 256) -> ctypes.Array[ctypes.c_char]:
        """KVM_GET_SUPPORTED_CPUID as a ``kvm_cpuid2`` buffer (see abi.cpuid2_entries)."""
        while True:
            buf = abi.cpuid2_buffer(max_entries)
            try:
                _call(self.fd, abi.KVM_GET_SUPPORTED_CPUID, ctypes.byref(buf))
            except KvmError as exc:
                if exc.errno == errno_mod.E2BIG and max_entries < 4096:
                    max_entries *= 2
                    continue
                raise
            return buf

    def max_vcpus(self) -> int:
        """KVM_CAP_MAX_VCPUS (falls back to KVM_CAP_NR_VCPUS, then 4, as the API says)."""
        return (self.check_extension(abi.CAP_MAX_VCPUS)
                or self.check_extension(abi.CAP_NR_VCPUS) or 4)

    def recommended_vcpus(self) -> int:
        return self.check_extension(abi.CAP_NR_VCPUS) or 4

    def create_vm(self, vm_type: int = 0) -> Vm:
        return Vm(self, _call(self.fd, abi.KVM_CREATE_VM, vm_type))


def _missing_cap(cap: int) -> KvmError:
    name = abi.CAP_NAMES.get(cap, f"capability {cap}")
    return KvmError(errno_mod.EOPNOTSUPP, "KVM_CHECK_EXTENSION",
                    f"{name} is not supported by this kernel's KVM")


class Vm(_ChecksExtensions):
    """A VM fd: memory slots, dirty log, capabilities, vCPU creation."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm

    def check_extension(self, cap: int) -> int:
        """Per-VM KVM_CHECK_EXTENSION (more precise than the system one where they differ)."""
        return _call(self.fd, abi.KVM_CHECK_EXTENSION, cap)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        if len(args) > 4:
            raise ValueError("KVM_ENABLE_CAP takes at most 4 arguments")
        arg = abi.KvmEnableCap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            arg.args[i] = value
        _call(self.fd, abi.KVM_ENABLE_CAP, ctypes.byref(arg))

    def set_user_memory_region(self, region: abi.KvmUserspaceMemoryRegion) -> None:
        _check_struct(abi.KVM_SET_USER_MEMORY_REGION, region)
        _call(self.fd, abi.KVM_SET_USER_MEMORY_REGION, ctypes.byref(region))

    def get_dirty_log(self, slot: int, bitmap_address: int) -> None:
        """KVM_GET_DIRTY_LOG into the caller's bitmap (one bit per page, 64-bit aligned)."""
        arg = abi.KvmDirtyLog(slot=slot, dirty_bitmap=bitmap_address)
        _call(self.fd, abi.KVM_GET_DIRTY_LOG, ctypes.byref(arg))

    def clear_dirty_log(self, slot: int, first_page: int, num_pages: int,
                        bitmap_address: int) -> None:
        """KVM_CLEAR_DIRTY_LOG (manual protect): clear and re-protect the set bits' pages."""
        arg = abi.KvmClearDirtyLog(slot=slot, num_pages=num_pages, first_page=first_page,
                                   dirty_bitmap=bitmap_address)
        _call(self.fd, abi.KVM_CLEAR_DIRTY_LOG, ctypes.byref(arg))

    def create_vcpu(self, index: int) -> Vcpu:
        mmap_size = self.kvm.get_vcpu_mmap_size()
        return Vcpu(self, index, _call(self.fd, abi.KVM_CREATE_VCPU, index), mmap_size)


class Vcpu(_Fd):
    """A vCPU fd and its shared ``kvm_run`` page."""

    def __init__(self, vm: Vm, index: int, fd: int, mmap_size: int) -> None:
        super().__init__(fd)  # owns fd from here: close() releases it on any failure
        self.vm = vm
        self.index = index
        self._map: mmap.mmap | None = None
        self._run: abi.KvmRun | None = None
        try:
            if mmap_size < ctypes.sizeof(abi.KvmRun):
                raise KvmError(errno_mod.EINVAL, "KVM_GET_VCPU_MMAP_SIZE",
                               f"{mmap_size} bytes is smaller than struct kvm_run")
            self._map = mmap.mmap(fd, mmap_size, flags=mmap.MAP_SHARED,
                                  prot=mmap.PROT_READ | mmap.PROT_WRITE)
            self._run = abi.KvmRun.from_buffer(self._map)
        except BaseException:
            self.close()
            raise

    @property
    def kvm_run(self) -> abi.KvmRun:
        """The shared ``struct kvm_run`` (exit reason, exit data, immediate_exit)."""
        if self._run is None:
            raise KvmError(errno_mod.EBADF, "kvm_run", f"vCPU {self.index} is closed")
        return self._run

    def run(self) -> int:
        """KVM_RUN: the exit reason; a signal or immediate_exit gives ``abi.EXIT_INTR``."""
        ret: int = _ioctl(self.fd, abi.KVM_RUN.number, None)
        if ret < 0:
            err = ctypes.get_errno()
            if err in (errno_mod.EINTR, errno_mod.EAGAIN):
                return abi.EXIT_INTR
            raise KvmError(err, abi.KVM_RUN.name, f"vCPU {self.index}")
        return int(self.kvm_run.exit_reason)

    def get_regs(self) -> abi.KvmRegs:
        regs = abi.KvmRegs()
        _call(self.fd, abi.KVM_GET_REGS, ctypes.byref(regs))
        return regs

    def set_regs(self, regs: abi.KvmRegs) -> None:
        _check_struct(abi.KVM_SET_REGS, regs)
        _call(self.fd, abi.KVM_SET_REGS, ctypes.byref(regs))

    def get_sregs(self) -> abi.KvmSregs:
        sregs = abi.KvmSregs()
        _call(self.fd, abi.KVM_GET_SREGS, ctypes.byref(sregs))
        return sregs

    def set_sregs(self, sregs: abi.KvmSregs) -> None:
        _check_struct(abi.KVM_SET_SREGS, sregs)
        _call(self.fd, abi.KVM_SET_SREGS, ctypes.byref(sregs))

    def set_cpuid2(self, cpuid: ctypes.Array[ctypes.c_char]) -> None:
        _call(self.fd, abi.KVM_SET_CPUID2, ctypes.byref(cpuid))

    def close(self) -> None:
        self._run = None
        if self._map is not None:
            # BufferError: someone still holds kvm_run; leave the mapping to the GC
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        super().close()
