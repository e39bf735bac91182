"""The root of every error the public API documents: :class:`AutoconvergeError`.

``except AutoconvergeError`` catches anything the library raises on purpose - the
throttler's errors, a vCPU backend's failure, a join that timed out, a KVM ioctl's errno,
a migration's protocol error - and nothing it does not (a bug stays a plain exception).
Each subclass keeps the built-in base it had (``RuntimeError``, ``OSError``), so existing
``except RuntimeError`` handlers still work.
"""

from __future__ import annotations


class AutoconvergeError(Exception):
    """Base class of every error autoconverge raises on purpose."""
