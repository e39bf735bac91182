"""Wiring: connect + authenticate + run a source; listen + authenticate + run a destination.

These are what the CLI commands and the benchmark call. With ``connections`` > 1 the
source opens the data connections right after the first one authenticated, and the
receiver accepts them (each authenticated and joined, :mod:`.connections`) before the
migration starts. The receiver serves every
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
from .connections import (
    DEFAULT_MAX_CONNECTIONS,
    accept_data_connections,
    close_streams,
    open_data_connections,
)
from .destination import DestinationResult, MigrationDestination
from .errors import MigrationCancelled, MigrationError, ProtocolError, ReceiverBusy, TransportError
from .framing import FrameChannel
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
    ``config.connections`` > 1: the data connections are opened and joined right after
    the first one authenticated (:mod:`.connections`).
    """
    connections = config.connections
    ev = cancel_event if cancel_event is not None else threading.Event()
    t0 = time.monotonic()
    try:
        sock = connect(host, port, timeout_s=min(io_timeout_s, connect_timeout_s))
    except TransportError as exc:
        return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                               source_running=not vm.is_paused(), dirty_log_stopped=True,
                               memory_bytes=vm.memory_size)
    stream = CancellableSocket(sock, ev, io_timeout_s=io_timeout_s)
    data: list[FrameChannel] = []
    try:
        try:
            stream.deadline = time.monotonic() + handshake_timeout_s
            channel = client_handshake(stream, key, mac=config.mac, connections=connections)
            stream.deadline = None
            data = open_data_connections(
                host, port, key, channel, connections, mac=config.mac,
                io_timeout_s=io_timeout_s, connect_timeout_s=connect_timeout_s,
                handshake_timeout_s=handshake_timeout_s)
        except MigrationError as exc:
            return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                                   source_running=not vm.is_paused(), dirty_log_stopped=True,
                                   memory_bytes=vm.memory_size)
        handshake_s = time.monotonic() - t0
        src = MigrationSource(vm, channel, policy, throttle_factory, config,
                              on_progress=on_progress, link=stream,
                              cancel_event=ev, data_channels=data)
        if on_source is not None:
            on_source(src)
        result = src.run()
        result.handshake_s = handshake_s
        return result
    finally:
        close_streams(data)
        stream.close()


def serve_one(listener: socket.socket, key: bytes, factory: VmFactory, limits: Limits,
              *, run_after_s: float = 0.2, verify: bool = True, io_timeout_s: float = 30.0,
              accept_timeout_s: float = 600.0,
              handshake_timeout_s: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
              log: Callable[[str], None] = lambda s: None,
              cancel_event: threading.Event | None = None,
              max_connections: int = DEFAULT_MAX_CONNECTIONS) -> DestinationResult:
    """Serve handshakes until one source authenticates (:mod:`.accept`); run its migration.

    A source announcing more than ``max_connections`` connections is refused; its data
    connections must join within ``handshake_timeout_s`` each. The listener is closed once
    every connection of the source joined: a later connection is refused by the kernel at
    once instead of waiting. Never raises MigrationError (see the result).
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
    stream = CancellableSocket(won.sock, ev, io_timeout_s=io_timeout_s)
    channel = won.handshake.finish(stream)
    count = won.handshake.connections
    data: list[FrameChannel] = []
    try:
        try:
            if won.handshake.data_connection:
                raise ProtocolError("the first connection says it is a data connection")
            if count > max_connections:
                raise ReceiverBusy(f"the source wants {count} connections, this receiver "
                                   f"takes at most {max_connections}")
            data = accept_data_connections(
                listener, key, channel, count, timeout_s=handshake_timeout_s * count,
                handshake_timeout_s=handshake_timeout_s, io_timeout_s=io_timeout_s, log=log,
                cancel_event=ev)
        except MigrationError as exc:
            log(f"refused the source {won.peer}: {exc}")
            if exc.code is not None:
                channel.send_error(exc.code, f"the receiver refused the migration: {exc}")
            return DestinationResult(status="failed", error=str(exc),
                                     error_type=type(exc).__name__, peer=won.peer)
        finally:
            listener.close()
        dest = MigrationDestination(channel, factory, limits, run_after_s=run_after_s,
                                    verify=verify, cancel_event=ev, data_channels=data)
        res = dest.run()
    finally:
        close_streams(data)
        stream.close()
    res.peer, res.handshake_s, res.refused_peers = won.peer, won.handshake_s, won.refused
    return res
