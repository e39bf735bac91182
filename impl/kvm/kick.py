"""The kick signal: the signal whose delivery makes a vCPU thread's blocked KVM_RUN return.

One job: make sure a Python handler is installed for it. The handler does nothing; what
matters is that the signal is neither ignored (an ignored signal does not interrupt
KVM_RUN) nor left at its default action (which would kill the process).
"""

from __future__ import annotations

import errno
import signal
import threading
from types import FrameType

from .bindings import KvmError


def _kick_handler(signum: int, frame: FrameType | None) -> None:
    """Does nothing: its only job is to make a blocked KVM_RUN return EINTR."""


def ensure_kick_handler(signum: int = signal.SIGUSR1) -> None:
    """Install a Python handler for ``signum`` unless one is installed already.

    Must first run on the main thread (Python installs handlers only there). An ignored or
    default-action signal would not interrupt KVM_RUN (or would kill the process).
    """
    current = signal.getsignal(signum)
    if callable(current):
        return
    if threading.current_thread() is not threading.main_thread():
        raise KvmError(errno.EINVAL, f"install {signal.Signals(signum).name} handler",
                       "create the first GuestVm on the main thread: Python installs signal "
                       "handlers only there")
    signal.signal(signum, _kick_handler)
