"""The archiver role (``p2pchat --role archiver``): keeps rooms' history durably and serves it.

It joins the configured rooms' GossipSub topics (and, with ``archiver.all_rooms``, every room a
connected peer subscribes to, as it does, up to ``archiver.max_rooms``), verifies every message
as a chat peer does, and writes it synced to disk (:mod:`p2pchat.roles.archiver.ingest`); the
node answers history queries from it (:mod:`p2pchat.node.store_server`) so peers that were
offline catch up. With the DHT on, it announces itself under
:data:`~p2pchat.node.rendezvous.ARCHIVER_KEY`, where chat peers that know only a bootstrap node
find it. With the chat peer in the same process, both use the node's one pubsub and
history: the room's messages are stored once, and the tighter retention applies.

In an owned room it applies the owner's moderation as chat peers do
(:class:`~p2pchat.node.moderation.RoomModeration`): a decision is accepted only when signed by
the owner the room name names, kept (in the history too, so peers that were away learn it),
and a muted or removed sender's messages are refused before they are stored (counted as
``muted`` / ``removed`` in ``p2pchat_archive_dropped_total``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import ClassVar, Protocol, Self

import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.config import ArchiverSection, Config
from p2pchat.node.history import now_ms
from p2pchat.node.moderation import MAX_DECISIONS, MAX_TARGETS, RefusalLog, RoomModeration
from p2pchat.node.moderation import NAMESPACE as MODS_NAMESPACE
from p2pchat.node.p2p.pubsub import Gossip, GossipObserver, SubscriptionEvent, TopicSubscribed
from p2pchat.node.rendezvous import ARCHIVER_KEY
from p2pchat.node.role import NodeContext
from p2pchat.node.wire.chat import (
    Moderation,
    WireError,
    decode_for_room,
    moderation_refused,
    validate_room,
)
from p2pchat.node.wire.room_names import room_owner
from p2pchat.node.wire.store_query import PROTOCOL_ID
from p2pchat.roles.archiver.ingest import Archive, ArchiveObserver
from p2pchat.roles.archiver.metrics import ArchiveMetrics

# Room names heard of and not yet joined, at most: a flood of junk subscriptions cannot grow it.
MAX_ROOMS_HEARD = 1024
# Moderation decisions between validation and the signer check (the next step of the same call)
MAX_DECISIONS_CHECKING = 64


class ArchiverObserver(ArchiveObserver, GossipObserver, Protocol):
    """What the archiver reports: its write path, the pubsub's drops, and its rooms (the role's
    metrics implement it)."""

    def rooms_archived(self, count: int) -> None:
        """``count`` rooms are being archived now."""


class ArchiverRole:
    """Archiver node."""

    name: ClassVar[str] = "archiver"
    protocols: ClassVar[Sequence[str]] = (PROTOCOL_ID, "/meshsub/1.2.0", "/meshsub/1.1.0")
    in_rooms: ClassVar[bool] = True

    def __init__(
        self,
        settings: ArchiverSection,
        max_message_bytes: int,
        max_decisions: tuple[int, int] = (MAX_TARGETS, MAX_DECISIONS),
    ) -> None:
        """``settings``: the rooms and their retention (the ``archiver`` config section);
        ``max_message_bytes``: the largest text accepted, as chat peers accept it;
        ``max_decisions``: moderation decisions kept per room and in all, as chat peers."""
        self._settings = settings
        self._max_message_bytes = max_message_bytes
        self._max_decisions = max_decisions
        self._rooms: set[str] = set()

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The archiver with the ``archiver`` section of ``config`` and the chat's message
        size limit and moderation bounds."""
        chat = config.chat
        return cls(
            config.archiver,
            chat.max_message_bytes,
            (chat.max_decisions_per_room, chat.max_decisions),
        )

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the rooms, start writing and serving, then run until cancelled."""
        settings = self._settings
        metrics = ArchiveMetrics(ctx.metrics.registry, store_size=ctx.store_size)
        gossip, history = ctx.rooms(metrics)
        moderation = RoomModeration(ctx.keys(MODS_NAMESPACE), *self._max_decisions)
        refusals = RefusalLog(ctx.log)
        archive = Archive(history, settings, metrics, ctx.log, self._max_message_bytes)
        async with trio.open_nursery() as nursery:
            await nursery.start(archive.run)
            join = partial(self._join, ctx, gossip, archive, metrics, moderation, refusals, nursery)
            for room in settings.rooms:
                await join(room)
            if settings.all_rooms:
                heard = self._rooms_heard_of(gossip)
                nursery.start_soon(self._join_rooms_heard_of, heard, join)
            ctx.log.info(
                "archiver role started",
                rooms=sorted(self._rooms),
                all_rooms=settings.all_rooms,
                messages=archive.held,
            )
            task_status.started()
            if ctx.rendezvous is not None:  # so that chat peers find this archiver in the DHT
                nursery.start_soon(ctx.rendezvous.announce, "archiver service", ARCHIVER_KEY)

    async def _join(
        self,
        ctx: NodeContext,
        gossip: Gossip,
        archive: Archive,
        observer: ArchiverObserver,
        moderation: RoomModeration,
        refusals: RefusalLog,
        nursery: trio.Nursery,
        room: str,
    ) -> None:
        if room in self._rooms:
            return
        if len(self._rooms) >= self._settings.max_rooms:
            ctx.log.warning("room not archived: archiver.max_rooms reached", room=room)
            return
        limit = self._max_message_bytes

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
                refusals.refused(refused, room, sender)
            elif moderation.apply(decision, now_ms()) == "full":
                # Still the owner's: stored and passed on (others may have room), not applied.
                observer.message_dropped(room, "moderation_full")
            return refused

        def sender_check(sender: str) -> str | None:
            verdict = moderation.check(room, sender, now_ms())
            if verdict is not None:
                refusals.refused(verdict, room, sender)
            return verdict

        owned = room_owner(room) is not None
        messages = await gossip.join(
            room,
            validate,
            sender_check if owned else None,
            signed_check=signed_check if owned else None,
        )
        self._rooms.add(room)
        observer.rooms_archived(len(self._rooms))
        ctx.log.info("archiving room", room=room)

        async def ingest() -> None:
            async for batch in messages:
                await archive.offer(room, batch)

        nursery.start_soon(ingest)

    def _rooms_heard_of(self, gossip: Gossip) -> _RoomsHeardOf:
        """Room names peers subscribe to, from now on and those known already."""
        heard = _RoomsHeardOf(self._rooms, self._settings.max_rooms)
        gossip.watch_subscriptions(heard.event)
        for topic in gossip.known_topics():
            heard.add(topic)
        return heard

    async def _join_rooms_heard_of(
        self, heard: _RoomsHeardOf, join: Callable[[str], Awaitable[None]]
    ) -> None:
        while True:
            for room in await heard.take():
                await join(room)


class _RoomsHeardOf:
    """Room names that peers subscribed to and that are not archived yet, as events bring them
    (at most :data:`MAX_ROOMS_HEARD` waiting; topics that are not room names are ignored)."""

    def __init__(self, archived: set[str], max_rooms: int) -> None:
        self._archived = archived
        self._max_rooms = max_rooms
        self._waiting: dict[str, None] = {}
        # Rooms heard of once the archive was full: each is passed on once (to be refused with
        # a warning), not at every subscription to it; bounded, as fresh names are free.
        self._refused: BoundedDict[str, None] = BoundedDict(MAX_ROOMS_HEARD)
        self._arrived = trio.Event()

    def event(self, event: SubscriptionEvent) -> None:
        if isinstance(event, TopicSubscribed):
            self.add(event.topic)

    def add(self, topic: str) -> None:
        if topic in self._archived or topic in self._waiting:
            return
        if len(self._waiting) >= MAX_ROOMS_HEARD or topic in self._refused:
            return
        try:
            validate_room(topic)
        except ValueError:
            return  # not a chat room's topic
        if len(self._archived) >= self._max_rooms:
            self._refused[topic] = None
        self._waiting[topic] = None
        self._arrived.set()

    async def take(self) -> list[str]:
        """The rooms waiting, once there is at least one."""
        await self._arrived.wait()
        self._arrived = trio.Event()
        rooms, self._waiting = list(self._waiting), {}
        return rooms
