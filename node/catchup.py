"""Catch-up: fetch what a peer missed while it was away, from more than one source.

When a room is joined (so at start) and whenever a peer that serves history connects (so on
every reconnect), each joined room is fetched from the sources not asked in the last
:data:`REASK_AFTER` seconds or disconnected from since they were asked: connected peers that
speak the history protocol (archivers, and chat peers serving their local store), at most
``history.catchup_sources`` of them, archivers first, all at once. A peer that knows only a
bootstrap node gets archivers connected from the DHT
(:class:`~p2pchat.node.rendezvous.ArchiverFinder`); each such connection starts a catch-up.
The range starts ``history.catchup_overlap_seconds`` before the newest message already stored
(clocks of senders differ), or ``history.catchup_lookback_days`` ago for a room with no history.

Every message is verified (:func:`p2pchat.node.store_client.verify_entry`) and passed through
``sender_check`` (the same check live messages pass: an ignored peer's messages must not come
back through history) and then ``moderate`` (the room's moderation: the owner's decisions among
the fetched messages are learned first, then what they refuse is left out, so a peer that
was away learns a mute together with the messages it refuses); what is new to the room is
then charged to its senders (:mod:`p2pchat.node.catchup_charge`: each within its share of the
room's history, strangers to the room together within a share of it; refusals counted by
reason in ``p2pchat_history_catchup_refused_total``), so that a source serving one big sender
or many sybils cannot push the honest messages out; the union of what the sources returned is
stored once per id, and the room trimmed to its cap. A source
that completed its walk but lacks messages another one returned is logged and counted
(``p2pchat_history_source_gaps_total``): that is how a source hiding messages gets noticed. A
peer that was itself offline lacks messages honestly, so this is a signal for operators, not a
verdict.

Senders a catch-up brought in as newcomers are remembered as strangers for the newest
:data:`MAX_STRANGERS` (room, sender) pairs (a forgotten one counts by what it holds); one heard
live since (:meth:`CatchUp.heard_live`: its message passed the pubsub validator and the room's
per-sender budget) is a stranger no more. Newcomers' messages are also charged to the sources
that returned them (:mod:`p2pchat.node.catchup_sources`: so much per source PeerId and address
group, per room and window), since every reconnect of a source starts a catch-up.

A walk asks for ids first and then only for the messages not stored yet
(:meth:`~p2pchat.node.store_client.StoreClient.fetch_range` with ``known``), so the overlap
with what is stored costs ~30 bytes a message. A walk that fails part-way (a relay's circuit
ended: over a relayed connection pages are small, see
:data:`p2pchat.node.store_client.RELAYED_PAGE_BYTES`) keeps the pages it got, and the next
catch-up from that source resumes after them (:class:`~p2pchat.node.store_client.Resume`,
remembered for the newest :data:`MAX_ASKED` (room, source) pairs), so a history bigger than a
circuit's data limit arrives over several circuits instead of failing at the same place.

When each source was last asked is remembered for the newest :data:`MAX_ASKED` (room, source)
pairs: a source forgotten early is merely asked again sooner.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import structlog
import trio
import trio.lowlevel
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.catchup_charge import ChargeSettings, charge
from p2pchat.node.catchup_sources import SOURCE, SourceAllowance
from p2pchat.node.config import HistorySection
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.netprefix import address_group
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store_client import Fetched, RangeSource, Resume, SourceError
from p2pchat.node.wire.store_query import PROTOCOL_ID

SETTLE = 1.0  # after a trigger: let identify finish and other connections arrive
IDENTIFY_WAIT = 5.0  # longest wait for a new connection's protocols to be known
REASK_AFTER = 60.0
MAX_ASKED = 4096  # (room, source) pairs whose last question is remembered
# (room, sender) pairs first stored by a catch-up as newcomers, still charged as newcomers
MAX_STRANGERS = 16_384
WRITE_BATCH = 1000
# The one address group of every source reached through a relay or at an unknown address
UNADDRESSED = "relayed"

Moderate = Callable[[str, list[StoredMessage]], list[StoredMessage]]
"""Given a room and its fetched, verified messages (in history order), learns the moderation
decisions among them and returns the messages the room's moderation admits."""

CaughtUp = Callable[[str, list[StoredMessage], list[str]], Awaitable[None]]
"""Awaited with (room, the messages it stored that were new, sources that answered) after each
room's catch-up (at most ``history.catchup_max_messages`` per source, so the list is bounded);
it may take its time (showing them all to a slow reader): the next room waits."""


class CatchUpObserver(Protocol):
    """What catch-up reports (the metrics implement it). Called inline: must not block."""

    def caught_up(self, stored: int) -> None:
        """One room's catch-up stored ``stored`` messages this node did not have (0 included)."""

    def source_lacked(self, missing: int) -> None:
        """A source that completed its walk lacked ``missing`` messages another source of the
        same catch-up returned."""

    def source_failed(self) -> None:
        """A source failed during a catch-up (unreachable, refused, broke the protocol)."""

    def refused(self, reason: str, count: int) -> None:
        """One room's catch-up left out ``count`` messages for ``reason`` (a
        :data:`p2pchat.node.catchup_charge.REASONS` word, or
        :data:`p2pchat.node.catchup_sources.SOURCE`)."""


class QuietCatchUpObserver:
    """A catch-up observer that records nothing, for tests."""

    def caught_up(self, stored: int) -> None:
        return None

    def source_lacked(self, missing: int) -> None:
        return None

    def source_failed(self) -> None:
        return None

    def refused(self, reason: str, count: int) -> None:
        return None


class CatchUp:
    """See the module's note. ``rooms`` lists the rooms to keep caught up."""

    def __init__(
        self,
        host: P2PHost,
        history: History,
        client: RangeSource,
        settings: HistorySection,
        rooms: Callable[[], list[str]],
        on_caught_up: CaughtUp,
        observer: CatchUpObserver,
        log: structlog.stdlib.BoundLogger,
        sender_check: Callable[[str], str | None] | None = None,
        moderate: Moderate | None = None,
        charged: ChargeSettings | None = None,
        trim: Callable[[str], int] | None = None,
        per_source: SourceAllowance | None = None,
    ) -> None:
        """``charged``: charge what a catch-up brings to its senders (see the module's note;
        None: store all of it). ``trim``: called with the room after a catch-up stored
        messages, to bring it back under its cap. ``per_source``: with ``charged``, what each
        source may bring from newcomers per room and window (None: no such bound)."""
        self._host = host
        self._charged = charged
        self._per_source = per_source
        self._trim = trim
        self._refusals = RefusalLog(log, "history catch-up refused messages")
        self._sender_check = sender_check
        self._moderate = moderate
        self._history = history
        self._client = client
        self._settings = settings
        self._rooms = rooms
        self._on_caught_up = on_caught_up
        self._observer = observer
        self._log = log
        self._pending: set[str] = set()
        self._watching = False  # told of connections (run() started)
        self._wake = trio.Event()
        # (room, source) -> when it was last asked
        self._asked: BoundedDict[tuple[str, str], float] = BoundedDict(MAX_ASKED)
        # Senders a catch-up brought in as newcomers (see node/catchup_charge.py): charged as
        # newcomers again at the next catch-up, however much they hold by then.
        self._strangers: BoundedDict[tuple[str, str], None] = BoundedDict(MAX_STRANGERS)
        # (room, source) -> where its last walk stopped part-way (a relayed circuit ended):
        # the next walk from that source goes on from there instead of starting over, which
        # over a circuit with a data limit could fail again at the same place, every time.
        self._resume: BoundedDict[tuple[str, str], Resume] = BoundedDict(MAX_ASKED)

    def request(self, room: str) -> None:
        """Catch ``room`` up as soon as sources are known (safe to call from any task)."""
        self._pending.add(room)
        self._wake.set()

    def connection_opened(self, info: ConnectionInfo) -> None:
        self._pending.update(self._rooms())
        self._wake.set()

    def heard_live(self, room: str, senders: Iterable[str]) -> None:
        """``senders`` were heard live in ``room`` (a message of theirs passed the pubsub
        validator and its per-sender budget, and was stored): they are no longer strangers
        for catch-up's charge (they hold what they sent live)."""
        strangers = self._strangers
        if not strangers:
            return
        for sender in senders:
            strangers.pop((room, sender), None)

    def connection_closed(self, info: ConnectionInfo) -> None:
        # Whatever was sent while we are apart is missed: when it is back, ask it again at
        # once, however recently it was asked (REASK_AFTER only damps other peers' triggers).
        for key in [k for k in self._asked if k[1] == info.peer_id]:
            del self._asked[key]
        if self._watching and self._host.is_connected(info.peer_id):
            # Another connection stays (a relayed conversation moved to its next circuit, or
            # to a direct one): ask now for what the closed one may have dropped (#21).
            self._pending.update(self._rooms())
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Catch rooms up as triggers arrive, until cancelled."""
        self._host.watch_connections(self)
        self._watching = True
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(SETTLE)
            sources = await self._sources()
            rooms, self._pending = sorted(self._pending), set()
            for room in rooms:
                if room in self._rooms():
                    await self.catch_up(room, sources)

    async def _sources(self) -> list[str]:
        """Connected peers serving history, those that say they are archivers first (waiting
        briefly for identify to name protocols and roles)."""
        deadline = trio.current_time() + IDENTIFY_WAIT
        while True:
            peers = self._host.connected_peers()
            unknown = [p for p in peers if not self._host.peer_protocols(p)]
            if not unknown or trio.current_time() >= deadline:
                servers = [p for p in peers if PROTOCOL_ID in self._host.peer_protocols(p)]
                return self._archivers_first(servers)
            with trio.move_on_at(deadline):
                await self._host.identify_received()

    def _archivers_first(self, servers: list[str]) -> list[str]:
        """Peers that say they are archivers first (they keep whole rooms, a chat peer only
        what it saw), but a role is a claim: while a chat peer serves history too, one place of
        each catch-up is kept for it, so peers claiming to be archivers cannot alone decide
        what this peer catches up."""
        says_archiver = {p for p in servers if "archiver" in (self._host.peer_roles(p) or ())}
        claimed = [p for p in servers if p in says_archiver]
        others = [p for p in servers if p not in says_archiver]
        first = max(1, self._settings.catchup_sources - 1) if others else len(claimed)
        return claimed[:first] + others + claimed[first:]

    async def catch_up(self, room: str, sources: list[str]) -> int:
        """Fetch ``room`` from the sources not asked lately; store and report what is new."""
        now = time.monotonic()
        fresh = [
            s for s in sources if now - self._asked.get((room, s), -REASK_AFTER) >= REASK_AFTER
        ]
        chosen = fresh[: self._settings.catchup_sources]
        if not chosen:
            return 0
        for source in chosen:
            self._asked[(room, source)] = now
        start_ms = self._start_ms(room)
        results: list[Fetched] = []

        async def fetch(source: str) -> None:
            resume = self._resume.pop((room, source), None)
            try:
                fetched = await self._client.fetch_range(
                    source,
                    room,
                    start_ms,
                    self._settings.catchup_max_messages,
                    resume,
                    known=self._history.held,
                )
            except SourceError as error:
                self._observer.source_failed()
                self._log.info("history source failed", room=room, source=source, error=str(error))
                return
            results.append(fetched)
            if fetched.failed is not None and fetched.cursor is not None:
                self._observer.source_failed()
                self._resume[(room, source)] = Resume(
                    resume.start_ms if resume is not None else start_ms, fetched.cursor
                )
                self._log.info(
                    "history source failed part-way; what came is kept, the rest is asked next",
                    room=room,
                    source=source,
                    kept=len(fetched.messages),
                    error=fetched.failed,
                )

        async with trio.open_nursery() as nursery:
            for source in chosen:
                nursery.start_soon(fetch, source)
        union: dict[bytes, StoredMessage] = {}
        for fetched in results:
            for message in fetched.messages:
                union.setdefault(message.message_id, message)
        self._report_gaps(room, results, union)
        check = self._sender_check
        if check is not None:
            union = {key: m for key, m in union.items() if check(m.sender) is None}
        ordered = sorted(union.values(), key=lambda m: (m.sent_at_ms, m.message_id))
        if self._moderate is not None:
            ordered = self._moderate(room, ordered)
        if self._charged is not None:
            ordered = self._charge(room, ordered, results)
        new: list[StoredMessage] = []
        for first in range(0, len(ordered), WRITE_BATCH):
            new += self._history.add_many(ordered[first : first + WRITE_BATCH])
            await trio.lowlevel.checkpoint()  # a big catch-up must not stall live chat
        stored = len(new)
        if new and self._trim is not None:
            self._trim(room)
        self._observer.caught_up(stored)
        answered = [fetched.source for fetched in results]
        self._log.info(
            "history caught up", room=room, new=stored, fetched=len(union), sources=answered
        )
        if answered:
            await self._on_caught_up(room, new, answered)
        return stored

    def _charge(
        self, room: str, ordered: list[StoredMessage], results: list[Fetched]
    ) -> list[StoredMessage]:
        """What the charge admits of ``ordered`` (what is already stored is not charged), and
        of its newcomers' messages what their sources may still bring (``results``: what
        each source returned)."""
        assert self._charged is not None
        history = self._history
        strangers = self._strangers
        new = [m for m in ordered if not history.contains(room, m.message_id)]

        def held(sender: str) -> int:
            return 0 if (room, sender) in strangers else history.held_by(room, sender)

        room_count = history.count(room)
        result = charge(new, held, room_count, self._charged)
        refused = dict(result.refused)
        newcomers = result.newcomers
        if self._per_source is not None and room_count and newcomers:
            result.admitted, refused[SOURCE] = self._within_sources(
                room, result.admitted, newcomers, results
            )
            newcomers = {m.sender for m in result.admitted if m.sender in newcomers}
        for sender in newcomers:
            strangers[(room, sender)] = None
        for reason, count in refused.items():
            if not count:
                continue
            self._observer.refused(reason, count)
            self._refusals.refused(reason, room=room, refused=count)
        return result.admitted

    def _within_sources(
        self,
        room: str,
        admitted: list[StoredMessage],
        newcomers: set[str],
        results: list[Fetched],
    ) -> tuple[list[StoredMessage], int]:
        """``admitted`` less the newcomers' messages their sources may not bring any more,
        and how many those were."""
        assert self._per_source is not None
        theirs = [m for m in admitted if m.sender in newcomers]
        ids = {m.message_id for m in theirs}
        sources_of: dict[bytes, list[str]] = {}
        for fetched in results:
            for message in fetched.messages:
                if message.message_id in ids:
                    sources_of.setdefault(message.message_id, []).append(fetched.source)
        group_of = {f.source: self._group(f.remote_ip) for f in results}
        allowed, refused = self._per_source.admit(
            room, theirs, sources_of, group_of, time.monotonic()
        )
        kept = [m for m in admitted if m.sender not in newcomers or m.message_id in allowed]
        return kept, refused

    def _group(self, ip: str | None) -> str:
        """The address group a source at ``ip`` is charged to. Sources reached through a relay
        (or at an address not known) share one: a fresh PeerId through a relay costs
        nothing, so counting them by PeerId would let a source come back as a new one each
        time with a new allowance."""
        if ip is None:
            return UNADDRESSED
        try:
            return address_group(ip, self._settings.ipv4_prefix, self._settings.ipv6_prefix)
        except ValueError:
            return UNADDRESSED

    def _start_ms(self, room: str) -> int:
        newest = self._history.newest_sent_at(room)
        if newest is None:
            lookback_ms = int(self._settings.catchup_lookback_days * 86_400_000)
            return max(0, now_ms() - lookback_ms)
        return max(0, newest - int(self._settings.catchup_overlap_seconds * 1000))

    def _report_gaps(
        self, room: str, results: list[Fetched], union: dict[bytes, StoredMessage]
    ) -> None:
        if len(results) < 2:
            return
        # What is genuine: the messages fetched (verified), and the listed ids this node held
        # already (an ids-first walk fetches only the others). A source holds what it delivered
        # verified and what it listed that was held: an id listed but served forged, or never
        # delivered, proves nothing for it and nothing against another.
        genuine = union.keys() | set().union(*(fetched.skipped for fetched in results))
        for fetched in results:
            if not fetched.complete:
                continue
            held = fetched.skipped | {message.message_id for message in fetched.messages}
            missing = len(genuine - held)
            if missing:
                self._observer.source_lacked(missing)
                self._log.warning(
                    "history source lacks messages another source has",
                    room=room,
                    source=fetched.source,
                    missing=missing,
                )
