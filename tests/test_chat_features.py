"""What a user of a modern chat client expects of the chat service: rooms told apart, unread
counts, missed messages shown, remembered rooms, /me, //text, mentions, /whois, /search,
/export, infrastructure kept out of the room members (service on a pubsub in memory; the
console through a real terminal is tests/test_console.py)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import trio
import trio.testing
from p2pchat.node.history import StoredMessage, now_ms
from p2pchat.node.p2p.envelopes import envelope_data, sign_envelope
from p2pchat.node.p2p.identity import Identity, ephemeral_identity
from p2pchat.node.wire.chat import ChatText, decode, encode, new_message_id
from p2pchat.roles.peer import lookup
from p2pchat.roles.peer.events import (
    CaughtUpEvent,
    ChatEvent,
    ErrorEvent,
    HistoryEndEvent,
    MessageEvent,
    NoticeEvent,
    OutputEvent,
    PeerEvent,
)
from p2pchat.roles.peer.lookup import SEARCH_HITS
from p2pchat.roles.peer.rendering import BELL, HIGHLIGHT, View, render_text, timestamp
from p2pchat.roles.peer.rooms import MAX_ROOMS

from tests.chat_fakes import Chat, chat_service, running

ROOM = "p2p-chat-default"


def said(room: str, words: str, name: str = "Bob", at_ms: int | None = None) -> bytes:
    return encode(
        ChatText(
            id=new_message_id(),
            room=room,
            sender_name=name,
            text=words,
            sent_at_ms=at_ms if at_ms is not None else now_ms(),
        )
    )


async def answer(chat: Chat, line: str) -> list[ChatEvent]:
    keep_going, events = await chat.service.execute(line)
    assert keep_going
    return events


def messages(events: list[ChatEvent]) -> list[MessageEvent]:
    return [e for e in events if isinstance(e, MessageEvent)]


async def test_a_message_of_another_room_shows_its_room_and_counts_as_unread(
    tmp_path: Path,
) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, "/join ops")
            await answer(chat, f"/switch {ROOM}")
            at = now_ms()
            chat.pubsub.deliver(
                "ops", [(bob, said("ops", f"ops line {n}", at_ms=at + n)) for n in range(3)]
            )
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, "here"))])
            await trio.testing.wait_all_tasks_blocked()
            ops_line = next(m for m in messages(chat.events) if m.room == "ops")
            here = next(m for m in messages(chat.events) if m.room == ROOM)
            view = View(room=ROOM)
            assert f"] #ops Bob ({bob.peer_id_text[:6]}…" in render_text(ops_line, view)
            assert "#" not in render_text(here, view)  # the current room needs no tag
            assert "#ops" not in render_text(ops_line, View(room="ops"))

            (rooms,) = await answer(chat, "/rooms")
            assert isinstance(rooms, OutputEvent)
            assert rooms.text == f"rooms: ops (3 unread), {ROOM} (current)"
            assert rooms.data["unread"] == {"ops": 3, ROOM: 0}

            # Switching shows what arrived there, in order, then an end marker.
            switched = await answer(chat, "/switch ops")
            assert switched[0] == NoticeEvent(
                "room_switched", "current room: ops (3 new)", {"room": "ops", "unread": 3}
            )
            assert [m.text for m in messages(switched)] == [f"ops line {n}" for n in range(3)]
            assert all(m.history for m in messages(switched))
            assert switched[-1] == HistoryEndEvent("switch", "ops", 3, 0)
            (rooms,) = await answer(chat, "/rooms")
            assert isinstance(rooms, OutputEvent) and rooms.data["unread"]["ops"] == 0


def test_timestamps_carry_the_date_when_not_today() -> None:
    now = time.localtime()
    today = (now.tm_year, now.tm_mon, now.tm_mday)
    assert len(timestamp(now_ms(), today)) == len("14:04:35")
    two_days_ago = now_ms() - 2 * 86_400_000
    shown = timestamp(two_days_ago, today)
    assert shown == time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(two_days_ago / 1000))


def test_actions_and_mentions_render_as_a_chat_client_does() -> None:
    peer = "12D3KooWMa11oryMa11oryMa11oryMa11oryMa11oryMa11ory63hY"
    action = MessageEvent(ROOM, "00", peer, "Bob", "waves", now_ms(), own=False, action=True)
    assert render_text(action).endswith("] * Bob (12D3Ko…63hY) waves")
    mention = MessageEvent(ROOM, "00", peer, "Bob", "hi Alice", now_ms(), own=False, mention=True)
    on_terminal = render_text(mention, View(room=ROOM, width=80, bell=True))
    assert on_terminal.startswith(HIGHLIGHT) and on_terminal.endswith(BELL)
    assert not render_text(mention, View(room=ROOM, width=80, bell=False)).endswith(BELL)
    # Not a terminal (a pipe, a log): no escape sequences, no bell.
    assert render_text(mention, View(room=ROOM)) == render_text(
        MessageEvent(ROOM, "00", peer, "Bob", "hi Alice", mention.sent_at_ms, own=False)
    )
    old = MessageEvent(ROOM, "00", peer, "Bob", "hi Alice", 0, own=False, history=True)
    replayed = render_text(
        MessageEvent(**{**_fields(old), "mention": True}), View(width=80, bell=True)
    )
    assert not replayed.endswith(BELL)  # history never rings


def _fields(event: MessageEvent) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


async def test_mentions_of_my_name_are_marked_and_me_and_double_slash_send(
    tmp_path: Path,
) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path, name="Alice") as chat:
        chat.pubsub.members[ROOM] = {bob.peer_id_text}  # someone to send to
        async with running(chat):
            for words in ("hey @alice, look", "Alice: ping", "malice aforethought", "alicex"):
                chat.pubsub.deliver(ROOM, [(bob, said(ROOM, words))])
            await trio.testing.wait_all_tasks_blocked()
            marked = {m.text: m.mention for m in messages(chat.events)}
            assert marked == {
                "hey @alice, look": True,
                "Alice: ping": True,
                "malice aforethought": False,
                "alicex": False,
            }

            assert await answer(chat, "/me waves") == []
            assert await answer(chat, "//etc/hosts is a path") == []
            await trio.testing.wait_all_tasks_blocked()
            assert await answer(chat, "/me") == [
                ErrorEvent("missing_argument", "/me needs an argument: /me <action>", "me")
            ]
            sent = [decode(data, max_text_bytes=4096) for _, data in chat.pubsub.published]
            texts = [(m.text, m.action) for m in sent if isinstance(m, ChatText)]
            assert texts == [("waves", True), ("/etc/hosts is a path", False)]
            mine = messages(chat.events)[-2:]
            assert [(m.text, m.action, m.own) for m in mine] == [
                ("waves", True, True),
                ("/etc/hosts is a path", False, True),
            ]


async def test_a_verbatim_send_may_start_with_a_slash_and_span_lines(tmp_path: Path) -> None:
    with chat_service(tmp_path) as chat:
        chat.pubsub.members[ROOM] = {ephemeral_identity().peer_id_text}
        async with running(chat):
            assert await chat.service.send("/not a command\nsecond line") == []
            assert await chat.service.send("x", room="elsewhere") == [
                ErrorEvent("not_in_room", "you are not in elsewhere; /join elsewhere first")
            ]
            await trio.testing.wait_all_tasks_blocked()
            assert [m.text for m in messages(chat.events)] == ["/not a command\nsecond line"]


def _stored(chat: Chat, signer: Identity, room: str, words: str, at_ms: int) -> StoredMessage:
    """A message as catch-up stores it: signed by ``signer``, in the history."""
    chat.pubsub.members.setdefault(room, set())
    data = said(room, words, at_ms=at_ms)
    payload = decode(data, max_text_bytes=4096)
    assert isinstance(payload, ChatText)
    return StoredMessage.of_text(payload, signer.peer_id_text, sign_envelope(signer, room, data), 0)


async def test_missed_messages_are_shown_newest_few_in_order_or_all_for_scripts(
    tmp_path: Path,
) -> None:
    bob = ephemeral_identity()
    for inline, expected_shown in ((5, 5), (None, 12), (0, 0), (50, 12)):
        with chat_service(tmp_path / str(inline), missed_inline=inline) as chat:
            base = now_ms() - 3 * 86_400_000  # three days ago: shown with their date
            missed = [_stored(chat, bob, ROOM, f"missed {n}", base + n) for n in range(12)]
            await chat.service.caught_up(ROOM, list(reversed(missed)), ["archiver"])
            first, *shown = chat.events
            assert first == CaughtUpEvent(ROOM, 12, ["archiver"], expected_shown)
            assert [m.text for m in messages(shown)] == [
                f"missed {n}" for n in range(12 - expected_shown, 12)
            ]
            assert all(m.history for m in messages(shown))
            if expected_shown == 5:
                assert (
                    first.text == f"12 message(s) in {ROOM} while you were away; 7 more: /history"
                )
                assert render_text(shown[0]).startswith(f"[{timestamp(base + 7)}]")
                assert "-" in timestamp(base + 7)  # the date, as it is not today


async def test_rooms_joined_are_joined_again_after_a_restart_until_left(tmp_path: Path) -> None:
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, "/join ops")
            await answer(chat, "/join dev")
            await answer(chat, "/leave dev")
    with chat_service(tmp_path) as chat:
        async with running(chat):
            assert chat.service.room_names() == [ROOM, "ops"]
            assert chat.service.current_room == ROOM  # the configured room comes first
            assert chat.service.welcome().text.endswith("(also in ops); /help lists the commands")


async def test_rooms_at_once_are_bounded(tmp_path: Path) -> None:
    with chat_service(tmp_path) as chat:
        async with running(chat):
            for n in range(MAX_ROOMS - 1):
                await answer(chat, f"/join room{n}")
            (refused,) = await answer(chat, "/join one-too-many")
            assert isinstance(refused, ErrorEvent) and refused.code == "too_many_rooms"
            assert len(chat.service.room_names()) == MAX_ROOMS


async def test_whois_names_every_peer_using_a_name(tmp_path: Path) -> None:
    bob, mallory = ephemeral_identity(), ephemeral_identity()
    with chat_service(tmp_path, name="Alice") as chat:
        async with running(chat):
            chat.peer_arrives(bob.peer_id_text, ROOM)
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, "hi", name="Bob"))])
            chat.pubsub.deliver(ROOM, [(mallory, said(ROOM, "hi too", name="bob"))])
            await trio.testing.wait_all_tasks_blocked()
            (whois,) = await answer(chat, "/whois BOB")
            assert isinstance(whois, OutputEvent)
            found = {p["peer"]: p for p in whois.data["peers"]}
            assert set(found) == {bob.peer_id_text, mallory.peer_id_text}
            assert found[bob.peer_id_text]["connection"] == "direct"
            assert found[bob.peer_id_text]["rooms"] == [ROOM]
            assert found[mallory.peer_id_text]["connection"] is None
            assert found[mallory.peer_id_text]["heard_at_ms"] is not None
            assert "names are claims" in whois.text
            (me,) = await answer(chat, "/whois alice")
            assert isinstance(me, OutputEvent) and me.data["peers"][0]["me"] is True
            assert await answer(chat, "/whois nobody") == [
                ErrorEvent("unknown_name", "nobody known here uses the name nobody", "whois")
            ]


async def test_search_finds_every_word_newest_first_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, "/join ops")
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, f"deploy {n} done")) for n in range(60)])
            chat.pubsub.deliver("ops", [(bob, said("ops", "Deploy failed, rolling back"))])
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, "lunch?"))])
            await trio.testing.wait_all_tasks_blocked()
            found = await answer(chat, "/search DEPLOY failed")
            assert [m.text for m in messages(found)] == ["Deploy failed, rolling back"]
            assert found[-1] == HistoryEndEvent("search", None, 1, 0)
            many = await answer(chat, "/search deploy")
            assert len(messages(many)) == SEARCH_HITS
            assert many[-1] == HistoryEndEvent("search", None, SEARCH_HITS, 61 - SEARCH_HITS)
            assert messages(many)[-1].text == "Deploy failed, rolling back"  # newest kept
            assert render_text(many[-1]) == (
                f"* {SEARCH_HITS} match(es); 11 older match(es): add words to narrow it"
            )
            assert messages(await answer(chat, "/search nothing-like-this")) == []
            # The walk of each room is bounded; a search cut short says so.
            monkeypatch.setattr(lookup, "SEARCH_SCAN", 10)
            monkeypatch.setattr(lookup, "PAGE", 10)
            cut = await answer(chat, "/search deploy")
            # ROOM: its newest 10 (lunch and 9 deploys); ops: its one message.
            assert cut[-1] == HistoryEndEvent("search", None, 10, 0, truncated=True)
            assert "older messages were not searched" in render_text(cut[-1])


async def test_export_writes_json_lines_a_reader_can_verify(tmp_path: Path) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path, data_dir=tmp_path / "data") as chat:
        async with running(chat):
            at = now_ms()
            chat.pubsub.deliver(
                ROOM, [(bob, said(ROOM, f"line {n}", at_ms=at + n)) for n in range(3)]
            )
            await trio.testing.wait_all_tasks_blocked()
            (done,) = await answer(chat, "/export")
            assert isinstance(done, NoticeEvent) and done.kind == "exported"
            path = Path(done.data["file"])
            assert path.parent == tmp_path / "data" / "exports" and done.data["count"] == 3
            lines = [json.loads(line) for line in (await trio.Path(path).read_text()).splitlines()]
            assert [line["text"] for line in lines] == ["line 0", "line 1", "line 2"]
            assert all(line["sender"] == bob.peer_id_text for line in lines)
            # The signed envelope travels with each line: the text can be checked against it.
            data = envelope_data(base64.b64decode(lines[0]["envelope"]))
            payload = decode(data, max_text_bytes=4096)
            assert isinstance(payload, ChatText) and payload.text == "line 0"

            named = tmp_path / "elsewhere" / "room.jsonl"
            (done,) = await answer(chat, f"/export {ROOM} {named}")
            assert isinstance(done, NoticeEvent) and done.data["count"] == 3
            assert (await trio.Path(named).read_text()).count("\n") == 3
            (done,) = await answer(chat, f"/export {tmp_path / 'one-arg.jsonl'}")
            assert isinstance(done, NoticeEvent) and done.data["room"] == ROOM
            (refused,) = await answer(chat, "/export nowhere /tmp/x.jsonl")
            assert isinstance(refused, ErrorEvent) and refused.code == "not_in_room"
            blocked = tmp_path / "a-file"
            await trio.Path(blocked).write_text("")
            taken = tmp_path / "a-directory.jsonl"
            await trio.Path(taken).mkdir()
            for where in (
                blocked / "under-a-file.jsonl",  # OSError
                "~no-such-user-here/x.jsonl",  # RuntimeError from expanduser
                "nul\0in-the-name.jsonl",  # ValueError
                taken,  # written, then the rename fails: no half file left either way
            ):
                (failed,) = await answer(chat, f"/export {ROOM} {where}")
                assert isinstance(failed, ErrorEvent), where
                assert (failed.code, failed.command) == ("export_failed", "export")
            assert not [
                p for p in await trio.Path(tmp_path).iterdir() if p.name.endswith(".partial")
            ]


async def test_infrastructure_in_a_room_is_no_member_and_peers_shows_its_role(
    tmp_path: Path,
) -> None:
    archiver, bob = ephemeral_identity().peer_id_text, ephemeral_identity().peer_id_text
    with chat_service(tmp_path) as chat:
        chat.host.roles[archiver] = frozenset({"archiver"})
        chat.host.roles[bob] = frozenset({"peer"})
        async with running(chat):
            chat.peer_arrives(archiver, ROOM)
            chat.peer_arrives(bob, ROOM)
            await trio.testing.wait_all_tasks_blocked()
            joined = [e.peer for e in chat.events if isinstance(e, PeerEvent)]
            assert joined == [bob]
            (peers,) = await answer(chat, "/peers")
            assert isinstance(peers, OutputEvent)
            assert f"  archiver ({archiver[:6]}…{archiver[-4:]}) direct" in peers.text
            assert peers.data["room_members"] == [bob]
            roles = {p["peer"]: p["roles"] for p in peers.data["peers"]}
            assert roles == {archiver: ["archiver"], bob: ["peer"]}


async def test_history_ends_with_a_marker_saying_how_many_more(tmp_path: Path) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            at = now_ms()
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, f"m{n}", at_ms=at + n)) for n in range(8)])
            await trio.testing.wait_all_tasks_blocked()
            listed = await answer(chat, "/history 5")
            assert [m.text for m in messages(listed)] == [f"m{n}" for n in range(3, 8)]
            assert listed[-1] == HistoryEndEvent("history", ROOM, 5, 3)
            assert render_text(listed[-1]) == f"* end of {ROOM}: 5 message(s); 3 more: /history 8"
            (refused,) = await answer(chat, "/history 0")
            assert isinstance(refused, ErrorEvent) and refused.code == "bad_argument"


async def test_joining_a_room_again_switches_to_it_showing_what_arrived(tmp_path: Path) -> None:
    bob = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, "/join ops")
            await answer(chat, f"/switch {ROOM}")
            chat.pubsub.deliver("ops", [(bob, said("ops", "while you looked away"))])
            await trio.testing.wait_all_tasks_blocked()
            again = await answer(chat, "/join ops")
            assert isinstance(again[0], NoticeEvent) and again[0].kind == "room_switched"
            assert [m.text for m in messages(again)] == ["while you looked away"]


async def test_a_peer_claiming_a_role_but_speaking_in_the_room_is_a_member(
    tmp_path: Path,
) -> None:
    """Roles are a claim: one that says "relay" but talks in the room is listed as in it."""
    liar = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        chat.host.roles[liar.peer_id_text] = frozenset({"relay"})
        async with running(chat):
            chat.peer_arrives(liar.peer_id_text, ROOM)
            await trio.testing.wait_all_tasks_blocked()
            assert not [e for e in chat.events if isinstance(e, PeerEvent)]
            chat.pubsub.deliver(ROOM, [(liar, said(ROOM, "just a relay, honest"))])
            await trio.testing.wait_all_tasks_blocked()  # a new sender brings a membership pass
            assert PeerEvent("joined", ROOM, liar.peer_id_text, "Bob") in chat.events


async def test_queued_messages_go_out_first_once_anyone_receives_the_room(
    tmp_path: Path,
) -> None:
    """An archiver in the room receives it: queued messages are delivered before new ones."""
    archiver = ephemeral_identity().peer_id_text
    with chat_service(tmp_path) as chat:
        chat.host.roles[archiver] = frozenset({"archiver"})
        async with running(chat):
            (queued,) = await answer(chat, "typed alone")
            assert isinstance(queued, NoticeEvent) and queued.kind == "queued"
            chat.peer_arrives(archiver, ROOM)
            await trio.testing.wait_all_tasks_blocked()
            assert (
                NoticeEvent(
                    "delivered",
                    f"delivered 1 queued message(s) to {ROOM}",
                    {"room": ROOM, "count": 1},
                )
                in chat.events
            )
            assert await answer(chat, "typed later") == []
            sent = [decode(data, max_text_bytes=4096) for _, data in chat.pubsub.published]
            assert [m.text for m in sent if isinstance(m, ChatText)] == [
                "typed alone",
                "typed later",
            ]


async def test_an_ignored_peer_is_dropped_before_its_payload_and_stays_ignored(
    tmp_path: Path,
) -> None:
    bob, mallory = ephemeral_identity(), ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            at = now_ms()
            chat.pubsub.deliver(ROOM, [(mallory, said(ROOM, "before", name="Mallory", at_ms=at))])
            chat.pubsub.deliver(ROOM, [(bob, said(ROOM, "hi", name="Bob", at_ms=at + 1))])
            await trio.testing.wait_all_tasks_blocked()
            (ignored,) = await answer(chat, "/ignore mallory")
            assert ignored == NoticeEvent(
                "ignored",
                f"ignoring Mallory ({mallory.peer_id_text[:6]}…{mallory.peer_id_text[-4:]}): "
                "their messages are not shown, stored or passed on by this peer",
                {"peer": mallory.peer_id_text},
            )
            shown = len(messages(chat.events))
            chat.pubsub.deliver(ROOM, [(mallory, said(ROOM, "after", name="Mallory"))])
            await trio.testing.wait_all_tasks_blocked()
            assert len(messages(chat.events)) == shown  # not shown
            assert chat.pubsub.dropped[-1] == "ignored"  # refused where pubsub validates
            # What it said before is no longer listed either.
            assert [m.text for m in messages(await answer(chat, "/history"))] == ["hi"]
            (listing,) = await answer(chat, "/ignore")
            assert isinstance(listing, OutputEvent)
            assert listing.data == {"peers": [mallory.peer_id_text]}
            assert await answer(chat, "/ignore nobody-here") == [
                ErrorEvent("unknown_name", "nobody known here uses the name nobody-here", "ignore")
            ]
    with chat_service(tmp_path) as chat:  # a restart: still ignored
        async with running(chat):
            chat.pubsub.deliver(ROOM, [(mallory, said(ROOM, "again", name="Mallory"))])
            await trio.testing.wait_all_tasks_blocked()
            assert messages(chat.events) == []
            (back,) = await answer(chat, f"/unignore {mallory.peer_id_text}")
            assert isinstance(back, NoticeEvent) and back.kind == "unignored"
            chat.pubsub.deliver(ROOM, [(mallory, said(ROOM, "heard again", name="Mallory"))])
            await trio.testing.wait_all_tasks_blocked()
            assert [m.text for m in messages(chat.events)] == ["heard again"]
            (not_ignored,) = await answer(chat, f"/unignore {mallory.peer_id_text}")
            assert isinstance(not_ignored, ErrorEvent) and not_ignored.code == "not_ignored"


async def test_ignoring_a_name_several_peers_use_needs_the_id(tmp_path: Path) -> None:
    one, two = ephemeral_identity(), ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            chat.pubsub.deliver(ROOM, [(one, said(ROOM, "a", name="Sam"))])
            chat.pubsub.deliver(ROOM, [(two, said(ROOM, "b", name="sam"))])
            await trio.testing.wait_all_tasks_blocked()
            (error,) = await answer(chat, "/ignore Sam")
            assert isinstance(error, ErrorEvent) and error.code == "ambiguous_name"
            (done,) = await answer(chat, f"/ignore {two.peer_id_text}")
            assert isinstance(done, NoticeEvent) and done.data == {"peer": two.peer_id_text}
