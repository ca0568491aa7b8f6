"""The archive's write path: every verified message of the archived rooms, synced to disk.

Rooms' subscriptions hand their batches to one writer (:meth:`Archive.offer`) through a bounded
channel: when the disk falls behind, the rooms wait and GossipSub's 8,192-message subscription
queues absorb the burst, so nothing is dropped. The writer merges what is waiting into one
RocksDB write batch of up to :data:`MAX_WRITE` messages and syncs it to the write-ahead log
(fdatasync) in a worker thread, so the node keeps serving while the disk works. A message is
*acknowledged* once that sync returns: only then is it counted
(``p2pchat_archive_inserted_total``), and a ``kill -9`` or power loss afterwards cannot lose it.

Retention runs in the same writer lock, so counts and sizes never race with inserts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from typing import Protocol

import structlog
import trio
from p2pchat.node.config import ArchiverSection
from p2pchat.node.history import History, StoredMessage, now_ms
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.wire.chat import HISTORY_PAYLOADS, WireError, decode

QUEUE_BATCHES = 64  # batches of up to 256 messages waiting for the writer
MAX_WRITE = 4096  # messages per synced write


class ArchiveObserver(Protocol):
    """What the archive's write path reports (the role's metrics implement it). Called
    inline."""

    def message_dropped(self, topic: str, reason: str) -> None:
        """A message of room ``topic`` could not be decoded for archiving (``reason``: the
        :class:`~p2pchat.node.wire.chat.WireError` reason)."""

    def messages_held(self, count: int) -> None:
        """The archive holds ``count`` messages now."""

    def batch_written(self, seconds: float, size: int, new: int) -> None:
        """A batch of ``size`` messages was written and synced in ``seconds``: acknowledged;
        ``new`` of them were new to the store."""

    def write_failed(self) -> None:
        """A batch could not be written (disk full, I/O error); the node goes on."""

    def retention_failed(self) -> None:
        """Retention failed for one room."""

    def messages_deleted(self, count: int) -> None:
        """A retention pass deleted ``count`` (> 0) messages."""


class Archive:
    """Writes rooms' messages durably and applies retention (see the module's note)."""

    def __init__(
        self,
        history: History,
        settings: ArchiverSection,
        observer: ArchiveObserver,
        log: structlog.stdlib.BoundLogger,
        max_text_bytes: int,
    ) -> None:
        self._history = history
        self._settings = settings
        self._observer = observer
        self._log = log
        self._max_text_bytes = max_text_bytes
        self._send, self._receive = trio.open_memory_channel[tuple[str, list[GossipMessage]]](
            QUEUE_BATCHES
        )
        self._lock = trio.Lock()
        self._held = history.total_count()
        observer.messages_held(self._held)

    @property
    def held(self) -> int:
        """Messages in the archive now."""
        return self._held

    async def offer(self, room: str, batch: list[GossipMessage]) -> None:
        """Queue verified messages of ``room`` for writing (waits while the writer is behind)."""
        await self._send.send((room, batch))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued batches and apply retention until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._retain_periodically)
            task_status.started()
            async for room, batch in self._receive:
                pending = self._stored_forms(room, batch)
                while len(pending) < MAX_WRITE:
                    try:
                        more_room, more = self._receive.receive_nowait()
                    except trio.WouldBlock:
                        break
                    pending += self._stored_forms(more_room, more)
                await self._write(pending)

    def _stored_forms(self, room: str, batch: Iterable[GossipMessage]) -> list[StoredMessage]:
        stored: list[StoredMessage] = []
        received = now_ms()
        for message in batch:
            try:  # validated by the subscription already; decoding again is ~10 us
                payload = decode(message.data, max_text_bytes=self._max_text_bytes)
            except WireError as error:
                self._observer.message_dropped(room, error.reason)
                continue
            # Texts, and room owners' moderation decisions (peers that were away learn them here)
            if not isinstance(payload, HISTORY_PAYLOADS):  # name announcements are not
                continue
            stored.append(
                StoredMessage.of_text(payload, message.sender, message.envelope, received)
            )
        return stored

    async def _write(self, messages: list[StoredMessage]) -> None:
        if not messages:
            return
        async with self._lock:
            started = time.perf_counter()
            try:
                new = await trio.to_thread.run_sync(self._add_synced, messages)
            except Exception as error:  # disk full, I/O error: counted, logged, node goes on
                self._observer.write_failed()
                self._log.error("archive write failed", messages=len(messages), error=str(error))
                return
            took = time.perf_counter() - started
        self._observer.batch_written(took, len(messages), len(new))
        # Counted from the store, not added up: a chat peer of the same node may have stored
        # some of these first (synced now by this write, but not new to the store).
        self._held = self._history.total_count()
        self._observer.messages_held(self._held)

    def _add_synced(self, messages: list[StoredMessage]) -> list[StoredMessage]:
        return self._history.add_many(messages, sync=True)

    async def _retain_periodically(self) -> None:
        while True:
            await self.apply_retention()
            await trio.sleep(self._settings.retention_interval)

    async def apply_retention(self) -> int:
        """One retention pass over every stored room; returns the messages deleted."""
        deleted = 0
        for room in self._history.rooms():
            policy = self._settings.policy(room)
            max_age_ms = (
                int(policy.max_age_days * 86_400_000) if policy.max_age_days is not None else None
            )
            async with self._lock:
                try:
                    deleted += await trio.to_thread.run_sync(
                        partial(
                            self._history.apply_retention,
                            room,
                            max_count=policy.max_messages,
                            max_age_ms=max_age_ms,
                            max_bytes=policy.max_bytes,
                            now_ms=now_ms(),
                            sender_share=policy.sender_share,
                        )
                    )
                except Exception as error:
                    self._observer.retention_failed()
                    self._log.error("archive retention failed", room=room, error=str(error))
        if deleted:
            self._held -= deleted
            self._observer.messages_held(self._held)
            self._observer.messages_deleted(deleted)
            self._log.info("archive retention deleted messages", deleted=deleted)
        return deleted
