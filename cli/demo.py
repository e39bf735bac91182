"""``autoconverge demo``: a receiver child process and the source here, over loopback.

The receiver is ``python -m autoconverge receive`` with a fresh random key; the source
runs the built-in busy guest in this process. By default (``--max-bandwidth auto``) the
demo shows the problem throttling solves on any host: during the warm-up it measures the
guest's dirty rate (:mod:`autoconverge.impl.migration.dirty_rate`) and caps the link at
that rate divided by ``--dirty-ratio`` (3), so the guest dirties memory three times faster
than the link sends it: ``--policy none`` cannot converge, the throttling policies can.
``bench-migration`` reuses :func:`run_demo_once` (its ``--sweep`` sets the ratio per run).
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
from dataclasses import replace
from typing import Any

from autoconverge.impl.migration.addresses import UNIX_PREFIX
from autoconverge.impl.migration.dirty_rate import MIN_WINDOWS, measure_dirty_rate
from autoconverge.impl.migration.errors import MigrationError
from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult

from .errors import EXIT_VIOLATED, UsageError
from .migration import (
    KEY_ENV,
    _float,
    add_guest_arguments,
    add_migration_arguments,
    finish,
    migrate_guest,
    prepare_migration,
    start_guest,
)

AUTO_BANDWIDTH = "auto"
DEFAULT_DIRTY_RATIO = 3.0
"""The demo's dirty rate / link bandwidth: well above 1 (``none`` cannot converge), and
robust to load (a guest slowed down 3x by other work still dirties as fast as the link)."""
MIN_LINK_BPS = 1024 * 1024
"""The link the auto bandwidth never goes below (an idle guest measures ~0)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="migrate a busy guest between two local processes",
                       description="Run a receiver process and migrate the built-in busy "
                       "guest to it over loopback, with a fresh random key. By default the "
                       "link is set to a third of the guest's dirty rate, measured during the "
                       "warm-up, so the migration needs throttling to converge.")
    add_guest_arguments(p)
    add_migration_arguments(p, "predictive", "60")
    for action in p._actions:
        if action.dest == "max_bandwidth":
            action.help = ("cap in bytes/s, e.g. 128M or 1G/s; 0 = unlimited; auto = the "
                           "guest's dirty rate measured during the warm-up divided by "
                           "--dirty-ratio (auto)")
        elif action.dest == "warmup":
            action.help = (f"seconds the guest runs before migrating; with --max-bandwidth "
                           f"auto spent measuring its dirty rate, at least {MIN_WINDOWS} "
                           f"times the downtime limit (1)")
    p.add_argument("--dirty-ratio", default=str(DEFAULT_DIRTY_RATIO), metavar="R",
                   help="with --max-bandwidth auto: the guest's dirty rate / link "
                   f"bandwidth ({DEFAULT_DIRTY_RATIO:g})")
    p.set_defaults(func=cmd_demo, max_bandwidth=AUTO_BANDWIDTH, warmup="1")


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
                  quiet: bool = False, unix: bool = False, dirty_ratio: float | None = None,
                  ) -> tuple[MigrationResult, dict[str, Any]]:
    """Receiver child process + source here; over loopback TCP, or a Unix socket.

    With ``dirty_ratio``, the warm-up measures the guest's dirty rate and the link is capped
    at that rate / ``dirty_ratio`` (``cfg.max_bandwidth_bps`` is replaced); the extra dict
    says what was measured and set."""
    key = secrets.token_hex(32).encode()
    sock_dir = tempfile.mkdtemp(prefix="autoconverge-sock-") if unix else None
    host = f"{UNIX_PREFIX}{sock_dir}/migration.sock" if sock_dir else "127.0.0.1"
    try:
        proc, port, _ = spawn_receiver(args.backend, key, verify=cfg.verify,
                                       io_timeout=io_timeout,
                                       listen=host if sock_dir else "127.0.0.1:0")
        try:
            result, link = _run_source(args, host, port, key, guest_cfg, cfg, policy,
                                       io_timeout, warmup, quiet, dirty_ratio)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
    finally:
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
    dest, err = collect_receiver(proc, timeout_s=max(30.0, io_timeout + 5))
    extra: dict[str, Any] = {**link, "receiver_exit_code": proc.returncode,
                             "receiver": dest}
    if dest is None:
        extra["receiver_stderr"] = err.strip()[-2000:]
    return result, extra


def _run_source(args: argparse.Namespace, host: str, port: int, key: bytes,
                guest_cfg: GuestConfig, cfg: MigrationConfig, policy: Any, io_timeout: float,
                warmup: float, quiet: bool, dirty_ratio: float | None,
                ) -> tuple[MigrationResult, dict[str, Any]]:
    from autoconverge.impl.migration.runner import migrate_to

    guest = start_guest(args, guest_cfg)
    link: dict[str, Any] = {}
    try:
        if dirty_ratio is not None:
            rate = measure_dirty_rate(guest.vm, warmup, cfg.downtime_limit_s)
            bw = max(rate / dirty_ratio, MIN_LINK_BPS)
            cfg = replace(cfg, max_bandwidth_bps=bw)
            link = {"guest_dirty_rate_bps": round(rate), "max_bandwidth_bps": round(bw),
                    "dirty_rate_to_bandwidth": round(rate / bw, 3)}
            warmup = 0.0  # spent measuring
            if not quiet:
                print(f"autoconverge demo: the guest dirties {rate / 2 ** 20:.1f} MiB/s "
                      f"(distinct pages per {cfg.downtime_limit_s * 1e3:.0f} ms window, "
                      f"fastest window of the warm-up); link capped at {bw / 2 ** 20:.1f} "
                      f"MiB/s: dirty rate / bandwidth = {rate / bw:.2f}",
                      file=sys.stderr, flush=True)
        if quiet:
            if warmup:
                time.sleep(warmup)
            return migrate_to(host, port, key, guest.vm, policy, guest.throttle_factory,
                              cfg, io_timeout_s=io_timeout), link
        result = migrate_guest(args, guest, host, port, key, cfg, policy, io_timeout, warmup)
        if result.outcome == "in_doubt":
            print("autoconverge demo: IN DOUBT: discarding the paused source guest; if the "
                  "destination does not run the guest, it is lost", file=sys.stderr)
        return result, link
    finally:
        guest.close()


def dirty_ratio_of(text: str) -> float:
    ratio = _float(text, "--dirty-ratio")
    if not 0.05 <= ratio <= 100:
        raise UsageError(f"--dirty-ratio must be within 0.05..100, got {ratio:g}")
    return ratio


def cmd_demo(args: argparse.Namespace) -> int:
    ratio: float | None = None
    auto = args.max_bandwidth.strip().lower() == AUTO_BANDWIDTH
    if auto:
        ratio = dirty_ratio_of(args.dirty_ratio)
        args.max_bandwidth = "0"  # replaced by the measured rate / ratio
    elif args.dirty_ratio != str(DEFAULT_DIRTY_RATIO):
        raise UsageError("--dirty-ratio only applies to --max-bandwidth auto")
    guest_cfg, cfg, policy, io_timeout, warmup = prepare_migration(args)
    link = (f"auto (guest dirty rate / {ratio:g})" if auto else
            "unlimited" if cfg.max_bandwidth_bps is None else args.max_bandwidth)
    print(f"autoconverge demo: {args.backend} guest, {guest_cfg.memory_bytes // 2 ** 20} MiB, "
          f"{guest_cfg.vcpus} vCPU(s), workload {guest_cfg.workload} over "
          f"{guest_cfg.working_set_bytes // 2 ** 20} MiB; policy {policy.name}, max-bandwidth "
          f"{link}, downtime-limit {cfg.downtime_limit_s * 1e3:.0f} ms", file=sys.stderr)
    try:
        result, extra = run_demo_once(args, guest_cfg, cfg, policy, io_timeout, warmup,
                                      dirty_ratio=ratio)
    except MigrationError as exc:
        print(f"autoconverge demo: {exc}", file=sys.stderr)
        return EXIT_VIOLATED
    return finish(args, result, extra)
