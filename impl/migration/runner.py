"""Wiring: connect + authenticate + run a source; listen + authenticate + run a destination.

These are what the CLI commands and the benchmark call. A connection whose peer fails
authentication is closed and logged; the receiver keeps listening for the real source
(until ``accept_timeout_s``), so a stray or hostile connection cannot end an expected
migration, and nothing of it ever reaches a VM (the VM is created after authentication).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from .destination import DestinationResult, MigrationDestination
from .errors import AuthenticationError, MigrationError, TransportError
from .handshake import client_handshake, server_handshake
from .messages import Limits
from .policy import Policy
from .source import MigrationConfig, MigrationResult, MigrationSource, Sample
from .throttling import ThrottleFactory
from .transport import CancellableSocket, connect, peer_name
from .vmapi import MigratableVm, VmFactory


def migrate_to(host: str, port: int, key: bytes, vm: MigratableVm, policy: Policy,
               throttle_factory: ThrottleFactory, config: MigrationConfig,
               *, io_timeout_s: float = 30.0,
               on_progress: Callable[[Sample], None] | None = None,
               cancel_event: threading.Event | None = None,
               on_source: Callable[[MigrationSource], None] | None = None) -> MigrationResult:
    """Connect, authenticate and migrate ``vm``; never raises MigrationError (see result)."""
    ev = cancel_event if cancel_event is not None else threading.Event()
    try:
        sock = connect(host, port, timeout_s=min(io_timeout_s, 10.0))
    except TransportError as exc:
        return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                               source_running=not vm.is_paused(), dirty_log_stopped=True,
                               memory_bytes=vm.memory_size)
    stream = CancellableSocket(sock, ev, io_timeout_s=io_timeout_s)
    try:
        try:
            channel = client_handshake(stream, key, mac=config.mac)
        except MigrationError as exc:
            return MigrationResult(status="failed", policy=policy.name, error=str(exc),
                                   source_running=not vm.is_paused(), dirty_log_stopped=True,
                                   memory_bytes=vm.memory_size)
        src = MigrationSource(vm, channel, policy, throttle_factory, config,
                              on_progress=on_progress, link=stream,
                              cancel_event=ev)
        if on_source is not None:
            on_source(src)
        return src.run()
    finally:
        stream.close()


def serve_one(listener: socket.socket, key: bytes, factory: VmFactory, limits: Limits,
              *, run_after_s: float = 0.2, verify: bool = True, io_timeout_s: float = 30.0,
              accept_timeout_s: float = 600.0, log: Callable[[str], None] = lambda s: None,
              cancel_event: threading.Event | None = None) -> DestinationResult:
    """Accept connections until one authenticates; run that migration; return its result."""
    ev = cancel_event if cancel_event is not None else threading.Event()
    deadline = time.monotonic() + accept_timeout_s
    listener.settimeout(0.2)
    while True:
        if ev.is_set():
            return DestinationResult(status="cancelled", error="receiver cancelled")
        if time.monotonic() > deadline:
            return DestinationResult(status="failed", error=f"no authenticated source "
                                     f"connected within {accept_timeout_s:g} s")
        try:
            sock, addr = listener.accept()
        except TimeoutError:
            continue
        stream = CancellableSocket(sock, ev, io_timeout_s=min(io_timeout_s, 10.0))
        try:
            channel = server_handshake(stream, key)
        except AuthenticationError as exc:
            log(f"rejected connection from {peer_name(addr)}: {exc}")
            stream.close()
            continue
        except MigrationError as exc:
            log(f"dropped connection from {peer_name(addr)}: {exc}")
            stream.close()
            continue
        log(f"authenticated source {peer_name(addr)}")
        stream.io_timeout_s = io_timeout_s
        try:
            dest = MigrationDestination(channel, factory, limits, run_after_s=run_after_s,
                                        verify=verify, cancel_event=ev)
            return dest.run()
        finally:
            stream.close()
