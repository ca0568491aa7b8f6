"""Asking a peer or an archiver for history, and trusting none of what comes back.

:func:`verify_entry` checks one returned message as a live one is checked: the envelope's
StrictSign signature, its topic, the chat payload inside it (decodable, a text, of this room),
and that the id and time the server put beside it are the signed ones (the id: the history id
of the signed sender and payload id). Anything else is dropped
and counted by reason in ``p2pchat_history_rejected_total``: a lying server can withhold
messages (which asking several sources exposes, see :mod:`p2pchat.node.catchup`), but it cannot
inject, alter or move a message to another room.

:class:`StoreClient` walks a room's range page by page on one stream and refuses a server whose
cursor does not advance, or which sends more than asked for. A server out of budget for this
peer answers TOO_MANY_REQUESTS with ``retry_after_ms``: the client waits that long and asks
again (:data:`MAX_RETRIES`, :data:`MAX_RETRY_WAIT`), so a catch-up larger than a server's
byte budget is paced rather than failed.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Protocol

import trio
from p2pchat.node.history import StoredMessage, now_ms
from p2pchat.node.ids import short_id
from p2pchat.node.p2p.envelopes import EnvelopeError, verify_envelope
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    StreamRefused,
    close_quietly,
    read_frame,
)
from p2pchat.node.wire.chat import (
    HISTORY_PAYLOADS,
    WireError,
    decode_for_room,
    moderation_refused,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError
from p2pchat.node.wire.store_query import (
    MAX_LIMIT,
    MAX_REPLY_BYTES,
    PROTOCOL_ID,
    Entry,
    Query,
    Reply,
    Status,
    StoreWireError,
    decode_reply,
    encode_query,
)

REPLY_TIMEOUT = 15.0
# An ids-first walk lists at most this many ids per message it may fetch (a catch-up that
# overlaps a stored history skips what it holds; this bounds the walk of a huge range).
IDS_PER_FETCHED = 4
# Pages asked over a relayed connection: a relay's circuit is limited (go-libp2p's default:
# 128 KiB per direction), so a 2 MiB page would outrun what is left of it and be lost whole.
RELAYED_PAGE_BYTES = 16 * 1024
# A server's TOO_MANY_REQUESTS carries retry_after_ms (its byte or query budget refills by
# then): the same query is sent again after that wait, up to MAX_RETRIES times per query and
# only while the wait is at most MAX_RETRY_WAIT seconds; past either, the source has failed
# (catch-up merges the others).
MAX_RETRIES = 8
MAX_RETRY_WAIT = 10.0


class SourceError(Exception):
    """A history source that failed: unreachable, refused, broke the protocol or timed out."""


class SourceUnsupported(SourceError):
    """The peer does not serve history: it does not speak :data:`PROTOCOL_ID` (a bootstrap or
    relay node, or a chat peer with ``history.serve`` off)."""


class StoreClientObserver(Protocol):
    """What the history client reports (the metrics implement it). Called inline."""

    def entry_rejected(self, reason: str) -> None:
        """A returned message failed :func:`verify_entry`; ``reason`` is :attr:`Rejected.reason`."""

    def entries_fetched(self, count: int) -> None:
        """A walk of one source ended with ``count`` verified messages."""

    def query_finished(self, outcome: str) -> None:
        """A query ended: the reply's status in lower case (``ok``, ``bad_request``,
        ``too_many_requests``, ``unavailable``), or ``error`` (no stream, no or a bad reply)."""


class QuietStoreClientObserver:
    """A history client observer that records nothing (``p2pchat history``, tests)."""

    def entry_rejected(self, reason: str) -> None:
        return None

    def entries_fetched(self, count: int) -> None:
        return None

    def query_finished(self, outcome: str) -> None:
        return None


class Rejected(ValueError):
    """An entry that failed verification; ``reason`` labels the counter."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def verify_entry(entry: Entry, room: str, max_text_bytes: int, now_ms: int) -> StoredMessage:
    """The stored form of ``entry`` if it is a genuine chat text of ``room``, or a moderation
    decision of ``room`` signed by its owner.

    Raises:
        Rejected: see the module's note; ``reason`` says which check failed.
    """
    if not entry.envelope:
        raise Rejected("malformed", "no envelope")
    try:
        verified = verify_envelope(entry.envelope)
    except EnvelopeError as error:
        raise Rejected(error.reason, str(error)) from None
    if verified.topic != room:
        raise Rejected("wrong_room", f"envelope is for topic {verified.topic!r}")
    try:
        payload = decode_for_room(verified.data, room, max_text_bytes=max_text_bytes, now_ms=now_ms)
    except WireError as error:
        raise Rejected(error.reason, str(error)) from None
    if not isinstance(payload, HISTORY_PAYLOADS):
        raise Rejected("not_text", "not a chat text")
    refused = moderation_refused(payload, verified.sender)
    if refused is not None:
        raise Rejected(refused, "a moderation decision not signed by the room's owner")
    stored = StoredMessage.of_text(payload, verified.sender, entry.envelope, now_ms)
    if stored.message_id != entry.message_id or stored.sent_at_ms != entry.sent_at_ms:
        raise Rejected("mismatch", "id or time beside the envelope is not the signed one")
    return stored


@dataclass
class Fetched:
    """What one source returned for one walk: verified messages, and how many were rejected."""

    source: str
    messages: list[StoredMessage]
    rejected: int
    complete: bool  # the walk reached the end of the range (not cut by max_messages)
    remote_ip: str | None = None  # where the source's stream came from (None: relayed, unknown)
    # Why the walk stopped early after some pages (the stream ended, a refusal...): the pages
    # before are kept in ``messages``; ``cursor`` then continues the walk (see Resume).
    failed: str | None = None
    cursor: bytes | None = None
    # With an ids-first walk: the ids the source listed that this node held already (so not
    # fetched); with the verified messages, what the source is known to hold.
    skipped: set[bytes] = field(default_factory=set)


Known = Callable[[str, list[bytes]], Collection[bytes]]
"""Given a room and some of its message ids, those this node holds already."""


class RangeSource(Protocol):
    """What catch-up needs of a history client: :meth:`StoreClient.fetch_range`."""

    async def fetch_range(
        self,
        peer: str,
        room: str,
        start_ms: int | None,
        max_messages: int,
        resume: Resume | None = None,
        known: Known | None = None,
    ) -> Fetched: ...


Ask = Callable[[Query], Awaitable[Reply]]
"""Sends one query on a history stream and returns its OK reply (raises SourceError)."""


def _check_page(reply: Reply, limit: int) -> None:
    """A page's own consistency: no more entries than asked, a cursor past the last one."""
    if len(reply.entries) > limit:
        raise SourceError(f"{len(reply.entries)} messages where {limit} were asked")
    if reply.next_cursor is not None and (
        not reply.entries or reply.next_cursor != reply.entries[-1].message_id
    ):
        raise SourceError("the cursor does not advance past the page")


@dataclass(frozen=True, slots=True)
class Resume:
    """Where a walk that failed part-way stopped: the same range, after ``cursor``."""

    start_ms: int | None
    cursor: bytes


class StoreClient:
    """Queries history sources (see the module's note)."""

    def __init__(self, host: P2PHost, observer: StoreClientObserver, max_text_bytes: int) -> None:
        self._host = host
        self._observer = observer
        self._max_text_bytes = max_text_bytes
        self._request_ids = itertools.count(1)

    async def fetch_range(
        self,
        peer: str,
        room: str,
        start_ms: int | None,
        max_messages: int,
        resume: Resume | None = None,
        known: Known | None = None,
    ) -> Fetched:
        """Every verified message of ``room`` sent at or after ``start_ms`` that ``peer``
        holds, oldest first, at most ``max_messages``; with ``resume``, the rest of an earlier
        walk instead (its range, after its cursor).

        With ``known`` (which of some ids of the room this node holds already), the walk asks
        for ids only, page by page, and then for the messages of the ids not known: a
        catch-up that overlaps what is stored costs ~30 bytes per message it already has,
        not the message (on a relayed connection that is what decides whether a catch-up fits
        the circuit's data limit at all). The listed ids this node held are in ``skipped``;
        other listed ids are only trusted once their message is fetched and verified. At
        most :data:`IDS_PER_FETCHED` times ``max_messages`` ids are walked.

        Over a relayed connection pages are at most :data:`RELAYED_PAGE_BYTES`. A walk that
        fails after some pages returns what came, with ``failed`` and the ``cursor`` to resume
        at: a relay's circuit that ends part-way through a big catch-up loses nothing fetched.

        Raises:
            SourceError: the peer could not be asked, refused, or broke the protocol before
                any page came.
        """
        fetched = Fetched(peer, [], 0, complete=False)
        if resume is not None:
            start_ms, fetched.cursor = resume.start_ms, resume.cursor
        first_cursor = fetched.cursor
        try:
            async with self._asker(fetched) as ask:
                if known is None:
                    await self._walk_messages(ask, fetched, room, start_ms, max_messages)
                else:
                    await self._walk_ids(ask, fetched, room, start_ms, max_messages, known)
        except SourceError as error:
            if fetched.cursor == first_cursor:  # not one page came
                raise
            fetched.failed = str(error)
        self._observer.entries_fetched(len(fetched.messages))
        return fetched

    def _take(self, fetched: Fetched, entries: Iterable[Entry], room: str) -> None:
        """Verify ``entries`` into ``fetched`` (rejected ones counted)."""
        now = now_ms()
        for entry in entries:
            try:
                fetched.messages.append(verify_entry(entry, room, self._max_text_bytes, now))
            except Rejected as error:
                fetched.rejected += 1
                self._observer.entry_rejected(error.reason)

    async def _walk_messages(
        self, ask: Ask, fetched: Fetched, room: str, start_ms: int | None, max_messages: int
    ) -> None:
        """The range's messages, whole, page by page (from ``fetched.cursor`` if set)."""
        received = 0
        while received < max_messages:
            limit = min(MAX_LIMIT, max_messages - received)
            query = Query(0, room, start_ms, None, fetched.cursor, limit)
            reply = await ask(query)
            _check_page(reply, limit)
            received += len(reply.entries)
            self._take(fetched, reply.entries, room)
            if reply.entries:
                fetched.cursor = reply.entries[-1].message_id
            if reply.next_cursor is None:
                fetched.complete = True
                return

    async def _walk_ids(
        self,
        ask: Ask,
        fetched: Fetched,
        room: str,
        start_ms: int | None,
        max_messages: int,
        known: Known,
    ) -> None:
        """The range's ids page by page, then each page's unknown messages by lookup."""
        walked = 0
        while len(fetched.messages) < max_messages and walked < max_messages * IDS_PER_FETCHED:
            reply = await ask(
                Query(0, room, start_ms, None, fetched.cursor, MAX_LIMIT, ids_only=True)
            )
            _check_page(reply, MAX_LIMIT)
            walked += len(reply.entries)
            ids = [entry.message_id for entry in reply.entries]
            have = known(room, ids)
            room_left = max_messages - len(fetched.messages)
            unknown = [n for n, message_id in enumerate(ids) if message_id not in have]
            if len(unknown) > room_left:  # this page is the last: stop before the first left out
                ids = ids[: unknown[room_left]]
            fetched.skipped.update(i for i in ids if i in have)
            await self._look_up(ask, fetched, room, ids, [i for i in ids if i not in have])
            if ids:
                fetched.cursor = ids[-1]
            if reply.next_cursor is None and len(ids) == len(reply.entries):
                fetched.complete = True
                return

    async def _look_up(
        self, ask: Ask, fetched: Fetched, room: str, page: list[bytes], wanted: list[bytes]
    ) -> None:
        """The messages of ``wanted``, ids of ``page`` (an ids page, in history order), over
        as many replies as the server's size budget cuts them into. After each reply the walk's
        cursor moves to the last message it brought: the page's ids up to there are all held
        now (or not served), so a walk that fails later resumes after them."""
        if not wanted:
            return
        asked = set(wanted)
        position = {message_id: n for n, message_id in enumerate(page)}
        cursor: bytes | None = None
        while True:
            reply = await ask(Query(0, room, message_ids=tuple(wanted), cursor=cursor))
            if any(entry.message_id not in asked for entry in reply.entries):
                raise SourceError("a lookup answered with messages that were not asked for")
            _check_page(reply, len(wanted))
            self._take(fetched, reply.entries, room)
            if reply.entries:
                fetched.cursor = page[position[reply.entries[-1].message_id]]
            if reply.next_cursor is None:
                return
            cursor = reply.next_cursor

    @asynccontextmanager
    async def _asker(self, fetched: Fetched) -> AsyncIterator[Ask]:
        """A history stream to ``fetched.source`` (sets ``fetched.remote_ip``), as the function
        that asks one query on it and returns the OK reply; the stream is closed after."""
        peer = fetched.source
        try:
            stream = await self._host.new_stream(peer, [PROTOCOL_ID])
        except StreamError as error:  # no connection, protocol not supported, ...
            self._observer.query_finished("error")
            if self._unsupported(peer, error):
                raise SourceUnsupported(
                    f"{short_id(peer)} does not serve room history (it does not speak "
                    f"{PROTOCOL_ID})"
                ) from None
            raise SourceError(f"cannot open a history stream: {error}") from None
        fetched.remote_ip = stream.remote_ip
        # No address: a relayed (limited) connection, whose circuit may have only a few KiB
        # left of its data limit; a page cut short by its end would be lost whole.
        page_bytes = RELAYED_PAGE_BYTES if stream.remote_ip is None else 0
        decoder = FrameDecoder(MAX_REPLY_BYTES)

        async def ask(query: Query) -> Reply:
            numbered = replace(query, request_id=next(self._request_ids), max_bytes=page_bytes)
            return await self._ask(stream, decoder, numbered)

        try:
            yield ask
        finally:
            await close_quietly(stream)

    def _unsupported(self, peer: str, error: StreamError) -> bool:
        """Whether a failed stream open means the peer does not serve history: identify says it
        speaks other protocols but not ours, or the negotiation said so ("protocol not
        supported": identify may not have finished yet)."""
        spoken = self._host.peer_protocols(peer)
        if spoken and PROTOCOL_ID not in spoken:
            return True
        return isinstance(error, StreamRefused) and "not supported" in str(error)

    async def _ask(self, stream: Stream, decoder: FrameDecoder, query: Query) -> Reply:
        for _ in range(MAX_RETRIES):
            reply = await self._ask_once(stream, decoder, query)
            wait = reply.retry_after_ms / 1000
            if reply.status is not Status.TOO_MANY_REQUESTS or not 0 < wait <= MAX_RETRY_WAIT:
                break
            await trio.sleep(wait)
        self._observer.query_finished(reply.status.name.lower())
        if reply.status is not Status.OK:
            raise SourceError(f"refused: {reply.status.name} {reply.status_text}".strip())
        if reply.request_id != query.request_id:
            raise SourceError("reply to another request")
        return reply

    async def _ask_once(self, stream: Stream, decoder: FrameDecoder, query: Query) -> Reply:
        try:
            with trio.fail_after(REPLY_TIMEOUT):
                await stream.write(encode_query(query))
                reply = decode_reply(await read_frame(stream, decoder))
        except trio.TooSlowError:
            self._observer.query_finished("error")
            raise SourceError(f"no reply within {REPLY_TIMEOUT:.0f} s") from None
        except (FrameError, StoreWireError) as error:
            self._observer.query_finished("error")
            raise SourceError(f"bad reply: {error}") from None
        except StreamError as error:  # the stream ended, was reset, or its connection closed
            self._observer.query_finished("error")
            raise SourceError(f"stream failed: {error}") from None
        return reply
