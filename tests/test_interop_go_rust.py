"""Interop with go-libp2p and rust-libp2p: the scenarios both peers pass the same way, each
test run once per implementation (``[go]``, ``[rust]``).

The go peer (tests/interop/go) and the rust peer (tests/interop/rust) speak one command
protocol, JSON lines over stdin/stdout (tests/interop_peers.py), and each says its
``sender_name`` is its implementation's name. Real processes on 127.0.0.1: chat both ways over
a direct connection, their hub between two p2pchat peers and a p2pchat hub between them and
p2pchat, a history query answered to them, their relay serving two p2pchat peers (each over
TCP, WebSocket and QUIC: ``TRANSPORTS``), and chat both ways over WebSocket (/ws),
each side dialling. What
differs between the two (a p2pchat relay serving them: go-libp2p-pubsub runs no GossipSub on a
limited connection, rust-libp2p does) stays in tests/test_interop_go.py and
tests/test_interop_rust.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess
from tests.interop_peers import (
    IMPLEMENTATIONS,
    ROOM,
    TRANSPORTS,
    WAIT,
    WS,
    LineDrivenPeer,
    PubsubCommandPeer,
    chat_peer,
    line_peers,
    listening_on,
    only_over,
    p2pchat_listening_on,
    sees_peer,
    start_peer,
)
from tests.test_autorelay import chat_both_ways, command, connection_kind, logged
from tests.test_chat import is_message, wait_members

__all__ = ["line_peers"]  # the fixture, used by name


def each_implementation(feature: str, transport: str = "tcp") -> list[Any]:
    """The test's parameters: one per implementation, each marked with its matrix cell."""
    return [
        pytest.param(impl, marks=pytest.mark.interop(impl, transport, feature), id=impl)
        for impl in IMPLEMENTATIONS
    ]


def each_implementation_and_transport(feature: str) -> list[Any]:
    """(impl, transport) parameters over each transport of ``TRANSPORTS``, each marked with its
    cell."""
    return [
        pytest.param(
            impl,
            transport,
            marks=pytest.mark.interop(impl, transport, feature),
            id=f"{impl}-{transport}",
        )
        for impl in IMPLEMENTATIONS
        for transport in TRANSPORTS[impl]
    ]


def chat_with(a: NodeProcess, them: PubsubCommandPeer, impl: str) -> None:
    """``a`` and ``them``, connected, chat both ways; ``a`` shows their name, drops nothing."""
    sees_peer(a, them.peer_id)
    wait_members(a, 1)

    a.say(f"hello {impl}-libp2p")
    got = them.message(f"hello {impl}-libp2p")
    assert (got["from"], got["room"]) == (a.peer_id, ROOM)

    them.wait_topic_peer(a.peer_id)
    them.run(f"say signed in {impl}", "published")
    from_them = a.next_event(is_message(f"signed in {impl}"), timeout=WAIT)
    assert (from_them["sender"], from_them["sender_name"]) == (them.peer_id, impl)
    for reason in ("bad_signature", "invalid", "malformed"):
        assert a.metric("p2pchat_messages_dropped_total", reason=reason) == 0


@pytest.mark.parametrize("impl", each_implementation("chat"))
def test_chat_with_them_both_ways(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer], impl: str
) -> None:
    them = start_peer(line_peers, impl)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", them.addr)
    chat_with(a, them, impl)


@pytest.mark.parametrize("dialer", ["they-dial", "we-dial"])
@pytest.mark.parametrize("impl", each_implementation("chat", "ws"))
def test_chat_with_them_over_websocket(
    tmp_path: Path,
    nodes: list[NodeProcess],
    line_peers: list[LineDrivenPeer],
    impl: str,
    dialer: str,
) -> None:
    # Each side listens on /ws only, so the one connection between them can only be a
    # WebSocket one, whoever dials.
    them = start_peer(line_peers, impl, *listening_on(impl, "ws"))
    assert them.addr.split("/p2p/")[0].endswith("/ws"), them.ready
    if dialer == "we-dial":
        a = chat_peer(tmp_path / "a", nodes, "--listen", WS, "--bootstrap", them.addr)
    else:
        a = chat_peer(tmp_path / "a", nodes, "--listen", WS)
        them.run(f"dial {a.addr('ws')}", "dialed")
    chat_with(a, them, impl)
    only_over(a, "ws")


@pytest.mark.parametrize(("impl", "transport"), each_implementation_and_transport("hub"))
def test_their_hub_between_two_p2pchat_peers(
    tmp_path: Path,
    nodes: list[NodeProcess],
    line_peers: list[LineDrivenPeer],
    impl: str,
    transport: str,
) -> None:
    hub = start_peer(line_peers, impl, *listening_on(impl, transport))
    a, c = (chat_peer(tmp_path / name, nodes, "--bootstrap", hub.addr) for name in ("a", "c"))
    for node in (a, c):
        sees_peer(node, hub.peer_id)
        assert node.metric("p2pchat_connected_peers") == 1  # A and C only meet through the hub
        hub.wait_topic_peer(node.peer_id)  # so that the hub forwards to both

    a.say(f"across {impl}'s mesh")
    assert c.next_event(is_message(f"across {impl}'s mesh"), timeout=WAIT)["sender"] == a.peer_id
    c.say("and back across it")
    assert a.next_event(is_message("and back across it"), timeout=WAIT)["sender"] == c.peer_id
    assert {hub.message(t)["from"] for t in (f"across {impl}'s mesh", "and back across it")} == {
        a.peer_id,
        c.peer_id,
    }
    assert c.peer_id not in {p["peer"] for p in command(a, "/peers", "peers")["peers"]}
    only_over(a, transport)
    only_over(c, transport)


@pytest.mark.parametrize(("impl", "transport"), each_implementation_and_transport("hub"))
def test_a_p2pchat_hub_between_them_and_p2pchat(
    tmp_path: Path,
    nodes: list[NodeProcess],
    line_peers: list[LineDrivenPeer],
    impl: str,
    transport: str,
) -> None:
    hub = chat_peer(tmp_path / "hub", nodes, *p2pchat_listening_on(transport))
    them = start_peer(line_peers, impl, *listening_on(impl, transport))
    them.run(f"dial {hub.addr(transport)}", "dialed")
    p = chat_peer(
        tmp_path / "p", nodes, *p2pchat_listening_on(transport), "--bootstrap", hub.addr(transport)
    )
    sees_peer(p, hub.peer_id)
    wait_members(p, 1)
    wait_members(hub, 2)

    them.wait_topic_peer(hub.peer_id)
    them.run("say through a p2pchat hub", "published")
    from_them = p.next_event(is_message("through a p2pchat hub"), timeout=WAIT)
    assert (from_them["sender"], from_them["sender_name"]) == (them.peer_id, impl)
    p.say("back through the hub")
    got = them.message("back through the hub")
    assert (got["from"], got["via"]) == (p.peer_id, hub.peer_id)
    assert them.peer_id not in {x["peer"] for x in command(p, "/peers", "peers")["peers"]}
    only_over(hub, transport)


@pytest.mark.parametrize(("impl", "transport"), each_implementation_and_transport("history"))
def test_history_is_answered_to_them(
    tmp_path: Path,
    nodes: list[NodeProcess],
    line_peers: list[LineDrivenPeer],
    impl: str,
    transport: str,
) -> None:
    a = chat_peer(tmp_path / "a", nodes, *p2pchat_listening_on(transport))
    them = start_peer(line_peers, impl, *listening_on(impl, transport))
    them.run(f"dial {a.addr(transport)}", "dialed")
    wait_members(a, 1)
    for n in range(3):
        a.say(f"stored by a {n}")
        them.message(f"stored by a {n}")  # sent, so stored
    history = them.run(f"history {a.peer_id} 2", "history")
    assert history["status"] == "OK"
    assert history["unverified"] == 0  # they checked every envelope's signature themselves
    assert history["more"] is True  # a page of 2 of the 3, newest first, listed oldest first
    assert [(m["from"], m["text"]) for m in history["messages"]] == [
        (a.peer_id, "stored by a 1"),
        (a.peer_id, "stored by a 2"),
    ]
    assert them.run(f"history {a.peer_id} 501", "history")["status"] == "BAD_REQUEST"
    only_over(a, transport)


@pytest.mark.parametrize(("impl", "transport"), each_implementation_and_transport("relay-theirs"))
def test_their_relay_serves_two_p2pchat_peers(
    tmp_path: Path,
    nodes: list[NodeProcess],
    line_peers: list[LineDrivenPeer],
    impl: str,
    transport: str,
) -> None:
    # Not a room member itself: the chat can only cross the circuit.
    args = listening_on(impl, transport)
    relay = start_peer(line_peers, impl, "-relay", "-subscribe=false", *args)
    two_p2pchat_peers_chat_through(relay, tmp_path, nodes, impl, transport)


def two_p2pchat_peers_chat_through(
    relay: LineDrivenPeer, tmp_path: Path, nodes: list[NodeProcess], impl: str, transport: str
) -> None:
    """A reserves a slot on ``relay`` (a circuit relay v2 server of another implementation,
    ``impl``, listening on ``transport``), B dials A's circuit address, and they chat both ways
    over the circuit."""
    a = chat_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay.addr,
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    addrs = logged(a, "relay reservation", relay=relay.peer_id)["addrs"]
    circuit = next(x for x in addrs if x.startswith("/ip4/127.0.0.1/"))
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    # Their libraries' default relay limits (2 min, 128 KiB per circuit) are what it gets.
    chat_both_ways(a, b, f"through a {impl} relay", "and back through it")
    assert connection_kind(b, a.peer_id) == "relayed"
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1
    only_over(a, transport)  # their connections to the relay
    only_over(b, transport)
