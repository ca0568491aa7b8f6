"""Interop with js-libp2p: p2pchat peers and a js-libp2p GossipSub peer share a room.

The js peer (tests/interop/js/peer.mjs: Noise, Yamux, GossipSub with StrictSign) sits between
two p2pchat peers that are not connected to each other, so every message between them crosses
js-libp2p's mesh; and the js peer publishes a chat payload itself. A second test runs it as the
outside client of #20: WebSocket only, no sender_name. `.ci/run` installs its pinned
packages (`npm ci`); without node or them, this test fails, it never skips.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.chat import ChatText, decode, encode, new_message_id

from tests.conftest import NodeProcess, start_node
from tests.interop_peers import ROOM, WAIT, JsPeer
from tests.test_chat import is_message


@pytest.mark.interop("js", "tcp", "chat")
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

        js.publish(
            encode(
                ChatText(
                    id=new_message_id(),
                    room=ROOM,
                    sender_name="js",
                    text="signed in js",
                    sent_at_ms=int(time.time() * 1000),
                )
            )
        )
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
