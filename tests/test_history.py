"""Room history on a real RocksDB store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p2pchat.node.history import MAX_PAGE, History, StoredMessage, UnknownCursor, history_id
from p2pchat.node.store import Store

from tests.history_fixtures import make_messages, signer

MAX_MS = (1 << 64) - 1


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


def times(messages: list[StoredMessage]) -> list[int]:
    return [m.sent_at_ms for m in messages]


def test_order_is_by_send_time_then_id_whatever_the_insert_order(store: Store) -> None:
    history = History(store)
    for sent, n in ((30, 3), (10, 1), (20, 22), (20, 21), (1000, 4)):
        assert history.add(message("lobby", sent, n))
    assert times(history.last("lobby", 10)) == [10, 20, 20, 30, 1000]
    assert [m.message_id[-1] for m in history.range("lobby", 20, 21)] == [21, 22]
    assert history.last("lobby", 10)[0] == message("lobby", 10, 1)


def test_every_field_round_trips(store: Store) -> None:
    history = History(store)
    stored = StoredMessage(
        room="café.room",
        message_id=b"\xff" * 16,
        sent_at_ms=1_700_000_000_000,
        received_at_ms=MAX_MS,
        sender="12D3KooWÜnïcode",
        envelope=bytes(range(256)) * 1000,
    )
    empty = StoredMessage("café.room", b"\x00" * 16, 0, 0, "", b"")
    assert history.add_many([stored, empty]) == [stored, empty]
    assert history.last("café.room", 2) == [empty, stored]
    assert history.rooms() == ["café.room"]


def test_duplicates_are_refused_and_not_counted(store: Store) -> None:
    history = History(store)
    assert history.add(message("lobby", 10))
    assert not history.add(message("lobby", 10))
    assert not history.add(message("lobby", 99, n=10))  # same id, other time: still a duplicate
    assert history.count("lobby") == 1
    assert times(history.last("lobby", 10)) == [10]
    assert history.contains("lobby", message("lobby", 10).message_id)
    assert not history.contains("other", message("lobby", 10).message_id)
    assert history.add(message("other", 10))  # ids are per room
    assert history.count("lobby") == 1 and history.count("other") == 1


def test_add_many_skips_duplicates_inside_the_batch_and_counts_per_room(store: Store) -> None:
    history = History(store)
    assert history.add(message("lobby", 10))
    batch = [message("lobby", 20), message("lobby", 20), message("lobby", 10), message("dev", 20)]
    assert history.add_many(batch) == [batch[0], batch[3]]  # in order, first copy kept
    assert history.count("lobby") == 2 and history.count("dev") == 1
    assert times(history.last("lobby", 10)) == [10, 20]
    assert history.add_many([]) == []
    assert history.add_many([message("lobby", 20)]) == []
    assert history.count("lobby") == 2


def test_last_returns_the_newest_oldest_first(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(1, 101))
    assert times(history.last("lobby", 3)) == [98, 99, 100]
    assert times(history.last("lobby", 1000)) == list(range(1, 101))
    assert history.last("lobby", 0) == []
    assert history.newest_sent_at("lobby") == 100
    assert history.newest_sent_at("empty") is None
    assert history.last("empty", 5) == []


def test_last_finds_a_message_at_the_very_end_of_the_key_space(store: Store) -> None:
    history = History(store)
    history.add(message("lobby", 5))
    history.add(StoredMessage("lobby", b"\xff" * 16, MAX_MS, 1, "12D3KooWSender", b"e"))
    history.add(message("lobbz", 1))  # the next room in byte order
    assert times(history.last("lobby", 10)) == [5, MAX_MS]
    assert history.newest_sent_at("lobby") == MAX_MS
    assert times(history.range("lobby", MAX_MS)) == [MAX_MS]
    assert times(history.range("lobby", 0, MAX_MS)) == [5]


def test_range_bounds_and_limit(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(10, 60, 10))
    assert times(history.range("lobby", 20, 40)) == [20, 30]  # [start, end)
    assert times(history.range("lobby", 21)) == [30, 40, 50]
    assert times(history.range("lobby", 0, limit=2)) == [10, 20]
    assert times(history.range("lobby", 30, 31, limit=5)) == [30]
    assert times(history.range("lobby", -5, 1 << 70)) == [10, 20, 30, 40, 50]
    assert history.range("lobby", 0, limit=0) == []
    assert history.range("lobby", 40, 20) == []
    assert history.range("lobby", 51) == []
    assert history.range("lobby", 30, 30) == []


def test_rooms_are_isolated_even_when_names_share_a_prefix(store: Store) -> None:
    history = History(store)
    names = ("a", "a.b", "ab", "a-", "b")
    for index, room in enumerate(names):
        history.add_many(message(room, sent, n=sent * 10 + index) for sent in range(1, 4))
    for room in names:
        assert [m.room for m in history.last(room, 100)] == [room] * 3
        assert [m.room for m in history.range(room, 0)] == [room] * 3
        assert history.count(room) == 3
    assert sorted(history.rooms()) == sorted(names)
    assert history.apply_retention("a", max_count=0, max_age_ms=None, now_ms=0) == 3
    assert [history.count(room) for room in names] == [0, 3, 3, 3, 3]
    assert history.last("a", 10) == []
    assert history.last("a.b", 10) != []


def test_retention_by_count_and_by_age(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(1, 11))
    assert history.apply_retention("lobby", max_count=None, max_age_ms=None, now_ms=100) == 0
    assert history.apply_retention("lobby", max_count=6, max_age_ms=None, now_ms=100) == 4
    assert times(history.last("lobby", 100)) == [5, 6, 7, 8, 9, 10]
    assert history.apply_retention("lobby", max_count=6, max_age_ms=None, now_ms=100) == 0
    assert history.apply_retention("lobby", max_count=None, max_age_ms=93, now_ms=100) == 2
    assert times(history.last("lobby", 100)) == [7, 8, 9, 10]  # 7 == now - max_age is kept
    assert history.apply_retention("lobby", max_count=3, max_age_ms=1000, now_ms=100) == 1
    assert history.apply_retention("lobby", max_count=100, max_age_ms=91, now_ms=100) == 1
    assert times(history.last("lobby", 100)) == [9, 10]
    assert history.count("lobby") == 2
    assert not history.contains("lobby", message("lobby", 5).message_id)
    assert history.add(message("lobby", 5))  # a deleted id may be stored again
    assert history.count("lobby") == 3


def test_count_stays_exact_and_an_emptied_room_is_no_longer_listed(store: Store) -> None:
    history = History(store)
    for round_ in range(3):
        assert len(history.add_many(message("lobby", sent) for sent in range(1, 21))) == 20
        assert history.add_many(message("lobby", sent) for sent in range(1, 21)) == []
        assert history.count("lobby") == 20 == len(history.range("lobby", 0))
        assert history.apply_retention("lobby", max_count=5, max_age_ms=None, now_ms=0) == 15
        assert history.count("lobby") == 5 == len(history.range("lobby", 0))
        assert history.apply_retention("lobby", max_count=None, max_age_ms=0, now_ms=1000) == 5
        assert history.count("lobby") == 0 == len(history.range("lobby", 0)), round_
        assert history.rooms() == []


def test_history_persists_across_reopen(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "s")
    History(first).add_many(message("lobby", sent) for sent in range(1, 4))
    first.close()
    again = Store.open(tmp_path / "s")
    try:
        history = History(again)
        assert history.count("lobby") == 3
        assert history.last("lobby", 1)[0] == message("lobby", 3)
        assert history.rooms() == ["lobby"]
        assert not history.add(message("lobby", 2))
    finally:
        again.close()


def test_ten_thousand_messages_then_the_last_page(store: Store) -> None:
    history = History(store)
    sends = [(sent * 7919) % 10_000 + 1 for sent in range(10_000)]  # every time, shuffled
    assert len(history.add_many(message("lobby", sent) for sent in sends)) == 10_000
    page = history.last("lobby", 50)
    assert times(page) == list(range(9_951, 10_001))
    assert page[-1] == message("lobby", 10_000)
    assert history.count("lobby") == 10_000


@pytest.mark.parametrize(
    "bad",
    [
        message("a\x00b", 1),
        message("", 1),
        StoredMessage("lobby", b"short", 1, 1, "s", b""),
        StoredMessage("lobby", b"\x01" * 16, -1, 1, "s", b""),
        StoredMessage("lobby", b"\x01" * 16, 1 << 64, 1, "s", b""),
        StoredMessage("lobby", b"\x01" * 16, 1, 1, "s" * 70_000, b""),
    ],
)
def test_invalid_messages_are_refused_and_nothing_of_the_batch_is_written(
    store: Store, bad: StoredMessage
) -> None:
    history = History(store)
    with pytest.raises(ValueError):
        history.add_many([message("lobby", 1), bad])
    assert history.count("lobby") == 0
    assert history.rooms() == []


def test_a_room_name_with_nul_is_refused_everywhere(store: Store) -> None:
    history = History(store)
    with pytest.raises(ValueError, match="room"):
        history.count("a\x00b")
    with pytest.raises(ValueError, match="room"):
        history.last("a\x00b", 1)
    with pytest.raises(ValueError, match="room"):
        history.range("a\x00b", 0)
    with pytest.raises(ValueError, match="room"):
        history.contains("a\x00b", b"\x00" * 16)
    with pytest.raises(ValueError, match="room"):
        history.apply_retention("a\x00b", max_count=1, max_age_ms=None, now_ms=0)


# --- pages, cursors, lookups (the history protocol's storage side) --------------------------------


def walk(
    history: History, room: str, start: int | None, end: int | None, limit: int, forward: bool
) -> tuple[list[StoredMessage], int]:
    """Every message of the range by following cursors; (messages in history order, pages)."""
    pages: list[list[StoredMessage]] = []
    cursor: bytes | None = None
    while True:
        page = history.page(
            room, start_ms=start, end_ms=end, after=cursor, limit=limit, forward=forward
        )
        assert len(page.messages) <= limit
        assert page.messages or not page.more  # an empty page never promises more
        pages.append(page.messages)
        if not page.more:
            break
        assert len(page.messages) == limit  # a short page is the last
        cursor = (page.messages[-1] if forward else page.messages[0]).message_id
    if not forward:
        pages.reverse()
    return [m for page in pages for m in page], len(pages)


@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(st.integers(0, 40), max_size=60),
    start=st.one_of(st.none(), st.integers(-5, 45)),
    end=st.one_of(st.none(), st.integers(-5, 45)),
    limit=st.integers(1, 7),
    forward=st.booleans(),
)
def test_pages_cover_the_range_exactly_once_in_both_directions(
    tmp_path_factory: pytest.TempPathFactory,
    sent: list[int],
    start: int | None,
    end: int | None,
    limit: int,
    forward: bool,
) -> None:
    store = Store.open(tmp_path_factory.mktemp("pages") / "store")
    try:
        history = History(store)
        messages = [message("lobby", ms, n=index) for index, ms in enumerate(sent)]
        history.add_many(messages)
        history.add_many(message("lobbyist", ms, n=1000 + ms) for ms in range(0, 41, 5))
        history.add_many(message("lobb", ms, n=2000 + ms) for ms in range(0, 41, 5))
        expected = sorted(
            (
                m
                for m in messages
                if (start is None or m.sent_at_ms >= start) and (end is None or m.sent_at_ms < end)
            ),
            key=lambda m: (m.sent_at_ms, m.message_id),
        )
        got, pages = walk(history, "lobby", start, end, limit, forward)
        assert got == expected
        assert pages == max(1, -(-len(expected) // limit))
    finally:
        store.close()


def test_page_bounds_are_inclusive_start_exclusive_end(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in (10, 20, 30))
    history.add(message("lobby", 20, n=21))
    page = history.page("lobby", start_ms=20, end_ms=30)
    assert times(page.messages) == [20, 20] and not page.more
    assert times(history.page("lobby", start_ms=20, end_ms=20).messages) == []
    assert times(history.page("lobby", start_ms=31).messages) == []
    newest = history.page("lobby", limit=2, forward=False)
    assert times(newest.messages) == [20, 30] and newest.more


def test_unknown_cursors_are_errors_never_everything(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(1, 6))
    history.add(message("other", 100))
    for cursor in (b"", b"\x00" * 16, (100).to_bytes(16, "big"), b"short"):
        with pytest.raises(UnknownCursor):
            history.page("lobby", after=cursor)
    with pytest.raises(ValueError, match="limit"):
        history.page("lobby", limit=MAX_PAGE + 1)
    with pytest.raises(ValueError, match="limit"):
        history.page("lobby", limit=0)
    # a cursor outside the time range continues from the range's edge, never beyond it
    after_3 = history.page("lobby", start_ms=4, after=(2).to_bytes(16, "big"))
    assert times(after_3.messages) == [4, 5]
    before_4 = history.page("lobby", end_ms=3, after=(5).to_bytes(16, "big"), forward=False)
    assert times(before_4.messages) == [1, 2]


def test_lookup_finds_only_the_rooms_own_ids_in_history_order(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in (3, 1, 2))
    history.add(message("other", 9))
    ids = [(n).to_bytes(16, "big") for n in (2, 9, 3, 42, 2)]
    assert times(history.lookup("lobby", ids)) == [2, 3]
    assert history.lookup("lobby", []) == []


def test_size_is_kept_per_room_and_bounds_retention(store: Store) -> None:
    history = History(store)
    history.add_many(message("lobby", sent) for sent in range(11, 21))  # all the same size
    history.add(message("other", 11))
    per_message = history.size("other")
    assert per_message > 0 and history.size("lobby") == 10 * per_message
    deleted = history.apply_retention(
        "lobby", max_count=None, max_age_ms=None, now_ms=0, max_bytes=4 * per_message
    )
    assert deleted == 6 and times(history.last("lobby", 10)) == [17, 18, 19, 20]
    assert history.size("lobby") == 4 * per_message
    history.apply_retention("lobby", max_count=0, max_age_ms=None, now_ms=0)
    assert (history.count("lobby"), history.size("lobby")) == (0, 0)


def test_synced_adds_survive_reopening(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    History(store).add_many([message("lobby", 1), message("lobby", 2)], sync=True)
    store.close()
    reopened = Store.open(tmp_path / "store")
    try:
        assert times(History(reopened).last("lobby", 5)) == [1, 2]
    finally:
        reopened.close()


def test_a_history_id_binds_the_chosen_id_to_its_sender() -> None:
    chosen = b"\x07" * 16
    alice, mallory = "12D3KooWAlice", "12D3KooWMallory"
    assert history_id(alice, chosen) == history_id(alice, chosen)  # every node agrees
    assert history_id(alice, chosen) != history_id(mallory, chosen)
    assert history_id(alice, chosen) != history_id(alice, b"\x08" * 16)
    assert len(history_id(alice, chosen)) == 16
    # A fixed vector, for other implementations of the history protocol to check against.
    assert history_id(alice, chosen).hex() == "34fe56871475eee6c54c4f76f10e2144"


def test_a_store_from_before_ids_were_bound_to_senders_is_rekeyed_once(
    store: Store, tmp_path: Path
) -> None:
    genuine = make_messages(signer(tmp_path / "signer"), "lobby", 30)
    # As stored before: under the id the sender chose (here n, big-endian).
    old_style = [replace(m, message_id=(n + 1).to_bytes(16, "big")) for n, m in enumerate(genuine)]
    not_chat = StoredMessage("lobby", b"\xee" * 16, 1, 1, "12D3KooWSomebody", b"not a message")
    History(store).add_many([*old_style, not_chat])
    totals = History(store).count("lobby"), History(store).size("lobby")
    del store.db[b"hmeta/ids"]  # what a store of that time lacks

    history = History(store)
    assert [m.message_id for m in history.range("lobby", 0) if m != not_chat] == [
        m.message_id for m in genuine
    ]
    assert history.lookup("lobby", [b"\xee" * 16]) == [not_chat]  # left as it was
    assert (history.count("lobby"), history.size("lobby")) == totals
    assert not history.add(genuine[3])  # caught up again: a duplicate, not a second copy
    assert history.lookup("lobby", [genuine[5].message_id])[0].envelope == genuine[5].envelope
    assert History(store).range("lobby", 0) == history.range("lobby", 0)  # once is enough


@pytest.mark.parametrize("squatter_time", [0, 10, 20], ids=["before", "same time", "after"])
def test_rekeying_never_overwrites_a_message_that_holds_the_id_it_needs(
    store: Store, tmp_path: Path, squatter_time: int
) -> None:
    # An old store kept messages under ids their senders chose: Mallory's could sit under the
    # history id Alice's message is about to get.
    alice = make_messages(signer(tmp_path / "alice"), "lobby", 1, first_ms=10)[0]
    squat = make_messages(signer(tmp_path / "mallory"), "lobby", 1, first_ms=squatter_time)[0]
    old_alice = replace(alice, message_id=(1).to_bytes(16, "big"))
    old_squat = replace(squat, message_id=alice.message_id)
    History(store).add_many([old_alice, old_squat])
    del store.db[b"hmeta/ids"]

    history = History(store)
    kept = history.range("lobby", 0)
    assert sorted(m.envelope for m in kept) == sorted([alice.envelope, squat.envelope])
    assert history.count("lobby") == 2
    for message in kept:  # each still found under the id it is listed with
        assert history.lookup("lobby", [message.message_id]) == [message]


def test_over_its_cap_a_room_charges_the_senders_over_their_share_first(tmp_path: Path) -> None:
    # #18: one sender's flood must not push the others' messages out of a room's history.
    history = History(Store.open(tmp_path / "store"))
    honest = [fair_message(f"honest-{n}", "alice" if n % 2 else "bob", n) for n in range(20)]
    flood = [fair_message(f"flood-{n}", "mallory", 100 + n) for n in range(200)]
    history.add_many(honest + flood)
    deleted = history.apply_retention(
        "room", max_count=100, max_age_ms=None, now_ms=10**6, sender_share=0.5
    )
    assert deleted == 120 and history.count("room") == 100
    kept = history.last("room", 500)
    assert {m.message_id for m in honest} <= {m.message_id for m in kept}  # all honest kept
    assert sum(m.sender == "mallory" for m in kept) == 80  # its newest, still over its share
    assert min(m.sent_at_ms for m in kept if m.sender == "mallory") == 100 + 120


def test_with_no_sender_over_its_share_the_oldest_go_first(tmp_path: Path) -> None:
    history = History(Store.open(tmp_path / "store"))
    history.add_many([fair_message(f"m-{n}", f"sender-{n % 10}", n) for n in range(100)])
    deleted = history.apply_retention(
        "room", max_count=90, max_age_ms=None, now_ms=10**6, sender_share=0.2
    )
    assert deleted == 10
    assert min(m.sent_at_ms for m in history.last("room", 500)) == 10


def fair_message(text: str, sender: str, sent_at_ms: int) -> StoredMessage:
    return StoredMessage(
        room="room",
        message_id=hashlib.sha256(text.encode()).digest()[:16],
        sent_at_ms=sent_at_ms,
        received_at_ms=sent_at_ms,
        sender=sender,
        envelope=text.encode(),
    )


def test_the_largest_holder_pays_first_even_when_others_are_over_their_share(
    tmp_path: Path,
) -> None:
    history = History(Store.open(tmp_path / "store"))
    chatty = [fair_message(f"chatty-{n}", "alice", n) for n in range(50)]
    flood = [fair_message(f"flood-{n}", "mallory", 100 + n) for n in range(300)]
    history.add_many(chatty + flood)
    history.apply_retention("room", max_count=100, max_age_ms=None, now_ms=10**6, sender_share=0.1)
    kept = history.last("room", 500)
    assert sum(m.sender == "alice" for m in kept) == 50  # over its share, but not the largest
    assert sum(m.sender == "mallory" for m in kept) == 50
