"""Store-and-forward end to end: real ``p2pchat`` processes on 127.0.0.1 and real RocksDB.

A peer that is offline while others chat gets every message when it returns, in order, with
nothing lost or duplicated: through an archiver, and with no archiver through another peer.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.roles.peer.role import EVENT_BUFFER

from tests.conftest import NodeProcess, start_node, wait_metric
from tests.history_fixtures import fill_store, signed_message
from tests.test_chat import WAIT, chat_peer, is_message, wait_members

ROOM = "p2p-chat-default"
# GossipSub keeps recent messages for 5 heartbeats (1 s each) and offers them to peers that
# (re)join the mesh: a peer back within that window gets them live. Being away longer than
# that is what catch-up is for, so the tests stay away longer.
AWAY = 7.0


def archiver(path: Path, nodes: list[NodeProcess], *args: str) -> NodeProcess:
    node = start_node(path, "--role", "archiver", *args)
    nodes.append(node)
    return node


_asked = itertools.count()


def history_texts(node: NodeProcess, count: int) -> list[str]:
    """The texts ``/history`` shows when asked for one more than ``count`` messages: the
    answer to a JSON input with an id, up to its end marker (messages a catch-up shows
    meanwhile are no part of it)."""
    asked = f"history-{next(_asked)}"
    node.say(json.dumps({"id": asked, "line": f"/history {count + 1}"}))
    texts: list[str] = []
    while True:
        event = node.next_event(lambda e: e.get("reply_to") == asked, timeout=WAIT)
        if event["type"] == "history_end":
            assert event["count"] == len(texts)
            return texts
        assert event["type"] == "message" and event["history"], event
        texts.append(event["text"])


def caught_up(node: NodeProcess) -> dict[str, Any]:
    return node.next_event(lambda e: e["type"] == "caught_up", timeout=WAIT)


def chat_while_away(sender: NodeProcess, witness: NodeProcess, texts: list[str]) -> None:
    for text in texts:
        sender.say(text)
    witness.next_event(is_message(texts[-1]), timeout=WAIT)


def test_offline_peer_catches_up_through_an_archiver(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    store = archiver(tmp_path / "archiver", nodes)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", store.addr())
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", store.addr())
    wait_members(a, 1)  # the archiver: A and B meet only through it
    wait_members(b, 1)
    # The archiver is in the room, yet no member of it: /peers shows it by its role.
    a.say("/peers")
    peers = a.next_event(lambda e: e["type"] == "output" and e["command"] == "peers")
    listed = {p["peer"]: p for p in peers["data"]["peers"]}
    assert listed[store.peer_id]["roles"] == ["archiver"]
    assert store.peer_id not in peers["data"]["room_members"]
    assert f"archiver ({store.peer_id[:6]}…{store.peer_id[-4:]}) direct" in peers["text"]
    assert a.metric("p2pchat_room_infrastructure_peers") == 1
    a.say("before B left")
    b.next_event(is_message("before B left"), timeout=WAIT)
    assert b.stop() == 0

    missed = [f"missed {n}" for n in range(1, 31)]
    for text in missed:
        a.say(text)
    wait_metric(store, "p2pchat_archive_inserted_total", 31)
    time.sleep(AWAY)

    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", store.addr())
    event = caught_up(b)
    assert event["room"] == ROOM and event["count"] == 30
    assert store.peer_id in event["sources"]
    assert history_texts(b, 31) == ["before B left", *missed]  # in order, once each
    assert b.metric("p2pchat_history_rejected_total") == 0
    assert store.metric("p2pchat_archive_messages") == 31
    assert store.metric("p2pchat_store_queries_total", status="ok") >= 1


def test_offline_peer_catches_up_from_another_peer_without_an_archiver(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = chat_peer(tmp_path / "a", nodes)
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    wait_members(a, 2)
    c.say("all three here")
    b.next_event(is_message("all three here"), timeout=WAIT)
    assert b.stop() == 0

    missed = [f"while B was away {n}" for n in range(1, 11)]
    chat_while_away(a, c, missed[:5])
    chat_while_away(c, a, missed[5:])
    time.sleep(AWAY)

    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    assert caught_up(b)["count"] == 10
    assert history_texts(b, 11) == ["all three here", *missed]
    # Reconnecting again brings nothing twice.
    assert history_texts(b, 0) == [missed[-1]]
    assert b.metric("p2pchat_messages_dropped_total", reason="duplicate") == 0


def test_catch_up_brings_back_nothing_of_an_ignored_peer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # What /ignore refuses live must not come back through history: catch-up neither stores
    # nor shows it (so /unignore later does not reveal it either).
    a = chat_peer(tmp_path / "a", nodes)
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    wait_members(a, 2)
    b.say(f"/ignore {a.peer_id}")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "ignored")
    assert b.stop() == 0
    chat_while_away(a, c, ["from the ignored peer"])
    chat_while_away(c, a, ["from C"])
    time.sleep(AWAY)

    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    assert caught_up(b)["count"] == 1
    b.say(f"/unignore {a.peer_id}")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "unignored")
    assert history_texts(b, 5) == ["from C"]


def test_a_chat_peer_that_also_archives_chats_archives_and_serves_catch_up(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # One process, two roles in the same room: one pubsub, one history.
    hub = chat_peer(tmp_path / "hub", nodes, "--role", "peer,archiver")
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", hub.addr())
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", hub.addr())
    wait_members(a, 1)
    wait_members(b, 1)
    a.say("before B left")
    hub.next_event(is_message("before B left"), timeout=WAIT)  # the hub's user sees it
    b.next_event(is_message("before B left"), timeout=WAIT)
    hub.say("from the hub")
    a.next_event(is_message("from the hub"), timeout=WAIT)
    b.next_event(is_message("from the hub"), timeout=WAIT)  # B has all of it before it goes
    assert b.stop() == 0

    missed = [f"missed {n}" for n in range(1, 21)]
    chat_while_away(a, hub, missed)
    wait_metric(hub, "p2pchat_archive_messages", 22)  # held durably, whoever stored it first
    time.sleep(AWAY)

    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", hub.addr())
    event = caught_up(b)
    assert event["count"] == 20 and hub.peer_id in event["sources"]
    assert history_texts(b, 22) == ["before B left", "from the hub", *missed]
    # Stored once: the chat peer and the archiver of the hub share the room's history.
    assert hub.metric("p2pchat_archive_messages") == 22
    assert history_texts(hub, 22) == ["before B left", "from the hub", *missed]
    assert hub.metric("p2pchat_messages_dropped_total", reason="bad_signature") == 0


def test_a_script_is_shown_every_missed_message_even_beyond_the_event_buffer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """--json shows every message a catch-up stored, as history messages after the
    caught_up event: more than the front end's event buffer holds, none dropped."""
    missed = EVENT_BUFFER + 2_000
    carol = ephemeral_identity()
    start = int(time.time() * 1000) - 3_600_000
    fill_store(
        tmp_path / "source",
        [signed_message(carol, ROOM, n, start + n) for n in range(missed)],
    )
    source = chat_peer(tmp_path / "source", nodes)
    late = chat_peer(tmp_path / "late", nodes, "--bootstrap", source.addr())
    event = caught_up(late)
    assert (event["count"], event["shown"]) == (missed, missed)
    shown = 0
    while shown < missed:
        message = late.next_event(lambda e: e["type"] == "message", timeout=WAIT)
        assert message["history"] and message["text"] == f"message {shown}", message
        shown += 1
    assert not logged_lines(late, "chat event dropped")


def logged_lines(node: NodeProcess, event: str) -> list[dict[str, Any]]:
    """The node's log lines (JSON, stderr) whose event starts with ``event``."""
    found = []
    for line in node.raw_stderr:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if str(entry.get("event", "")).startswith(event):
            found.append(entry)
    return found
