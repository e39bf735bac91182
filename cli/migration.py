"""Commands ``receive`` and ``migrate``, and the argument parsing they share with ``demo``.

- ``autoconverge receive --listen HOST:PORT``: wait for one authenticated source, receive
  its guest, resume it, report (``--json``).
- ``autoconverge migrate --to HOST:PORT``: start the built-in busy guest here and migrate it.
  Exit codes (:data:`MIGRATE_EXIT_CODES`): 0 completed, 1 failed before the commit point (or
  the memory hashes differ), 2 usage, 3 in doubt, 4 unverified, 130 interrupted. In doubt,
  the paused source guest is kept until the operator decides (``--in-doubt keep``, default):
  SIGUSR1 resumes it here, SIGTERM/SIGINT discards it; ``--in-doubt discard`` discards it at
  once, saying so.

The pre-shared key comes from ``--key-file`` or the environment variable
``AUTOCONVERGE_KEY`` (at least 16 bytes; the same on both sides). Arguments are validated
up front: a bad size, rate, percentage or address is a usage error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from autoconverge.impl.migration.accept import DEFAULT_HANDSHAKE_TIMEOUT_S
from autoconverge.impl.migration.addresses import UNIX_PREFIX, parse_address
from autoconverge.impl.migration.backends import (
    BACKENDS,
    WORKLOADS,
    SourceGuest,
    dest_factory,
    make_source_guest,
)
from autoconverge.impl.migration.connections import DEFAULT_MAX_CONNECTIONS
from autoconverge.impl.migration.errors import MigrationError
from autoconverge.impl.migration.guest_config import GuestConfig
from autoconverge.impl.migration.handshake import MIN_KEY_BYTES
from autoconverge.impl.migration.host_memory import default_max_memory
from autoconverge.impl.migration.macs import MAC_NAMES
from autoconverge.impl.migration.messages import MAX_CONNECTIONS, MAX_VCPUS, Limits
from autoconverge.impl.migration.policy import (
    CH_EVERY,
    CH_INCREMENT,
    CH_START_ITERATION,
    POLICY_NAMES,
    make_policy,
)
from autoconverge.impl.migration.progress import (
    PLOT_MISSING,
    ProgressPrinter,
    plot_available,
    summary,
    write_plot,
)
from autoconverge.impl.migration.source import MigrationConfig, MigrationResult, MigrationSource
from autoconverge.impl.migration.transport import CONNECT_TIMEOUT_S
from autoconverge.spec import MAX_PERCENT

from .arguments import integer, output_file, seconds
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, EXIT_VIOLATED, UsageError

KEY_ENV = "AUTOCONVERGE_KEY"
EXIT_IN_DOUBT = 3
"""COMMIT left but the destination did not confirm it: the guest may run there; the source
copy is kept paused (``--in-doubt``)."""
EXIT_UNVERIFIED = 4
"""The destination runs the guest, but verification was asked for and no hash came back."""
OUTCOME_EXIT = {"completed": EXIT_OK, "unverified": EXIT_UNVERIFIED,
                "in_doubt": EXIT_IN_DOUBT, "mismatch": EXIT_VIOLATED, "aborted": EXIT_VIOLATED}
"""``migrate``'s (and ``demo``'s) exit code for each ``outcome`` of the result."""
MIGRATE_EXIT_CODES = (
    f"exit codes: {EXIT_OK} completed (the destination runs the guest; the memory hashes "
    f"match unless --no-verify); {EXIT_VIOLATED} failed, cancelled or timed out before the "
    f"commit point (the guest runs on here), or the memory hashes differ; {EXIT_USAGE} usage "
    f"error; {EXIT_IN_DOUBT} in doubt: COMMIT was sent but the destination did not confirm "
    f"it, so it may be running the guest; the source guest stays paused (see --in-doubt); "
    f"{EXIT_UNVERIFIED} unverified: the destination runs the guest, but verification was "
    f"asked for and no memory hash came back; {EXIT_INTERRUPTED} interrupted before the "
    f"migration started. The JSON result's \"outcome\" says the same.")
DEFAULT_PORT = 4444
DEFAULT_MAX_BANDWIDTH = 128 * 1024 * 1024  # QEMU's max-bandwidth default, bytes/s

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


# ------------------------------------------------------------------------------ validation
def parse_size(text: str, what: str = "size") -> int:
    """``4096``, ``64K``, ``256M``, ``1G``, ``2GiB`` (binary units) -> bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected a number with an optional unit "
                         f"K, M, G or T (powers of 1024), e.g. 256M")
    value = float(m.group(1)) * _UNITS[m.group(2).upper()]
    if value != int(value):
        raise UsageError(f"bad {what} {text!r}: not a whole number of bytes")
    return int(value)


def parse_rate(text: str, what: str = "rate") -> int:
    """``128M``, ``128M/s``, ``1G/s``; ``0`` means unlimited -> bytes per second."""
    t = text.strip()
    if t.lower().endswith("/s"):
        t = t[:-2]
    return parse_size(t, what)


def _check_range(v: float, lo: float, hi: float, what: str, unit: str = "") -> None:
    if not lo <= v <= hi:
        raise UsageError(f"{what} must be within {lo:g}..{hi:g}{unit}, got {v:g}{unit}")


def _float(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: expected a number") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise UsageError(f"bad {what} {text!r}")
    return v


def _address(text: str, what: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from None


KEY_FILE_MAX_BYTES = 4096


def load_key(key_file: str | None) -> bytes:
    """The pre-shared key from ``key_file`` or ``$AUTOCONVERGE_KEY``; UsageError otherwise.

    A key file must be a regular file that only its owner can access (like ``ssh`` private
    keys: no group or other permission bits) and hold at least 16 bytes (at most 4 KiB)
    after stripping surrounding whitespace.
    """
    if key_file:
        try:
            st = os.stat(key_file)
            if not stat.S_ISREG(st.st_mode):  # (a FIFO would block the open)
                raise UsageError(f"key file {key_file} is not a regular file")
            if st.st_mode & 0o077:
                raise UsageError(
                    f"key file {key_file} is accessible by group or others (mode "
                    f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {key_file}")
            with open(key_file, "rb") as f:
                raw = f.read(KEY_FILE_MAX_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"cannot read key file {key_file}: {exc.strerror}") from None
        if len(raw) > KEY_FILE_MAX_BYTES:
            raise UsageError(f"key file {key_file} is longer than {KEY_FILE_MAX_BYTES} bytes: "
                             f"not a key file?")
        key, source = raw.strip(), f"key file {key_file}"
    elif os.environ.get(KEY_ENV):
        key, source = os.environ[KEY_ENV].encode(), f"${KEY_ENV}"
    else:
        raise UsageError(f"no key: pass --key-file FILE or set {KEY_ENV} (the same secret "
                         f"of at least {MIN_KEY_BYTES} bytes on both sides)")
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"the key must have at least {MIN_KEY_BYTES} bytes, got {len(key)} "
                         f"from {source}")
    return key


def guest_config(args: argparse.Namespace) -> GuestConfig:
    mem = parse_size(args.memory, "--memory")
    if mem % 4096 or not 4 * 1024 * 1024 <= mem <= 64 * 1024 ** 3:
        raise UsageError(f"--memory must be a multiple of 4 KiB within 4M..64G, got {mem}")
    ws = parse_size(args.working_set, "--working-set")
    if not 4096 <= ws <= mem // 2:
        raise UsageError(f"--working-set must be within 4K..half of --memory "
                         f"({mem // 2} bytes), got {ws}")
    _check_range(args.vcpus, 1, min(MAX_VCPUS, 64), "--vcpus")
    return GuestConfig(mem, args.vcpus, args.workload, ws)


def migration_config(args: argparse.Namespace) -> MigrationConfig:
    bw = parse_rate(args.max_bandwidth, "--max-bandwidth")
    if bw != 0 and bw < 64 * 1024:
        raise UsageError(f"--max-bandwidth must be 0 (unlimited) or at least 64K/s, got {bw}")
    downtime = _float(args.downtime_limit, "--downtime-limit")
    _check_range(downtime, 1, 60_000, "--downtime-limit", " ms")
    timeout = _float(args.timeout, "--timeout")
    _check_range(timeout, 0.1, 7 * 86400, "--timeout", " s")
    deadline = None
    if getattr(args, "deadline", None) is not None:
        deadline = _float(args.deadline, "--deadline")
        _check_range(deadline, 0.1, 7 * 86400, "--deadline", " s")
        if deadline * 1e3 <= downtime:
            raise UsageError(f"--deadline must be longer than --downtime-limit, got "
                             f"{deadline:g} s")
    return MigrationConfig(downtime_limit_s=downtime / 1e3,
                           max_bandwidth_bps=float(bw) if bw else None,
                           timeout_s=timeout, timeout_strategy=args.timeout_strategy,
                           verify=not args.no_verify, mac=getattr(args, "mac", "gmac"),
                           deadline_s=deadline, connections=getattr(args, "connections", 1))


def _int(text: str | None, what: str, lo: int, hi: int) -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise UsageError(f"bad {what} {text!r}: expected an integer") from None
    _check_range(v, lo, hi, what)
    return v


def policy_of(args: argparse.Namespace) -> Any:
    _check_range(args.max_cpu_throttle, 1, MAX_PERCENT, "--max-cpu-throttle", " %")
    if args.cpu_throttle_tailslow and args.policy != "qemu":
        raise UsageError("--cpu-throttle-tailslow only applies to --policy qemu")
    start = _int(args.cpu_throttle_start_iteration, "--cpu-throttle-start-iteration", 1, 10_000)
    every = _int(args.cpu_throttle_every, "--cpu-throttle-every", 1, 10_000)
    increment = _int(args.cpu_throttle_increment, "--cpu-throttle-increment", 1, MAX_PERCENT)
    if (start is not None or every is not None) and args.policy != "ch":
        raise UsageError("--cpu-throttle-start-iteration and --cpu-throttle-every only apply "
                         "to --policy ch")
    if increment is not None and args.policy not in ("ch", "qemu"):
        raise UsageError("--cpu-throttle-increment only applies to --policy ch or qemu")
    return make_policy(args.policy, tailslow=args.cpu_throttle_tailslow,
                       max_cpu_throttle=args.max_cpu_throttle,
                       start_iteration=CH_START_ITERATION if start is None else start,
                       every=CH_EVERY if every is None else every, increment=increment)


def _io_timeout(args: argparse.Namespace) -> float:
    v = _float(args.io_timeout, "--io-timeout")
    _check_range(v, 0.5, 3600, "--io-timeout", " s")
    return v


# ------------------------------------------------------------------------------ options
def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", metavar="FILE",
                   help=f"file holding the pre-shared key (default: ${KEY_ENV})")


def add_guest_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("guest")
    g.add_argument("--backend", choices=BACKENDS, default="kvm",
                   help="kvm: a real KVM guest (default); sim: simulated guest, no KVM needed")
    g.add_argument("--memory", default="256M", metavar="SIZE", help="guest memory (256M)")
    g.add_argument("--vcpus", type=int, default=1, metavar="N", help="vCPUs (1)")
    g.add_argument("--workload", choices=WORKLOADS, default="worst",
                   help="how fast the guest dirties memory (worst)")
    g.add_argument("--working-set", default="64M", metavar="SIZE",
                   help="memory the guest keeps writing (64M)")
    g.add_argument("--warmup", default="0.3", metavar="S",
                   help="seconds the guest runs before migrating (0.3)")


def add_migration_arguments(p: argparse.ArgumentParser, default_policy: str,
                   default_timeout: str) -> None:
    g = p.add_argument_group("migration")
    g.add_argument("--policy", choices=POLICY_NAMES, default=default_policy,
                   help=f"throttle policy ({default_policy})")
    g.add_argument("--max-bandwidth", default=f"{DEFAULT_MAX_BANDWIDTH // 1024 ** 2}M",
                   metavar="RATE", help="cap in bytes/s, e.g. 128M or 1G/s; 0 = unlimited "
                   "(128M, QEMU's default)")
    g.add_argument("--downtime-limit", default="300", metavar="MS",
                   help="switch over when the rest fits this downtime (300 ms)")
    g.add_argument("--timeout", default=default_timeout, metavar="S",
                   help=f"give up converging after S seconds ({default_timeout})")
    g.add_argument("--timeout-strategy", choices=("cancel", "ignore"), default="cancel",
                   help="on timeout: cancel (guest keeps running here) or ignore")
    g.add_argument("--max-cpu-throttle", type=int, default=MAX_PERCENT, metavar="PCT",
                   help="highest throttle any policy may set (99)")
    g.add_argument("--cpu-throttle-tailslow", action="store_true",
                   help="qemu policy: smaller last steps")
    g.add_argument("--cpu-throttle-start-iteration", metavar="N",
                   help=f"ch policy: first throttled delta iteration ({CH_START_ITERATION}, "
                   "the seed PR's description; one of its commits says 2)")
    g.add_argument("--cpu-throttle-every", metavar="N",
                   help=f"ch policy: step the throttle every N delta iterations ({CH_EVERY})")
    g.add_argument("--cpu-throttle-increment", metavar="PCT",
                   help=f"ch and qemu policies: the step in percent ({CH_INCREMENT}; ch also "
                   "starts at it)")
    g.add_argument("--deadline", metavar="S",
                   help="finish within S seconds with the least guest CPU stolen (policy "
                   "predictive plans for it); infeasible even at --max-cpu-throttle, or "
                   "passed: --timeout-strategy applies")
    g.add_argument("--no-verify", action="store_true",
                   help="skip the memory-hash comparison after the switch-over")
    g.add_argument("--io-timeout", default="30", metavar="S",
                   help="give up when the peer is silent this long (30)")
    g.add_argument("--mac", choices=MAC_NAMES, default="gmac",
                   help="per-frame MAC after the handshake: gmac (AES-256-GMAC, default) or "
                   "hmac (HMAC-SHA256, ~10x slower)")
    g.add_argument("--connections", type=integer(1, MAX_CONNECTIONS), default=1, metavar="N",
                   help=f"connections to the receiver, 1..{MAX_CONNECTIONS} (1): each "
                   "authenticated on its own, the pages of every pass spread over all, "
                   "control messages on the first")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw remaining dirty memory and throttle %% over time (matplotlib)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("receive", help="receive one migrating guest (destination side)",
                       description="Listen, authenticate the source, receive its guest and "
                       "resume it here.")
    p.add_argument("--listen", default=f"127.0.0.1:{DEFAULT_PORT}", metavar="HOST:PORT",
                   help=f"address to listen on (127.0.0.1:{DEFAULT_PORT}; port 0 = any; "
                   f"unix:PATH = a Unix-domain socket, same host only)")
    _add_key(p)
    p.add_argument("--backend", choices=BACKENDS, default="kvm")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="largest guest accepted (default: half of MemAvailable in "
                   "/proc/meminfo at start-up, halved again for the memory-hash mirror "
                   "unless --no-verify); a guest that does not fit in MemAvailable when it "
                   "arrives is refused whatever this says")
    p.add_argument("--max-vcpus", type=int, default=64, metavar="N",
                   help="most vCPUs accepted (64)")
    p.add_argument("--connections", type=integer(1, MAX_CONNECTIONS),
                   default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help="most connections one source may use (the source's --connections; "
                   f"1..{MAX_CONNECTIONS}, default {DEFAULT_MAX_CONNECTIONS}: each holds a "
                   "frame buffer of up to 16 MiB here)")
    p.add_argument("--run-after", default="0.5", metavar="S",
                   help="let the guest run S seconds before reporting and exiting (0.5)")
    p.add_argument("--accept-timeout", default="600", metavar="S",
                   help="give up when no source has authenticated S seconds after "
                   "listening; handshakes still in progress then are dropped (600)")
    p.add_argument("--handshake-timeout", default=DEFAULT_HANDSHAKE_TIMEOUT_S,
                   type=seconds(0.0, 3600.0), metavar="S",
                   help="refuse a connection that has not authenticated S seconds after it "
                   "was accepted, however much it trickles "
                   f"({DEFAULT_HANDSHAKE_TIMEOUT_S:g}); handshakes run concurrently, the "
                   "first source to authenticate wins")
    p.add_argument("--io-timeout", default="30", metavar="S",
                   help="after authentication: give up when the source is silent this "
                   "long (30)")
    p.add_argument("--no-verify", action="store_true", help="skip the memory hash")
    p.add_argument("--port-file", metavar="FILE", type=output_file(),
                   help="write the bound port to FILE (its folder must exist)")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser("migrate", help="start the built-in guest and migrate it (source side)",
                       description="Start the built-in busy guest and migrate it to a "
                       "receiver with pre-copy and a throttle policy.",
                       epilog=MIGRATE_EXIT_CODES)
    p.add_argument("--to", required=True, metavar="HOST:PORT",
                   help="the receiver's address ([IPv6]:PORT, or unix:PATH for a receiver "
                   "on this host)")
    p.add_argument("--connect-timeout", default=CONNECT_TIMEOUT_S, type=seconds(0.0, 600.0),
                   metavar="S", help=f"give up connecting after S seconds ({CONNECT_TIMEOUT_S:g})")
    _add_key(p)
    p.add_argument("--in-doubt", choices=("keep", "discard"), default="keep",
                   help="when the migration ends in doubt (COMMIT sent, not confirmed: the "
                   "destination may be running the guest; exit 3): keep (default) keeps the "
                   "paused source guest in this process after printing the result, until "
                   "SIGUSR1 resumes it here (do that only once the destination is known not "
                   "to run it) or SIGTERM/Ctrl-C discards it; discard discards it at once")
    add_guest_arguments(p)
    add_migration_arguments(p, "predictive", "3600")
    p.set_defaults(func=cmd_migrate)


# ------------------------------------------------------------------------------ receive
def cmd_receive(args: argparse.Namespace) -> int:
    host, port = _address(args.listen, "--listen")
    key = load_key(args.key_file)
    verify = not args.no_verify
    if args.max_memory is None:
        max_mem = default_max_memory(verify)
    else:
        max_mem = parse_size(args.max_memory, "--max-memory")
        _check_range(max_mem, 4096, 1 << 46, "--max-memory")
    _check_range(args.max_vcpus, 1, MAX_VCPUS, "--max-vcpus")
    run_after = _float(args.run_after, "--run-after")
    _check_range(run_after, 0, 3600, "--run-after", " s")
    accept_timeout = _float(args.accept_timeout, "--accept-timeout")
    _check_range(accept_timeout, 0.1, 7 * 86400, "--accept-timeout", " s")
    handshake_timeout: float = args.handshake_timeout
    io_timeout = _io_timeout(args)
    from autoconverge.impl.migration.runner import serve_one
    from autoconverge.impl.migration.transport import host_port, listen, unlink_unix

    factory, kinds = dest_factory(args.backend)
    limits = Limits(max_memory_size=max_mem, max_vcpus=args.max_vcpus, guest_kinds=kinds)
    try:
        sock = listen(host, port)
    except MigrationError as exc:
        raise UsageError(f"--listen: {exc}") from None
    unix = host.startswith(UNIX_PREFIX)
    try:
        bound = 0 if unix else sock.getsockname()[1]
        if args.port_file:
            _write_port_file(args.port_file, bound)
    except BaseException:
        sock.close()
        unlink_unix(host)
        raise
    log = _logger("receive")
    log(f"listening on {host if unix else host_port(host, bound)} (guests up to "
        f"{max_mem / 1024 ** 2:.0f} MiB{'' if args.max_memory else ' by default'}, "
        f"handshake timeout {handshake_timeout:g} s)")
    ev = threading.Event()
    with sigint_sets(ev):
        try:
            res = serve_one(sock, key, factory, limits, run_after_s=run_after,
                            verify=verify, io_timeout_s=io_timeout,
                            accept_timeout_s=accept_timeout,
                            handshake_timeout_s=handshake_timeout, log=log, cancel_event=ev,
                            max_connections=args.connections)
        finally:
            sock.close()
            unlink_unix(host)
    if res.vm is not None:
        res.vm.close()
    if res.status == "completed":
        log(f"guest resumed here after {res.iterations} delta iterations, "
            f"{res.pages_received} pages; counters {res.counters_at_resume} -> "
            f"{res.counters_after}" + (f" ({res.error})" if res.error else ""))
    else:
        log(f"migration {res.status}: {res.error}; the VM was discarded")
    if args.json:
        out = {"status": res.status, "error": res.error, "error_type": res.error_type,
               "peer": res.peer, "handshake_s": res.handshake_s,
               "refused_peers": res.refused_peers, "iterations": res.iterations,
               "pages_received": res.pages_received, "bytes_received": res.bytes_received,
               "memory_hash": res.memory_hash, "counters_at_resume": res.counters_at_resume,
               "counters_after": res.counters_after, "prepare_ms": res.prepare_ms,
               "trace": res.trace}
        print(json.dumps(out))
    return EXIT_OK if res.status == "completed" else EXIT_VIOLATED


def _write_port_file(path: str, port: int) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"--port-file: cannot write {path}: {exc.strerror or exc}") from None


def _logger(name: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"autoconverge {name}: {msg}", file=sys.stderr, flush=True)

    return log


@contextmanager
def sigint_sets(ev: threading.Event, extra: Callable[[], None] | None = None,
                cancel: Callable[[str], None] | None = None) -> Iterator[None]:
    """While inside: Ctrl-C (and SIGTERM) requests a clean cancel instead of an exception:
    ``cancel(reason)`` if given (the migration source's, which knows its commit point),
    else the event is set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if cancel is not None:
            cancel(f"interrupted ({signal.Signals(signum).name})")
        else:
            ev.set()
        if extra is not None:
            extra()

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


# ------------------------------------------------------------------------------ migrate
def prepare_migration(args: argparse.Namespace) -> tuple[GuestConfig, MigrationConfig, Any,
                                                           float, float]:
    guest_cfg = guest_config(args)
    cfg = migration_config(args)
    policy = policy_of(args)
    io_timeout = _io_timeout(args)
    warmup = _float(args.warmup, "--warmup")
    _check_range(warmup, 0, 600, "--warmup", " s")
    if args.plot:
        if not args.plot.lower().endswith(".png"):
            raise UsageError("--plot needs a file name ending in .png")
        if not plot_available():
            raise UsageError(PLOT_MISSING)
        d = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(d):
            raise UsageError(f"--plot: directory {d} does not exist")
    return guest_cfg, cfg, policy, io_timeout, warmup


def start_guest(args: argparse.Namespace, guest_cfg: GuestConfig) -> SourceGuest:
    try:
        return make_source_guest(args.backend, guest_cfg)
    except Exception as exc:
        raise UsageError(f"cannot start the {args.backend} guest: {exc}") from None


def migrate_guest(args: argparse.Namespace, guest: SourceGuest, host: str, port: int,
                  key: bytes, cfg: MigrationConfig, policy: Any, io_timeout: float,
                  warmup: float) -> MigrationResult:
    """Migrate the running ``guest``; Ctrl-C/SIGTERM cancel it until the commit point and
    are ignored (with a line on stderr) after it."""
    from autoconverge.impl.migration.runner import migrate_to

    if warmup:
        time.sleep(warmup)
    printer = ProgressPrinter(page_size=guest.vm.page_size)
    ev = threading.Event()
    box: dict[str, MigrationSource] = {}
    log = _logger(getattr(args, "command", "migrate"))

    def cancel(reason: str) -> None:
        src = box.get("src")
        if src is None:
            ev.set()
        elif not src.cancel(reason):
            log(f"{reason}: ignored, COMMIT was sent (the guest is the destination's now); "
                f"waiting for its answer")

    connect_timeout = getattr(args, "connect_timeout", CONNECT_TIMEOUT_S)  # (not in demo)
    with sigint_sets(ev, cancel=cancel):
        result = migrate_to(host, port, key, guest.vm, policy, guest.throttle_factory,
                            cfg, io_timeout_s=io_timeout, on_progress=printer,
                            cancel_event=ev, connect_timeout_s=connect_timeout,
                            on_source=lambda src: box.__setitem__("src", src))
    printer.finish()
    return result


def finish(args: argparse.Namespace, result: MigrationResult,
            extra: dict[str, Any] | None = None) -> int:
    """Print the summary (stderr), the plot and the JSON (stdout); the exit code of the
    result's ``outcome`` (:data:`OUTCOME_EXIT`)."""
    print(summary(result), file=sys.stderr, flush=True)
    if args.plot:
        try:
            write_plot([result], args.plot)
            print(f"plot written to {args.plot}", file=sys.stderr)
        except Exception as exc:
            print(f"autoconverge: plot failed: {exc}", file=sys.stderr)
    if args.json:
        d = result.to_dict()
        d.update(extra or {})
        print(json.dumps(d), flush=True)
    return OUTCOME_EXIT.get(result.outcome, EXIT_VIOLATED)


def hold_in_doubt(vm: Any, mode: str, log: Callable[[str], None]) -> None:
    """The migration is in doubt and the paused source guest is ``vm``: never destroy it
    silently. ``keep``: wait for the operator - SIGUSR1 resumes it here, SIGTERM/SIGINT end
    (discarding it, or stopping it if it was resumed). ``discard``: say so and return."""
    if mode == "discard" or threading.current_thread() is not threading.main_thread():
        why = "--in-doubt discard" if mode == "discard" else "no signals outside the main thread"
        log(f"IN DOUBT: discarding the paused source guest ({why}); if the destination does "
            f"not run the guest, it is lost")
        return
    pid = os.getpid()
    resume, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        (resume if signum == signal.SIGUSR1 else stop).set()

    old = {sig: signal.signal(sig, on_signal)
           for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    try:
        log(f"IN DOUBT: the source guest is kept paused in this process (pid {pid}). Once "
            f"the destination is known not to run the guest, resume it here: kill -USR1 "
            f"{pid}; to discard it: kill -TERM {pid} (or Ctrl-C)")
        resumed = False
        while not stop.is_set():
            if resume.is_set() and not resumed:
                resume.clear()
                try:
                    vm.resume()
                except Exception as exc:
                    log(f"resuming the source guest failed: {exc}; it stays paused "
                        f"(SIGUSR1 tries again)")
                else:
                    resumed = True
                    log("resumed the source guest here on SIGUSR1; it runs in this process "
                        "until SIGTERM or Ctrl-C")
            stop.wait(0.1)
        log("stopping the source guest (it ran here since SIGUSR1)" if resumed else
            "discarding the paused source guest on the operator's request")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cmd_migrate(args: argparse.Namespace) -> int:
    host, port = _address(args.to, "--to")
    if port == 0 and not host.startswith(UNIX_PREFIX):
        raise UsageError("--to: port 0 is not a receiver's port")
    key = load_key(args.key_file)
    guest_cfg, cfg, policy, io_timeout, warmup = prepare_migration(args)
    guest = start_guest(args, guest_cfg)
    try:
        result = migrate_guest(args, guest, host, port, key, cfg, policy, io_timeout, warmup)
        code = finish(args, result)
        if result.outcome == "in_doubt":
            hold_in_doubt(guest.vm, args.in_doubt, _logger("migrate"))
        return code
    finally:
        guest.close()
