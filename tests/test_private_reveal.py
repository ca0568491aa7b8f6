"""What a member of a private room accepts, sans-IO (roles/peer/private_rooms.py on real
vodozemac and a real RocksDB store; the chat service's hooks are recorded): room keys from
the creator and from members, the bounds on invitations, a removal, and the checks of a
decrypted text (mismatch, plaintext, not a member), each counted by reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from p2pchat.node.config import ChatSection
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import Store
from p2pchat.node.wire.chat import ChatText, PrivateText, encode_inner_text, new_message_id
from p2pchat.node.wire.dm import RoomKey
from p2pchat.roles.peer.events import ChatEvent, NoticeEvent
from p2pchat.roles.peer.group_crypto import GroupKeys
from p2pchat.roles.peer.held_keys import HeldKeys
from p2pchat.roles.peer.private_rooms import PrivateRoom, PrivateRooms

from tests.peer_ids import fresh_peer_id

ROOM = "private-" + "5a" * 16


class Recorder:
    """The hooks and observer a chat service gives the private rooms, recorded."""

    def __init__(self) -> None:
        self.dropped: Counter[str] = Counter()
        self.joined: list[str] = []
        self.left: list[str] = []
        self.keys_sent: list[tuple[str, RoomKey]] = []
        self.events: list[ChatEvent] = []
        self.ignored: set[str] = set()
        self.rooms_full = False  # the chat service is in as many rooms as it may be

    def private_dropped_reason(self, reason: str) -> None:
        self.dropped[reason] += 1

    async def join_private(self, topic: str) -> bool:
        if self.rooms_full:
            return False
        self.joined.append(topic)
        return True

    async def leave_private(self, topic: str) -> None:
        self.left.append(topic)

    async def publish(self, topic: str, data: bytes) -> None:
        return None

    def is_ignored(self, peer: str) -> bool:
        return peer in self.ignored

    def name_of(self, peer: str) -> str:
        return "anon"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def member(store: Store, me: str, **settings: int) -> tuple[PrivateRooms, Recorder]:
    recorder = Recorder()
    rooms = PrivateRooms(
        me,
        store.namespace(f"private-{me}"),
        GroupKeys(store.namespace(f"megolm-{me}"), me, 256),
        ChatSection(**settings),  # type: ignore[arg-type]
        lambda peer, key: recorder.keys_sent.append((peer, key)),
        recorder,
        recorder,
        recorder.events.append,
        RefusalLog(structlog.get_logger(), "private room input refused"),
    )
    return rooms, recorder


def invitation(creator: str, keys: GroupKeys, *members: str, topic: str = ROOM) -> RoomKey:
    session_id, session_key = keys.share(topic)
    return RoomKey(topic, "club", creator, (creator, *members), session_id, session_key, True)


async def test_an_invitation_a_text_and_what_does_not_match(store: Store) -> None:
    alice, bob = fresh_peer_id(), fresh_peer_id()
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    rooms, seen = member(store, bob)
    await rooms.received(alice, invitation(alice, alice_keys, bob))
    assert seen.joined == [ROOM] and rooms.is_private(ROOM)
    assert [peer for peer, key in seen.keys_sent if key.session_key] == [alice]  # want_key
    assert any(isinstance(e, NoticeEvent) and e.kind == "private_invited" for e in seen.events)

    def sealed(inner: ChatText, outer_id: bytes | None = None) -> PrivateText:
        session_id, ciphertext = alice_keys.encrypt(ROOM, encode_inner_text(inner))
        return PrivateText(outer_id or inner.id, ROOM, inner.sent_at_ms, session_id, ciphertext)

    text = ChatText(new_message_id(), ROOM, "alice", "hello", 1_700_000_000_000)
    assert rooms.reveal(sealed(text), alice, ROOM) == text
    assert rooms.reveal(sealed(text, outer_id=new_message_id()), alice, ROOM) is None
    other_room = ChatText(new_message_id(), "private-" + "77" * 16, "a", "x", text.sent_at_ms)
    assert rooms.reveal(sealed(other_room, outer_id=other_room.id), alice, ROOM) is None
    assert rooms.reveal(text, alice, ROOM) is None  # a plain text on the private topic
    assert rooms.reveal(sealed(text), alice, "private-" + "00" * 16) is None
    assert seen.dropped == Counter(mismatch=2, plaintext=1, not_member=1)


async def test_keys_from_strangers_and_invitations_over_the_bounds_are_refused(
    store: Store,
) -> None:
    alice, bob, carol, mallory = (fresh_peer_id() for _ in range(4))
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    rooms, seen = member(store, bob, private_rooms_per_creator=1, private_max_members=3)
    await rooms.received(alice, invitation(alice, alice_keys, bob))
    # A second room of the same creator; a room with too many members; a bad topic; an
    # invitation naming others only; a key from a peer that is no member.
    await rooms.received(alice, invitation(alice, alice_keys, bob, topic="private-" + "11" * 16))
    await rooms.received(carol, invitation(carol, alice_keys, bob, alice, mallory, topic=ROOM[:-2]))
    await rooms.received(carol, invitation(carol, alice_keys, bob, topic="lobby"))
    await rooms.received(carol, invitation(carol, alice_keys, alice, topic="private-" + "22" * 16))
    await rooms.received(mallory, RoomKey(ROOM, session_id="x", session_key="y"))  # held
    seen.ignored.add(carol)
    await rooms.received(carol, invitation(carol, alice_keys, bob, topic="private-" + "33" * 16))
    assert seen.dropped == Counter(too_many_rooms=1, invalid=2, not_member=1, ignored=1), (
        seen.dropped
    )
    assert rooms.topics() == [ROOM]
    # A member's key is taken; junk as a key is refused.
    await rooms.received(alice, RoomKey(ROOM, session_id="x", session_key="junk"))
    assert seen.dropped["bad_key"] == 1


async def test_removed_by_the_creator_leaves_and_forgets(store: Store) -> None:
    alice, bob, carol = (fresh_peer_id() for _ in range(3))
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    rooms, seen = member(store, bob)
    await rooms.received(alice, invitation(alice, alice_keys, bob, carol))
    seen.keys_sent.clear()
    # Carol removed: Bob rotates and gives his new key to Alice only.
    removal = RoomKey(ROOM, "club", alice, (alice, bob))
    await rooms.received(alice, removal)
    assert [peer for peer, _ in seen.keys_sent] == [alice]
    assert any(
        isinstance(e, NoticeEvent) and e.kind == "private_member" and e.data["peer"] == carol
        for e in seen.events
    )
    # Bob removed.
    await rooms.received(alice, RoomKey(ROOM, "club", alice, (alice,)))
    assert seen.left == [ROOM] and not rooms.is_private(ROOM)
    assert any(isinstance(e, NoticeEvent) and e.kind == "private_removed" for e in seen.events)
    again, _ = member(store, bob)  # forgotten in the store too
    assert not again.is_private(ROOM)


async def test_rooms_and_members_are_bounded(store: Store) -> None:
    alice, bob, carol, dave = (fresh_peer_id() for _ in range(4))
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    rooms, seen = member(store, bob, private_max_rooms=1, private_max_members=3)
    crowded = invitation(alice, alice_keys, bob, carol, dave)  # 4 members, over 3
    await rooms.received(alice, crowded)
    assert seen.dropped == Counter(invalid=1) and not rooms.topics()
    await rooms.received(alice, invitation(alice, alice_keys, bob, carol))
    # Another creator's room: over private_max_rooms (1) in all.
    await rooms.received(carol, invitation(carol, alice_keys, bob, topic="private-" + "44" * 16))
    assert seen.dropped == Counter(invalid=1, too_many_rooms=1) and rooms.topics() == [ROOM]
    # The chat service in as many rooms (public ones too) as it may be: refused, not kept.
    rooms_again, seen_again = member(store, dave)
    seen_again.rooms_full = True
    await rooms_again.received(alice, invitation(alice, alice_keys, dave))
    assert seen_again.dropped == Counter(too_many_rooms=1) and not rooms_again.topics()


async def test_a_members_list_only_adds_and_is_checked(store: Store) -> None:
    """From a member other than the creator, a list adds its newcomers (who get this member's
    key, asked for theirs) and never removes; another creator, a stranger's list and a list
    past the member bound are refused and counted."""
    alice, bob, carol, dave, mallory = (fresh_peer_id() for _ in range(5))
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    rooms, seen = member(store, bob, private_max_members=5)
    await rooms.received(alice, invitation(alice, alice_keys, bob, carol))
    seen.keys_sent.clear()

    def listed(*members: str, creator: str = alice) -> RoomKey:
        return RoomKey(ROOM, "club", creator, members)

    await rooms.received(carol, listed(carol, bob, dave, creator=carol))  # another creator
    await rooms.received(mallory, listed(alice, bob, mallory))  # not a member
    await rooms.received(carol, listed(alice, bob, carol, *(fresh_peer_id() for _ in range(3))))
    assert seen.dropped == Counter(invalid=2, not_member=1)
    assert sorted(rooms._rooms[ROOM].members) == sorted([alice, bob, carol])
    # Carol invites Dave, and her list leaves Bob out: Dave added, Bob still in the room.
    await rooms.received(carol, listed(alice, carol, dave))
    assert rooms.is_private(ROOM) and not seen.left
    assert sorted(rooms._rooms[ROOM].members) == sorted([alice, bob, carol, dave])
    assert [(peer, key.want_key) for peer, key in seen.keys_sent] == [(dave, True)]
    assert any(
        isinstance(e, NoticeEvent) and e.kind == "private_member" and e.data["peer"] == dave
        for e in seen.events
    )


async def test_an_invitation_from_a_member_counts_against_that_inviter(store: Store) -> None:
    """Dave is invited by Carol, a member, not the creator: he joins (the creator named in the
    room), gives his key to every member but Carol (hers came with the invitation); Carol's
    next room is over private_rooms_per_creator (1) for her, not for the creator."""
    alice, carol, dave = fresh_peer_id(), fresh_peer_id(), fresh_peer_id()
    carol_keys = GroupKeys(store.namespace("carol"), carol, 256)
    rooms, seen = member(store, dave, private_rooms_per_creator=1)
    session_id, session_key = carol_keys.share(ROOM)
    first = RoomKey(ROOM, "club", alice, (alice, carol, dave), session_id, session_key, True)
    await rooms.received(carol, first)
    assert seen.joined == [ROOM] and rooms._rooms[ROOM].creator == alice
    assert sorted(peer for peer, key in seen.keys_sent if key.want_key) == [alice]
    other = "private-" + "6b" * 16
    second = RoomKey(other, "two", alice, (alice, carol, dave), *carol_keys.share(other), True)
    await rooms.received(carol, second)
    assert seen.dropped == Counter(too_many_rooms=1) and not rooms.is_private(other)
    third = "private-" + "7c" * 16
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    await rooms.received(alice, invitation(alice, alice_keys, dave, topic=third))
    assert rooms.is_private(third)  # the creator's count is its own


def sealed_by(keys: GroupKeys, text: str) -> tuple[ChatText, PrivateText]:
    inner = ChatText(new_message_id(), ROOM, "anon", text, 1_700_000_000_000)
    session_id, ciphertext = keys.encrypt(ROOM, encode_inner_text(inner))
    return inner, PrivateText(inner.id, ROOM, inner.sent_at_ms, session_id, ciphertext)


async def test_a_newcomers_key_that_outruns_the_list_naming_it_is_held_and_taken(
    store: Store,
) -> None:
    """Bob invites Carol: Carol's key reaches Alice before Bob's list does. Alice holds it,
    takes it when the list comes (no drop, not asked again) and reads Carol's first words."""
    alice, bob, carol = (fresh_peer_id() for _ in range(3))
    carol_keys = GroupKeys(store.namespace("carol"), carol, 256)
    rooms, seen = member(store, alice)
    rooms._put(PrivateRoom(ROOM, "club", alice, [alice, bob]))
    await rooms.received(carol, RoomKey(ROOM, "", "", (), *carol_keys.share(ROOM), True))
    assert not seen.dropped and not seen.keys_sent
    await rooms.received(bob, RoomKey(ROOM, "club", alice, (alice, bob, carol)))
    assert [(peer, key.want_key) for peer, key in seen.keys_sent] == [(carol, False)]
    inner, text = sealed_by(carol_keys, "hello from the newcomer")
    assert rooms.reveal(text, carol, ROOM) == inner
    assert not seen.dropped


async def test_a_members_key_that_outruns_the_invitation_is_held_and_taken(store: Store) -> None:
    """Alice (told of Dave by Bob) gives Dave her key before Bob's invitation reaches him:
    Dave holds it, and on joining takes it instead of asking Alice for it."""
    alice, bob, dave = (fresh_peer_id() for _ in range(3))
    alice_keys = GroupKeys(store.namespace("alice"), alice, 256)
    bob_keys = GroupKeys(store.namespace("bob"), bob, 256)
    rooms, seen = member(store, dave)
    await rooms.received(alice, RoomKey(ROOM, "", "", (), *alice_keys.share(ROOM), True))
    assert not seen.dropped and not rooms.is_private(ROOM)
    await rooms.received(
        bob, RoomKey(ROOM, "club", alice, (alice, bob, dave), *bob_keys.share(ROOM), True)
    )
    assert sorted((peer, key.want_key) for peer, key in seen.keys_sent) == sorted(
        [(alice, False), (bob, False)]
    )
    inner, text = sealed_by(alice_keys, "welcome")
    assert rooms.reveal(text, alice, ROOM) == inner
    assert not seen.dropped


def test_held_keys_expire_and_are_bounded_each_given_up_counted_once() -> None:
    given_up: list[tuple[str, str]] = []
    now = [0.0]
    held = HeldKeys(
        lambda topic, peer: given_up.append((topic, peer)),
        limit=3,
        hold_for=60.0,
        clock=lambda: now[0],
    )
    peers = [fresh_peer_id() for _ in range(5)]
    for peer in peers[:4]:
        held.hold(peer, RoomKey(ROOM, session_id="s", session_key="k"))
    assert len(held) == 3 and given_up == [(ROOM, peers[0])]  # the oldest made room
    held.hold(peers[1], RoomKey(ROOM, session_id="s2", session_key="k2"))  # replaces, no drop
    assert len(held) == 3 and len(given_up) == 1
    now[0] = 61.0
    assert held.claim(ROOM, peers[1]) is None  # expired: the rest given up, in order
    assert given_up == [(ROOM, p) for p in (peers[0], peers[2], peers[3], peers[1])]
    held.hold(peers[4], RoomKey(ROOM, session_id="s", session_key="k"))
    held.forget(ROOM)  # left the room: gone, not counted
    assert len(held) == 0 and len(given_up) == 4
