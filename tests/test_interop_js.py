"""Interop with js-libp2p: p2pchat peers and a js-libp2p GossipSub peer share a room.

The js peer (tests/interop/js/peer.mjs: Noise, Yamux, GossipSub with StrictSign; driven by
JSON lines, tests/interop_peers.py) sits between two p2pchat peers that are not connected to
each other, so every message between them crosses js-libp2p's mesh both ways; it publishes a
chat payload itself; a p2pchat hub carries the room between it and a p2pchat peer; it asks a
p2pchat peer for history (tests/interop/js/history.mjs) and checks every envelope's signature;
and as js-libp2p's circuit relay v2 server it carries two p2pchat peers' conversation (each
over TCP, WebSocket and QUIC: ``each_transport``). A further test runs it as the outside client
of #20: WebSocket only, no sender_name; and it chats with a p2pchat peer over QUIC
(``@chainsafe/libp2p-quic``, #20 must-have 2), each side dialling, and after 40 s of quiet.
`make unit` installs its pinned packages (package-lock.json); without node or them, these
tests fail, never skip.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import base58
import pytest
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.chat import ChatText, decode, encode, new_message_id

from tests.conftest import NodeProcess, start_node
from tests.interop_peers import (
    QUIC,
    ROOM,
    WAIT,
    JsPeer,
    LineDrivenPeer,
    chat_peer,
    line_peers,
    p2pchat_listening_on,
    sees_peer,
)
from tests.test_autorelay import command
from tests.test_chat import is_message, wait_members
from tests.test_interop_go_rust import only_over, two_p2pchat_peers_chat_through
from tests.test_interop_quic_chat import QUIET, quic_addr

__all__ = ["line_peers"]  # the fixture, used by name


def js_says(js: JsPeer, text: str) -> None:
    """The js peer signs and publishes a chat message ``text`` (sender_name "js")."""
    chat = ChatText(
        id=new_message_id(),
        room=ROOM,
        sender_name="js",
        text=text,
        sent_at_ms=int(time.time() * 1000),
    )
    js.publish(encode(chat))


def js_heard(js: JsPeer, text: str) -> dict[str, Any]:
    """The message ``text`` as the js peer received it (its from, topic, data_hex)."""

    def carries(event: dict[str, Any]) -> bool:
        if "message" not in event:
            return False
        got = decode(bytes.fromhex(event["message"]["data_hex"]), max_text_bytes=4096)
        return isinstance(got, ChatText) and got.text == text

    return dict(js.next(carries)["message"])


def wait_topic_peer(js: JsPeer, peer_id: str) -> None:
    """Wait until js-gossipsub knows ``peer_id`` is in the room (before that, what js publishes
    is not sent to it)."""
    deadline = time.monotonic() + WAIT
    while peer_id not in js.run("topic-peers", "topic_peers"):
        assert time.monotonic() < deadline, f"{peer_id} never joined the js peer's room"
        time.sleep(0.2)


@pytest.mark.interop("js", "tcp", "chat")
@pytest.mark.interop("js", "tcp", "hub")
def test_chat_crosses_a_js_libp2p_peer_both_ways(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    js = JsPeer()
    try:
        js_id, js_addr = js.ready["peer_id"], js.ready["addrs"][0]
        peers = []
        for name in ("a", "c"):
            node = start_node(tmp_path / name, "--json", "--bootstrap", js_addr)
            nodes.append(node)
            node.next_event(lambda e: e["type"] == "peer" and e["peer"] == js_id, timeout=WAIT)
            peers.append(node)
        a, c = peers
        assert a.metric("p2pchat_connected_peers") == 1  # A and C only meet through js

        a.say("hello through js-libp2p")
        got = c.next_event(is_message("hello through js-libp2p"), timeout=WAIT)
        assert got["sender"] == a.peer_id
        seen_by_js = js.next(lambda e: "message" in e)["message"]
        assert seen_by_js["from"] == a.peer_id
        assert decode(bytes.fromhex(seen_by_js["data_hex"]), max_text_bytes=4096).text == (  # type: ignore[union-attr]
            "hello through js-libp2p"
        )

        c.say("and back through js-libp2p")
        got = a.next_event(is_message("and back through js-libp2p"), timeout=WAIT)
        assert got["sender"] == c.peer_id
        assert js_heard(js, "and back through js-libp2p")["from"] == c.peer_id
        assert c.peer_id not in {p["peer"] for p in command(a, "/peers", "peers")["peers"]}

        js_says(js, "signed in js")
        for node in (a, c):
            from_js = node.next_event(is_message("signed in js"), timeout=WAIT)
            assert from_js["sender"] == js_id
            assert from_js["sender_name"] == "js"
        assert a.metric("p2pchat_messages_dropped_total", reason="bad_signature") == 0
    finally:
        js.stop()


@pytest.mark.interop("js", "ws", "chat")
def test_a_minimal_js_client_on_websocket_only_is_reached_and_heard(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # The outside js-libp2p client of issue #20: it listens on /ws only, which a p2pchat peer
    # listening on TCP alone could not dial ("No supported transport found"), and it never sets
    # sender_name, so every message it sent was dropped as invalid.
    js = JsPeer("ws")
    try:
        js_id, js_addr = js.ready["peer_id"], js.ready["addrs"][0]
        assert js_addr.split("/p2p/")[0].endswith("/ws")
        node = start_node(
            tmp_path / "tcp-only",
            "--json",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--bootstrap",
            js_addr,
        )
        nodes.append(node)
        node.next_event(lambda e: e["type"] == "peer" and e["peer"] == js_id, timeout=WAIT)

        bare = chat_pb2.ChatEnvelope(version=1)  # what a minimal client sends: no sender_name
        bare.text.id = new_message_id()
        bare.text.room = ROOM
        bare.text.text = "no name from js"
        bare.text.sent_at_ms = int(time.time() * 1000)
        js.publish(bare.SerializeToString())
        from_js = node.next_event(is_message("no name from js"), timeout=WAIT)
        assert (from_js["sender"], from_js["sender_name"]) == (js_id, "anon")

        node.say("back to js over websocket")
        seen_by_js = js.next(lambda e: "message" in e)["message"]
        assert seen_by_js["from"] == node.peer_id
        assert node.metric("p2pchat_messages_dropped_total", reason="invalid") == 0
    finally:
        js.stop()


def chat_with_js_over_quic(a: NodeProcess, js: JsPeer) -> None:
    """``a`` and ``js``, connected over QUIC, chat both ways; ``a`` drops nothing, and their
    one connection is a QUIC one on both sides (none over TCP)."""
    sees_peer(a, js.peer_id)
    wait_members(a, 1)
    a.say("hello js-libp2p over quic")
    assert js_heard(js, "hello js-libp2p over quic")["from"] == a.peer_id
    wait_topic_peer(js, a.peer_id)
    js_says(js, "signed in js over quic")
    from_js = a.next_event(is_message("signed in js over quic"), timeout=WAIT)
    assert (from_js["sender"], from_js["sender_name"]) == (js.peer_id, "js")
    for reason in ("bad_signature", "invalid", "malformed"):
        assert a.metric("p2pchat_messages_dropped_total", reason=reason) == 0
    assert a.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
    only_over(a, "quic")
    js_only_over(js, "quic")


@pytest.mark.interop("js", "quic", "chat")
@pytest.mark.parametrize("dialer", ["we-dial", "they-dial"])
def test_chat_with_a_js_peer_over_quic(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer], dialer: str
) -> None:
    # js-libp2p with ChainSafe's QUIC transport (@chainsafe/libp2p-quic: quinn and libp2p TLS
    # in a native add-on). When we dial, js listens on TCP too: p2pchat, told only its QUIC
    # address, must not end on TCP.
    if dialer == "we-dial":
        js = JsPeer("tcp", "quic")
        line_peers.append(js)
        a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC, "--bootstrap", quic_addr(js))
    else:
        js = JsPeer("quic")
        line_peers.append(js)
        a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC)
        js.run(f"dial {a.addr('quic')}", "dialed")
    chat_with_js_over_quic(a, js)


@pytest.mark.interop("js", "quic", "chat")
def test_a_quiet_quic_conversation_with_js_goes_on(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer]
) -> None:
    # ChainSafe's QUIC closes a connection idle for 10 s unless its 5 s keep-alive holds it (as
    # rust-libp2p's), and py-libp2p gives up a QUIC read after 30 s (trap 38): 40 s without a
    # word must leave the room as it was.
    js = JsPeer("quic")
    line_peers.append(js)
    a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC, "--bootstrap", quic_addr(js))
    chat_with_js_over_quic(a, js)
    time.sleep(QUIET)
    assert a.peer_id in js.run("topic-peers", "topic_peers")
    js_says(js, "still here")
    assert a.next_event(is_message("still here"), timeout=WAIT)["sender"] == js.peer_id
    a.say("and here too")
    assert js_heard(js, "and here too")["from"] == a.peer_id
    assert a.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1


def each_transport(feature: str) -> list[Any]:
    """The ``transport`` parameters, TCP, WebSocket and QUIC, each marked with its matrix
    cell."""
    return [
        pytest.param(transport, marks=pytest.mark.interop("js", transport, feature))
        for transport in ("tcp", "ws", "quic")
    ]


def js_listening_on(transport: str, *args: str) -> tuple[str, ...]:
    """peer.mjs's arguments to listen on ``transport`` only."""
    return (transport, *args)


def joined_by(js: JsPeer, transport: str, path: Path, nodes: list[NodeProcess]) -> NodeProcess:
    """A p2pchat peer that ``js`` dialled over ``transport`` (for QUIC, one listening on QUIC
    only)."""
    node = chat_peer(path, nodes, *p2pchat_listening_on(transport))
    js.run(f"dial {node.addr(transport)}", "dialed")
    return node


def js_only_over(js: JsPeer, transport: str) -> None:
    """Every connection the js peer has open is a QUIC one if ``transport`` is QUIC, else none
    is."""
    connections = js.run("connections", "connections")
    assert connections
    assert all(("/quic-v1" in c["addr"]) == (transport == "quic") for c in connections), connections


@pytest.mark.parametrize("transport", each_transport("hub"))
def test_a_p2pchat_hub_between_js_and_p2pchat(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer], transport: str
) -> None:
    js = JsPeer(*js_listening_on(transport))
    line_peers.append(js)
    hub = joined_by(js, transport, tmp_path / "hub", nodes)
    p = chat_peer(
        tmp_path / "p", nodes, *p2pchat_listening_on(transport), "--bootstrap", hub.addr(transport)
    )
    sees_peer(p, hub.peer_id)
    wait_members(p, 1)
    wait_members(hub, 2)

    wait_topic_peer(js, hub.peer_id)
    js_says(js, "through a p2pchat hub")
    from_js = p.next_event(is_message("through a p2pchat hub"), timeout=WAIT)
    assert (from_js["sender"], from_js["sender_name"]) == (js.peer_id, "js")
    p.say("back through the hub")
    assert js_heard(js, "back through the hub")["from"] == p.peer_id
    assert js.peer_id not in {x["peer"] for x in command(p, "/peers", "peers")["peers"]}
    only_over(hub, transport)
    js_only_over(js, transport)


@pytest.mark.parametrize("transport", each_transport("history"))
def test_history_is_answered_to_a_js_peer(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer], transport: str
) -> None:
    # js-libp2p asks p2pchat's history protocol (/p2pchat/store-query/2.0.0, written from
    # store_query.proto alone: tests/interop/js/history.mjs) and checks every envelope's
    # StrictSign signature itself.
    js = JsPeer(*js_listening_on(transport))
    line_peers.append(js)
    a = joined_by(js, transport, tmp_path / "a", nodes)
    wait_members(a, 1)
    for n in range(3):
        a.say(f"stored by a {n}")
        js_heard(js, f"stored by a {n}")  # sent, so stored
    history = js.run(f"history {a.peer_id} 2", "history")
    assert history["status"] == "OK"
    assert history["unverified"] == 0
    assert history["more"] is True  # a page of 2 of the 3, newest first, listed oldest first
    texts = [
        decode(bytes.fromhex(m["data_hex"]), max_text_bytes=4096).text  # type: ignore[union-attr]
        for m in history["messages"]
    ]
    assert texts == ["stored by a 1", "stored by a 2"]
    senders = {base58.b58encode(bytes.fromhex(m["from_hex"])).decode() for m in history["messages"]}
    assert senders == {a.peer_id}
    assert js.run(f"history {a.peer_id} 501", "history")["status"] == "BAD_REQUEST"
    only_over(a, transport)
    js_only_over(js, transport)


@pytest.mark.parametrize("transport", each_transport("relay-theirs"))
def test_a_js_relay_serves_two_p2pchat_peers(
    tmp_path: Path, nodes: list[NodeProcess], line_peers: list[LineDrivenPeer], transport: str
) -> None:
    # js-libp2p's circuit relay v2 server (@libp2p/circuit-relay-v2, its default limits), no
    # member of the room: the chat can only cross the circuit.
    relay = JsPeer(*js_listening_on(transport, "--relay", "--no-subscribe"))
    line_peers.append(relay)
    two_p2pchat_peers_chat_through(relay, tmp_path, nodes, "js", transport)
