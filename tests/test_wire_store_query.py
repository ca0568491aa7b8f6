"""The history protocol's codec and the per-peer rate limit, without a network."""

from __future__ import annotations

import pytest
from p2pchat.node.ratelimit import PeerRateLimit
from p2pchat.node.wire import store_query_pb2 as pb
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.node.wire.store_query import (
    MAX_QUERY_BYTES,
    MAX_REPLY_BYTES,
    BadQuery,
    Entry,
    Query,
    Reply,
    Status,
    StoreWireError,
    decode_query,
    decode_reply,
    encode_query,
    encode_reply,
)

ID = bytes(range(16))


def payload(framed: bytes, limit: int = MAX_REPLY_BYTES) -> bytes:
    (frame,) = FrameDecoder(limit).feed(framed)
    return frame


def test_queries_round_trip() -> None:
    for query in (
        Query(7, "lobby"),
        Query(8, "lobby", start_ms=0, end_ms=2**64 - 1, cursor=ID, limit=500, forward=False),
        Query(9, "lobby", message_ids=(ID, ID[::-1]), ids_only=True),
        Query(10, "lobby", message_ids=(ID,), cursor=ID[::-1]),  # a lookup's next page
        Query(11, "lobby", max_bytes=16_384),  # small pages, for a relayed connection
    ):
        assert decode_query(payload(encode_query(query), MAX_QUERY_BYTES)) == query


def test_limit_zero_means_the_default() -> None:
    assert decode_query(payload(encode_query(Query(1, "lobby", limit=0)))).limit == 50


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        (Query(3, "lobby", limit=501), "limit 501"),
        (Query(3, "no/slash"), "room"),
        (Query(3, ""), "room"),
        (Query(3, "lobby", start_ms=5, end_ms=4), "after"),
        (Query(3, "lobby", cursor=b"short"), "cursor"),
        (Query(3, "lobby", message_ids=(b"x",)), "16 bytes"),
        (Query(3, "lobby", message_ids=(ID,) * 501), "at most 500"),
        (Query(3, "lobby", message_ids=(ID,), end_ms=9), "no time range"),
    ],
)
def test_bad_queries_name_the_problem_and_keep_the_request_id(query: Query, problem: str) -> None:
    with pytest.raises(BadQuery, match=problem) as raised:
        decode_query(payload(encode_query(query), 1 << 20))
    assert raised.value.request_id == 3


def test_garbage_and_oversized_queries_are_refused() -> None:
    with pytest.raises(BadQuery):
        decode_query(b"\xff\xff\xff")
    with pytest.raises(BadQuery, match="limit"):
        decode_query(b"\x00" * (MAX_QUERY_BYTES + 1))
    unknown_direction = pb.StoreQuery(request_id=4, room="lobby", direction=7).SerializeToString()
    with pytest.raises(BadQuery, match="direction"):
        decode_query(unknown_direction)


def test_replies_round_trip_and_are_checked() -> None:
    reply = Reply(5, Status.OK, entries=(Entry(ID, 12, b"env"), Entry(ID, 13)), next_cursor=ID)
    assert decode_reply(payload(encode_reply(reply))) == reply
    refused = Reply(6, Status.TOO_MANY_REQUESTS, "slow down")
    assert decode_reply(payload(encode_reply(refused))) == refused
    with pytest.raises(StoreWireError, match="status"):
        decode_reply(pb.StoreReply(status=302).SerializeToString())  # type: ignore[arg-type]
    with pytest.raises(StoreWireError, match="next_cursor"):
        decode_reply(pb.StoreReply(status=200, next_cursor=b"x").SerializeToString())
    too_many = pb.StoreReply(status=200, messages=[pb.StoreEntry(id=ID)] * 501)
    with pytest.raises(StoreWireError, match="at most 500"):
        decode_reply(too_many.SerializeToString())


def test_rate_limit_allows_the_burst_then_the_rate_per_peer() -> None:
    limit = PeerRateLimit(rate=2, burst=3)
    assert [limit.allow("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("b", 0.0)  # another peer has its own bucket
    assert not limit.allow("a", 0.4) and limit.allow("a", 0.5)  # 2 per second
    assert [limit.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]  # capped


def test_rate_limit_memory_is_bounded() -> None:
    limit = PeerRateLimit(rate=1, burst=1, max_peers=100)
    for n in range(10_000):
        limit.allow(f"peer-{n}", 0.0)
    assert len(limit) == 100
