"""The archiver role (``p2pchat --role archiver``): keeps rooms' history durably and serves it.

It joins the configured rooms' GossipSub topics (and, with ``archiver.all_rooms``, rooms that
connected peers subscribe to once their members are heard, up to ``archiver.max_rooms``: see
:mod:`p2pchat.roles.archiver.admission`), verifies every message as a chat peer does, and
writes it synced to disk (:mod:`p2pchat.roles.archiver.ingest`); the node answers history
queries from it (:mod:`p2pchat.node.store_server`) so peers that were offline catch up. With
the DHT on, it announces itself under :data:`~p2pchat.node.rendezvous.ARCHIVER_KEY`, where chat
peers that know only a bootstrap node find it. With the chat peer in the same process, both use
the node's one pubsub and history: the room's messages are stored once, and the tighter
retention applies.

In an owned room it applies the owner's moderation as chat peers do
(:class:`~p2pchat.node.moderation.RoomModeration`): a decision is accepted only when signed by
the owner the room name names, kept (in the history too, so peers that were away learn it),
and a muted or removed sender's messages are refused before they are stored (counted as
``muted`` / ``removed`` in ``p2pchat_archive_dropped_total``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar, Protocol, Self

import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.config import ArchiverSection, Config, MailboxSection
from p2pchat.node.history import now_ms
from p2pchat.node.moderation import MAX_DECISIONS, MAX_TARGETS, RoomModeration, refusal_log
from p2pchat.node.moderation import NAMESPACE as MODS_NAMESPACE
from p2pchat.node.p2p.pubsub import (
    Gossip,
    GossipMessage,
    GossipObserver,
    SubscriptionEvent,
    TopicSubscribed,
)
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.rendezvous import ARCHIVER_KEY
from p2pchat.node.role import NodeContext
from p2pchat.node.wire.chat import (
    Moderation,
    WireError,
    decode_for_room,
    moderation_refused,
    validate_room,
)
from p2pchat.node.wire.mailbox import PROTOCOL_ID as MAILBOX_PROTOCOL_ID
from p2pchat.node.wire.room_names import room_owner
from p2pchat.node.wire.store_query import PROTOCOL_ID
from p2pchat.roles.archiver.admission import HELD_PER_CANDIDATE, RoomAdmission
from p2pchat.roles.archiver.ingest import Archive, ArchiveObserver
from p2pchat.roles.archiver.mailbox import MailboxServer
from p2pchat.roles.archiver.mailbox_store import NAMESPACE as MAILBOX_NAMESPACE
from p2pchat.roles.archiver.mailbox_store import MailboxStore
from p2pchat.roles.archiver.metrics import ArchiveMetrics

ADMISSION_TICK = 1.0  # seconds between two looks at probation (also woken by announcements)
RESCAN_PEERS = 4  # subscribers of a known topic credited when topics are scanned again
# Moderation decisions between validation and the signer check (the next step of the same call)
MAX_DECISIONS_CHECKING = 64


class ArchiverObserver(ArchiveObserver, GossipObserver, Protocol):
    """What the archiver reports: its write path, the pubsub's drops, and its rooms (the role's
    metrics implement it)."""

    def rooms_archived(self, count: int) -> None:
        """``count`` rooms are being archived now."""

    def room_admission(self, outcome: str) -> None:
        """A room heard of was ``admitted``, ``expired``, ``refused_full`` or ``evicted_idle``
        (see :mod:`p2pchat.roles.archiver.admission`)."""

    def rooms_on_probation(self, count: int) -> None:
        """``count`` rooms heard of are listened to for evidence now."""


class ArchiverRole:
    """Archiver node."""

    name: ClassVar[str] = "archiver"
    protocols: ClassVar[Sequence[str]] = (
        PROTOCOL_ID,
        MAILBOX_PROTOCOL_ID,
        "/meshsub/1.2.0",
        "/meshsub/1.1.0",
    )
    in_rooms: ClassVar[bool] = True

    def __init__(
        self,
        settings: ArchiverSection,
        max_message_bytes: int,
        max_decisions: tuple[int, int] = (MAX_TARGETS, MAX_DECISIONS),
        mailbox: MailboxSection | None = None,
    ) -> None:
        """``settings``: the rooms and their retention (the ``archiver`` config section);
        ``max_message_bytes``: the largest text accepted, as chat peers accept it;
        ``max_decisions``: moderation decisions kept per room and in all, as chat peers."""
        self._settings = settings
        self._max_message_bytes = max_message_bytes
        self._max_decisions = max_decisions
        self._mailbox = mailbox or MailboxSection()
        self._admission = RoomAdmission(
            set(),
            max_rooms=settings.max_rooms,
            max_candidates=settings.max_candidate_rooms,
            admit_senders=settings.admit_senders,
            probation=settings.probation,
            room_idle=settings.room_idle,
        )
        self._announced = trio.Event()

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The archiver with the ``archiver`` section of ``config`` and the chat's message
        size limit and moderation bounds."""
        chat = config.chat
        return cls(
            config.archiver,
            chat.max_message_bytes,
            (chat.max_decisions_per_room, chat.max_decisions),
            config.mailbox,
        )

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the rooms, start writing and serving, then run until cancelled."""
        settings = self._settings
        metrics = ArchiveMetrics(ctx.metrics.registry, store_size=ctx.store_size)
        gossip, history = ctx.rooms(metrics)
        archive = Archive(history, settings, metrics, ctx.log, self._max_message_bytes)
        moderation = RoomModeration(ctx.keys(MODS_NAMESPACE), *self._max_decisions)
        rooms = _Rooms(
            self._admission, gossip, archive, metrics, ctx, self._max_message_bytes, moderation
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(archive.run)
            mailboxes = MailboxStore(ctx.keys(MAILBOX_NAMESPACE), self._mailbox)
            await nursery.start(
                MailboxServer(ctx.host, mailboxes, self._mailbox, metrics, ctx.log).run
            )
            rooms.nursery = nursery
            for room in settings.rooms:
                if len(self._admission.archived) >= settings.max_rooms:
                    ctx.log.warning("room not archived: archiver.max_rooms reached", room=room)
                    continue
                self._admission.configured(room)
                await rooms.join(room)
            if settings.all_rooms:
                gossip.watch_subscriptions(self._subscription)
                self._scan(gossip)
                nursery.start_soon(self._admit, rooms, gossip)
            ctx.log.info(
                "archiver role started",
                rooms=sorted(self._admission.archived),
                all_rooms=settings.all_rooms,
                messages=archive.held,
            )
            task_status.started()
            if ctx.rendezvous is not None:  # so that chat peers find this archiver in the DHT
                nursery.start_soon(ctx.rendezvous.announce, "archiver service", ARCHIVER_KEY)

    def _subscription(self, event: SubscriptionEvent) -> None:
        if isinstance(event, TopicSubscribed) and _is_room(event.topic):
            self._admission.announced(event.peer_id, event.topic, time.monotonic())
            self._announced.set()

    def _scan(self, gossip: Gossip) -> None:
        """Credit the topics connected peers are in now (at start, and after each probation
        period: a room whose members were silent during its probation is heard of again)."""
        now = time.monotonic()
        for topic in gossip.known_topics():
            if _is_room(topic):
                for peer in gossip.subscribers(topic)[:RESCAN_PEERS]:
                    self._admission.announced(peer, topic, now)

    async def _admit(self, rooms: _Rooms, gossip: Gossip) -> None:
        """Take rooms heard of on probation, and leave those whose probation ended."""
        scanned = time.monotonic()
        while True:
            now = time.monotonic()
            for room in self._admission.expired(now):
                await rooms.refuse(room, "expired")
            for room in self._admission.next_candidates(now):
                await rooms.join(room)
            rooms.observer.rooms_on_probation(len(self._admission.candidates))
            if now - scanned >= self._settings.probation:
                scanned = now
                self._scan(gossip)
            with trio.move_on_after(ADMISSION_TICK):
                await self._announced.wait()
            self._announced = trio.Event()


def _is_room(topic: str) -> bool:
    try:
        validate_room(topic)
    except ValueError:
        return False  # not a chat room's topic
    return True


class _Rooms:
    """The rooms the archiver is in (archived or on probation), and their message paths."""

    def __init__(
        self,
        admission: RoomAdmission,
        gossip: Gossip,
        archive: Archive,
        observer: ArchiverObserver,
        ctx: NodeContext,
        max_message_bytes: int,
        moderation: RoomModeration,
    ) -> None:
        self._admission = admission
        self._moderation = moderation
        self._moderation_refusals = refusal_log(ctx.log)
        self._gossip = gossip
        self._archive = archive
        self.observer = observer
        self._ctx = ctx
        self._limit = max_message_bytes
        self._refusals = RefusalLog(ctx.log, "room heard of not archived")
        self.nursery: trio.Nursery | None = None

    async def join(self, room: str) -> None:
        """Listen to ``room``: archived if admitted already, else on probation; in an owned
        room, the owner's moderation applies before anything is stored."""
        limit = self._limit
        moderation, refusals, observer = self._moderation, self._moderation_refusals, self.observer
        checking: BoundedDict[bytes, Moderation] = BoundedDict(MAX_DECISIONS_CHECKING)

        def validate(data: bytes) -> str | None:
            try:
                payload = decode_for_room(data, room, max_text_bytes=limit, now_ms=now_ms())
            except WireError as error:
                return error.reason
            if isinstance(payload, Moderation):
                checking[data] = payload
            return None

        def signed_check(sender: str, data: bytes) -> str | None:
            decision = checking.pop(data, None)
            if decision is None:
                return None
            refused = moderation_refused(decision, sender)
            if refused is not None:
                refusals.refused(refused, room=room, sender=sender)
            elif moderation.apply(decision, now_ms()) == "full":
                # Still the owner's: stored and passed on (others may have room), not applied.
                observer.message_dropped(room, "moderation_full")
            return refused

        def sender_check(sender: str) -> str | None:
            verdict = moderation.check(room, sender, now_ms())
            if verdict is not None:
                refusals.refused(verdict, room=room, sender=sender)
            return verdict

        owned = room_owner(room) is not None
        messages = await self._gossip.join(
            room,
            validate,
            sender_check if owned else None,
            signed_check=signed_check if owned else None,
        )
        if room in self._admission.archived:
            self._archived_now(room)
        assert self.nursery is not None
        self.nursery.start_soon(self._ingest, room, messages)

    def _archived_now(self, room: str) -> None:
        self.observer.rooms_archived(len(self._admission.archived))
        self._ctx.log.info("archiving room", room=room)

    async def refuse(self, room: str, outcome: str) -> None:
        """Leave a room heard of that is not (or no longer) archived, counted by ``outcome``."""
        await self._gossip.leave(room)
        self.observer.room_admission(outcome)
        self._refusals.refused(outcome, room=room)

    async def _ingest(self, room: str, messages: AsyncIterator[list[GossipMessage]]) -> None:
        held: list[GossipMessage] = []
        async for batch in messages:
            now = time.monotonic()
            if room not in self._admission.candidates:
                if room in self._admission.archived:
                    self._admission.heard(room, batch[-1].sender, now)  # when last heard
                    await self._archive.offer(room, batch)
                continue
            held += batch[: max(0, HELD_PER_CANDIDATE - len(held))]
            decision = None
            for message in batch:
                decision = self._admission.heard(room, message.sender, now)
                if decision is not None:
                    break
            if decision is None:
                continue
            if decision.refused:
                await self.refuse(room, "refused_full")
                return
            if decision.evicted is not None:
                await self.refuse(decision.evicted, "evicted_idle")
            self.observer.room_admission("admitted")
            self._archived_now(room)
            await self._archive.offer(room, held)
            held = []
