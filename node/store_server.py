"""Serving the history protocol (``/p2pchat/store-query/2.0.0``) from the local history.

Archivers serve it, and so does every chat peer unless ``history.serve`` is off. A stream
carries queries one at a time, each answered by one reply. What a client can make a server
spend is bounded (the numbers are the ``history`` config section's defaults):

- a query frame is at most 16 KiB, a page or a lookup at most 500 messages and 2 MiB (the
  rest is behind ``next_cursor``); a malformed or invalid query gets BAD_REQUEST, and a frame
  that cannot even be read ends the stream after that answer;
- queries: a token bucket per peer (``rate`` 20/s, ``burst`` 40);
- bytes: a budget per peer (``bytes_rate`` 1 MiB/s, ``bytes_burst`` 4 MiB) and per address
  group (``group_bytes_rate`` 2 MiB/s, ``group_bytes_burst`` 8 MiB; IPv4 address, IPv6 /64). A
  query is answered while both balances are positive and the reply's size is charged to both
  afterwards (:class:`~p2pchat.node.ratelimit.DebtBudget`), so many PeerIds from one host
  cannot pull more than the group's share: the audit's 20 PeerIds asking for 500-message pages
  pulled 2 GB for 33 KB of queries;
- streams: ``max_streams_per_peer`` (4) per peer, ``max_streams_per_group`` (32) per address
  group and ``max_streams`` (256) in all are served at a time (:class:`StreamSlots`). When all
  are taken, a newcomer from a group that holds fewer takes the slot of the longest-idle stream
  of the group holding the most, so streams held open by one host cannot lock others out
  (the audit's 256 held streams did); otherwise it is answered UNAVAILABLE and closed;
- a stream gets ``read_timeout`` (10 s) to deliver each whole query, from its opening or its
  previous answer: a held stream or a query trickled byte by byte is closed.

**Backing off** (what a client does with a refusal): TOO_MANY_REQUESTS and UNAVAILABLE carry
``retry_after_ms``, the time after which the same query would be served; a client waits that
long (the query may be re-sent as it was, on the same stream while it is open), and gives up
on this server if it is told to wait more than it can afford
(:mod:`p2pchat.node.store_client` waits up to :data:`~p2pchat.node.store_client.MAX_RETRY_WAIT`
at a time, then asks another source).

Every refusal is counted by reason in ``p2pchat_store_refusals_total`` (reasons:
:data:`REFUSAL_REASONS`) and logged at most once a minute per reason
(:class:`~p2pchat.node.refusals.RefusalLog`). Queries run on the node's trio thread: a page is
one RocksDB iterator walk of at most 501 entries, well under a millisecond for 50 messages (see
the README's benchmark).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio
from p2pchat.node.config import HistorySection
from p2pchat.node.history import History, StoredMessage, UnknownCursor
from p2pchat.node.netprefix import address_group
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import (
    Stream,
    StreamEnded,
    close_quietly,
    read_frame,
    stream_origin,
    write_quietly,
)
from p2pchat.node.ratelimit import DebtBudget, PeerRateLimit
from p2pchat.node.refusals import RefusalLog
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

# Why a query or a stream was refused: the label values of p2pchat_store_refusals_total.
REFUSAL_REASONS = (
    "query_rate",  # the peer's query bucket is empty
    "peer_bytes",  # the peer's byte budget is spent
    "group_bytes",  # the address group's byte budget is spent
    "peer_streams",  # the peer holds max_streams_per_peer streams
    "group_streams",  # the group holds max_streams_per_group streams
    "total_streams",  # max_streams are held and none could be taken back
    "evicted",  # an idle stream closed to make room for another group's
    "read_timeout",  # no whole query within read_timeout
)
STREAM_RETRY_MS = 1000  # the hint given with a stream refused for the stream limits


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

    def refused(self, reason: str) -> None:
        """A query or a stream was refused, or a stream closed, for ``reason`` (one of
        :data:`REFUSAL_REASONS`)."""

    def bytes_served(self, count: int) -> None:
        """A reply of ``count`` bytes (its frame) was answered to an admitted query."""


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

    def refused(self, reason: str) -> None:
        return None

    def bytes_served(self, count: int) -> None:
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
    """The leading messages that fit :data:`REPLY_BUDGET_BYTES`, or the query's smaller
    ``max_bytes`` (at least one message); whether any were cut."""
    budget = min(query.max_bytes, REPLY_BUDGET_BYTES) if query.max_bytes else REPLY_BUDGET_BYTES
    entries: list[Entry] = []
    used = 0
    for message in messages:
        entry = _entry(message, query.ids_only)
        used += entry_wire_bytes(entry)
        if entries and used > budget:
            return tuple(entries), True
        entries.append(entry)
    return tuple(entries), False


@dataclass(eq=False)
class StreamSlot:
    """One stream being served: whose, from which group, and since when it waits for a query
    (None while a query is being answered)."""

    peer: str
    group: str
    idle_since: float | None
    scope: trio.CancelScope | None = None
    evicted: bool = False


class StreamSlots:
    """Which history streams may be served (sans-IO; see the module's note).

    :meth:`admit` returns the new slot, or the refusal's reason; when it took the slot of an
    idle stream of the biggest group, that stream is marked ``evicted`` and its ``scope``
    cancelled, so its server closes it.
    """

    def __init__(self, total: int, per_peer: int, per_group: int) -> None:
        self._total = total
        self._per_peer = per_peer
        self._per_group = per_group
        self._slots: list[StreamSlot] = []
        self._peers: Counter[str] = Counter()
        self._groups: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._slots)

    def admit(self, peer: str, group: str, now: float) -> StreamSlot | str:
        """A slot for a new stream of ``peer`` from ``group``, or why not (a reason of
        :data:`REFUSAL_REASONS`)."""
        if self._peers[peer] >= self._per_peer:
            return "peer_streams"
        if self._groups[group] >= self._per_group:
            return "group_streams"
        if len(self._slots) >= self._total:
            victim = self._evictable(group)
            if victim is None:
                return "total_streams"
            victim.evicted = True
            if victim.scope is not None:
                victim.scope.cancel()
            self.release(victim)
        slot = StreamSlot(peer, group, now)
        self._slots.append(slot)
        self._peers[peer] += 1
        self._groups[group] += 1
        return slot

    def _evictable(self, newcomer: str) -> StreamSlot | None:
        """The longest-idle stream of the group holding the most, if that group would still
        hold more than the newcomer's after the exchange."""
        biggest, held = self._groups.most_common(1)[0]
        if held <= self._groups[newcomer] + 1:
            return None
        idle = [s for s in self._slots if s.group == biggest and s.idle_since is not None]
        return min(idle, key=lambda s: s.idle_since or 0.0, default=None)

    def release(self, slot: StreamSlot) -> None:
        """``slot``'s stream is over (idempotent)."""
        if slot not in self._slots:
            return
        self._slots.remove(slot)
        for counts, key in ((self._peers, slot.peer), (self._groups, slot.group)):
            counts[key] -= 1
            if not counts[key]:
                del counts[key]


class StoreServer:
    """Answers history queries from ``history`` (see the module's note for the limits)."""

    def __init__(
        self,
        host: P2PHost,
        history: History,
        observer: StoreServerObserver,
        log: structlog.stdlib.BoundLogger,
        settings: HistorySection,
    ) -> None:
        self._host = host
        self._history = history
        self._observer = observer
        self._refusals = RefusalLog(log, "history query refused")
        self._settings = settings
        self._queries = PeerRateLimit(settings.rate, settings.burst)
        self._peer_bytes = DebtBudget(settings.bytes_rate, settings.bytes_burst)
        self._group_bytes = DebtBudget(settings.group_bytes_rate, settings.group_bytes_burst)
        self._slots = StreamSlots(
            settings.max_streams, settings.max_streams_per_peer, settings.max_streams_per_group
        )

    def install(self) -> None:
        """Start answering queries."""
        self._host.set_stream_handler(PROTOCOL_ID, self._serve)

    def _group(self, peer: str, ip: str | None) -> str:
        if ip is None:  # relayed: the relay's own limits bound it; counted on its own
            return f"peer:{peer}"
        try:
            return address_group(ip, self._settings.ipv4_prefix, self._settings.ipv6_prefix)
        except ValueError:
            return f"peer:{peer}"

    async def _serve(self, stream: Stream) -> None:
        origin = stream_origin(stream)
        peer = origin.peer_id
        slot = self._slots.admit(peer, self._group(peer, origin.remote_ip), time.monotonic())
        if isinstance(slot, str):
            self._count(Status.UNAVAILABLE)
            self._refuse(slot, peer)
            reply = Reply(
                0,
                Status.UNAVAILABLE,
                "too many history streams; retry later",
                (),
                None,
                STREAM_RETRY_MS,
            )
            await write_quietly(stream, encode_reply(reply))
            await close_quietly(stream)
            return
        self._observer.stream_opened()
        try:
            with trio.CancelScope() as slot.scope:
                await self._serve_queries(stream, slot)
            if slot.evicted:
                self._refuse("evicted", peer)
        finally:
            self._slots.release(slot)
            self._observer.stream_closed()
            with trio.CancelScope(shield=True):
                await close_quietly(stream)

    async def _serve_queries(self, stream: Stream, slot: StreamSlot) -> None:
        decoder = FrameDecoder(MAX_QUERY_BYTES)
        while True:
            slot.idle_since = time.monotonic()
            with trio.move_on_after(self._settings.read_timeout):
                try:
                    payload = await read_frame(stream, decoder)
                except StreamEnded:
                    return
                except FrameError as error:  # cannot find the next frame: answer, then end
                    self._count(Status.BAD_REQUEST)
                    reply = Reply(0, Status.BAD_REQUEST, str(error))
                    await write_quietly(stream, encode_reply(reply))
                    return
                slot.idle_since = None
                await write_quietly(stream, self._reply(slot, payload))
                continue
            self._refuse("read_timeout", slot.peer)
            return

    def _reply(self, slot: StreamSlot, payload: bytes) -> bytes:
        """The framed reply to ``payload`` from ``slot``'s peer, charged to its budgets."""
        started = time.perf_counter()
        now = time.monotonic()
        peer = slot.peer
        # Decoded before the limits (a frame is at most 16 KiB: cheap) so that even a
        # refusal names its request; bad queries count against the query limit too.
        try:
            query: Query | BadQuery = decode_query(payload)
        except BadQuery as error:
            query = error
        refusal = self._over_budget(slot, now)
        if refusal is not None:
            reason, wait = refusal
            self._refuse(reason, peer)
            reply = Reply(
                query.request_id,
                Status.TOO_MANY_REQUESTS,
                f"{reason.replace('_', ' ')} limit; retry after {wait} ms",
                retry_after_ms=wait,
            )
        elif isinstance(query, BadQuery):
            reply = Reply(query.request_id, Status.BAD_REQUEST, str(query))
        else:
            reply = answer(self._history, query)
        encoded = encode_reply(reply)
        self._count(reply.status)
        if reply.status is Status.OK:
            self._peer_bytes.charge(peer, len(encoded), now)
            self._group_bytes.charge(slot.group, len(encoded), now)
            self._observer.bytes_served(len(encoded))
            self._observer.query_read(time.perf_counter() - started)
        return encoded

    def _over_budget(self, slot: StreamSlot, now: float) -> tuple[str, int] | None:
        """Which budget refuses a query of ``slot``'s peer now, and the wait in ms; or None."""
        if not self._queries.allow(slot.peer, now):
            return "query_rate", math.ceil(1000 / self._settings.rate)
        for reason, budget, key in (
            ("peer_bytes", self._peer_bytes, slot.peer),
            ("group_bytes", self._group_bytes, slot.group),
        ):
            wait = budget.wait(key, now)
            if wait > 0:
                return reason, math.ceil(wait * 1000)
        return None

    def _refuse(self, reason: str, peer: str) -> None:
        self._observer.refused(reason)
        self._refusals.refused(reason, peer=peer)

    def _count(self, status: Status) -> None:
        self._observer.query_answered(status.name.lower())
