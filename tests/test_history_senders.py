"""The history's per-sender index (#18): each sender's messages and count per room, kept in the
same write batches as the messages, rebuilt once for a store written before it, and the fair
trim that reads it instead of walking the room. Real RocksDB in tmp dirs."""

from __future__ import annotations

import hashlib
from pathlib import Path

from p2pchat.node.history import History, StoredMessage
from p2pchat.node.store import Store


def msg(text: str, sender: str, sent_at_ms: int, room: str = "room") -> StoredMessage:
    return StoredMessage(
        room=room,
        message_id=hashlib.sha256(text.encode()).digest()[:16],
        sent_at_ms=sent_at_ms,
        received_at_ms=sent_at_ms,
        sender=sender,
        envelope=text.encode(),
    )


def walked(history: History, room: str) -> dict[str, int]:
    """Each sender's messages in ``room``, counted the slow way (a walk over the room)."""
    held: dict[str, int] = {}
    for message in history.range(room, 0):
        held[message.sender] = held.get(message.sender, 0) + 1
    return held


def indexed(store: Store, room: str) -> dict[str, int]:
    """Each sender's messages in ``room`` as the index has them; asserts that the counts
    (``hscnt/``) and the entries (``hsnd/``) agree."""
    counts: dict[str, int] = {}
    entries: dict[str, int] = {}
    for prefix, into in ((b"hscnt/", counts), (b"hsnd/", entries)):
        start = prefix + room.encode() + b"\x00"
        for key, value in store.db.items(from_key=start):
            if not key.startswith(start):
                break
            length = int.from_bytes(key[len(start) : len(start) + 2], "big")
            sender = key[len(start) + 2 : len(start) + 2 + length].decode()
            if prefix == b"hscnt/":
                into[sender] = int.from_bytes(value, "big")
            else:
                into[sender] = into.get(sender, 0) + 1
    assert counts == entries
    return counts


def test_the_index_follows_adds_trims_and_retention_by_age(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    # Senders whose names are prefixes of one another, and one room name a prefix of another.
    senders = ["a", "ab", "abc", "12D3KooWMallory"]
    for room in ("room", "room2"):
        history.add_many(
            [
                msg(f"{room}-{n}", senders[n % 4] if n < 80 else senders[3], n, room)
                for n in range(200)
            ]
        )
    history.add_many([msg("room-5", "a", 5)])  # a duplicate: not counted twice
    assert (
        indexed(store, "room")
        == walked(history, "room")
        == {"a": 20, "ab": 20, "abc": 20, "12D3KooWMallory": 140}
    )
    assert history.held_by("room", "12D3KooWMallory") == 140 and history.held_by("room", "zed") == 0
    history.apply_retention("room", max_count=150, max_age_ms=None, now_ms=0, sender_share=0.25)
    assert indexed(store, "room") == walked(history, "room")
    assert walked(history, "room")["12D3KooWMallory"] == 90  # only the flood paid
    history.apply_retention("room", max_count=None, max_age_ms=10, now_ms=100)  # by age
    history.apply_retention("room", max_count=40, max_age_ms=None, now_ms=0)  # oldest first
    assert indexed(store, "room") == walked(history, "room") and history.count("room") == 40
    assert indexed(store, "room2") == walked(history, "room2")  # the other room untouched
    history.apply_retention("room", max_count=0, max_age_ms=None, now_ms=0)
    assert indexed(store, "room") == {} and history.held_by("room", "a") == 0
    store.close()


def test_the_index_survives_a_restart_and_the_trim_uses_it_afterwards(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    History(store).add_many(
        [msg(f"m-{n}", "mallory" if n >= 10 else "alice", n) for n in range(110)]
    )
    store.close()
    store = Store.open(tmp_path / "store")
    history = History(store)
    assert history.held_by("room", "mallory") == 100 and history.held_by("room", "alice") == 10
    assert (
        history.apply_retention("room", max_count=50, max_age_ms=None, now_ms=0, sender_share=0.2)
        == 60
    )
    assert walked(history, "room") == {"alice": 10, "mallory": 40} == indexed(store, "room")
    store.close()


def test_a_store_written_before_the_index_is_indexed_once_when_opened(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    History(store).add_many([msg(f"m-{n}", f"s{n % 3}", n) for n in range(30)])
    for key in [k for k, _ in store.db.items() if k.startswith((b"hsnd/", b"hscnt/"))]:
        del store.db[key]  # as a store from before 2026-12-05 has it
    del store.db[b"hmeta/senders"]
    history = History(store)
    assert indexed(store, "room") == walked(history, "room") == {"s0": 10, "s1": 10, "s2": 10}
    assert store.db.get(b"hmeta/senders") is not None
    store.close()


def test_the_fair_trim_deletes_exactly_the_excess_when_the_level_ties(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    # Three senders of 40 each, a cap of 100 and a share of 10%: the level is 33 or 34, so
    # cutting all three to one level would delete 21 or 18, not the 20 over the cap.
    history.add_many([msg(f"m-{n}", f"s{n % 3}", n) for n in range(120)])
    assert (
        history.apply_retention("room", max_count=100, max_age_ms=None, now_ms=0, sender_share=0.1)
        == 20
    )
    assert sorted(walked(history, "room").values()) == [33, 33, 34]
    assert indexed(store, "room") == walked(history, "room")
    store.close()
