"""Megolm sessions of the private rooms (roles/peer/group_crypto.py) on real vodozemac and a
real RocksDB store: what a member reads, and what it refuses (tampered, replayed, another
member's session, before the index it was given, a bad key), counted by reason; the bound on
sessions per room; the sessions kept across a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.store import KeyValue, Store
from p2pchat.roles.peer.group_crypto import MAX_SEEN_INDEXES, GroupDrop, GroupKeys, repickle

ROOM = "private-" + "ab" * 16
ALICE = "12D3KooWAlice"
BOB = "12D3KooWBob"
MALLORY = "12D3KooWMallory"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def keys(store: Store, me: str, max_sessions: int = 256) -> GroupKeys:
    return GroupKeys(store.namespace(f"megolm-{me}"), me, max_sessions)


def refused(reason: str, keys: GroupKeys, *args: object) -> None:
    with pytest.raises(GroupDrop) as caught:
        keys.decrypt(*args)  # type: ignore[arg-type]
    assert caught.value.reason == reason


def test_a_member_reads_from_the_index_it_was_given_and_refuses_the_rest(store: Store) -> None:
    alice, bob = keys(store, ALICE), keys(store, BOB)
    _, early = alice.encrypt(ROOM, b"before bob was invited")
    session_id, key = alice.share(ROOM)
    assert bob.add_inbound(ROOM, ALICE, key) == session_id
    sid, message = alice.encrypt(ROOM, b"hello bob")
    assert bob.decrypt(ROOM, ALICE, sid, message, b"id-1") == b"hello bob"
    assert bob.decrypt(ROOM, ALICE, sid, message, b"id-1") == b"hello bob"  # history again
    refused("undecryptable", bob, ROOM, ALICE, sid, early, b"id-0")  # before its index
    tampered = bytearray(message)
    tampered[len(tampered) // 2] ^= 1
    refused("undecryptable", bob, ROOM, ALICE, sid, bytes(tampered), b"id-2")
    refused("undecryptable", bob, ROOM, ALICE, sid, b"\x03junk", b"id-3")
    refused("replayed", bob, ROOM, ALICE, sid, message, b"another id")  # same index
    # Alice's session passed off as Mallory's (she signed the envelope): not hers.
    refused("unknown_session", bob, ROOM, MALLORY, sid, message, b"id-1")
    refused("unknown_session", bob, ROOM, ALICE, "A" * 43, message, b"id-1")
    with pytest.raises(GroupDrop) as caught:
        bob.add_inbound(ROOM, ALICE, "not a session key")
    assert caught.value.reason == "bad_key"
    with pytest.raises(GroupDrop):  # Alice's session claimed by Mallory
        bob.add_inbound(ROOM, MALLORY, key)


def test_rotation_leaves_the_old_key_holder_unable_to_read(store: Store) -> None:
    alice, bob = keys(store, ALICE), keys(store, BOB)
    bob.add_inbound(ROOM, ALICE, alice.share(ROOM)[1])
    alice.rotate(ROOM)
    sid, message = alice.encrypt(ROOM, b"after the rotation")
    refused("unknown_session", bob, ROOM, ALICE, sid, message, b"id")
    # Alice reads her own messages: her new session is kept inbound too.
    assert alice.decrypt(ROOM, ALICE, sid, message, b"id") == b"after the rotation"


def test_sessions_per_room_are_bounded_a_senders_oldest_first(store: Store) -> None:
    alice, bob = keys(store, ALICE), keys(store, BOB, max_sessions=3)
    for _ in range(10):
        bob.add_inbound(ROOM, ALICE, alice.rotate(ROOM).session_key.to_base64())
    assert bob.session_count() == 3
    sid, message = alice.encrypt(ROOM, b"newest")
    assert bob.decrypt(ROOM, ALICE, sid, message, b"id") == b"newest"


def test_sessions_are_kept_across_a_restart(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s")
    alice, bob = keys(first, ALICE), keys(first, BOB)
    bob.add_inbound(ROOM, ALICE, alice.share(ROOM)[1])
    sid, message = alice.encrypt(ROOM, b"kept")
    first.close()
    again = Store.open(tmp_path / "s")
    alice, bob = keys(again, ALICE), keys(again, BOB)
    assert bob.decrypt(ROOM, ALICE, sid, message, b"id") == b"kept"
    sid2, message2 = alice.encrypt(ROOM, b"same session after the restart")
    assert sid2 == sid
    assert bob.decrypt(ROOM, ALICE, sid, message2, b"id2") == b"same session after the restart"
    # Many sessions (their base64 ids have "/" in them, most of them): every one read back.
    for _ in range(20):
        bob.add_inbound(ROOM, ALICE, alice.rotate(ROOM).session_key.to_base64())
    held = bob.session_count()
    again.close()
    third = Store.open(tmp_path / "s")
    bob = keys(third, BOB)
    assert bob.session_count() == held == 21
    bob.forget(ROOM)
    refused("unknown_session", bob, ROOM, ALICE, sid, message, b"id")
    third.close()


def test_the_indexes_remembered_against_replays_are_bounded(store: Store) -> None:
    alice, bob = keys(store, ALICE), keys(store, BOB)
    bob.add_inbound(ROOM, ALICE, alice.share(ROOM)[1])
    for n in range(MAX_SEEN_INDEXES + 50):
        sid, message = alice.encrypt(ROOM, b"x")
        bob.decrypt(ROOM, ALICE, sid, message, n.to_bytes(16, "big"))
    assert len(bob._seen[ROOM]) == MAX_SEEN_INDEXES


class _Keyed:
    """A store namespace seen with a given pickle key (as a passphrase would derive one)."""

    def __init__(self, namespace: KeyValue, pickle_key: bytes) -> None:
        self._namespace = namespace
        self.pickle_key = pickle_key

    def get(self, key: bytes) -> bytes | None:
        return self._namespace.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self._namespace.put(key, value)

    def delete(self, key: bytes) -> None:
        self._namespace.delete(key)

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        return self._namespace.items(prefix)


def test_passphrase_set_repickles_the_megolm_sessions(store: Store) -> None:
    # `p2pchat passphrase set` moves every pickle to the key the passphrase derives: the
    # private rooms' sessions too, or they would not open after it (and be dropped).
    plain, derived = bytes(32), bytes(range(32))
    alice_ns, bob_ns = store.namespace("megolm-a"), store.namespace("megolm-b")
    alice = GroupKeys(_Keyed(alice_ns, plain), ALICE, 256)
    bob = GroupKeys(_Keyed(bob_ns, plain), BOB, 256)
    bob.add_inbound(ROOM, ALICE, alice.share(ROOM)[1])
    assert repickle(alice_ns, plain, derived) == 2  # her outbound session and its inbound copy
    assert repickle(bob_ns, plain, derived) == 1  # his copy of it
    assert repickle(bob_ns, plain, derived) == 0  # done already: left as it is
    alice = GroupKeys(_Keyed(alice_ns, derived), ALICE, 256)
    bob = GroupKeys(_Keyed(bob_ns, derived), BOB, 256)
    sid, message = alice.encrypt(ROOM, b"after the passphrase")
    assert bob.decrypt(ROOM, ALICE, sid, message, b"id-9") == b"after the passphrase"
