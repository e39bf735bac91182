"""How much memory this host can give a received guest: the receiver's default limit and check.

One job: size guests to the host, so that a peer announcing a large guest is refused
instead of bringing in the OOM killer. The receiver holds a guest's memory once, and once
more with the memory hash on (a mirror of guest memory, written with every batch and
hashed after the switch-over; it is faulted in before the first page arrives):

- :func:`default_max_memory`: ``receive``'s default ``--max-memory``, half of
  ``MemAvailable`` (``/proc/meminfo``) at start-up divided by those copies;
- :func:`check_fits`: each announced layout must fit in what is available when it arrives
  (whatever ``--max-memory`` says), else :class:`~.errors.VmSetupError`.
"""

from __future__ import annotations

from .errors import VmSetupError

MEMINFO = "/proc/meminfo"
DEFAULT_SHARE = 0.5
"""Share of MemAvailable the default ``--max-memory`` gives received guests."""
FALLBACK_MAX_MEMORY = 16 * 1024 ** 3
"""The default when ``/proc/meminfo`` cannot be read."""
_MIB = 1024 * 1024


def mem_available(path: str = MEMINFO) -> int | None:
    """``MemAvailable`` in bytes, or None if it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * 1024 if fields[2:3] == ["kB"] else int(fields[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def copies(verify: bool) -> int:
    """How many times the receiver holds guest memory: twice with the memory hash."""
    return 2 if verify else 1


def default_max_memory(verify: bool, available: int | None = None) -> int:
    """Half of MemAvailable per copy of guest memory, in whole MiB (at least 4 MiB)."""
    avail = mem_available() if available is None else available
    if avail is None:
        return FALLBACK_MAX_MEMORY
    share = int(avail * DEFAULT_SHARE) // copies(verify)
    return max(share // _MIB * _MIB, 4 * _MIB)


def check_fits(memory_size: int, verify: bool, available: int | None = None) -> None:
    """Raise VmSetupError if a guest of ``memory_size`` bytes does not fit in MemAvailable."""
    avail = mem_available() if available is None else available
    need = memory_size * copies(verify)
    if avail is not None and need > avail:
        what = "guest memory and the memory-hash mirror" if verify else "guest memory"
        raise VmSetupError(f"a guest of {_mib(memory_size)} needs {_mib(need)} here ({what}), "
                           f"but this host has only {_mib(avail)} available")


def _mib(n: int) -> str:
    return f"{n / _MIB:.0f} MiB"
