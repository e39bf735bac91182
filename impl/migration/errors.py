"""Error types of the migration package: every failure ends as one of these, with a clear text.

The hierarchy lets callers tell *why* a migration ended without parsing messages:
protocol violations (corrupt, truncated, hostile input), authentication failures, transport
failures (dead peer, timeouts), the peer reporting an error, cancellation and timeout.
"""

from __future__ import annotations

from ..errors import AutoconvergeError


class MigrationError(AutoconvergeError):
    """Base class: the migration ended and this says why."""


class ProtocolError(MigrationError):
    """The peer sent something malformed, out of range or out of order."""


class AuthenticationError(MigrationError):
    """The peer could not prove it holds the pre-shared key (or a message's MAC was wrong)."""


class TransportError(MigrationError):
    """The connection broke, timed out, or the peer closed it."""


class PeerError(MigrationError):
    """The peer reported an error and ended the migration."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"peer reported error {code}: {text}")
        self.code = code
        self.text = text


class MigrationCancelled(MigrationError):
    """``cancel()`` was called (or the timeout strategy ``cancel`` fired)."""


class VmSetupError(MigrationError):
    """The destination could not create its VM for the announced layout."""
