"""Room history on a real RocksDB store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def message(room: str, sent_at_ms: int, n: int | None = None) -> StoredMessage:
    number = sent_at_ms if n is None else n
    return StoredMessage(
        room=room,
        message_id=number.to_bytes(16, "big"),
        sent_at_ms=sent_at_ms,
        received_at_ms=sent_at_ms + 5,
        sender="12D3KooWSender",
        envelope=f"envelope {number}".encode(),
    )


def test_order_is_by_send_time_whatever_the_insert_order(store: Store) -> None:
    history = History(store)
    for sent in (30, 10, 20):
        assert history.add(message("lobby", sent))
    assert [m.sent_at_ms for m in history.last("lobby", 10)] == [10, 20, 30]
    assert history.last("lobby", 10)[0] == message("lobby", 10)


def test_duplicates_are_refused_and_not_counted(store: Store) -> None:
    history = History(store)
    assert history.add(message("lobby", 10))
    assert not history.add(message("lobby", 10))
    assert history.add_many([message("lobby", 20), message("lobby", 20), message("lobby", 10)]) == 1
    assert history.count("lobby") == 2
    assert history.contains("lobby", message("lobby", 20).message_id)
    assert not history.contains("other", message("lobby", 20).message_id)


def test_last_returns_the_newest_oldest_first(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(1, 101))
    assert [m.sent_at_ms for m in history.last("lobby", 3)] == [98, 99, 100]
    assert history.newest_sent_at("lobby") == 100
    assert history.newest_sent_at("empty") is None
    assert history.last("empty", 5) == []


def test_range_bounds_and_limit(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(10, 60, 10))
    assert [m.sent_at_ms for m in history.range("lobby", 20, 40)] == [20, 30]  # [start, end)
    assert [m.sent_at_ms for m in history.range("lobby", 21)] == [30, 40, 50]
    assert [m.sent_at_ms for m in history.range("lobby", 0, limit=2)] == [10, 20]


def test_rooms_are_isolated_even_when_names_share_a_prefix(store: Store) -> None:
    history = History(store)
    for index, room in enumerate(("a", "a.b", "ab", "a-")):
        history.add_many(message(room, sent, n=sent * 10 + index) for sent in range(1, 4))
    for room in ("a", "a.b", "ab", "a-"):
        assert [m.room for m in history.last(room, 100)] == [room] * 3
        assert history.count(room) == 3
    assert sorted(history.rooms()) == ["a", "a-", "a.b", "ab"]


def test_retention_by_count_and_by_age(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(1, 11))
    assert history.apply_retention("lobby", max_count=6, max_age_ms=None, now_ms=100) == 4
    assert [m.sent_at_ms for m in history.last("lobby", 100)] == [5, 6, 7, 8, 9, 10]
    assert history.apply_retention("lobby", max_count=None, max_age_ms=93, now_ms=100) == 2
    assert [m.sent_at_ms for m in history.last("lobby", 100)] == [7, 8, 9, 10]
    assert history.count("lobby") == 4
    assert not history.contains("lobby", message("lobby", 5).message_id)
    assert history.add(message("lobby", 5))  # a deleted id may be stored again


def test_history_persists_across_reopen(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s")
    History(first).add_many(message("lobby", sent) for sent in range(1, 4))
    first.close()
    again = Store.open(tmp_path / "s")
    try:
        assert History(again).count("lobby") == 3
        assert History(again).last("lobby", 1)[0] == message("lobby", 3)
    finally:
        again.close()


def test_ten_thousand_messages_then_the_last_page(store: Store) -> None:
    history = History(store)
    assert history.add_many(message("lobby", sent) for sent in range(1, 10_001)) == 10_000
    page = history.last("lobby", 50)
    assert [m.sent_at_ms for m in page] == list(range(9_951, 10_001))
    assert history.count("lobby") == 10_000


def test_a_room_name_with_nul_is_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        History(store).add(message("a\x00b", 1))
