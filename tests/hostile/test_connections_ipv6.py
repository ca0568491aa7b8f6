"""Per-IP connection limits count IPv6 by /64: one host's many addresses share its slots.

In a network namespace of its own (nothing leaves it), a victim listens on an IPv6 address;
an attacker in the same namespace holds connections from 12 addresses of one /64, and one from
another /64. The victim admits 8 of the /64 (``connections.per_ip``) and the other one.
Needs root and iproute2, as the NAT lab (tests/nat_lab.py) does.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import NodeProcess, start_node
from tests.hostile.harness import WAIT
from tests.nat_lab import PREFIX, sh

VICTIM = "fd00:18:0:1::1"
FLOOD = [f"fd00:18:0:1::{n:x}" for n in range(0xA0, 0xAC)]  # 12 addresses, one /64
OTHER = "fd00:18:0:2::1"  # another /64

ATTACKER = """
import socket, sys, time
port, addrs = int(sys.argv[1]), sys.argv[2:]
held = []
for source in addrs:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect((%r, port))
    held.append(s)
print("connected", flush=True)
time.sleep(60)
"""


def test_ipv6_addresses_of_one_slash_64_share_its_per_ip_slots(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    netns = f"{PREFIX}-v6{secrets.token_hex(3)}"
    sh("ip", "netns", "add", netns)
    attacker: subprocess.Popen[str] | None = None
    try:
        sh("ip", "-n", netns, "link", "set", "lo", "up")
        for address in (VICTIM, *FLOOD, OTHER):
            sh("ip", "-n", netns, "-6", "addr", "add", f"{address}/128", "dev", "lo", "nodad")
        victim = start_node(
            tmp_path / "victim",
            "--listen",
            f"/ip6/{VICTIM}/tcp/0",
            "--metrics",
            "127.0.0.1:0",
            netns=netns,
        )
        nodes.append(victim)
        port = int(victim.ready["listen"][0].split("/")[4])
        attacker = subprocess.Popen(
            [
                *("ip", "netns", "exec", netns, sys.executable, "-c", ATTACKER % VICTIM),
                *(str(port), *FLOOD, OTHER),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert attacker.stdout is not None
        assert attacker.stdout.readline().strip() == "connected"
        deadline = time.monotonic() + WAIT
        while (refused := victim.metric("p2pchat_connections_refused_total", reason="per_ip")) < 4:
            assert time.monotonic() < deadline, refused
            time.sleep(0.2)
        time.sleep(1)  # nothing more is refused: the other /64 got its slot
        assert victim.metric("p2pchat_connections_refused_total", reason="per_ip") == 4
        assert victim.metric("p2pchat_connections_transient") == 9
    finally:
        if attacker is not None:
            attacker.kill()
            attacker.wait()
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
