"""The chat service's parts, each alone: names, rooms, membership, inbound, outbox, retention."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.store import Store
from p2pchat.node.wire.chat import ChatText, decode, encode, new_message_id
from p2pchat.roles.peer import names as names_module
from p2pchat.roles.peer import outbox as outbox_module
from p2pchat.roles.peer import retention
from p2pchat.roles.peer.events import ErrorEvent, NoticeEvent
from p2pchat.roles.peer.inbound import MAX_VALIDATED, Inbound
from p2pchat.roles.peer.membership import Membership
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.peer.names import ANONYMOUS, NameChange, Names
from p2pchat.roles.peer.outbox import Outbox, PendingQueue
from p2pchat.roles.peer.presentation import history_events, peers_output, rooms_output
from p2pchat.roles.peer.retention import Retention
from p2pchat.roles.peer.rooms import MAX_HEARD, Room, Rooms
from prometheus_client import CollectorRegistry

from tests.peer_ids import fresh_peer_id, fresh_peer_ids

ROOM = "lobby"
ME = fresh_peer_id()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


# --- names -----------------------------------------------------------------------------------


def test_own_name_is_kept_in_the_store_and_wins_over_the_configured_one(store: Store) -> None:
    names = Names(ME, store.namespace(names_module.NAMESPACE), None)
    assert names.own is None and names.display_name == ANONYMOUS == names.name_of(ME)
    assert names.set_own("  Alice ") == "Alice"
    assert store.db[b"peer/name"] == b"Alice"  # the key it always had on disk
    assert Names(ME, store.namespace(names_module.NAMESPACE), "Configured").display_name == "Alice"
    with pytest.raises(ValueError):
        names.set_own("")


def test_announcements_report_changes_and_messages_only_fill_gaps(store: Store) -> None:
    names = Names(ME, store.namespace(names_module.NAMESPACE), "Alice")
    bob = fresh_peer_id()
    assert names.name_of(bob) == ANONYMOUS
    names.used(bob, "Bob")
    assert names.name_of(bob) == "Bob"
    assert names.announced(bob, "Robert") == NameChange(bob, "Bob", "Robert")
    assert names.announced(bob, "Robert") is None
    names.used(bob, "Bob")  # a message's name does not override an announcement
    assert names.name_of(bob) == "Robert"
    assert names.announced(ME, "Mallory") is None
    assert names.name_of(ME) == "Alice"


def test_names_of_a_flood_of_fresh_peers_are_bounded_and_recent_speakers_kept(
    store: Store,
) -> None:
    names = Names(ME, store.namespace(names_module.NAMESPACE), None, max_known=1000)
    regular = fresh_peer_id()
    names.announced(regular, "Regular")
    for n, peer in enumerate(fresh_peer_ids(10_000)):
        names.used(peer, "sybil")
        if n % 500 == 0:
            names.used(regular, "ignored")  # speaks now and then: stays remembered
        assert len(names) <= 1000
    assert len(names) == 1000
    assert names.name_of(regular) == "Regular"


# --- rooms and membership --------------------------------------------------------------------


def test_rooms_keep_the_current_one_and_refuse_to_leave_the_last() -> None:
    rooms = Rooms("a")
    assert rooms.current_room() is None
    rooms.add(Room("a"))
    rooms.add(Room("c"))
    rooms.add(Room("b"))
    assert rooms.names() == ["a", "c", "b"] and len(rooms) == 3
    rooms.switch("c")
    rooms.remove("c")
    assert rooms.current == "a"  # the first left by name
    with pytest.raises(KeyError):
        rooms.switch("c")
    rooms.remove("a")
    with pytest.raises(ValueError):
        rooms.remove("b")
    with pytest.raises(KeyError):
        rooms.remove("nowhere")


def test_a_room_hears_a_flood_of_fresh_senders_up_to_its_bound() -> None:
    room = Room(ROOM)
    senders = list(fresh_peer_ids(10_000))
    for n, sender in enumerate(senders):
        room.hear(sender, n)
    assert len(room.heard) == MAX_HEARD
    room.hear(senders[-1], 5)  # an older copy does not move the time back
    assert list(room.heard_since(10_000 - 2)) == [(senders[-1], 9_999), (senders[-2], 9_998)]


def test_membership_reports_each_change_once() -> None:
    rooms = Rooms("a")
    rooms.add(Room("a"))
    rooms.add(Room("b"))
    bob, carol = sorted(fresh_peer_ids(2))
    subscribers = {"a": [ME, bob], "b": []}
    connected = [bob]
    discovered = {bob: "mdns"}
    membership = Membership(
        ME, rooms, lambda room: subscribers[room], lambda: connected, lambda: discovered
    )
    changes = membership.refresh()
    assert changes.discovered == [(bob, "mdns")]
    assert changes.connected == [bob] and changes.disconnected == []
    assert changes.joined == {"a": [bob]} and changes.left == {}
    assert rooms.get("a") is not None and rooms.get("a").members == {bob}  # type: ignore[union-attr]
    assert membership.refresh().joined == {}
    subscribers.update(a=[carol], b=[bob, carol])
    connected[:] = [carol]
    changes = membership.refresh()
    assert changes.discovered == []
    assert changes.connected == [carol] and changes.disconnected == [bob]
    assert changes.joined == {"a": [carol], "b": [bob, carol]}
    assert changes.left == {"a": [bob]}


# --- inbound ---------------------------------------------------------------------------------


def _text(words: str, room: str = ROOM, sent_at_ms: int | None = None) -> bytes:
    return encode(
        ChatText(
            id=new_message_id(),
            room=room,
            sender_name="Bob",
            text=words,
            sent_at_ms=now_ms() if sent_at_ms is None else sent_at_ms,
        )
    )


def test_the_validator_keeps_a_bounded_number_of_decoded_payloads(store: Store) -> None:
    rooms = Rooms(ROOM)
    inbound = Inbound(
        ME,
        History(store),
        Names(ME, store.namespace(names_module.NAMESPACE), None),
        rooms,
        ChatMetrics(CollectorRegistry()),
        4096,
        lambda room: None,
        lambda event: None,
    )
    validate = inbound.validator(ROOM)
    assert validate(_text("elsewhere", room="other")) == "wrong_room"
    assert validate(b"\xff garbage") is not None
    for sender in fresh_peer_ids(MAX_VALIDATED + 2_000):
        assert validate(_text(f"from {sender}")) is None
        assert len(inbound._validated) <= MAX_VALIDATED
    assert len(inbound._validated) == MAX_VALIDATED


def test_senders_heard_live_are_told_once_their_texts_are_stored(store: Store) -> None:
    heard: list[tuple[str, set[str]]] = []
    seen: list[int] = []
    inbound = Inbound(
        ME,
        History(store),
        Names(ME, store.namespace(names_module.NAMESPACE), None),
        Rooms(ROOM),
        ChatMetrics(CollectorRegistry()),
        4096,
        lambda room: None,
        lambda event: None,
        heard_live=lambda room, senders: heard.append((room, senders)),
        seen=seen.append,
    )
    bob, carol = fresh_peer_ids(2)
    texts = [(bob, _text("one", sent_at_ms=5)), (bob, _text("two", sent_at_ms=6))]
    texts.append((carol, _text("three", sent_at_ms=7)))
    batch = [GossipMessage(ROOM, data, sender, b"", data) for sender, data in texts]
    inbound.accept(ROOM, batch)
    assert heard == [(ROOM, {bob, carol})]
    assert seen == [5, 6, 7]  # the outbox dates our next message after them
    inbound.accept(ROOM, batch[:1])  # stored already: nothing new heard
    assert heard == [(ROOM, {bob, carol})]
    assert seen == [5, 6, 7]


# --- outbox and pending queue ----------------------------------------------------------------


class _Pubsub:
    def __init__(self) -> None:
        self.subscribed = False
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))

    def has_subscribers(self, topic: str) -> bool:
        return self.subscribed


async def test_the_outbox_queues_per_room_in_typing_order_and_flushes_once(store: Store) -> None:
    pubsub = _Pubsub()
    metrics = ChatMetrics(CollectorRegistry())
    pending = store.namespace(outbox_module.NAMESPACE)
    outbox = Outbox(pubsub, PendingQueue(pending), metrics, 64)
    for words in ("one", "two", "three"):
        answer = await outbox.send(ROOM, "Alice", words)
        assert isinstance(answer, NoticeEvent) and "queued" in answer.text
    await outbox.send("lobby2", "Alice", "elsewhere")  # a room whose name extends ROOM's
    too_long = await outbox.send(ROOM, "Alice", "x" * 65)
    assert too_long == ErrorEvent("message_too_long", "message not sent: 65 bytes, the limit is 64")
    assert await outbox.flush(ROOM) == 3
    sent = [decode(data, max_text_bytes=64) for _, data in pubsub.published]
    assert [m.text for m in sent if isinstance(m, ChatText)] == ["one", "two", "three"]
    times = [m.sent_at_ms for m in sent]
    assert times == sorted(set(times))  # strictly increasing, even within one millisecond
    assert await outbox.flush(ROOM) == 0
    assert PendingQueue(pending).queued("lobby2") != []
    pubsub.subscribed = True
    assert await outbox.send(ROOM, "Alice", "live") is None
    assert len(pubsub.published) == 4
    assert metrics.published._value.get() == 4


async def test_a_reply_is_dated_after_what_it_answers_within_a_second_ahead(store: Store) -> None:
    # A burst is dated up to its length in ms ahead of real time; a reply typed at once must
    # still sort after it on every peer. A message dated far ahead moves our clock 1 s at most.
    pubsub = _Pubsub()
    pubsub.subscribed = True
    pending = PendingQueue(store.namespace(outbox_module.NAMESPACE))
    outbox = Outbox(pubsub, pending, ChatMetrics(CollectorRegistry()), 64)
    burst_end = now_ms() + 40
    outbox.saw(burst_end)
    await outbox.send(ROOM, "Alice", "a reply")
    outbox.saw(now_ms() + 5 * 60_000)  # a sender's clock 5 minutes ahead
    before = now_ms()
    await outbox.send(ROOM, "Alice", "another")
    after = now_ms()
    reply, another = (decode(data, max_text_bytes=64) for _, data in pubsub.published)
    assert reply.sent_at_ms > burst_end
    assert before < another.sent_at_ms <= after + outbox_module.SEEN_AHEAD_MS + 1


async def test_a_data_dir_of_an_earlier_version_reads_back_its_name_and_queue(
    tmp_path: Path,
) -> None:
    """The keys as a node wrote them on the raw database: ``peer/name``, and
    ``pend/<room>\\x00<sent_at_ms: 8 bytes><id>``; the namespaces read and write the same."""
    earlier = ChatText(
        id=new_message_id(), room=ROOM, sender_name="Alice", text="typed alone", sent_at_ms=7
    )
    raw_key = b"pend/" + ROOM.encode() + b"\x00" + (7).to_bytes(8, "big") + earlier.id
    written = Store.open(tmp_path / "store")
    written.db[b"peer/name"] = b"Alice"
    written.db[raw_key] = encode(earlier)
    written.close()
    store = Store.open(tmp_path / "store")
    try:
        assert Names(ME, store.namespace(names_module.NAMESPACE), "Other").own == "Alice"
        pubsub = _Pubsub()
        outbox = Outbox(
            pubsub,
            PendingQueue(store.namespace(outbox_module.NAMESPACE)),
            ChatMetrics(CollectorRegistry()),
            64,
        )
        await outbox.send(ROOM, "Alice", "typed later")
        first_queued = next(iter(store.db.keys(from_key=b"pend/")))
        assert first_queued == raw_key  # the older message first: same layout, same order
        assert await outbox.flush(ROOM) == 2
        assert pubsub.published[0] == (ROOM, encode(earlier))
        assert store.db.get(raw_key) is None
    finally:
        store.close()


# --- retention -------------------------------------------------------------------------------


def _stored(n: int, sent_at_ms: int) -> StoredMessage:
    return StoredMessage(
        room=ROOM,
        message_id=n.to_bytes(16, "big"),
        sent_at_ms=sent_at_ms,
        received_at_ms=sent_at_ms,
        sender=ME,
        envelope=b"",
    )


class _CountingHistory(History):
    """Records how many messages each retention write batch deleted."""

    batches: list[int]

    def apply_retention(self, room: str, **limits: object) -> int:  # type: ignore[override]
        deleted = super().apply_retention(room, **limits)  # type: ignore[arg-type]
        self.batches.append(deleted)
        return deleted


async def test_retention_deletes_in_bounded_batches_and_yields_between_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "STEP", 10)
    history = _CountingHistory(store)
    history.batches = []
    day = 86_400_000
    old, recent = now_ms() - 10 * day, now_ms() - day // 2
    history.add_many([_stored(n, old + n) for n in range(35)])
    history.add_many([_stored(100 + n, recent + n) for n in range(30)])
    keeper = Retention(history, max_messages=20, max_age_days=5)
    ticks = 0

    async def count_ticks() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count_ticks)
        assert await keeper.apply() == 45
        nursery.cancel_scope.cancel()
    assert history.count(ROOM) == 20
    assert [m.sent_at_ms for m in history.range(ROOM, 0)] == [recent + n for n in range(10, 30)]
    assert max(history.batches) <= 10
    assert ticks >= len(history.batches) - 1  # the loop ran between any two batches
    # Within the cap now: a second pass deletes only what has grown too old.
    history.batches.clear()
    keeper = Retention(history, max_messages=20, max_age_days=0.25)
    assert await keeper.apply() == 20
    assert history.count(ROOM) == 0


def test_trimming_on_arrival_waits_for_one_percent_over_the_cap(store: Store) -> None:
    history = History(store)
    keeper = Retention(history, max_messages=100, max_age_days=365)
    history.add_many([_stored(n, now_ms() + n) for n in range(101)])
    assert keeper.trim_if_over(ROOM) == 0
    history.add_many([_stored(1000, now_ms() + 1000)])
    assert keeper.trim_if_over(ROOM) == 2
    assert history.count(ROOM) == 100


# --- presentation ----------------------------------------------------------------------------


def test_presentation_of_rooms_peers_and_an_empty_history() -> None:
    assert (
        rooms_output(["b", "a", "c"], "b", {"a": 3}).text == "rooms: a (3 unread), b (current), c"
    )
    assert history_events([], ME) == []
    far = fresh_peer_id()
    output = peers_output([], ROOM, [], [(far, 0)], lambda peer: "Far", lambda peer: ())
    assert output.data["via_mesh"] == [{"peer": far, "name": "Far", "heard_at_ms": 0}]
    assert "heard in lobby through the mesh" in output.text
