"""DM conversations shown like rooms (issue #19), between real ``p2pchat --json`` processes on
127.0.0.1: ``/dm`` opens ``@name``, listed by ``/rooms``; typed text (and ``{"send"}``) goes
as a DM; both directions are kept in each store and ``/history`` lists them, after a restart
too; ``/switch`` back to a room sends to the room again. And the conversations' bounds on a
real RocksDB store."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from p2pchat.node.store import Store
from p2pchat.node.wire.dm import Plaintext
from p2pchat.roles.peer.dm_conversations import NAMESPACE, ConversationStore
from p2pchat.roles.peer.metrics import ChatMetrics
from prometheus_client import CollectorRegistry

from tests.conftest import NodeProcess
from tests.peer_ids import fresh_peer_ids
from tests.test_dm import WAIT, connected, direct_from
from tests.test_json_contract import answer, chat_peer, is_message, seen


def line(node: NodeProcess, text: str) -> list[dict[str, Any]]:
    events = answer(node, {"id": "l", "line": text})
    assert events[-1]["ok"] is True, events
    return events


def history(node: NodeProcess) -> list[dict[str, Any]]:
    events = line(node, "/history")
    assert events[-2]["type"] == "history_end", events
    return events[:-1]


def test_a_dm_conversation_both_ways_with_history_after_a_restart(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    connected(a, b)
    line(b, "/name bob")
    seen(a, lambda e: e["type"] == "name" and e["peer"] == b.peer_id)

    opened = line(a, "/dm bob")[0]
    assert opened["kind"] == "dm_opened" and opened["data"]["room"] == "@bob", opened
    assert opened["data"]["peer"] == b.peer_id
    (rooms,) = [e for e in line(a, "/rooms") if e["type"] == "output"]
    assert rooms["data"]["current"] == "@bob"
    assert rooms["data"]["conversations"] == [
        {"room": "@bob", "peer": b.peer_id, "unread": 0, "current": True}
    ]
    # Typed text goes to bob as a DM, not to the room.
    assert line(a, "hello bob")[0]["kind"] == "dm_delivered"
    assert direct_from(b, a.peer_id, "hello bob")["own"] is False
    # And the other way, from a conversation bob opens by PeerId, sent as {"send"}.
    assert line(b, f"/dm {a.peer_id}")[0]["kind"] == "dm_opened"
    sent = answer(b, {"id": "s", "send": "/hi alice\nsecond line"})
    assert sent[0]["kind"] == "dm_delivered", sent
    direct_from(a, b.peer_id, "/hi alice\nsecond line")

    expected = [("hello bob", True), ("/hi alice\nsecond line", False)]
    listed = history(a)
    assert [(e["text"], e["own"]) for e in listed[:-1]] == expected
    assert all(e["type"] == "direct" and e["history"] for e in listed[:-1])
    assert listed[-1]["room"] == "@bob" and listed[-1]["count"] == 2
    assert [(e["text"], not e["own"]) for e in history(b)[:-1]] == expected

    # Back in the room, typed text goes to the room again.
    line(a, "/switch p2p-chat-default")
    a.say("to the room")
    b.next_event(is_message("to the room"), timeout=WAIT)

    # Both restart: the conversation is kept, and bob's name is still bound to its PeerId.
    for node in (a, b):
        assert node.stop() == 0
        nodes.remove(node)
    a, _ = chat_peer(tmp_path / "a", nodes)
    assert line(a, "/dm bob")[0]["data"]["peer"] == b.peer_id
    assert [(e["text"], e["own"]) for e in history(a)[:-1]] == expected
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    line(b, f"/dm {a.peer_id}")
    assert [(e["text"], not e["own"]) for e in history(b)[:-1]] == expected


def test_conversations_are_bounded_in_messages_and_in_number(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    store = Store.open(tmp_path / "store")
    try:
        kept = ConversationStore(
            store.namespace(NAMESPACE), ChatMetrics(registry), 5, 86_400_000, 4096, 10
        )
        first, *strangers = list(fresh_peer_ids(31))
        for n in range(12):
            kept.add(first, Plaintext(bytes([n]) * 16, f"m{n}", 1000 + n), own=n % 2 == 0)
        assert [k.plain.text for k in kept.last(first, 50)] == [f"m{n}" for n in range(7, 12)]
        assert [k.plain.text for k in kept.last(first, 2)] == ["m10", "m11"]
        assert sum(1 for _ in store.namespace(NAMESPACE).items(b"m/")) == 5  # trimmed on disk
        assert kept.has(first, bytes([11]) * 16) and not kept.has(first, bytes([0]) * 16)
        # A flood of fresh PeerIds each opening a conversation: the least recently active go.
        for n, peer in enumerate(strangers):
            kept.add(peer, Plaintext(bytes([n]) * 16, "hi", 1), own=False)
        assert len(kept) == 10 and kept.last(first, 50) == []
        assert kept.last(strangers[-1], 50)[0].plain.text == "hi"
        dropped = registry.get_sample_value(
            "p2pchat_dm_history_dropped_total", {"reason": "conversation_evicted"}
        )
        assert dropped == 5 + 20  # the first's 5, then 20 strangers' one each
        assert sum(1 for _ in store.namespace(NAMESPACE).items(b"m/")) == 10
        assert sum(1 for _ in store.namespace(NAMESPACE).items(b"i/")) == 10  # ids go too
    finally:
        store.close()
    store = Store.open(tmp_path / "store")
    try:  # reopened: the index is read back
        kept = ConversationStore(
            store.namespace(NAMESPACE), ChatMetrics(CollectorRegistry()), 5, 86_400_000, 4096, 10
        )
        assert len(kept) == 10 and kept.count(strangers[-1]) == 1
    finally:
        store.close()


def test_messages_past_their_age_are_deleted_when_read_and_at_start(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    old, read = list(fresh_peer_ids(2))
    try:
        kept = ConversationStore(
            store.namespace(NAMESPACE), ChatMetrics(CollectorRegistry()), 100, 200, 4096
        )
        for peer in (old, read):
            for n in range(3):
                kept.add(peer, Plaintext(bytes([n]) * 16, f"m{n}", 1), own=False)
        assert len(kept.last(read, 10)) == 3  # young enough
        time.sleep(0.5)
        assert kept.last(read, 10) == [] and kept.count(read) == 0  # aged out as it is read
    finally:
        store.close()
    store = Store.open(tmp_path / "store")
    try:  # the other one, never read, ages out at the next start
        kept = ConversationStore(
            store.namespace(NAMESPACE), ChatMetrics(CollectorRegistry()), 100, 200, 4096
        )
        assert len(kept) == 0
        assert list(store.namespace(NAMESPACE).items()) == []
    finally:
        store.close()
