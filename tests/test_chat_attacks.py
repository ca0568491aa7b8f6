"""Hostile GossipSub input against a real chat peer: dropped, counted, never shown or stored.

The attacker is an in-process py-libp2p pubsub whose own checks are off (no StrictSign), so it
can put anything on the wire: unsigned messages, forged senders, and signed but invalid payloads.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from p2pchat.node.p2p.identity import Identity, load_or_create_identity
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.chat import new_message_id

from tests.conftest import NodeProcess, start_node
from tests.hostile.pubsub_attacker import ROOM, payload, signed, unchecked_pubsub


@asynccontextmanager
async def attacker(
    tmp_path: Path, nodes: list[NodeProcess]
) -> AsyncIterator[tuple[NodeProcess, Pubsub, Identity, Identity]]:
    """A ``--json`` victim process, and an attacker's pubsub (no checks of its own) in its
    room; also yields the attacker's identity and an honest peer's, whose keys it holds."""
    victim = start_node(tmp_path / "victim", "--json")
    nodes.append(victim)
    victim.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")

    identity = load_or_create_identity(tmp_path / "mallory")
    honest_friend = load_or_create_identity(tmp_path / "friend")
    async with unchecked_pubsub(identity) as (host, pubsub):
        await pubsub.subscribe(ROOM)
        await host.connect(victim.addr())
        with trio.fail_after(30):
            while ID.from_base58(victim.peer_id) not in pubsub.peer_topics.get(ROOM, set()):
                await trio.sleep(0.1)
        yield victim, pubsub, identity, honest_friend


async def test_forged_unsigned_and_invalid_messages_are_dropped_and_counted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    async with attacker(tmp_path, nodes) as (victim, pubsub, identity, honest_friend):
        unsigned = rpc_pb2.Message(
            data=payload("unsigned"),
            topicIDs=[ROOM],
            from_id=identity.peer_id.to_bytes(),
            seqno=b"\x00" * 7 + b"\x01",
        )
        forged = signed(identity, payload("forged"), 2, claimed=honest_friend.peer_id)
        tampered = signed(identity, payload("original"), 3)
        tampered.data = payload("tampered")
        attacks = [
            unsigned,
            forged,
            tampered,
            signed(identity, payload("x" * 5000), 4),  # oversized text
            signed(identity, b"\x0a\xff\xff garbage", 5),  # malformed
            signed(identity, payload("elsewhere", room="other-room"), 6),  # wrong room
            signed(identity, payload("late", ahead_ms=3_600_000), 9),  # an hour ahead
        ]
        for message in attacks:
            await pubsub.push_msg(pubsub.my_id, message)
        honest = payload("the honest one")
        await pubsub.push_msg(pubsub.my_id, signed(identity, honest, 7))
        # The same chat message again under a new GossipSub seqno: shown and stored once.
        await pubsub.push_msg(pubsub.my_id, signed(identity, honest, 8))

        got = await trio.to_thread.run_sync(
            lambda: victim.next_event(lambda e: e["type"] == "message", timeout=60)
        )
    assert got["text"] == "the honest one"  # the only message shown
    assert got["sender"] == identity.peer_id_text

    def dropped(reason: str) -> float:
        return victim.metric("p2pchat_messages_dropped_total", reason=reason)

    assert dropped("bad_signature") == 3
    assert dropped("oversized") == 1
    assert dropped("malformed") == 1
    assert dropped("wrong_room") == 1
    assert dropped("future_timestamp") == 1
    deadline = time.monotonic() + 30
    while dropped("duplicate") < 1 and time.monotonic() < deadline:
        await trio.sleep(0.1)
    assert dropped("duplicate") == 1
    assert victim.metric("p2pchat_messages_received_total") == 1
    assert not [e for e in victim.drain_events() if e["type"] == "message" and e is not got]
    assert victim.http_get("/readyz")[0] == 200


async def test_a_message_without_a_sender_name_is_shown_as_anon(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # A minimal client (the js-libp2p one of issue #20) never set sender_name: proto3 sends
    # nothing, and the whole message was dropped as invalid. It is shown, as "anon".
    async with attacker(tmp_path, nodes) as (victim, pubsub, identity, _):
        bare = chat_pb2.ChatEnvelope(version=1)
        bare.text.id = new_message_id()
        bare.text.room = ROOM
        bare.text.text = "no name set"
        bare.text.sent_at_ms = int(time.time() * 1000)
        assert not bare.text.sender_name
        await pubsub.push_msg(pubsub.my_id, signed(identity, bare.SerializeToString(), 1))
        got = await trio.to_thread.run_sync(
            lambda: victim.next_event(lambda e: e["type"] == "message", timeout=60)
        )
    assert (got["text"], got["sender"], got["sender_name"]) == (
        "no name set",
        identity.peer_id_text,
        "anon",
    )
    assert victim.metric("p2pchat_messages_dropped_total", reason="invalid") == 0
    assert victim.metric("p2pchat_messages_received_total") == 1


async def test_a_message_dated_400_days_ago_is_shown_live_with_its_date(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # Decided in #20 (README "Receive-side rules"): no lower bound on sent_at_ms; retention
    # (365 days) deletes it from history at its hourly pass, the reader sees its date.
    async with attacker(tmp_path, nodes) as (victim, pubsub, identity, _):
        old = payload("from long ago", ahead_ms=-400 * 86_400_000)
        await pubsub.push_msg(pubsub.my_id, signed(identity, old, 1))
        got = await trio.to_thread.run_sync(
            lambda: victim.next_event(lambda e: e["type"] == "message", timeout=60)
        )
    assert got["text"] == "from long ago"
    age_days = (time.time() * 1000 - got["sent_at_ms"]) / 86_400_000
    assert 399 < age_days < 401
    assert victim.metric("p2pchat_messages_received_total") == 1


async def test_an_id_chosen_by_one_sender_cannot_hide_another_senders_message(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # Mallory relays a copy of the id of Alice's message under its own (valid) signature before
    # Alice's message arrives: keyed by the id alone, Alice's was then a "duplicate".
    async with attacker(tmp_path, nodes) as (victim, pubsub, mallory, alice):
        chosen = new_message_id()
        await pubsub.push_msg(pubsub.my_id, signed(mallory, payload("squatted", id=chosen), 1))
        await pubsub.push_msg(pubsub.my_id, signed(alice, payload("genuine", id=chosen), 1))
        shown = [
            await trio.to_thread.run_sync(
                lambda: victim.next_event(lambda e: e["type"] == "message", timeout=60)
            )
            for _ in range(2)
        ]
    assert [(e["text"], e["sender"]) for e in shown] == [
        ("squatted", mallory.peer_id_text),
        ("genuine", alice.peer_id_text),
    ]
    assert shown[0]["id"] != shown[1]["id"]
    assert victim.metric("p2pchat_messages_dropped_total", reason="duplicate") == 0


async def test_a_peer_sending_invalid_messages_is_pruned_then_graylisted(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # #18: peer scoring on. Each invalid message costs its forwarder 0.05 x 1000 x count**2:
    # under zero at once (pruned from the mesh, never grafted), under the graylist threshold
    # (-2500) at the eighth (everything it sends is ignored).
    async with attacker(tmp_path, nodes) as (victim, pubsub, identity, _):
        deadline = time.monotonic() + 30
        while victim.metric("p2pchat_room_peers") < 1 and time.monotonic() < deadline:
            await trio.sleep(0.2)
        await trio.sleep(2)  # a heartbeat or two: the victim grafts the attacker
        # Written straight to the victim: pruned after the first, the attacker's own GossipSub
        # would no longer send it anything.
        stream = pubsub.peers[ID.from_base58(victim.peer_id)]
        for seqno in range(1, 11):
            garbage = signed(identity, b"\x0a\xff\xff garbage", seqno)
            await pubsub.write_msg(stream, rpc_pb2.RPC(publish=[garbage]))
            await trio.sleep(0.1)
        deadline = time.monotonic() + 30
        while victim.metric("p2pchat_pubsub_graylisted_peers") < 1:
            assert time.monotonic() < deadline, "the invalid sender was never graylisted"
            await trio.sleep(0.2)
        after = signed(identity, payload("after"), 11)
        await pubsub.write_msg(stream, rpc_pb2.RPC(publish=[after]))
        await trio.sleep(2)
        assert victim.metric("p2pchat_pubsub_control_dropped_total", limit="graylisted") >= 1
    assert victim.metric("p2pchat_pubsub_penalties_total", reason="invalid_message") >= 8
    assert victim.metric("p2pchat_pubsub_score_pruned_total") >= 1
    assert victim.metric("p2pchat_messages_received_total") == 0  # "after" was ignored too
