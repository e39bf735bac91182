"""``autoconverge demo``: a receiver child process and the source here, over loopback.

The receiver is ``python -m autoconverge receive`` with a fresh random key; the source
runs the built-in busy guest in this process. ``bench-migration`` reuses :func:`run_demo_once`.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from autoconverge.impl.migration.addresses import UNIX_PREFIX
from autoconverge.impl.migration.backends import make_source_guest
from autoconverge.impl.migration.errors import MigrationError
from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult

from .errors import EXIT_VIOLATED
from .migration import (
    KEY_ENV,
    add_guest_arguments,
    add_migration_arguments,
    finish,
    prepare_migration,
    run_source,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="migrate a busy guest between two local processes",
                       description="Run a receiver process and migrate the built-in busy "
                       "guest to it over loopback, with a fresh random key.")
    add_guest_arguments(p)
    add_migration_arguments(p, "predictive", "60")
    p.set_defaults(func=cmd_demo)


def spawn_receiver(backend: str, key: bytes, *, run_after: float = 0.5,
                   accept_timeout: float = 120.0, io_timeout: float = 30.0,
                   verify: bool = True, max_memory: int | None = None,
                   listen: str = "127.0.0.1:0", extra: Sequence[str] = (),
                   ) -> tuple[subprocess.Popen[str], int, str]:
    """Start ``autoconverge receive`` as a child process on ``listen``; returns its port.

    (Port 0 for a ``unix:PATH`` listener: it is ready once the port file exists.) ``extra``
    arguments are passed to ``receive`` as they are.
    """
    tmpdir = tempfile.mkdtemp(prefix="autoconverge-")
    port_file = os.path.join(tmpdir, "port")
    cmd = [sys.executable, "-m", "autoconverge", "receive", "--listen",
           listen, "--port-file", port_file, "--backend", backend, "--json",
           "--run-after", str(run_after), "--accept-timeout", str(accept_timeout),
           "--io-timeout", str(io_timeout)]
    if max_memory is not None:  # else the receiver's host-sized default
        cmd += ["--max-memory", str(max_memory)]
    if not verify:
        cmd.append("--no-verify")
    cmd.extend(extra)
    env = dict(os.environ)
    env[KEY_ENV] = key.decode()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with open(port_file) as f:
                text = f.read().strip()
            if text:
                port = int(text)
                break
        except (OSError, ValueError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise MigrationError(f"the receiver process did not start: {err.strip()}")
        time.sleep(0.02)
    os.unlink(port_file)
    os.rmdir(tmpdir)
    return proc, port, " ".join(cmd)


def collect_receiver(proc: subprocess.Popen[str], timeout_s: float = 60.0
                     ) -> tuple[dict[str, Any] | None, str]:
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return None, err + "\n(receiver killed: no exit within the timeout)"
    data = None
    for line in out.splitlines()[::-1]:
        try:
            data = json.loads(line)
            break
        except ValueError:
            continue
    return data, err


def run_demo_once(args: argparse.Namespace, guest_cfg: GuestConfig, cfg: MigrationConfig,
                  policy: Any, io_timeout: float, warmup: float,
                  quiet: bool = False, unix: bool = False,
                  ) -> tuple[MigrationResult, dict[str, Any]]:
    """Receiver child process + source here; over loopback TCP, or a Unix socket."""
    key = secrets.token_hex(32).encode()
    sock_dir = tempfile.mkdtemp(prefix="autoconverge-sock-") if unix else None
    host = f"{UNIX_PREFIX}{sock_dir}/migration.sock" if sock_dir else "127.0.0.1"
    try:
        proc, port, _ = spawn_receiver(args.backend, key, verify=cfg.verify,
                                       io_timeout=io_timeout,
                                       listen=host if sock_dir else "127.0.0.1:0")
        try:
            result = _run_source_quiet(args, host, port, key, guest_cfg, cfg, policy, io_timeout,
                                       warmup, quiet)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
    finally:
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
    dest, err = collect_receiver(proc, timeout_s=max(30.0, io_timeout + 5))
    extra: dict[str, Any] = {"receiver_exit_code": proc.returncode,
                             "receiver": dest}
    if dest is None:
        extra["receiver_stderr"] = err.strip()[-2000:]
    return result, extra


def _run_source_quiet(args: argparse.Namespace, host: str, port: int, key: bytes,
                      guest_cfg: GuestConfig, cfg: MigrationConfig, policy: Any, io_timeout: float,
                      warmup: float, quiet: bool) -> MigrationResult:
    if not quiet:
        return run_source(args, host, port, key, guest_cfg, cfg, policy, io_timeout, warmup)
    from autoconverge.impl.migration.runner import migrate_to

    guest = make_source_guest(args.backend, guest_cfg)
    try:
        if warmup:
            time.sleep(warmup)
        return migrate_to(host, port, key, guest.vm, policy, guest.throttle_factory,
                          cfg, io_timeout_s=io_timeout)
    finally:
        guest.close()


def cmd_demo(args: argparse.Namespace) -> int:
    guest_cfg, cfg, policy, io_timeout, warmup = prepare_migration(args)
    print(f"autoconverge demo: {args.backend} guest, {guest_cfg.memory_bytes // 2 ** 20} MiB, "
          f"{guest_cfg.vcpus} vCPU(s), workload {guest_cfg.workload} over "
          f"{guest_cfg.working_set_bytes // 2 ** 20} MiB; policy {policy.name}, max-bandwidth "
          f"{'unlimited' if cfg.max_bandwidth_bps is None else args.max_bandwidth}, "
          f"downtime-limit {cfg.downtime_limit_s * 1e3:.0f} ms", file=sys.stderr)
    try:
        result, extra = run_demo_once(args, guest_cfg, cfg, policy, io_timeout, warmup)
    except MigrationError as exc:
        print(f"autoconverge demo: {exc}", file=sys.stderr)
        return EXIT_VIOLATED
    return finish(args, result, extra)
