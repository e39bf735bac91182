"""Error types of the migration package: every failure ends as one of these, with a clear text.

The hierarchy lets callers tell *why* a migration ended without parsing messages:
protocol violations (corrupt, truncated, hostile input), authentication failures, transport
failures (dead peer, timeouts), the peer reporting an error, cancellation and timeout.

Every failure a peer can cause is one of these classes, and each class carries the
:class:`ErrorCode` that the side which detects it sends to the other in an ERROR frame
(``code``; ``None``: nothing is sent, because the connection itself failed or the peer
already knows):

========================  =====================  ==============================================
class                     code sent              cause
========================  =====================  ==============================================
ProtocolError             1 PROTOCOL             malformed, out-of-range or out-of-order input
AuthenticationError       2 AUTHENTICATION       the peer does not hold the key (or a bad MAC)
VmSetupError              3 VM_SETUP             no VM for the announced layout on this host
MigrationCancelled        4 CANCELLED            ``cancel()``, Ctrl-C
MigrationError (base)     5 INTERNAL             a failure on this side (e.g. a policy's bug)
HandshakeTimeout          6 TIMEOUT              the peer did not finish the handshake in time
VmStateError              7 VM_STATE             the VM cannot load the vCPU state sent
ReceiverBusy              8 BUSY                 another source won, or too many handshakes
TransportError            (none)                 the connection broke, stalled or was closed
PeerError                 (none)                 the peer sent ERROR (its ``code``, its text)
========================  =====================  ==============================================

(The source's ``MigrationTimeout``, a :class:`MigrationCancelled`, sends 6 TIMEOUT.) A code
this side does not know arrives as a :class:`PeerError` all the same.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from ..errors import AutoconvergeError


class ErrorCode(enum.IntEnum):
    """The ``code`` of an ERROR frame (see the table in the module docstring)."""

    PROTOCOL = 1
    AUTHENTICATION = 2
    VM_SETUP = 3
    CANCELLED = 4
    INTERNAL = 5
    TIMEOUT = 6
    VM_STATE = 7
    BUSY = 8


class MigrationError(AutoconvergeError):
    """Base class: the migration ended and this says why."""

    code: ClassVar[ErrorCode | None] = ErrorCode.INTERNAL
    """What to send the peer in an ERROR frame (None: send nothing)."""


class ProtocolError(MigrationError):
    """The peer sent something malformed, out of range or out of order."""

    code = ErrorCode.PROTOCOL


class AuthenticationError(MigrationError):
    """The peer could not prove it holds the pre-shared key (or a message's MAC was wrong)."""

    code = ErrorCode.AUTHENTICATION


class TransportError(MigrationError):
    """The connection broke, timed out, or the peer closed it."""

    code: ClassVar[ErrorCode | None] = None


class HandshakeTimeout(TransportError):
    """A connecting peer did not complete the handshake within the handshake deadline."""

    code = ErrorCode.TIMEOUT


class ReceiverBusy(MigrationError):
    """The receiver dropped this connection: another source authenticated first, or too
    many handshakes were in progress and this one was the oldest."""

    code = ErrorCode.BUSY


class PeerError(MigrationError):
    """The peer reported an error and ended the migration."""

    code: ClassVar[ErrorCode | None] = None

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"peer reported error {code}: {text}")
        self.peer_code = code
        self.text = text


class MigrationCancelled(MigrationError):
    """``cancel()`` was called (or the timeout strategy ``cancel`` fired)."""

    code = ErrorCode.CANCELLED


class VmSetupError(MigrationError):
    """The destination could not create its VM for the announced layout."""

    code = ErrorCode.VM_SETUP


class VmStateError(MigrationError):
    """The destination's VM refused the vCPU state the source sent (corrupt or foreign)."""

    code = ErrorCode.VM_STATE
