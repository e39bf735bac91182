"""Two "hosts": source and destination in their own network namespaces, a veth link shaped
with ``tc tbf``, a real KVM guest migrated across it.

The test creates both namespaces, the veth pair and the TEST-NET-1 addresses (192.0.2.0/24,
reserved for documentation; they exist only inside the two namespaces) and deletes them
afterwards. Needs root and ``ip``/``tc`` (iproute2); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

pytestmark = [pytest.mark.kvm, pytest.mark.tools]

SRC_IP, DST_IP = "192.0.2.1", "192.0.2.2"
RATE_MBIT = 100


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=20)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' (iproute2) is not installed")
    tag = f"{os.getpid() % 100000}"
    ns_s, ns_d = f"acmig-src-{tag}", f"acmig-dst-{tag}"
    veth_s, veth_d = f"acs{tag}", f"acd{tag}"
    try:
        _run("ip", "netns", "add", ns_s)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace here: {exc.stderr.strip()}")
    try:
        _run("ip", "netns", "add", ns_d)
        _run("ip", "link", "add", veth_s, "type", "veth", "peer", "name", veth_d)
        _run("ip", "link", "set", veth_s, "netns", ns_s)
        _run("ip", "link", "set", veth_d, "netns", ns_d)
        for ns, dev, ip in ((ns_s, veth_s, SRC_IP), (ns_d, veth_d, DST_IP)):
            _run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # shape the source -> destination direction like a 100 Mbit/s link
        _run("ip", "netns", "exec", ns_s, "tc", "qdisc", "add", "dev", veth_s, "root", "tbf",
             "rate", f"{RATE_MBIT}mbit", "burst", "128kb", "latency", "50ms")
        yield ns_s, ns_d
    finally:
        for ns in (ns_s, ns_d):  # deleting a namespace also deletes its end of the veth
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def test_migration_across_a_shaped_veth_link(two_hosts: tuple[str, str]) -> None:
    ns_s, ns_d = two_hosts
    env = dict(os.environ, AUTOCONVERGE_KEY="netns-test-key-0123456789abcdef")
    cli = [sys.executable, "-m", "autoconverge"]
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "port")
        recv = subprocess.Popen(
            ["ip", "netns", "exec", ns_d, *cli, "receive", "--listen", f"{DST_IP}:0",
             "--port-file", port_file, "--json", "--accept-timeout", "60"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 20
            while not os.path.exists(port_file):
                assert recv.poll() is None, recv.communicate()[1]
                assert time.monotonic() < deadline, "receiver did not start"
                time.sleep(0.02)
            with open(port_file) as f:
                port = int(f.read())
            src = subprocess.run(
                ["ip", "netns", "exec", ns_s, *cli, "migrate", "--to", f"{DST_IP}:{port}",
                 "--policy", "predictive", "--memory", "32M", "--working-set", "4M",
                 "--max-bandwidth", "0", "--timeout", "60", "--warmup", "0.1", "--json"],
                env=env, capture_output=True, text=True, timeout=120)
            out, err = recv.communicate(timeout=60)
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.communicate()
    assert src.returncode == 0, src.stderr
    d = json.loads(src.stdout)
    assert d["converged"] and d["memory_hash_match"] and d["guest_continued"], d
    # the tc shaping is what the source measured (100 Mbit/s = 12.5 MB/s)
    assert d["bandwidth_bps"] <= RATE_MBIT * 1e6 / 8 * 1.15
    dest = json.loads(out.strip().splitlines()[-1])
    assert dest["status"] == "completed" and dest["memory_hash"] == d["source_hash"]
    assert f"authenticated source {SRC_IP}" in err
