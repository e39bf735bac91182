"""Wiring: connect + authenticate + run a source; listen + authenticate + run a destination.

These are what the CLI commands and the benchmark call. The receiver serves every
connection's handshake at once, each under its own deadline (:mod:`.accept`); a peer that
fails, stalls or floods is refused, logged and closed while the real source authenticates,
and nothing of it ever reaches a VM (the VM is created after authentication).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from .accept import DEFAULT_HANDSHAKE_TIMEOUT_S, accept_source
from .destination import DestinationResult, MigrationDestination
from .errors import MigrationCancelled, MigrationError, TransportError
from .handshake import client_handshake
from .messages import Limits
from .policy import Policy
from .source import MigrationConfig, MigrationResult, MigrationSource, Sample
from .throttling import ThrottleFactory
from .transport import CONNECT_TIMEOUT_S, CancellableSocket, connect
from .vmapi import MigratableVm, VmFactory


def migrate_to(host: str, port: int, key: bytes, vm: MigratableVm, policy: Policy,
               throttle_factory: ThrottleFactory, config: MigrationConfig,
               *, io_timeout_s: float = 30.0,
               on_progress: Callable[[Sample], None] | None = None,
               cancel_event: threading.Event | None = None,
               on_source: Callable[[MigrationSource], None] | None = None,
               connect_timeout_s: float = CONNECT_TIMEOUT_S,
               handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S) -> MigrationResult:
    """Connect, authenticate and migrate ``vm``; never raises MigrationError (see result).

    Connecting gives up after ``connect_timeout_s`` (or ``io_timeout_s``, if shorter); the
    handshake must be over ``handshake_timeout_s`` after connecting, however slowly the
    receiver sends its bytes (a hostile or stuck receiver cannot hold the source).
    """
    ev = cancel_event if cancel_event is not None else threading.Event()
    t0 = time.monotonic()
    try:
        sock = connect(host, port, timeout_s=min(io_timeout_s, connect_timeout_s))
    except TransportError as exc:
        return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                               source_running=not vm.is_paused(), dirty_log_stopped=True,
                               memory_bytes=vm.memory_size)
    stream = CancellableSocket(sock, ev, io_timeout_s=io_timeout_s)
    try:
        try:
            stream.deadline = time.monotonic() + handshake_timeout_s
            channel = client_handshake(stream, key, mac=config.mac)
            stream.deadline = None
        except MigrationError as exc:
            return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                                   source_running=not vm.is_paused(), dirty_log_stopped=True,
                                   memory_bytes=vm.memory_size)
        handshake_s = time.monotonic() - t0
        src = MigrationSource(vm, channel, policy, throttle_factory, config,
                              on_progress=on_progress, link=stream,
                              cancel_event=ev)
        if on_source is not None:
            on_source(src)
        result = src.run()
        result.handshake_s = handshake_s
        return result
    finally:
        stream.close()


def serve_one(listener: socket.socket, key: bytes, factory: VmFactory, limits: Limits,
              *, run_after_s: float = 0.2, verify: bool = True, io_timeout_s: float = 30.0,
              accept_timeout_s: float = 600.0,
              handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
              log: Callable[[str], None] = lambda s: None,
              cancel_event: threading.Event | None = None) -> DestinationResult:
    """Serve handshakes until one source authenticates (:mod:`.accept`); run its migration.

    The listener is closed once a source authenticated: a later connection is refused by the
    kernel at once instead of waiting. Never raises MigrationError (see the result).
    """
    ev = cancel_event if cancel_event is not None else threading.Event()
    try:
        won = accept_source(listener, key, accept_timeout_s=accept_timeout_s,
                            handshake_timeout_s=handshake_timeout_s, log=log,
                            cancel_event=ev)
    except MigrationCancelled:
        return DestinationResult(status="cancelled", error="receiver cancelled",
                                 error_type="MigrationCancelled")
    if won is None:
        return DestinationResult(status="failed", error=f"no authenticated source connected "
                                 f"within {accept_timeout_s:g} s")
    listener.close()
    stream = CancellableSocket(won.sock, ev, io_timeout_s=io_timeout_s)
    try:
        channel = won.handshake.finish(stream)
        dest = MigrationDestination(channel, factory, limits, run_after_s=run_after_s,
                                    verify=verify, cancel_event=ev)
        res = dest.run()
    finally:
        stream.close()
    res.peer, res.handshake_s, res.refused_peers = won.peer, won.handshake_s, won.refused
    return res
