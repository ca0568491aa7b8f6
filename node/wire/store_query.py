"""The history protocol's codec (schema: ``store_query.proto`` beside this file), sans-IO.

A client sends :class:`Query` records and receives :class:`Reply` records, each framed with an
unsigned-varint length. :func:`decode_query` checks everything a server must not trust (sizes,
room name, ids, bounds, limit) and raises :class:`BadQuery` carrying the request id, so the
server can answer BAD_REQUEST to the right request. :func:`decode_reply` checks what a client
must not trust about a reply's shape; the envelopes inside are verified elsewhere
(:mod:`p2pchat.node.verify`), since that needs the pubsub signature rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from p2pchat.node.wire import store_query_pb2 as pb
from p2pchat.node.wire.chat import MESSAGE_ID_BYTES, validate_room
from p2pchat.node.wire.framing import frame, parse_message

# 2.0.0 (2026-12-02): ids are history ids (see StoreEntry.id). A 1.0.0 server listed the ids
# senders chose, which clients of 2.0.0 would refuse as not the signed ones; the protocols
# do not meet instead.
PROTOCOL_ID = "/p2pchat/store-query/2.0.0"
MAX_QUERY_BYTES = 16 * 1024
MAX_REPLY_BYTES = 4 * 1024 * 1024
REPLY_BUDGET_BYTES = 2 * 1024 * 1024  # messages per reply, so one reply always fits its frame
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


class Status(IntEnum):
    """A reply's status; the values are HTTP's, as in Waku Store."""

    OK = 200
    BAD_REQUEST = 400
    TOO_MANY_REQUESTS = 429
    UNAVAILABLE = 503


class StoreWireError(ValueError):
    """Bytes that are not an acceptable history protocol message."""


class BadQuery(StoreWireError):
    """A query the server must refuse; ``request_id`` is 0 when even that could not be read."""

    def __init__(self, request_id: int, reason: str) -> None:
        super().__init__(reason)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class Query:
    """One query: a time range of a room (paged by ``cursor``), or a lookup of ids.

    ``limit`` is 1..:data:`MAX_LIMIT`; ``cursor`` and every id are 16 bytes; a lookup has no
    range (its ``cursor``, from a lookup reply cut by the size budget, continues after that
    message in history order). :func:`decode_query` only ever returns queries that hold to this.
    """

    request_id: int
    room: str
    start_ms: int | None = None
    end_ms: int | None = None
    cursor: bytes | None = None
    limit: int = DEFAULT_LIMIT
    forward: bool = True
    message_ids: tuple[bytes, ...] = ()
    ids_only: bool = False
    max_bytes: int = 0  # of messages in the reply; 0: the server's REPLY_BUDGET_BYTES


@dataclass(frozen=True, slots=True)
class Entry:
    """One message of a reply; ``envelope`` is empty in a presence (ids only) reply."""

    message_id: bytes
    sent_at_ms: int
    envelope: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to one query; ``next_cursor`` only when more messages lie beyond."""

    request_id: int
    status: Status
    status_text: str = ""
    entries: tuple[Entry, ...] = field(default_factory=tuple)
    next_cursor: bytes | None = None
    retry_after_ms: int = 0  # with a refusal: wait this long before asking again (0: no hint)


def encode_query(query: Query) -> bytes:
    """The framed wire form of ``query`` (not validated: tests send bad ones on purpose)."""
    wire = pb.StoreQuery(
        request_id=query.request_id,
        room=query.room,
        cursor=query.cursor or b"",
        limit=query.limit,
        direction=pb.FORWARD if query.forward else pb.BACKWARD,
        message_ids=list(query.message_ids),
        ids_only=query.ids_only,
        max_bytes=query.max_bytes,
    )
    if query.start_ms is not None:
        wire.time_start_ms = query.start_ms
    if query.end_ms is not None:
        wire.time_end_ms = query.end_ms
    return frame(wire.SerializeToString())


def decode_query(payload: bytes) -> Query:
    """The query in one frame's ``payload``.

    Raises:
        BadQuery: too large, not a StoreQuery, or asking for something invalid; the message
            says what, in one line, for the reply's status text.
    """
    wire = pb.StoreQuery()
    problem = parse_message(wire, payload, MAX_QUERY_BYTES, "a StoreQuery")
    if problem is not None:
        raise BadQuery(0, problem)
    request_id = wire.request_id

    def bad(reason: str) -> BadQuery:
        return BadQuery(request_id, reason)

    try:
        room = validate_room(wire.room)
    except ValueError as error:
        raise bad(str(error)) from None
    limit = wire.limit or DEFAULT_LIMIT
    if limit > MAX_LIMIT:
        raise bad(f"limit {limit} is over the maximum of {MAX_LIMIT}")
    if wire.direction not in (pb.FORWARD, pb.BACKWARD):
        raise bad(f"unknown direction {wire.direction}")
    start = wire.time_start_ms if wire.HasField("time_start_ms") else None
    end = wire.time_end_ms if wire.HasField("time_end_ms") else None
    if start is not None and end is not None and start > end:
        raise bad(f"time_start_ms {start} is after time_end_ms {end}")
    cursor = bytes(wire.cursor) or None
    if cursor is not None and len(cursor) != MESSAGE_ID_BYTES:
        raise bad(f"malformed cursor: {len(cursor)} bytes, not {MESSAGE_ID_BYTES}")
    ids = tuple(bytes(message_id) for message_id in wire.message_ids)
    if ids:
        if len(ids) > MAX_LIMIT:
            raise bad(f"{len(ids)} message ids; at most {MAX_LIMIT} per lookup")
        if any(len(message_id) != MESSAGE_ID_BYTES for message_id in ids):
            raise bad(f"a message id is not {MESSAGE_ID_BYTES} bytes")
        if start is not None or end is not None:
            raise bad("a lookup by message ids takes no time range")
    return Query(
        request_id=request_id,
        room=room,
        start_ms=start,
        end_ms=end,
        cursor=cursor,
        limit=limit,
        forward=wire.direction == pb.FORWARD,
        message_ids=ids,
        ids_only=wire.ids_only,
        max_bytes=wire.max_bytes,
    )


def encode_reply(reply: Reply) -> bytes:
    """The framed wire form of ``reply``."""
    wire = pb.StoreReply(
        request_id=reply.request_id,
        status=int(reply.status),  # type: ignore[arg-type]
        status_text=reply.status_text,
        messages=[
            pb.StoreEntry(id=e.message_id, sent_at_ms=e.sent_at_ms, envelope=e.envelope)
            for e in reply.entries
        ],
        next_cursor=reply.next_cursor or b"",
        retry_after_ms=reply.retry_after_ms,
    )
    return frame(wire.SerializeToString())


def entry_wire_bytes(entry: Entry) -> int:
    """About what ``entry`` adds to a reply on the wire (for the reply budget)."""
    return len(entry.envelope) + len(entry.message_id) + 24


def decode_reply(payload: bytes) -> Reply:
    """The reply in one frame's ``payload``.

    Raises:
        StoreWireError: too large, not a StoreReply, an unknown status, over
            :data:`MAX_LIMIT` entries, or an id or cursor that is not 16 bytes.
    """
    wire = pb.StoreReply()
    problem = parse_message(wire, payload, MAX_REPLY_BYTES, "a StoreReply")
    if problem is not None:
        raise StoreWireError(problem)
    try:
        status = Status(wire.status)
    except ValueError:
        raise StoreWireError(f"unknown status {wire.status}") from None
    if len(wire.messages) > MAX_LIMIT:
        raise StoreWireError(f"{len(wire.messages)} messages in one reply; at most {MAX_LIMIT}")
    entries = tuple(Entry(bytes(m.id), m.sent_at_ms, bytes(m.envelope)) for m in wire.messages)
    if any(len(e.message_id) != MESSAGE_ID_BYTES for e in entries):
        raise StoreWireError(f"a message id is not {MESSAGE_ID_BYTES} bytes")
    cursor = bytes(wire.next_cursor) or None
    if cursor is not None and len(cursor) != MESSAGE_ID_BYTES:
        raise StoreWireError(f"malformed next_cursor: {len(cursor)} bytes")
    return Reply(
        wire.request_id, status, wire.status_text[:500], entries, cursor, wire.retry_after_ms
    )
