"""Checks shared by the NAT suite's modules (one module per NAT type)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.nat.lab import PEERS, PUBLIC, ROUTERS, LabPeer, Topology, conntrack, probe
from tests.test_autorelay import chat_both_ways, connection_kind

PUNCH_WAIT = 120.0  # identify, a direct dial, three rounds of up to 5 s, on a loaded machine
RELAY_WAIT = 30.0  # a few GossipSub heartbeats (1 s each) on a loaded machine


def peers(lab: Topology) -> tuple[LabPeer, LabPeer]:
    return lab.peers["peer-a"], lab.peers["peer-b"]


def met_through_the_relay(lab: Topology) -> tuple[LabPeer, LabPeer]:
    """The two peers, once shown to have met through the relay: whoever dialled did it
    through the other's circuit address, and the relay opened the relayed connection."""
    a, b = peers(lab)
    metric = "libp2p_swarm_connections_opened_total"
    assert sum(node.metric(metric, dir="outbound", transport="p2p-circuit") for node in (a, b))
    assert lab.metric("relay", "libp2p_relaysvc_connections_total", type="opened") >= 1
    return a, b


def logged_by_either(
    nodes: tuple[LabPeer, LabPeer], event: str, timeout: float = PUNCH_WAIT, **fields: Any
) -> tuple[LabPeer, dict[str, Any]]:
    """The first of ``nodes`` whose logs hold ``event`` about the other one with these
    ``fields``, and that entry."""
    deadline = time.monotonic() + timeout
    while True:
        for node, other in (nodes, nodes[::-1]):
            found = logged(node, event, peer=other.peer_id, **fields)
            if found:
                return node, found[0]
        assert time.monotonic() < deadline, f"no {event!r} {fields} logged within {timeout}s"
        time.sleep(0.2)


def logged(node: LabPeer, event: str, **fields: Any) -> list[dict[str, Any]]:
    """Every entry ``event`` with these ``fields`` that ``node`` has logged so far."""
    return [
        entry
        for entry in node.read_logs()
        if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items())
    ]


def chat_over(lab: Topology, kind: str, there: str, back: str) -> float:
    """Chat both ways while ``/peers`` on each side shows the other ``kind`` (direct or
    relayed); the bytes the relay carried meanwhile (for a relayed chat, until it carried
    some, within :data:`RELAY_WAIT`)."""
    a, b = peers(lab)
    assert connection_kind(a, b.peer_id) == kind
    assert connection_kind(b, a.peer_id) == kind
    relayed_before = lab.metric("relay", "libp2p_relaysvc_data_transferred_bytes_total")
    chat_both_ways(a, b, there, back)
    assert connection_kind(a, b.peer_id) == kind
    relayed = lab.metric("relay", "libp2p_relaysvc_data_transferred_bytes_total") - relayed_before
    deadline = time.monotonic() + RELAY_WAIT
    while kind == "relayed" and relayed == 0 and time.monotonic() < deadline:
        # The lab's archiver is in the room and reachable by both, so a message may reach the
        # other peer through it first; the relayed connection then carries the message's
        # gossip (or the message itself) at the next heartbeat.
        time.sleep(0.5)
        relayed = (
            lab.metric("relay", "libp2p_relaysvc_data_transferred_bytes_total") - relayed_before
        )
    return relayed


def mappings(lab: Topology, router: str, peer: str) -> list[tuple[int, int]]:
    """(port on the LAN, port outside) of the router's TCP mappings of ``peer``'s connections
    to the other router (the hole-punch dials, and the direct connection if one opened)."""
    other = next(r for r in ROUTERS if r != router)
    inside = f"src={lab.ip(peer)} dst={lab.ip(other)} "
    found = []
    for entry in conntrack(lab, router):
        if " tcp " not in entry or inside not in entry:
            continue
        # The original direction's ports come first (the LAN side), the reply's last: its
        # destination port is the one the router maps the connection to outside.
        sports = [part[6:] for part in entry.split() if part.startswith("sport=")]
        dports = [part[6:] for part in entry.split() if part.startswith("dport=")]
        if len(sports) == 2 and len(dports) == 2:
            found.append((int(sports[0]), int(dports[1])))
    return found


def mapped_listen_port(lab: Topology, peer: str, router: str) -> int:
    """The port ``router`` maps a dial from ``peer``'s listen port to, outside: a dial like a
    hole punch's (from the listen port, to the other router, here on a port where nothing
    answers, so that it never collides with a real connection), read from the router's
    connection tracking."""
    other = next(r for r in ROUTERS if r != router)
    port, target = lab.port(peer), 4999
    code = (
        "import socket\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n"
        f"s.bind(('0.0.0.0', {port}))\n"
        "s.settimeout(2)\n"
        "try:\n"
        f"    s.connect(('{lab.ip(other)}', {target}))\n"
        "except OSError:\n"
        "    pass\n"
    )
    lab.exec(peer, "python3", "-c", code)
    for entry in conntrack(lab, router):
        if f"dst={lab.ip(other)} sport={port} dport={target} " in entry:
            return int([part[6:] for part in entry.split() if part.startswith("dport=")][-1])
    raise AssertionError(f"{router} tracks no dial from {peer}:{port}")


def check_isolation(lab: Topology) -> None:
    """Nothing on the internet can open a connection to a peer: not to its LAN address (its
    listen port, its metrics port), not to its router's outside address on its port; while
    the peers reach the internet, and the internet reaches its own nodes."""
    targets: dict[str, list[tuple[str, int]]] = {}
    for peer, router in (("peer-a", "router-a"), ("peer-b", "router-b")):
        port = lab.port(peer)
        targets[peer] = [(lab.ip(peer), port), (lab.ip(peer), 9464), (lab.ip(router), port)]
    jobs: dict[str, tuple[str, list[tuple[str, int]]]] = {
        source: (source, targets["peer-a"] + targets["peer-b"]) for source in PUBLIC
    }
    # The other peer's router is on the internet too.
    jobs["router-b -> peer-a"] = ("router-b", targets["peer-a"])
    jobs["router-a -> peer-b"] = ("router-a", targets["peer-b"])
    # Controls: the probes can connect where something listens and a path exists.
    relay = (lab.ip("relay"), lab.port("relay"))
    jobs["control: relay -> bootstrap"] = ("relay", [(lab.ip("bootstrap"), 4001)])
    jobs["control: peer-a -> relay"] = ("peer-a", [relay])
    jobs["control: peer-b -> relay"] = ("peer-b", [relay])
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = {
            name: pool.submit(probe, lab, source, dialled)
            for name, (source, dialled) in jobs.items()
        }
        outcomes = {name: future.result() for name, future in results.items()}
    for name, outcome in outcomes.items():
        if name.startswith("control:"):
            assert set(outcome.values()) == {"connected"}, (name, outcome)
        else:
            reached = [target for target, result in outcome.items() if result == "connected"]
            assert not reached, f"{name} reached {reached}: {outcome}"
    # The public nodes tried to reach the peers too (AutoNAT dial-backs) and could not: each
    # peer knows it is not reachable.
    for peer in PEERS:
        assert lab.metric(peer, "libp2p_autonat_reachability_status") == 2, peer
