"""mDNS discovery between two peers, inside network namespaces this test creates.

Two namespaces joined by a veth pair form a private LAN; mDNS never touches the machine's real
interfaces. Needs root and iproute2 (CI has both): without them the test fails, it never skips.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, node_env, start_node

SUBNET = "10.231.{}.{}"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def lan() -> Iterator[tuple[str, str, str, str]]:
    """Two namespaces on one veth link: (ns_a, ip_a, ns_b, ip_b)."""
    # A random tag: runs side by side on one machine never share (or delete) a namespace or a
    # link; only what this run created is deleted ("netns add" fails on a taken name).
    tag = secrets.token_hex(3)
    ns_a, ns_b = f"p2pchat-a{tag}", f"p2pchat-b{tag}"
    veth_a, veth_b = f"p2pa{tag}", f"p2pb{tag}"
    octet = secrets.randbelow(250)
    ip_a, ip_b = SUBNET.format(octet, 1), SUBNET.format(octet, 2)
    created: list[str] = []
    veth_made = False
    try:
        for ns in (ns_a, ns_b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b)
        veth_made = True
        for ns, veth, ip in ((ns_a, veth_a, ip_a), (ns_b, veth_b, ip_b)):
            sh("ip", "link", "set", veth, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", veth)
            sh("ip", "-n", ns, "link", "set", veth, "up", "multicast", "on")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", veth)
        yield ns_a, ip_a, ns_b, ip_b
    finally:
        for ns in created:  # deleting a namespace deletes the veth end in it
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if veth_made:  # still in the root namespace if setup failed before moving it
            subprocess.run(["ip", "link", "del", veth_a], capture_output=True)


def test_two_peers_find_each_other_by_mdns_and_chat(
    tmp_path: Path, nodes: list[NodeProcess], lan: tuple[str, str, str, str]
) -> None:
    ns_a, ip_a, ns_b, ip_b = lan
    env = node_env(P2PCHAT_DISCOVERY__MDNS="true")
    peers = []
    for name, ns, ip in (("a", ns_a, ip_a), ("b", ns_b, ip_b)):
        node = start_node(
            tmp_path / name, "--json", "--listen", f"/ip4/{ip}/tcp/0", env=env, netns=ns
        )
        nodes.append(node)
        node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
        peers.append(node)
    a, b = peers
    # No bootstrap address was given: only mDNS can have brought them together.
    joined = a.next_event(lambda e: e["type"] == "peer" and e["change"] == "joined", timeout=60)
    assert joined["peer"] == b.peer_id
    b.next_event(lambda e: e["type"] == "peer" and e["peer"] == a.peer_id, timeout=60)
    assert a.wait_for("peer discovered")["remote"] == b.peer_id
    # B may have dialled A before A's own mDNS saw B: the notice can come before or after the
    # connection, so look at what was already shown and then wait.
    notice = f"discovered {b.peer_id[:6]}…{b.peer_id[-4:]} on the local network"
    if not any(e["type"] == "notice" and e["text"] == notice for e in a.drain_events()):
        a.next_event(lambda e: e["type"] == "notice" and e["text"] == notice, timeout=60)
    a.say("found you on the LAN")
    got = b.next_event(lambda e: e["type"] == "message", timeout=60)
    assert got["text"] == "found you on the LAN"
    assert got["sender"] == a.peer_id
