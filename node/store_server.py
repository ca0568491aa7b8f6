"""Serving the history protocol (``/p2pchat/store-query/2.0.0``) from the local history.

Archivers serve it, and so does every chat peer unless ``history.serve`` is off. A stream
carries queries one at a time, each answered by one reply. What a client can make a server
spend is bounded:

- a query frame is at most 16 KiB, a page or a lookup at most 500 messages and 2 MiB (the
  rest is behind ``next_cursor``); a malformed or invalid query gets BAD_REQUEST, and a frame
  that cannot even be read ends the stream after that answer;
- each peer has a token bucket (``history.rate`` per second, ``history.burst`` at once): past
  it, TOO_MANY_REQUESTS (with the query's request id), costing one read and decode of the
  frame and nothing else;
- :data:`MAX_STREAMS_PER_PEER` streams per peer and :data:`MAX_STREAMS` in all are served at
  a time; any more are answered UNAVAILABLE and closed;
- a stream idle for :data:`IDLE_TIMEOUT` seconds is closed.

Queries run on the node's trio thread: a page is one RocksDB iterator walk of at most 501
entries, well under a millisecond for 50 messages (see the README's benchmark).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Protocol

import structlog
import trio
from p2pchat.node.history import History, StoredMessage, UnknownCursor
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import (
    Stream,
    StreamEnded,
    close_quietly,
    read_frame,
    stream_origin,
    write_quietly,
)
from p2pchat.node.ratelimit import PeerRateLimit
from p2pchat.node.wire.framing import FrameDecoder, FrameError
from p2pchat.node.wire.store_query import (
    MAX_QUERY_BYTES,
    PROTOCOL_ID,
    REPLY_BUDGET_BYTES,
    BadQuery,
    Entry,
    Query,
    Reply,
    Status,
    decode_query,
    encode_reply,
    entry_wire_bytes,
)

IDLE_TIMEOUT = 30.0
MAX_STREAMS = 256
MAX_STREAMS_PER_PEER = 4


class StoreServerObserver(Protocol):
    """What the history server reports (the metrics implement it). Called inline."""

    def stream_opened(self) -> None:
        """A history stream is served from now (not one refused for the stream limits)."""

    def stream_closed(self) -> None:
        """A stream told to :meth:`stream_opened` is over."""

    def query_answered(self, status: str) -> None:
        """A query was answered with ``status`` in lower case (``ok``, ``bad_request``,
        ``too_many_requests``, ``unavailable``), refusals of whole streams included."""

    def query_read(self, seconds: float) -> None:
        """A valid query within the rate limit took ``seconds`` to answer from the store."""


class QuietStoreServerObserver:
    """A history server observer that records nothing, for tests."""

    def stream_opened(self) -> None:
        return None

    def stream_closed(self) -> None:
        return None

    def query_answered(self, status: str) -> None:
        return None

    def query_read(self, seconds: float) -> None:
        return None


def _entry(message: StoredMessage, ids_only: bool) -> Entry:
    return Entry(message.message_id, message.sent_at_ms, b"" if ids_only else message.envelope)


def answer(history: History, query: Query) -> Reply:
    """The reply to a valid ``query`` from ``history`` (sans-IO: no stream, no clock)."""
    if query.message_ids:
        return _lookup(history, query)
    try:
        page = history.page(
            query.room,
            start_ms=query.start_ms,
            end_ms=query.end_ms,
            after=query.cursor,
            limit=query.limit,
            forward=query.forward,
        )
    except UnknownCursor as error:
        return Reply(query.request_id, Status.BAD_REQUEST, str(error))
    messages = page.messages if query.forward else page.messages[::-1]  # in travel order
    entries, cut = _within_budget(messages, query)
    more = page.more or cut
    cursor = entries[-1].message_id if more and entries else None
    ordered = entries if query.forward else entries[::-1]
    return Reply(query.request_id, Status.OK, entries=ordered, next_cursor=cursor)


def _lookup(history: History, query: Query) -> Reply:
    """A lookup by ids: the found messages in history order, after ``query.cursor`` if given;
    cut by the size budget with ``next_cursor`` at the last one sent."""
    found = history.lookup(query.room, query.message_ids)
    if query.cursor is not None:
        at = history.lookup(query.room, [query.cursor])
        if not at:
            return Reply(query.request_id, Status.BAD_REQUEST, "unknown cursor for this room")
        mark = (at[0].sent_at_ms, at[0].message_id)
        found = [m for m in found if (m.sent_at_ms, m.message_id) > mark]
    entries, cut = _within_budget(found, query)
    cursor = entries[-1].message_id if cut else None
    return Reply(query.request_id, Status.OK, entries=entries, next_cursor=cursor)


def _within_budget(messages: list[StoredMessage], query: Query) -> tuple[tuple[Entry, ...], bool]:
    """The leading messages that fit :data:`REPLY_BUDGET_BYTES` (at least one); whether any
    were cut."""
    entries: list[Entry] = []
    used = 0
    for message in messages:
        entry = _entry(message, query.ids_only)
        used += entry_wire_bytes(entry)
        if entries and used > REPLY_BUDGET_BYTES:
            return tuple(entries), True
        entries.append(entry)
    return tuple(entries), False


class StoreServer:
    """Answers history queries from ``history`` (see the module's note for the limits)."""

    def __init__(
        self,
        host: P2PHost,
        history: History,
        observer: StoreServerObserver,
        log: structlog.stdlib.BoundLogger,
        *,
        rate: float,
        burst: int,
    ) -> None:
        self._host = host
        self._history = history
        self._observer = observer
        self._log = log
        self._limit = PeerRateLimit(rate, burst)
        self._streams: Counter[str] = Counter()

    def install(self) -> None:
        """Start answering queries."""
        self._host.set_stream_handler(PROTOCOL_ID, self._serve)

    async def _serve(self, stream: Stream) -> None:
        peer = stream_origin(stream).peer_id
        if sum(self._streams.values()) >= MAX_STREAMS or self._streams[peer] >= (
            MAX_STREAMS_PER_PEER
        ):
            self._count(Status.UNAVAILABLE)
            reply = Reply(0, Status.UNAVAILABLE, "too many history streams; retry later")
            await write_quietly(stream, encode_reply(reply))
            await close_quietly(stream)
            return
        self._streams[peer] += 1
        self._observer.stream_opened()
        try:
            await self._serve_queries(stream, peer)
        finally:
            self._streams[peer] -= 1
            if not self._streams[peer]:
                del self._streams[peer]
            self._observer.stream_closed()
            await close_quietly(stream)

    async def _serve_queries(self, stream: Stream, peer: str) -> None:
        decoder = FrameDecoder(MAX_QUERY_BYTES)
        while True:
            with trio.move_on_after(IDLE_TIMEOUT):
                try:
                    payload = await read_frame(stream, decoder)
                except StreamEnded:
                    return
                except FrameError as error:  # cannot find the next frame: answer, then end
                    self._count(Status.BAD_REQUEST)
                    reply = Reply(0, Status.BAD_REQUEST, str(error))
                    await write_quietly(stream, encode_reply(reply))
                    return
                await write_quietly(stream, encode_reply(self._reply(peer, payload)))
                continue
            return  # idle

    def _reply(self, peer: str, payload: bytes) -> Reply:
        started = time.perf_counter()
        # Decoded before the rate limit (a frame is at most 16 KiB: cheap) so that even a
        # refusal names its request; bad queries count against the limit too.
        try:
            query: Query | BadQuery = decode_query(payload)
        except BadQuery as error:
            query = error
        if not self._limit.allow(peer, time.monotonic()):
            reply = Reply(query.request_id, Status.TOO_MANY_REQUESTS, "rate limit; slow down")
        elif isinstance(query, BadQuery):
            reply = Reply(query.request_id, Status.BAD_REQUEST, str(query))
        else:
            reply = answer(self._history, query)
            self._observer.query_read(time.perf_counter() - started)
        self._count(reply.status)
        if reply.status is not Status.OK:
            self._log.debug("history query refused", peer=peer, status=reply.status.name)
        return reply

    def _count(self, status: Status) -> None:
        self._observer.query_answered(status.name.lower())
