"""The chat service with its parts together, on a pubsub in memory (no network, no process)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from p2pchat.node.history import now_ms
from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.node.wire.chat import ChatText, NameAnnouncement, encode, new_message_id
from p2pchat.roles.peer.events import (
    ConnectionEvent,
    ErrorEvent,
    HistoryEndEvent,
    MessageEvent,
    NameEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
)
from p2pchat.roles.peer.names import MAX_KNOWN_NAMES

from tests.chat_fakes import chat_service, running
from tests.peer_ids import fresh_peer_ids

ROOM = "p2p-chat-default"


def text(room: str, words: str, name: str = "Bob") -> bytes:
    return encode(
        ChatText(id=new_message_id(), room=room, sender_name=name, text=words, sent_at_ms=now_ms())
    )


def announcement(name: str) -> bytes:
    return encode(NameAnnouncement(id=new_message_id(), name=name, sent_at_ms=now_ms()))


async def test_a_message_arriving_during_join_is_shown_as_a_message_not_in_the_answer(
    tmp_path: Path,
) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):

            async def bob_speaks_while_joining(topic: str) -> None:
                if topic == "side":
                    chat.pubsub.deliver(ROOM, [(bob, text(ROOM, "hello during join"))])
                    await trio.testing.wait_all_tasks_blocked()  # it is received meanwhile

            chat.pubsub.while_joining = bob_speaks_while_joining
            keep_going, answer = await chat.service.execute("/join side")
            assert keep_going
            assert answer == [NoticeEvent("room_joined", "joined side", {"room": "side"})]
            shown = [e for e in chat.events if isinstance(e, MessageEvent)]
            assert [(e.text, e.sender, e.room) for e in shown] == [
                ("hello during join", bob.peer_id_text, ROOM)
            ]
            assert chat.service.current_room == "side"
            assert chat.joined == [ROOM, "side"]


async def test_commands_answer_for_themselves(tmp_path: Path) -> None:
    with chat_service(tmp_path, name="Alice") as chat:
        async with running(chat):
            service = chat.service

            async def answer(line: str) -> list[object]:
                keep_going, events = await service.execute(line)
                assert keep_going
                return list(events)

            assert await answer("") == []
            assert await answer("/bogus") == [
                ErrorEvent(
                    "unknown_command",
                    "unknown command /bogus; type /help for the list (//bogus sends it as text)",
                    "bogus",
                )
            ]
            (help_text,) = await answer("/help")
            assert isinstance(help_text, OutputEvent) and "/join <room>" in help_text.text
            assert await answer("/history") == [HistoryEndEvent("history", ROOM, 0, 0)]
            assert await answer("/join side") == [
                NoticeEvent("room_joined", "joined side", {"room": "side"})
            ]
            (rooms,) = await answer("/rooms")
            assert isinstance(rooms, OutputEvent)
            assert rooms.text == f"rooms: {ROOM}, side (current)"
            assert await answer("/switch nowhere") == [
                ErrorEvent("not_in_room", "you are not in nowhere; /join nowhere first", "switch")
            ]
            assert await answer(f"/switch {ROOM}") == [
                NoticeEvent("room_switched", f"current room: {ROOM}", {"room": ROOM, "unread": 0})
            ]
            assert await answer("/leave side") == [
                NoticeEvent(
                    "room_left",
                    f"left side; current room: {ROOM}",
                    {"room": "side", "current": ROOM},
                )
            ]
            assert await answer("/leave side") == [
                ErrorEvent("not_in_room", "you are not in side", "leave")
            ]
            assert await answer(f"/leave {ROOM}") == [
                ErrorEvent(
                    "only_room", f"{ROOM} is your only room; use /quit to leave the chat", "leave"
                )
            ]
            (info,) = await answer("/info")
            assert isinstance(info, OutputEvent)
            assert info.data["name"] == "Alice" and info.data["rooms"] == [ROOM]
            (peers,) = await answer("/peers")
            assert isinstance(peers, OutputEvent) and peers.text.startswith("connected peers: 0")
            (renamed,) = await answer("/name Carol")
            assert isinstance(renamed, NoticeEvent) and renamed.text.startswith("you are now Carol")
            assert service.display_name == "Carol"
            (too_long,) = await answer("x" * 5000)
            assert isinstance(too_long, ErrorEvent) and "the limit is 4096" in too_long.text
            assert chat.events == []  # nothing of the above was live


async def test_a_message_sent_alone_is_queued_then_delivered_when_a_peer_joins(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bob = ephemeral_identity().peer_id_text
    with chat_service(tmp_path, name="Alice") as chat:
        async with running(chat):
            _, answer = await chat.service.execute("first")
            await chat.service.execute("second")
            assert len(answer) == 1 and "message queued" in answer[0].text  # type: ignore[union-attr]
            assert chat.pubsub.published == []
            chat.peer_arrives(bob, ROOM)
            await trio.testing.wait_all_tasks_blocked()
            notices = [e.text for e in chat.events if isinstance(e, NoticeEvent)]
            assert notices[0].startswith("discovered") and notices[0].endswith("local network")
            assert ConnectionEvent("opened", bob, "anon", False, []) in chat.events
            assert notices[1] == f"delivered 2 queued message(s) to {ROOM}"
            assert PeerEvent("joined", ROOM, bob, "anon") in chat.events
            # Our name first, then the queue in the order it was typed; both come back to us.
            assert [topic for topic, _ in chat.pubsub.published] == [ROOM] * 3
            mine = [e.text for e in chat.events if isinstance(e, MessageEvent) and e.own]
            assert mine == ["first", "second"]
            _, answer = await chat.service.execute("third")
            assert answer == []  # published: shown when it comes back, as a live message
            chat.peer_leaves(bob, ROOM)
            await trio.testing.wait_all_tasks_blocked()
            assert PeerEvent("left", ROOM, bob, "anon") in chat.events


async def test_names_duplicates_and_catch_up_reach_the_user_live(tmp_path: Path) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            data = text(ROOM, "once")
            chat.pubsub.deliver(ROOM, [(bob, announcement("Bobby")), (bob, data), (bob, data)])
            await trio.testing.wait_all_tasks_blocked()
            assert chat.events[0] == NameEvent(bob.peer_id_text, "Bobby", None)
            assert [e.text for e in chat.events[1:] if isinstance(e, MessageEvent)] == ["once"]
            assert chat.service.name_of(bob.peer_id_text) == "Bobby"
            shown = len(chat.events)
            await chat.service.caught_up(ROOM, [], [])
            assert len(chat.events) == shown  # nothing new: nothing to say

            _, history = await chat.service.execute("/history 5")
            assert [e.text for e in history if isinstance(e, MessageEvent)] == ["once"]


async def test_a_flood_of_fresh_signers_announcing_names_is_remembered_up_to_the_bound(
    tmp_path: Path,
) -> None:
    flood = MAX_KNOWN_NAMES + 2_000
    with chat_service(tmp_path) as chat:
        async with running(chat):
            signers = list(fresh_peer_ids(flood))
            for first in range(0, flood, 500):
                batch = signers[first : first + 500]
                chat.pubsub.deliver(ROOM, [(peer, announcement("mallory")) for peer in batch])
                await trio.testing.wait_all_tasks_blocked()
                assert len(chat.service._names) <= MAX_KNOWN_NAMES
            assert len(chat.service._names) == MAX_KNOWN_NAMES
            assert chat.service.name_of(signers[-1]) == "mallory"
            assert chat.service.name_of(signers[0]) == "anon"  # the oldest were forgotten
            room = chat.service._rooms.get(ROOM)
            assert room is not None and len(room.heard) == 256
