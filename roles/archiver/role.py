"""The archiver role (``p2pchat --role archiver``): keeps rooms' history durably and serves it.

It joins the configured rooms' GossipSub topics (and, with ``archiver.all_rooms``, every room a
connected peer is subscribed to, up to ``archiver.max_rooms``), verifies every message as a
chat peer does, writes it synced to disk (:mod:`p2pchat.roles.archiver.ingest`), and answers
history queries (:mod:`p2pchat.node.store_server`) so peers that were offline catch up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import ClassVar

import trio
from p2pchat.node.history import History, now_ms
from p2pchat.node.p2p.pubsub import Gossip
from p2pchat.node.role import NodeContext
from p2pchat.node.store_server import StoreServer, StoreServerMetrics
from p2pchat.node.wire.chat import WireError, decode_for_room, validate_room
from p2pchat.node.wire.store_query import PROTOCOL_ID
from p2pchat.roles.archiver.ingest import Archive
from p2pchat.roles.archiver.metrics import ArchiveMetrics

ROOM_SCAN_INTERVAL = 2.0


class ArchiverRole:
    """Archiver node."""

    name: ClassVar[str] = "archiver"
    protocols: ClassVar[Sequence[str]] = (PROTOCOL_ID, "/meshsub/1.2.0", "/meshsub/1.1.0")

    def __init__(self) -> None:
        self._rooms: set[str] = set()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the rooms, start writing and serving, then run until cancelled."""
        settings = ctx.config.archiver
        metrics = ArchiveMetrics(ctx.metrics.registry)
        metrics.store_bytes.set_function(ctx.store.size_bytes)
        history = History(ctx.store)
        gossip = Gossip(ctx.host, metrics)
        archive = Archive(history, settings, metrics, ctx.log, ctx.config.chat.max_message_bytes)
        StoreServer(
            ctx.host,
            history,
            StoreServerMetrics(ctx.metrics.registry),
            ctx.log,
            rate=ctx.config.history.rate,
            burst=ctx.config.history.burst,
        ).install()
        async with trio.open_nursery() as nursery:
            await nursery.start(gossip.run)
            await nursery.start(archive.run)
            join = partial(self._join, ctx, gossip, archive, metrics, nursery)
            for room in settings.rooms:
                await join(room)
            if settings.all_rooms:
                nursery.start_soon(self._join_rooms_heard_of, ctx, gossip, join)
            ctx.log.info(
                "archiver role started",
                rooms=sorted(self._rooms),
                all_rooms=settings.all_rooms,
                messages=archive.held,
            )
            task_status.started()

    async def _join(
        self,
        ctx: NodeContext,
        gossip: Gossip,
        archive: Archive,
        metrics: ArchiveMetrics,
        nursery: trio.Nursery,
        room: str,
    ) -> None:
        if room in self._rooms:
            return
        if len(self._rooms) >= ctx.config.archiver.max_rooms:
            ctx.log.warning("room not archived: archiver.max_rooms reached", room=room)
            return
        limit = ctx.config.chat.max_message_bytes

        def validate(data: bytes) -> str | None:
            try:
                decode_for_room(data, room, max_text_bytes=limit, now_ms=now_ms())
            except WireError as error:
                return error.reason
            return None

        messages = await gossip.join(room, validate)
        self._rooms.add(room)
        metrics.rooms.set(len(self._rooms))
        ctx.log.info("archiving room", room=room)

        async def ingest() -> None:
            async for batch in messages:
                await archive.offer(room, batch)

        nursery.start_soon(ingest)

    async def _join_rooms_heard_of(
        self, ctx: NodeContext, gossip: Gossip, join: Callable[[str], Awaitable[None]]
    ) -> None:
        while True:
            for topic in gossip.known_topics():
                if topic in self._rooms:
                    continue
                try:
                    room = validate_room(topic)
                except ValueError:
                    continue  # not a chat room's topic
                await join(room)
            await trio.sleep(ROOM_SCAN_INTERVAL)
