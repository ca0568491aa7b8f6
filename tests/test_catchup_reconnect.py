"""Catch-up on reconnect, without a restart: a running peer cut off from the network by a real
partition gets what it missed as soon as the network heals.

Two network namespaces joined by a veth pair: the archiver and the sending peer on one side
(10.78.0.1), the peer that gets cut off on the other (10.78.0.2). The cut is real: iptables in
the cut-off peer's namespace drops everything, and ``ss -K`` aborts the established TCP
connections on both sides, as a dead link eventually would. Nothing leaves the namespaces;
needs root, iproute2 and iptables (CI installs them), and fails without them.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, start_node_in, wait_metric
from tests.nat_lab import sh
from tests.test_archive import AWAY, caught_up, history_texts
from tests.test_autorelay import logged
from tests.test_chat import WAIT, is_message, wait_members

SIDE_A, SIDE_B = "10.78.0.1", "10.78.0.2"


@dataclass(frozen=True)
class Link:
    """Two namespaces, ``a`` and ``b``, joined by a veth pair that :meth:`cut` can sever."""

    a: str
    b: str

    def cut(self) -> None:
        """Drop all of ``b``'s traffic to and from ``a`` and abort their connections on both
        ends."""
        # Not loopback: the test reads the peer's metrics there.
        sh("ip", "netns", "exec", self.b, "iptables", "-I", "INPUT", "!", "-i", "lo", "-j", "DROP")
        sh("ip", "netns", "exec", self.b, "iptables", "-I", "OUTPUT", "!", "-o", "lo", "-j", "DROP")
        sh("ip", "netns", "exec", self.b, "ss", "-K", "dst", SIDE_A)
        sh("ip", "netns", "exec", self.a, "ss", "-K", "dst", SIDE_B)

    def heal(self) -> None:
        sh("ip", "netns", "exec", self.b, "iptables", "-F")


@pytest.fixture
def link() -> Iterator[Link]:
    # A random tag: runs side by side on one machine never share (or delete) a namespace, and
    # only the namespaces this run created are deleted ("netns add" fails on a taken name).
    tag = secrets.token_hex(3)
    built = Link(a=f"p2pc-ca{tag}", b=f"p2pc-cb{tag}")
    created: list[str] = []
    try:
        for ns in (built.a, built.b):
            sh("ip", "netns", "add", ns)
            created.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", built.a, "link", "add", f"vca{tag}", "type", "veth", "peer", f"vcb{tag}")
        sh("ip", "-n", built.a, "link", "set", f"vcb{tag}", "netns", built.b)
        for ns, dev, ip in ((built.a, f"vca{tag}", SIDE_A), (built.b, f"vcb{tag}", SIDE_B)):
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield built
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _chat_peer(
    path: Path, nodes: list[NodeProcess], ns: str, ip: str, *args: str, **env: str
) -> NodeProcess:
    node = start_node_in(ns, ip, path, nodes, "--json", *args, **env)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def test_a_peer_cut_off_while_running_catches_up_when_the_network_heals(
    link: Link,  # first: torn down after every process is gone
    tmp_path: Path,
    nodes: list[NodeProcess],
) -> None:
    store = start_node_in(link.a, SIDE_A, tmp_path / "archiver", nodes, "--role", "archiver")
    store_addr = next(a for a in store.ready["advertised"] if a.startswith(f"/ip4/{SIDE_A}/tcp/"))
    sender = _chat_peer(tmp_path / "sender", nodes, link.a, SIDE_A, "--bootstrap", store_addr)
    away = _chat_peer(
        tmp_path / "away",
        nodes,
        link.b,
        SIDE_B,
        "--bootstrap",
        store_addr,
        P2PCHAT_NODE__BOOTSTRAP_BACKOFF_MAX="2",  # re-dial soon after the network heals
    )
    wait_members(sender, 1)
    wait_members(away, 1)
    # Its start-up catch-up has asked the archiver (and found nothing new).
    logged(away, "history caught up", sources=[store.peer_id])
    sender.say("before the cut")
    away.next_event(is_message("before the cut"), timeout=WAIT)

    link.cut()
    deadline = time.monotonic() + WAIT
    while away.metric("p2pchat_room_peers") > 0 or store.metric("p2pchat_room_peers") > 1:
        assert time.monotonic() < deadline, "the cut was never noticed"
        time.sleep(0.2)
    missed = [f"during the cut {n}" for n in range(1, 11)]
    for text in missed:
        sender.say(text)
    wait_metric(store, "p2pchat_archive_inserted_total", 11)
    time.sleep(AWAY)  # past GossipSub's message cache, which would hand them out live

    link.heal()  # the same process re-dials the archiver, and catches up from it
    event = caught_up(away)
    assert event["count"] == 10 and store.peer_id in event["sources"]
    assert history_texts(away, 11) == ["before the cut", *missed]
    assert away.proc.poll() is None  # never restarted
