"""Auto-relay and chat over relayed connections, with real processes on 127.0.0.1.

A peer told to use relays (``autorelay.mode: on``; in the field AutoNAT's "private" verdict
decides) reserves a slot, advertises its circuit address, and is reached through it: by a peer
given only that address, and by a peer that finds it through the DHT while its direct address
is dead. When its relay is killed it moves to another one.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import time
from pathlib import Path
from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.peer.peerstore import create_signed_peer_record
from libp2p.pubsub import gossipsub as pubsub_utils
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.utils import maybe_consume_signed_record as library_maybe_consume
from p2pchat.node.p2p import pubsub as _patches  # noqa: F401  (applies the host layer's fixes)

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.test_chat import WAIT, chat_peer, is_message, wait_members
from tests.test_host import running_host

# Chat-friendly relay settings, as the README recommends: GossipSub's heartbeats and a busy room
# would exhaust go-libp2p's 2 min / 128 KiB per circuit.
CHAT_FRIENDLY = {
    "P2PCHAT_RELAY__CIRCUIT_DURATION": "3600",
    "P2PCHAT_RELAY__CIRCUIT_DATA": "67108864",
}


def relay_node(path: Path, nodes: list[NodeProcess], *roles: str, **env: str) -> NodeProcess:
    """A node of ``roles`` (the relay by default) with chat-friendly relay settings and ``env``."""
    node = start_node(
        path, "--role", ",".join(roles or ("relay",)), env=node_env(**{**CHAT_FRIENDLY, **env})
    )
    nodes.append(node)
    return node


def relayed_peer(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    """A --json chat peer that reserves relay slots whatever AutoNAT says."""
    node = start_node(path, "--json", *args, env=node_env(P2PCHAT_AUTORELAY__MODE="on", **env))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def logged(node: NodeProcess, event: str, timeout: float = WAIT, **fields: Any) -> dict[str, Any]:
    """The first log entry ``event`` with these ``fields``, waiting for it if need be."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in node.log:
            if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
                return entry
        assert time.monotonic() < deadline, (
            f"no {event!r} {fields} logged within {timeout}s; its last warnings: "
            f"{[e for e in node.log if e.get('level') in ('warning', 'error')][-5:]}"
        )
        try:
            line = node.lines.get(timeout=0.2)
        except queue.Empty:
            continue
        with contextlib.suppress(json.JSONDecodeError):
            node.log.append(json.loads(line))


def unreachable_peer(path: Path, nodes: list[NodeProcess], circuit: str) -> NodeProcess:
    """A --json chat peer that knows only ``circuit`` (a peer's circuit address) and cannot be
    dialled (it announces a dead port, reserves no relay slot, punches no hole): every
    connection it has to that peer runs through the relay."""
    return chat_peer(
        path,
        nodes,
        "--bootstrap",
        circuit,
        env=node_env(
            P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
            P2PCHAT_AUTORELAY__MODE="off",
            P2PCHAT_HOLEPUNCH__ENABLED="false",
        ),
    )


def tcp_circuit(node: NodeProcess, relay: NodeProcess) -> str:
    """``node``'s TCP circuit address through ``relay``, once it holds a reservation there."""
    addrs = logged(node, "relay reservation", relay=relay.peer_id)["addrs"]
    return next(a for a in addrs if a.startswith("/ip4/127.0.0.1/tcp/") and "/ws/" not in a)


def command(node: NodeProcess, line: str, name: str) -> dict[str, Any]:
    node.say(line)
    event = node.next_event(lambda e: e["type"] == "output" and e["command"] == name)
    return dict(event["data"])


def chat_both_ways(a: NodeProcess, b: NodeProcess, there: str, back: str) -> None:
    """Once each sees the other in the room, ``b`` says ``there`` and ``a`` receives it from
    ``b``; then ``a`` says ``back`` and ``b`` receives it from ``a``."""
    wait_members(a, 1)
    wait_members(b, 1)
    b.say(there)
    assert a.next_event(is_message(there), timeout=WAIT)["sender"] == b.peer_id
    a.say(back)
    assert b.next_event(is_message(back), timeout=WAIT)["sender"] == a.peer_id


def connection_kind(node: NodeProcess, peer: str) -> str:
    """``direct`` or ``relayed``: how ``/peers`` on ``node`` shows its connection to ``peer``."""
    peers = command(node, "/peers", "peers")
    return str({p["peer"]: p["connection"] for p in peers["peers"]}[peer])


def dead_port() -> int:
    """A loopback TCP port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_peers_chat_through_a_relay(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    relay = relay_node(tmp_path / "relay", nodes)
    # On loopback A could dial B directly: no upgrade here (see the next test, and
    # tests/test_holepunch.py for hole punching through NAT).
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    circuit = tcp_circuit(a, relay)
    assert circuit == f"{relay.addr()}/p2p-circuit"
    # B knows nothing but A's address through the relay.
    b = start_node(tmp_path / "b", "--json", "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    nodes.append(b)
    chat_both_ways(a, b, "hello through the relay", "and back")
    assert connection_kind(b, a.peer_id) == "relayed"
    info = command(a, "/info", "info")
    assert f"{circuit}/p2p/{a.peer_id}" in info["advertised"]
    assert info["relays"] == [relay.peer_id]
    assert relay.metric("libp2p_relaysvc_connections_total", type="opened") >= 1
    assert a.metric("p2pchat_autorelay_reservations") == 1
    assert a.metric("libp2p_autorelay_relay_addresses_count") >= 1
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1


def test_a_relayed_connection_to_a_dialable_peer_becomes_direct(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # DCUtR's first step: the peer that received the relayed connection dials the other's
    # advertised address; no hole punch is needed, and chat moves to the direct connection.
    relay = relay_node(tmp_path / "relay", nodes)
    a = relayed_peer(tmp_path / "a", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    circuit = f"{tcp_circuit(a, relay)}/p2p/{a.peer_id}"
    b = start_node(tmp_path / "b", "--json", "--bootstrap", circuit)
    nodes.append(b)
    logged(a, "direct connection without hole punch", peer=b.peer_id)
    logged(a, "relayed connection closed; chat is direct", peer=b.peer_id)
    chat_both_ways(a, b, "now direct", "indeed")
    assert connection_kind(b, a.peer_id) == "direct"
    assert a.metric("libp2p_holepunch_direct_dials_total", outcome="success") == 1
    assert a.metric("libp2p_holepunch_outcomes_total") == 0  # no punch was needed


def test_a_peer_with_a_dead_direct_address_is_found_in_the_dht_and_reached_via_relay(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # One public node is bootstrap and relay; A finds the relay by itself (identify shows the
    # hop protocol) and announces only a dead port besides its circuit address.
    hub = relay_node(tmp_path / "hub", nodes, "bootstrap", "relay")
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        "--bootstrap",
        hub.addr(),
        P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
    )
    tcp_circuit(a, hub)
    # B cannot be dialled either (a dead port, no relay): A's lookup finds B too, and would
    # otherwise connect to it directly first. So the only way the two meet is B -> relay -> A.
    b = start_node(
        tmp_path / "b",
        "--json",
        "--bootstrap",
        hub.addr(),
        env=node_env(
            P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
            P2PCHAT_AUTORELAY__MODE="off",
        ),
    )
    nodes.append(b)
    wait_members(b, 1)
    a.say("you found me behind my relay")
    got = b.next_event(is_message("you found me behind my relay"), timeout=WAIT)
    assert got["sender"] == a.peer_id
    peers = command(b, "/peers", "peers")
    assert {p["peer"]: p["connection"] for p in peers["peers"]}[a.peer_id] == "relayed"


def test_a_peer_moves_to_another_relay_when_its_relay_dies(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    first = relay_node(tmp_path / "first", nodes)
    second = relay_node(tmp_path / "second", nodes)
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=f"{first.addr()},{second.addr()}",
        P2PCHAT_AUTORELAY__RESERVATIONS="1",
    )
    tcp_circuit(a, first)
    assert second.metric("p2pchat_relay_reservations") == 0  # one slot wanted, one held
    first.proc.kill()
    first.proc.wait(timeout=10)
    logged(a, "relay reservation lost", relay=first.peer_id)
    circuit = tcp_circuit(a, second)
    b = start_node(tmp_path / "b", "--json", "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    nodes.append(b)
    wait_members(b, 1)
    b.say("found you on the second relay")
    assert a.next_event(is_message("found you on the second relay"), timeout=WAIT)
    info = command(a, "/info", "info")
    assert info["relays"] == [second.peer_id]
    assert not any(first.peer_id in addr for addr in info["advertised"])


def test_a_configured_relay_that_refused_is_asked_again_soon(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # A relay with one slot, taken by x: a's reservation is refused until x leaves.
    relay = relay_node(tmp_path / "relay", nodes, P2PCHAT_RELAY__MAX_RESERVATIONS="1")
    x = relayed_peer(tmp_path / "x", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    tcp_circuit(x, relay)
    a = relayed_peer(tmp_path / "a", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    # Three refusals within 50 s: asked again after 2 s, then 4 s (a relay not configured, or
    # before this was built, is asked again after 60 s: two refusals would take over a minute).
    wait_metric(
        a,
        "libp2p_autorelay_reservation_requests_outcome_total",
        3,
        timeout=50,
        request_type="new",
        outcome="reservation_refused",
    )
    x.proc.kill()
    x.proc.wait(timeout=10)
    tcp_circuit(a, relay)  # the slot x left, taken at a's next request
    assert relay.metric("p2pchat_relay_reservations") == 1


def test_a_reservation_is_renewed_before_it_expires(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = start_node(
        tmp_path / "relay", "--role", "relay", env=node_env(P2PCHAT_RELAY__RESERVATION_TTL="4")
    )
    nodes.append(relay)
    a = relayed_peer(tmp_path / "a", nodes, P2PCHAT_AUTORELAY__RELAYS=relay.addr())
    tcp_circuit(a, relay)
    # Renewed at three quarters of its 4 s, again and again; never lost in between.
    wait_metric(relay, "libp2p_relaysvc_reservations_total", 3, type="renewed")
    # The relay counts a renewal as it answers; the peer counts it once the answer is read,
    # which a loaded machine can delay past the relay's count: wait for it too.
    wait_metric(
        a,
        "libp2p_autorelay_reservation_requests_outcome_total",
        3,
        request_type="refresh",
        outcome="success",
    )
    assert a.metric("libp2p_autorelay_reservations_closed_total") == 0
    assert relay.metric("p2pchat_relay_reservations") == 1


def test_a_relay_announced_in_the_dht_is_found_and_used(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    boot = start_node(tmp_path / "boot", "--role", "bootstrap")
    nodes.append(boot)
    relay = start_node(
        tmp_path / "relay", "--role", "relay", "--bootstrap", boot.addr(), env=node_env()
    )
    nodes.append(relay)
    wait_metric(relay, "p2pchat_rendezvous_provides_total", 1, outcome="accepted")
    # A knows only the bootstrap node, which is no relay.
    a = relayed_peer(tmp_path / "a", nodes, "--bootstrap", boot.addr())
    logged(a, "relay found in the DHT", relay=relay.peer_id)
    tcp_circuit(a, relay)
    assert relay.metric("p2pchat_relay_reservations") == 1


# --- the library traps met on the way -----------------------------------------------------------


async def test_circuit_addresses_are_advertised_whole(tmp_path: Path) -> None:
    """Trap 20: the library's get_addrs() cuts an address at its first /p2p/ and appends ours,
    turning a circuit address into the relay's IP and port under our PeerId."""
    relay_id = "12D3KooWEZaEuocgPpnLWMKhd7mqwNcvCwW39M6TYQxiGZCN26g6"
    circuit = f"/ip4/127.0.0.1/tcp/4001/p2p/{relay_id}/p2p-circuit"
    bare = new_host(addrs_factory=lambda _: [multiaddr.Multiaddr(circuit)])
    assert [str(a) for a in bare.get_addrs()] == [f"/ip4/127.0.0.1/tcp/4001/p2p/{bare.get_id()}"]
    async with running_host(tmp_path) as (host, _):
        host.set_circuit_addrs([circuit])
        assert f"{circuit}/p2p/{host.peer_id}" in host.advertised_addrs()
        host.set_circuit_addrs([])
        assert not any("p2p-circuit" in a for a in host.advertised_addrs())


def test_an_rpc_with_a_stale_peer_record_is_not_dropped() -> None:
    """Trap 21: a pubsub RPC whose sender record is older than the stored one is dropped whole
    by the library (subscriptions included); the host layer keeps the RPC."""
    sender, receiver = new_host(), new_host()
    key = sender.get_private_key()
    older = create_signed_peer_record(sender.get_id(), [], key)
    newer = create_signed_peer_record(
        sender.get_id(), [multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/1")], key
    )
    assert newer.record().seq > older.record().seq
    assert receiver.get_peerstore().consume_peer_record(newer, 7200)  # e.g. through identify
    rpc = rpc_pb2.RPC(senderRecord=older.marshal_envelope())
    assert not library_maybe_consume(rpc, receiver, sender.get_id())
    assert pubsub_utils.maybe_consume_signed_record(rpc, receiver, sender.get_id())
    envelope = older.marshal_envelope()
    # Flip the signature's last byte (setting it to 0 was a no-op 1 time in 256).
    forged = rpc_pb2.RPC(senderRecord=envelope[:-1] + bytes([envelope[-1] ^ 0xFF]))
    assert not pubsub_utils.maybe_consume_signed_record(forged, receiver, sender.get_id())
