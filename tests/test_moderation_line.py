"""Room moderation end to end: real ``p2pchat --json`` processes on 127.0.0.1, and a rogue
sender (an in-process py-libp2p pubsub that ignores moderation, as other software may).

The line: owner A - B - rogue M, and an archiver E that M reaches directly. A mutes M: B drops
M's messages where pubsub validates them and passes none on (A, the owner, never even sees
them), E refuses to store them, a peer D that joins later learns the mute from history (and a
peer F that meets only the archiver, from the archive), and a decision M signs itself is
refused as not the owner's and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from p2pchat.node.history import now_ms
from p2pchat.node.wire.chat import Moderation, encode, new_message_id

from tests.conftest import NodeProcess, node_env, start_node
from tests.hostile.moderation_attacks import rogue as rogue_sender
from tests.test_chat import WAIT, chat_peer, is_message

NO_DHT = node_env(P2PCHAT_DHT__ENABLED="false")


async def in_thread(call: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(call)


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await in_thread(check):
        assert time.monotonic() < deadline, what
        await trio.sleep(0.2)


def mods_of(node: NodeProcess, room: str) -> dict[str, Any]:
    node.say(f"/mods {room}")
    return node.next_event(lambda e: e["type"] == "output" and e["command"] == "mods")["data"]


async def test_the_owner_mutes_a_rogue_sender_and_the_room_holds_the_mute(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a = chat_peer(tmp_path / "a", nodes, env=NO_DHT)
    room = f"ops~{a.peer_id}"
    a.say("/create ops")
    a.next_event(lambda e: e["type"] == "notice" and e["kind"] == "room_joined")
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr(), "--room", room, env=NO_DHT)
    archiver_env = node_env(P2PCHAT_DHT__ENABLED="false", P2PCHAT_ARCHIVER__ROOMS=room)
    e = start_node(tmp_path / "e", "--role", "archiver", "--bootstrap", b.addr(), env=archiver_env)
    nodes.append(e)

    async with rogue_sender(tmp_path / "mallory", room, b, e) as rogue:
        mallory = rogue.identity.peer_id_text
        # The control: before the mute, M's messages cross B to the owner and are archived.
        await rogue.say("before the mute")
        await in_thread(lambda: a.next_event(is_message("before the mute"), timeout=WAIT))

        a.say(f"/mute {mallory} 10m flooding")
        for node in (a, b):
            notice = await in_thread(
                lambda n=node: n.next_event(
                    lambda ev: ev["type"] == "notice" and ev["kind"] == "moderation", timeout=WAIT
                )
            )
            assert notice["data"]["target"] == mallory and notice["data"]["action"] == "mute"
        await trio.sleep(2)  # the archiver, which says nothing, has it too

        await rogue.say("while muted")

        def dropped(node: NodeProcess, family: str = "p2pchat_messages_dropped_total") -> float:
            return node.metric(family, reason="muted")

        await until(lambda: dropped(b) >= 1, "B never dropped the muted sender's message")
        await until(
            lambda: dropped(e, "p2pchat_archive_dropped_total") >= 1,
            "the archiver never refused the muted sender's message",
        )
        b.say("B still passes messages on")
        await in_thread(lambda: a.next_event(is_message("B still passes messages on"), WAIT))
        assert dropped(a) == 0  # B passed nothing of M's on: the owner never received it
        shown = [ev.get("text") for ev in a.drain_events() + b.drain_events()]
        assert "while muted" not in shown

        # A peer that joins later learns the mute from history (B's store and the archive).
        d = chat_peer(tmp_path / "d", nodes, "--bootstrap", b.addr(), "--room", room, env=NO_DHT)
        learned = await in_thread(
            lambda: d.next_event(
                lambda ev: ev["type"] == "notice" and ev["kind"] == "moderation", timeout=WAIT
            )
        )
        assert learned["data"]["target"] == mallory and learned["data"]["owner"] == a.peer_id
        data = await in_thread(lambda: mods_of(d, room))
        assert data["owner"] == a.peer_id
        assert [(m["target"], m["action"]) for m in data["in_force"]] == [(mallory, "mute")]
        await rogue.say("muted still")  # refused by D too, where it reaches D
        await trio.sleep(2)
        texts = [ev.get("text") for ev in d.drain_events() if ev["type"] == "message"]
        assert "while muted" not in texts and "muted still" not in texts
        assert "B still passes messages on" in texts  # the control: D got the room's messages

        # A decision another stranger signs about B: valid in form, not the owner's: refused
        # where pubsub validates it, counted, and nothing changes. Last, and not M's: an invalid
        # message costs its signer its GossipSub score (peers prune it from their meshes), and
        # M is muted (its messages are refused before anything else is looked at).
        forged = Moderation(
            id=new_message_id(),
            room=room,
            target=b.peer_id,
            action="remove",
            sent_at_ms=now_ms(),
        )
        async with rogue_sender(tmp_path / "eve", room, b, e) as eve:
            await eve.publish(encode(forged))
            await until(
                lambda: b.metric("p2pchat_messages_dropped_total", reason="not_owner") >= 1,
                "B never refused the rogue's decision",
            )
            await until(
                lambda: e.metric("p2pchat_archive_dropped_total", reason="not_owner") >= 1,
                "the archiver never refused the rogue's decision",
            )
        in_force = (await in_thread(lambda: mods_of(b, room)))["in_force"]
        assert [(m["target"], m["action"]) for m in in_force] == [(mallory, "mute")]

        # A peer that meets only the archiver learns the mute from the archive.
        f = chat_peer(tmp_path / "f", nodes, "--bootstrap", e.addr(), "--room", room, env=NO_DHT)
        archived = await in_thread(
            lambda: f.next_event(
                lambda ev: ev["type"] == "notice" and ev["kind"] == "moderation", timeout=WAIT
            )
        )
        assert archived["data"]["target"] == mallory
