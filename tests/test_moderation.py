"""Room moderation, sans-IO and on the chat service with a pubsub in memory: owned room names,
the decision codec and its refusals, the newest decision per (room, target) winning whatever
the order, mutes ending, the bounds, persistence, the owner's commands, a stranger's decision
refused where pubsub validates it, and catch-up learning a decision before the messages it
refuses (real processes: tests/test_moderation_line.py)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.history_cli import show
from p2pchat.node.moderation import RoomModeration, refusal_log
from p2pchat.node.p2p.envelopes import sign_envelope
from p2pchat.node.p2p.identity import Identity, ephemeral_identity
from p2pchat.node.refusals import LOG_EVERY
from p2pchat.node.store import Store
from p2pchat.node.store_client import Fetched, Rejected, verify_entry
from p2pchat.node.wire import chat_pb2
from p2pchat.node.wire.chat import (
    MAX_MUTE_MS,
    ChatText,
    Moderation,
    WireError,
    decode,
    decode_for_room,
    encode,
    moderation_refused,
    new_message_id,
)
from p2pchat.node.wire.room_names import is_peer_id, owned_room, room_owner, validate_room
from p2pchat.node.wire.store_query import Entry
from p2pchat.roles.peer.commands import parse_duration
from p2pchat.roles.peer.events import ErrorEvent, MessageEvent, NoticeEvent, OutputEvent

from tests.chat_fakes import Chat, chat_service, running
from tests.peer_ids import fresh_peer_id

OWNER = fresh_peer_id()


@contextmanager
def opened(path: Path) -> Iterator[Store]:
    store = Store.open(path)
    try:
        yield store
    finally:
        store.close()


ROOM = f"ops~{OWNER}"


def decision(
    target: str,
    action: str = "mute",
    at: int = 1_000,
    until: int | None = None,
    room: str = ROOM,
    reason: str = "",
) -> Moderation:
    return Moderation(
        id=new_message_id(),
        room=room,
        target=target,
        action=action,  # type: ignore[arg-type]
        sent_at_ms=at,
        until_ms=(at + 60_000 if until is None else until) if action == "mute" else 0,
        reason=reason,
    )


# --- room names ----------------------------------------------------------------------------------


def test_an_owned_room_names_its_owner_and_a_plain_room_none() -> None:
    assert room_owner(validate_room(ROOM)) == OWNER
    assert room_owner(validate_room("lobby")) is None
    assert owned_room("ops", OWNER) == ROOM
    assert is_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    for bad in ("ops~", "ops~nobody", f"~{OWNER}", f"ops~{OWNER}x", f"o/ps~{OWNER}", "a" * 65):
        with pytest.raises(ValueError):
            validate_room(bad)


# --- codec ---------------------------------------------------------------------------------------


def test_decisions_round_trip() -> None:
    target = fresh_peer_id()
    for each in (
        decision(target, "mute", reason="spam"),
        decision(target, "remove"),
        decision(target, "restore"),
    ):
        assert decode(encode(each), max_text_bytes=4096) == each


def reason_of(data: bytes) -> str:
    with pytest.raises(WireError) as raised:
        decode(data, max_text_bytes=4096)
    return raised.value.reason


def wire(**changes: object) -> bytes:
    fields: dict[str, object] = {
        "id": bytes(16),
        "room": ROOM,
        "target": fresh_peer_id(),
        "action": chat_pb2.Moderation.MUTE,
        "until_ms": 2_000,
        "sent_at_ms": 1_000,
    }
    fields.update(changes)
    envelope = chat_pb2.ChatEnvelope(version=1)
    envelope.moderation.CopyFrom(chat_pb2.Moderation(**fields))  # type: ignore[arg-type]
    return envelope.SerializeToString()


def test_each_refusal_of_a_decision() -> None:
    assert decode(wire(), max_text_bytes=4096)  # the control: valid as it is
    assert reason_of(wire(room="lobby")) == "invalid"  # nobody owns a plain room
    assert reason_of(wire(target="someone")) == "invalid"
    assert reason_of(wire(target=OWNER)) == "invalid"  # the owner is not moderated
    assert reason_of(wire(action=0)) == "invalid"
    assert reason_of(wire(action=9)) == "invalid"
    assert reason_of(wire(until_ms=1_000)) == "invalid"  # a mute ends after it starts
    assert reason_of(wire(until_ms=1_000 + MAX_MUTE_MS + 1)) == "invalid"
    assert reason_of(wire(action=chat_pb2.Moderation.REMOVE)) == "invalid"  # no end time
    assert reason_of(wire(id=b"short")) == "invalid"
    assert reason_of(wire(reason="x" * 201)) == "oversized"
    assert reason_of(wire(reason="a\x1b[2Jb")) == "invalid"
    data = encode(decision(fresh_peer_id()))
    with pytest.raises(WireError) as raised:
        decode_for_room(data, f"other~{OWNER}", max_text_bytes=4096, now_ms=now_ms())
    assert raised.value.reason == "wrong_room"


def test_only_the_owner_named_by_the_room_may_decide() -> None:
    made = decision(fresh_peer_id())
    assert moderation_refused(made, OWNER) is None
    assert moderation_refused(made, fresh_peer_id()) == "not_owner"
    text = ChatText(id=bytes(16), room=ROOM, sender_name="a", text="b", sent_at_ms=1)
    assert moderation_refused(text, fresh_peer_id()) is None


def test_durations() -> None:
    assert parse_duration("30s") == 30_000
    assert parse_duration("10m") == 600_000
    assert parse_duration("2H") == 7_200_000
    assert parse_duration("7d") == 7 * 86_400_000
    for bad in ("", "m", "10", "-1m", "1.5h", "10w", "9999999d"):
        assert parse_duration(bad) is None


# --- state ---------------------------------------------------------------------------------------


def test_the_newest_decision_per_target_wins_in_any_order(tmp_path: Path) -> None:
    target = fresh_peer_id()
    mute = decision(target, "mute", at=1_000, until=10_000)
    restore = decision(target, "restore", at=2_000)
    remove = decision(target, "remove", at=3_000)
    for order in ((mute, restore, remove), (remove, mute, restore), (restore, remove, mute)):
        with opened(tmp_path / f"s{id(order)}") as store:
            state = RoomModeration(store.namespace("mods"))
            for each in order:
                state.apply(each, now_ms=1_500)
            assert state.check(ROOM, target, 1_500) == "removed"
            assert state.decisions(ROOM) == [remove]
            assert state.apply(mute, 1_500) == "stale"  # a replayed old decision: nothing


def test_a_mute_ends_and_a_restore_ends_a_removal(tmp_path: Path) -> None:
    one, two = fresh_peer_id(), fresh_peer_id()
    with opened(tmp_path / "s") as store:
        state = RoomModeration(store.namespace("mods"))
        assert state.apply(decision(one, "mute", at=1_000, until=5_000), 1_000) == "applied"
        assert state.check(ROOM, one, 4_999) == "muted"
        assert state.check(ROOM, one, 5_000) is None
        assert state.check(f"other~{OWNER}", one, 4_999) is None  # one room's decision only
        state.apply(decision(two, "remove", at=1_000), 1_000)
        state.apply(decision(two, "restore", at=2_000), 2_000)
        assert state.check(ROOM, two, 3_000) is None
        assert list(state.in_force(ROOM, 4_000)) == [(state.decisions(ROOM)[0], "muted")]


def test_decisions_are_kept_across_restarts(tmp_path: Path) -> None:
    target = fresh_peer_id()
    with opened(tmp_path / "s") as store:
        RoomModeration(store.namespace("mods")).apply(decision(target, "remove"), 1_000)
    with opened(tmp_path / "s") as store:
        assert RoomModeration(store.namespace("mods")).check(ROOM, target, 2_000) == "removed"


def test_a_room_holds_a_bounded_number_of_decisions(tmp_path: Path) -> None:
    with opened(tmp_path / "s") as store:
        state = RoomModeration(store.namespace("mods"), per_room=3, total=4)
        ended = decision(fresh_peer_id(), "mute", at=1_000, until=2_000)
        state.apply(ended, 1_000)
        for _ in range(2):
            assert state.apply(decision(fresh_peer_id(), "remove"), 1_000) == "applied"
        # Full: a new target evicts what is no longer in force (the ended mute) ...
        assert state.apply(decision(fresh_peer_id(), "remove"), 3_000) == "applied"
        assert ended not in state.decisions(ROOM)
        # ... and with everything in force, it is refused.
        assert state.apply(decision(fresh_peer_id(), "remove"), 3_000) == "full"
        assert len(state.decisions(ROOM)) == 3
        # All rooms together hold ``total``: a stranger's own rooms fill it, then no more.
        other = fresh_peer_id()
        assert state.apply(decision(fresh_peer_id(), room=f"b~{other}"), 1_000) == "applied"
        assert state.apply(decision(fresh_peer_id(), room=f"c~{other}"), 1_000) == "full"
        assert state.decisions(f"c~{other}") == []
        # A decision replacing one about the same target needs no place.
        (kept,) = state.decisions(f"b~{other}")
        later = decision(kept.target, "restore", at=2_000, room=f"b~{other}")
        assert state.apply(later, 2_000) == "applied"
    with opened(tmp_path / "s") as store:  # bounded when read back too
        assert (
            sum(
                len(RoomModeration(store.namespace("mods"), 2, 3).decisions(room))
                for room in (ROOM, f"b~{other}")
            )
            == 3
        )


# --- the chat service ----------------------------------------------------------------------------


async def answer(chat: Chat, line: str) -> list[object]:
    keep_going, events = await chat.service.execute(line)
    assert keep_going
    return list(events)


def said(room: str, words: str) -> bytes:
    return encode(
        ChatText(id=new_message_id(), room=room, sender_name="M", text=words, sent_at_ms=now_ms())
    )


def notices(chat: Chat, kind: str) -> list[NoticeEvent]:
    return [e for e in chat.events if isinstance(e, NoticeEvent) and e.kind == kind]


def texts(chat: Chat) -> list[str]:
    return [e.text for e in chat.events if isinstance(e, MessageEvent)]


async def test_the_owner_mutes_and_the_muted_peer_is_dropped_before_its_payload(
    tmp_path: Path,
) -> None:
    mallory = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            me = chat.service.peer_id
            (joined,) = await answer(chat, "/create ops")
            room = f"ops~{me}"
            assert isinstance(joined, NoticeEvent) and joined.data == {"room": room}
            chat.pubsub.deliver(room, [(mallory, said(room, "before"))])
            await trio.testing.wait_all_tasks_blocked()
            mid = mallory.peer_id_text
            assert await answer(chat, f"/mute {mid}") == [
                ErrorEvent(
                    "bad_argument",
                    "/mute <name|id> <duration> [reason]: a duration such as 30s, 10m, 2h, 7d "
                    "(at most 366d)",
                    "mute",
                )
            ]
            assert await answer(chat, f"/mute {mid} 10m spamming") == []
            await trio.testing.wait_all_tasks_blocked()
            (notice,) = notices(chat, "moderation")
            assert notice.data["target"] == mid and notice.data["action"] == "mute"
            assert notice.data["reason"] == "spamming"
            published = decode(chat.pubsub.published[-1][1], max_text_bytes=4096)
            assert isinstance(published, Moderation) and published.target == mid
            chat.pubsub.deliver(room, [(mallory, said(room, "after"))])
            await trio.testing.wait_all_tasks_blocked()
            assert texts(chat) == ["before"]
            assert chat.pubsub.dropped[-1] == "muted"
            (mods,) = await answer(chat, "/mods")
            assert isinstance(mods, OutputEvent) and mods.data["owner"] == me
            assert [d["target"] for d in mods.data["in_force"]] == [mid]
            assert await answer(chat, f"/unmute {mid}") == []
            chat.pubsub.deliver(room, [(mallory, said(room, "heard again"))])
            await trio.testing.wait_all_tasks_blocked()
            assert texts(chat) == ["before", "heard again"]
            (bad,) = await answer(chat, f"/remove {mid} a\x1b[2J reason")
            assert isinstance(bad, ErrorEvent) and bad.code == "bad_argument"
            (junk,) = await answer(chat, "/mods x~nobody")
            assert isinstance(junk, ErrorEvent) and junk.code == "invalid_room"
            (not_muted,) = await answer(chat, f"/unmute {mid}")
            assert isinstance(not_muted, ErrorEvent) and not_muted.code == "not_moderated"
            assert await answer(chat, f"/remove {mid}") == []
            await trio.testing.wait_all_tasks_blocked()
    with chat_service(tmp_path) as chat:  # a restart: still removed
        async with running(chat):
            chat.pubsub.deliver(room, [(mallory, said(room, "still here?"))])
            await trio.testing.wait_all_tasks_blocked()
            assert texts(chat) == [] and chat.pubsub.dropped == ["removed"]


async def test_only_the_owner_decides(tmp_path: Path) -> None:
    owner, stranger, bob = ephemeral_identity(), ephemeral_identity(), ephemeral_identity()
    room = f"ops~{owner.peer_id_text}"
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, f"/join {room}")
            (refused,) = await answer(chat, f"/mute {bob.peer_id_text} 1m")
            assert isinstance(refused, ErrorEvent) and refused.code == "not_owner"
            (plain,) = await answer(chat, "/mods p2p-chat-default")
            assert isinstance(plain, OutputEvent) and plain.data["owner"] is None
            forged = encode(decision(bob.peer_id_text, "remove", at=now_ms(), room=room))
            chat.pubsub.deliver(room, [(stranger, forged)])
            await trio.testing.wait_all_tasks_blocked()
            assert chat.pubsub.dropped == ["not_owner"]
            chat.pubsub.deliver(room, [(bob, said(room, "still heard"))])
            await trio.testing.wait_all_tasks_blocked()
            assert texts(chat) == ["still heard"]
            chat.pubsub.deliver(room, [(owner, forged)])  # the same decision, the owner's
            chat.pubsub.deliver(room, [(bob, said(room, "not heard"))])
            await trio.testing.wait_all_tasks_blocked()
            assert texts(chat) == ["still heard"] and chat.pubsub.dropped[-1] == "removed"


async def test_catch_up_learns_a_decision_before_the_messages_it_refuses(tmp_path: Path) -> None:
    owner, mallory, bob = ephemeral_identity(), ephemeral_identity(), ephemeral_identity()
    room = f"ops~{owner.peer_id_text}"
    at = now_ms()

    def stored(signer: object, payload: ChatText | Moderation) -> StoredMessage:
        envelope = sign_envelope(signer, room, encode(payload))  # type: ignore[arg-type]
        return StoredMessage.of_text(payload, signer.peer_id_text, envelope, at)  # type: ignore[attr-defined]

    mute = decision(mallory.peer_id_text, "mute", at=at - 10, until=at + 60_000, room=room)
    hers = ChatText(id=new_message_id(), room=room, sender_name="M", text="x", sent_at_ms=at - 5)
    his = ChatText(id=new_message_id(), room=room, sender_name="B", text="y", sent_at_ms=at - 4)
    fetched = [stored(owner, mute), stored(mallory, hers), stored(bob, his)]
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, f"/join {room}")
            kept = chat.service.moderate_fetched(room, sorted(fetched, key=lambda m: m.sent_at_ms))
            assert [m.sender for m in kept] == [owner.peer_id_text, bob.peer_id_text]
            assert chat.service.moderate_fetched("p2p-chat-default", fetched) == fetched


def test_history_keeps_a_decision_apart_from_texts(tmp_path: Path) -> None:
    owner = ephemeral_identity()
    room = f"ops~{owner.peer_id_text}"
    made = decision(fresh_peer_id(), "remove", at=5, room=room)
    envelope = sign_envelope(owner, room, encode(made))
    with opened(tmp_path / "s") as store:
        history = History(store)
        assert history.add(StoredMessage.of_text(made, owner.peer_id_text, envelope, 6))
        assert history.count(room) == 1


def test_refusals_are_logged_at_most_once_a_minute_per_reason() -> None:
    lines: list[dict[str, object]] = []

    class Log:
        def info(self, event: str, **fields: object) -> None:
            lines.append(fields)

    clock = [0.0]
    log = refusal_log(Log(), clock=lambda: clock[0])
    for _ in range(1000):
        log.refused("muted", room=ROOM, sender="x")
    log.refused("not_owner", room=ROOM, sender="y")
    assert [line["reason"] for line in lines] == ["muted", "not_owner"]
    clock[0] = LOG_EVERY
    log.refused("muted", room=ROOM, sender="x")
    assert lines[-1]["since_last_logged"] == 999


async def test_a_muted_peer_is_told_and_sends_nothing(tmp_path: Path) -> None:
    owner = ephemeral_identity()
    with chat_service(tmp_path) as chat:
        async with running(chat):
            room = f"ops~{owner.peer_id_text}"
            await answer(chat, f"/join {room}")
            me = chat.service.peer_id
            made = decision(me, "mute", at=now_ms(), until=now_ms() + 60_000, room=room)
            chat.pubsub.deliver(room, [(owner, encode(made))])
            await trio.testing.wait_all_tasks_blocked()
            published = len(chat.pubsub.published)
            (refused,) = await answer(chat, "hello?")
            assert isinstance(refused, ErrorEvent) and refused.code == "muted"
            assert (await chat.service.send("verbatim"))[0] == refused
            assert len(chat.pubsub.published) == published  # nothing went out


async def test_the_owner_sends_the_decisions_in_force_again_when_someone_joins(
    tmp_path: Path,
) -> None:
    with chat_service(tmp_path) as chat:
        async with running(chat):
            await answer(chat, "/create ops")
            room = f"ops~{chat.service.peer_id}"
            target = fresh_peer_id()
            await answer(chat, f"/remove {target}")
            first = [data for topic, data in chat.pubsub.published if topic == room]
            chat.peer_arrives(fresh_peer_id(), room)
            await trio.testing.wait_all_tasks_blocked()
            again = [data for topic, data in chat.pubsub.published if topic == room]
            decisions = [d for d in again if isinstance(decode(d, max_text_bytes=4096), Moderation)]
            assert len(decisions) == 2 and decisions[0] == decisions[1] == first[-1]  # the same
            chat.peer_arrives(fresh_peer_id(), room)  # within the minute: not again
            await trio.testing.wait_all_tasks_blocked()
            later = [data for topic, data in chat.pubsub.published if topic == room]
            assert sum(isinstance(decode(d, max_text_bytes=4096), Moderation) for d in later) == 2


def test_p2pchat_history_lists_texts_and_passes_over_decisions() -> None:
    owner = ephemeral_identity()
    room = f"ops~{owner.peer_id_text}"
    at = now_ms()
    made = decision(fresh_peer_id(), "remove", at=at, room=room)
    said_ = ChatText(id=new_message_id(), room=room, sender_name="O", text="hi", sent_at_ms=at)
    fetched = Fetched(
        owner.peer_id_text,
        [
            StoredMessage.of_text(p, owner.peer_id_text, sign_envelope(owner, room, encode(p)), at)
            for p in (made, said_)
        ],
        rejected=0,
        complete=True,
    )
    out = io.StringIO()
    show(fetched, 4096, as_json=True, out=out, err=lambda text: None)
    assert [json.loads(line)["text"] for line in out.getvalue().splitlines()] == ["hi"]


def test_history_sources_may_pass_on_only_the_owners_decisions() -> None:
    owner, stranger = ephemeral_identity(), ephemeral_identity()
    room = f"ops~{owner.peer_id_text}"
    at = now_ms()
    made = decision(fresh_peer_id(), "mute", at=at, room=room)

    def entry(signer: Identity) -> Entry:
        stored = StoredMessage.of_text(
            made, signer.peer_id_text, sign_envelope(signer, room, encode(made)), at
        )
        return Entry(stored.message_id, stored.sent_at_ms, stored.envelope)

    assert verify_entry(entry(owner), room, 4096, at).sender == owner.peer_id_text
    with pytest.raises(Rejected) as raised:
        verify_entry(entry(stranger), room, 4096, at)
    assert raised.value.reason == "not_owner"
