"""The history protocol against a real archiver process holding a real RocksDB archive.

The client is a real libp2p host in the test process, speaking the wire protocol itself, so
every page boundary, bound, cursor rule and refusal is checked as another implementation would
see it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import Stream, StreamEnded, read_frame
from p2pchat.node.store import Store
from p2pchat.node.store_client import QuietStoreClientObserver, StoreClient
from p2pchat.node.store_server import answer
from p2pchat.node.wire.framing import FrameDecoder, encode_uvarint
from p2pchat.node.wire.store_query import (
    MAX_REPLY_BYTES,
    PROTOCOL_ID,
    Query,
    Reply,
    Status,
    decode_reply,
    encode_query,
    encode_reply,
    entry_wire_bytes,
)

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import (
    ROOM,
    ask,
    fill_store,
    history_id_of,
    make_messages,
    number,
    reply_decoder,
    signed_message,
    signer,
)
from tests.test_host import running_host

COUNT = 23
OTHER = "other-room"


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[tuple[NodeProcess, list[StoredMessage]]]:
    """An archiver holding 23 messages of ROOM (ids 1..23, 10 ms apart) and 5 of OTHER."""
    key = signer(tmp_path / "signer")
    messages = make_messages(key, ROOM, COUNT)
    others = make_messages(key, OTHER, 5, first_id=100)
    fill_store(tmp_path / "archiver", messages + others)
    node = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        env=node_env(P2PCHAT_HISTORY__RATE="1000", P2PCHAT_HISTORY__BURST="1000"),
    )
    try:
        yield node, messages
    finally:
        node.stop()


def ids(reply: Reply) -> list[int]:
    return [number(e.message_id) for e in reply.entries]


async def walk(
    stream: Stream, decoder: FrameDecoder, limit: int, forward: bool, **bounds: int
) -> list[list[int]]:
    """Every page of the range, in the order they come, each oldest first."""
    pages: list[list[int]] = []
    cursor = None
    while True:
        reply = await ask(
            stream,
            decoder,
            Query(len(pages) + 1, ROOM, cursor=cursor, limit=limit, forward=forward, **bounds),  # type: ignore[arg-type]
        )
        assert reply.status is Status.OK, reply.status_text
        assert reply.request_id == len(pages) + 1
        pages.append(ids(reply))
        if reply.next_cursor is None:
            return pages
        assert len(reply.entries) == limit  # a cursor only when the page is full and more exist
        cursor = reply.next_cursor


async def connected_stream(host: P2PHost, node: NodeProcess) -> Stream:
    await host.connect(node.addr())
    return await host.new_stream(node.peer_id, [PROTOCOL_ID])


async def test_pagination_conformance(
    tmp_path: Path, archive: tuple[NodeProcess, list[StoredMessage]]
) -> None:
    node, messages = archive
    t = {number(m.message_id): m.sent_at_ms for m in messages}
    sender = messages[0].sender
    async with running_host(tmp_path / "client") as (host, _):
        stream = await connected_stream(host, node)
        decoder = reply_decoder()

        # Every page boundary, both directions: pages of 5 over 23 messages.
        forward = await walk(stream, decoder, 5, True)
        assert forward == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15],
                           [16, 17, 18, 19, 20], [21, 22, 23]]  # fmt: skip
        backward = await walk(stream, decoder, 5, False)
        assert backward == [[19, 20, 21, 22, 23], [14, 15, 16, 17, 18], [9, 10, 11, 12, 13],
                            [4, 5, 6, 7, 8], [1, 2, 3]]  # fmt: skip
        for limit in (1, 22, 23, 24, 500):  # around the exact fit, too
            pages = await walk(stream, decoder, limit, True)
            assert [i for page in pages for i in page] == list(range(1, COUNT + 1)), limit
            back = await walk(stream, decoder, limit, False)
            assert sorted(i for page in back for i in page) == list(range(1, COUNT + 1)), limit

        # Start inclusive, end exclusive, in both directions; empty ranges are empty.
        assert await walk(stream, decoder, 2, True, start_ms=t[3], end_ms=t[7]) == [
            [3, 4], [5, 6]]  # fmt: skip
        assert await walk(stream, decoder, 3, False, start_ms=t[3], end_ms=t[7]) == [
            [4, 5, 6], [3]]  # fmt: skip
        assert await walk(stream, decoder, 5, True, start_ms=t[7], end_ms=t[7]) == [[]]
        assert await walk(stream, decoder, 5, True, start_ms=t[23] + 1) == [[]]

        # Lookups and presence queries.
        found = await ask(stream, decoder, Query(50, ROOM, message_ids=(
            history_id_of(sender, 7), history_id_of(sender, 3), history_id_of(sender, 999),
            history_id_of(sender, 100))))  # fmt: skip
        assert found.status is Status.OK and ids(found) == [3, 7]  # 100 is another room's
        assert all(e.envelope for e in found.entries)
        presence = await ask(stream, decoder, Query(51, ROOM, limit=500, ids_only=True))
        assert ids(presence) == list(range(1, COUNT + 1))
        assert not any(e.envelope for e in presence.entries)
        default = await ask(stream, decoder, Query(52, ROOM, limit=0))
        assert len(default.entries) == COUNT and default.next_cursor is None

        # Refusals: each a BAD_REQUEST naming the problem, and the stream goes on.
        bad = {
            "unknown cursor": Query(60, ROOM, cursor=(999).to_bytes(16, "big")),
            "another room's cursor": Query(61, ROOM, cursor=history_id_of(sender, 100)),
            "malformed cursor": Query(62, ROOM, cursor=b"\x01" * 5),
            "huge limit": Query(63, ROOM, limit=100_000),
            "start after end": Query(64, ROOM, start_ms=t[9], end_ms=t[2]),
            "bad room": Query(65, "no rooms/with slashes"),
            "ids and range": Query(66, ROOM, start_ms=1, message_ids=((1).to_bytes(16, "big"),)),
            "bad id": Query(67, ROOM, message_ids=(b"\x01",)),
            "too many ids": Query(
                68, ROOM, message_ids=tuple(n.to_bytes(16, "big") for n in range(501))
            ),
        }
        for what, query in bad.items():
            reply = await ask(stream, decoder, query)
            assert (reply.status, reply.request_id) == (Status.BAD_REQUEST, query.request_id), what
            assert reply.status_text and not reply.entries and reply.next_cursor is None, what
        # Bytes that are no query at all get a BAD_REQUEST, and the stream still answers.
        await stream.write(encode_uvarint(3) + b"\xff\xff\xff")
        assert decode_reply(await read_frame(stream, decoder)).status is Status.BAD_REQUEST
        reply = await ask(stream, decoder, Query(71, ROOM, limit=1))
        assert (reply.status, reply.request_id, ids(reply)) == (Status.OK, 71, [1])

        # Queries sent before the previous answer was read (pipelined, here in one write) are
        # each answered, in order.
        await stream.write(encode_query(Query(72, ROOM, limit=1)) + encode_query(Query(73, ROOM)))
        first = decode_reply(await read_frame(stream, decoder))
        second = decode_reply(await read_frame(stream, decoder))
        assert (first.request_id, ids(first)) == (72, [1])
        assert (second.request_id, len(second.entries)) == (73, COUNT)

        # A length bomb: refused without reading it, and the stream is closed.
        bomb = await host.new_stream(node.peer_id, [PROTOCOL_ID])
        await bomb.write(encode_uvarint(1 << 32))
        reply = await ask_after_write(bomb)
        assert reply.status is Status.BAD_REQUEST and "limit" in reply.status_text
        with trio.fail_after(10):
            assert await ended(bomb)

    assert node.metric("p2pchat_store_queries_total", status="bad_request") == len(bad) + 2
    assert node.metric("p2pchat_stream_handler_failures_total") == 0
    assert node.proc.poll() is None


async def ended(stream: Stream) -> bool:
    """Whether the other end has closed ``stream`` (a read raises StreamEnded)."""
    try:
        await stream.read(1)
    except StreamEnded:  # closed, or reset (a StreamEnded too)
        return True
    return False


async def ask_after_write(stream: Stream) -> Reply:
    return decode_reply(await read_frame(stream, reply_decoder()))


async def test_a_query_flood_is_rate_limited_per_peer(tmp_path: Path) -> None:
    key = signer(tmp_path / "signer")
    fill_store(tmp_path / "archiver", make_messages(key, ROOM, 10))
    node = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        env=node_env(P2PCHAT_HISTORY__RATE="2", P2PCHAT_HISTORY__BURST="10"),
    )
    try:
        async with running_host(tmp_path / "client") as (host, _):
            stream = await connected_stream(host, node)
            decoder = reply_decoder()
            replies = [await ask(stream, decoder, Query(n, ROOM, limit=500)) for n in range(1, 201)]
            statuses = [reply.status for reply in replies]
            # Every answer, a refusal too, names the request it answers.
            assert [reply.request_id for reply in replies] == list(range(1, 201))
            assert statuses[:10] == [Status.OK] * 10  # the burst
            assert statuses.count(Status.TOO_MANY_REQUESTS) >= 150
            # Another peer is not held back by the first one's flood.
            async with running_host(tmp_path / "other") as (other, _):
                fresh = await connected_stream(other, node)
                reply = await ask(fresh, reply_decoder(), Query(1, ROOM, limit=500))
                assert reply.status is Status.OK and len(reply.entries) == 10
        assert node.metric("p2pchat_store_queries_total", status="too_many_requests") >= 150
    finally:
        node.stop()


def test_a_page_holds_at_most_the_bytes_asked_for_and_at_least_one_message(
    tmp_path: Path,
) -> None:
    # A client on a relayed connection asks for 16 KiB pages (a circuit's data limit is small).
    key = signer(tmp_path / "signer")
    messages = [signed_message(key, ROOM, n, 1_000 + n, text="x" * 3000) for n in range(1, 21)]
    store = Store.open(tmp_path / "store")
    try:
        history = History(store)
        history.add_many(messages)
        got: list[bytes] = []
        cursor = None
        for request_id in range(1, 30):
            query = Query(request_id, ROOM, start_ms=0, cursor=cursor, limit=500, max_bytes=16_384)
            reply = answer(history, query)
            assert reply.status is Status.OK
            assert sum(entry_wire_bytes(e) for e in reply.entries) <= 16_384
            got += [e.message_id for e in reply.entries]
            if (cursor := reply.next_cursor) is None:
                break
        assert got == [m.message_id for m in messages]
        assert request_id > 3  # 20 messages of ~3.3 KB: four in a page
        tiny = answer(history, Query(99, ROOM, start_ms=0, max_bytes=10))
        assert len(tiny.entries) == 1 and tiny.next_cursor == tiny.entries[0].message_id
    finally:
        store.close()


def test_a_lookup_over_the_reply_budget_is_cut_and_continues_after_its_cursor(
    tmp_path: Path,
) -> None:
    # 300 messages of ~8 KiB: a 300-id lookup is ~2.4 MiB, over the 2 MiB a reply may carry.
    key = signer(tmp_path / "signer")
    messages = [signed_message(key, ROOM, n, 1_000 + n, text="x" * 8000) for n in range(1, 301)]
    store = Store.open(tmp_path / "store")
    try:
        history = History(store)
        history.add_many(messages)
        wanted = (*(m.message_id for m in reversed(messages)), (999).to_bytes(16, "big"))
        got: list[bytes] = []
        cursor = None
        for request_id in range(1, 4):
            reply = answer(history, Query(request_id, ROOM, message_ids=wanted, cursor=cursor))
            assert reply.status is Status.OK
            assert len(encode_reply(reply)) <= MAX_REPLY_BYTES
            got += [e.message_id for e in reply.entries]
            if (cursor := reply.next_cursor) is None:
                break
            assert cursor == reply.entries[-1].message_id
        # Cut once, then complete: every known id exactly once, in history order.
        assert request_id == 2
        assert got == [m.message_id for m in messages]
        unknown = answer(
            history, Query(9, ROOM, message_ids=wanted, cursor=(999).to_bytes(16, "big"))
        )
        assert unknown.status is Status.BAD_REQUEST and "cursor" in unknown.status_text
    finally:
        store.close()


async def test_a_client_over_a_byte_budget_waits_as_told_and_gets_everything(
    tmp_path: Path,
) -> None:
    # 1500 messages of ~4 KiB (~6 MiB) from a server that gives a peer 2 MiB at once and
    # 1 MiB/s: the walk is refused TOO_MANY_REQUESTS with retry_after_ms midway, waits, and
    # completes (without the wait, the source failed with "refused: TOO_MANY_REQUESTS").
    key = signer(tmp_path / "signer")
    start = int(time.time() * 1000) - 3_600_000
    messages = [signed_message(key, ROOM, n, start + n, text="x" * 4000) for n in range(1, 1501)]
    fill_store(tmp_path / "archiver", messages)
    node = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        env=node_env(
            P2PCHAT_HISTORY__BYTES_RATE=str(1024**2),
            P2PCHAT_HISTORY__BYTES_BURST=str(2 * 1024**2),
        ),
    )
    try:
        async with running_host(tmp_path / "client") as (host, _):
            await host.connect(node.addr())
            client = StoreClient(host, QuietStoreClientObserver(), max_text_bytes=8192)
            with trio.fail_after(60):
                fetched = await client.fetch_range(node.peer_id, ROOM, None, 10_000)
        assert len(fetched.messages) == 1500 and fetched.complete
        assert node.metric("p2pchat_store_refusals_total", reason="peer_bytes") >= 1
    finally:
        node.stop()
