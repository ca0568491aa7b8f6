"""universal-connectivity's chat with go-libp2p: our go peer (tests/interop/go, go-libp2p and
go-libp2p-pubsub as UC's go peer uses them: GossipSub, StrictSign) in UC's chat topic, sending
the text as raw bytes as UC's go peer does (``topic.Publish(ctx, []byte(message))``), and a
p2pchat peer with ``uc.enabled``: chat both ways, named as UC names peers. `make interop-go`
builds the go peer; without it this test fails with one line, it never skips."""

from __future__ import annotations

from pathlib import Path

from p2pchat.node.wire import uc

from tests.conftest import NodeProcess
from tests.test_interop_go import GoPeer, go_peer, go_peers
from tests.test_json_contract import answer
from tests.test_uc import ROOM, WAIT, uc_peer

__all__ = ["go_peers"]  # the fixture, used by name


def test_chat_with_a_go_libp2p_peer_in_universal_connectivitys_topic(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers, "-topic", uc.CHAT_TOPIC)
    a = uc_peer(tmp_path / "a", nodes, "--bootstrap", go.addr)
    go.wait_topic_peer(a.peer_id)

    go.run(f"publish {b'hello from go'.hex()}", "published")
    got = a.next_event(
        lambda e: e["type"] == "message" and e["room"] == ROOM and e["text"] == "hello from go",
        timeout=WAIT,
    )
    assert (got["sender"], got["sender_name"]) == (go.peer_id, go.peer_id[-8:]), got

    events = answer(a, {"id": "uc", "line": "/uc héllo from p2pchat"})
    assert [e["own"] for e in events if e["type"] == "message"] == [True], events
    data = "héllo from p2pchat".encode().hex()
    heard = go.next(lambda e: e.get("message", {}).get("data_hex") == data)["message"]
    assert (heard["from"], heard["topic"]) == (a.peer_id, uc.CHAT_TOPIC), heard
    assert a.metric("p2pchat_uc_events_total", what="chat_received") == 1
    assert a.metric("p2pchat_messages_dropped_total", reason="bad_signature") == 0
