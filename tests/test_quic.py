"""QUIC (``/udp/<port>/quic-v1``) between p2pchat nodes (#20, must-have 2).

py-libp2p 0.8.1 ships a QUIC transport (aioquic, TLS 1.3 with the libp2p certificate extension,
QUIC's own streams). Real processes on 127.0.0.1: nodes listening on QUIC only connect over it,
identify each other (pubsub needs the protocol list) and chat both ways over several streams;
a node listening on TCP only still dials a QUIC address (trap 34); a UDP port already in use
stops the start with one line; a flood of QUIC handshakes is refused within the admission
limits and counted, and peers still chat over TCP meanwhile.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_node import failure_line

WAIT = 60
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"


def peer(path: Path, nodes: list[NodeProcess], listen: str, *args: str) -> NodeProcess:
    node = start_node(path, "--json", "--listen", listen, *args)
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def is_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "message" and e["text"] == text


def chat_both_ways(a: NodeProcess, b: NodeProcess) -> None:
    for who in (a, b):
        who.next_event(lambda e: e["type"] == "peer" and e["change"] == "joined", timeout=WAIT)
    a.say("over quic")
    assert b.next_event(is_message("over quic"), timeout=WAIT)["sender"] == a.peer_id
    b.say("and back")
    assert a.next_event(is_message("and back"), timeout=WAIT)["sender"] == b.peer_id


def test_two_nodes_chat_over_quic(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    listener = peer(tmp_path / "listener", nodes, QUIC)
    assert all("/udp/" in a and "/quic-v1/" in a for a in listener.ready["advertised"])
    dialler = peer(tmp_path / "dialler", nodes, QUIC, "--bootstrap", listener.addr("quic"))
    opened = dialler.next_event(lambda e: e["type"] == "connection", timeout=WAIT)
    assert (opened["change"], opened["peer"]) == ("opened", listener.peer_id)
    chat_both_ways(dialler, listener)
    # The connection is counted as QUIC, on both sides, and no TCP one was made.
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
    assert (
        listener.metric("libp2p_swarm_connections_opened_total", transport="quic", dir="inbound")
        == 1
    )
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="tcp") == 0


def test_a_tcp_only_node_dials_quic(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    listener = peer(tmp_path / "listener", nodes, QUIC)
    dialler = peer(
        tmp_path / "dialler", nodes, "/ip4/127.0.0.1/tcp/0", "--bootstrap", listener.addr("quic")
    )
    chat_both_ways(dialler, listener)
    assert dialler.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1


def test_a_udp_port_in_use_stops_the_start_with_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        node = start_node(
            tmp_path / "node", "--listen", f"/ip4/127.0.0.1/udp/{port}/quic-v1", wait_ready=False
        )
        line = failure_line(node, 1)
    assert f"cannot listen on 127.0.0.1 UDP port {port}" in line


def test_a_udp_port_held_by_another_node_is_refused(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    first = peer(tmp_path / "a", nodes, QUIC)
    port = first.addr("quic").split("/")[4]
    second = start_node(
        tmp_path / "b", "--listen", f"/ip4/127.0.0.1/udp/{port}/quic-v1", wait_ready=False
    )
    nodes.append(second)
    assert f"UDP port {port}" in failure_line(second, 1)


def flood_initials(port: int, count: int) -> None:
    """``count`` QUIC Initial packets, each a new handshake that is never continued."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            client = QuicConnection(
                configuration=QuicConfiguration(is_client=True, alpn_protocols=["libp2p"])
            )
            client.connect(("127.0.0.1", port), now=time.time())
            for data, _ in client.datagrams_to_send(now=time.time()):
                sock.sendto(data, ("127.0.0.1", port))
            time.sleep(0.01)


def test_a_quic_handshake_flood_is_refused_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The library would start and keep up to 256 handshakes; connections.transient (4 here)
    # binds, the rest are dropped and counted, and a TCP peer still chats with the victim.
    listen = f"/ip4/127.0.0.1/tcp/0,{QUIC}"
    victim = start_node(
        tmp_path / "victim",
        "--json",
        "--listen",
        listen,
        env=node_env(P2PCHAT_CONNECTIONS__TRANSIENT="4"),
    )
    nodes.append(victim)
    victim.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    flood_initials(int(victim.addr("quic").split("/")[4]), 40)
    deadline = time.monotonic() + WAIT
    refused = 0.0
    while time.monotonic() < deadline and refused < 30:
        refused = victim.metric("p2pchat_connections_refused_total", reason="transient_full")
        time.sleep(0.5)
    assert 30 <= refused <= 40
    honest = peer(tmp_path / "honest", nodes, "/ip4/127.0.0.1/tcp/0", "--bootstrap", victim.addr())
    chat_both_ways(honest, victim)
