"""Outbox: what this peer sends, and the queue of what waits for someone to receive it.

A typed text is checked against what peers accept (size, encoding), stamped with a send time
later than this peer's previous one and than the newest message it has seen live (within
:data:`SEEN_AHEAD_MS`), and published signed on its room's topic. A text typed
while nobody else is in the room is kept in the store (:class:`PendingQueue`) and published,
in typing order, once a peer joins (:meth:`Outbox.flush`).
"""

from __future__ import annotations

from typing import Protocol

from p2pchat.node.history import now_ms
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.chat import ChatText, WireError, decode, encode, new_message_id
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, NoticeEvent

NAMESPACE = "pend"  # of the node's store (NodeContext.keys): ``pend/...`` on disk

# How far ahead of our clock a message we saw may push our next send time. A sender's burst
# runs at most about 50 ms ahead (its budget is 50 messages at once, dated 1 ms apart), so a
# reply typed right after it is dated after it; a message dated further ahead (any sender may
# date up to 5 minutes ahead) moves our clock no more than this.
SEEN_AHEAD_MS = 1000


class Publisher(Protocol):
    """The part of the node's pubsub the outbox uses."""

    async def publish(self, topic: str, data: bytes) -> None: ...

    def has_subscribers(self, topic: str) -> bool: ...


def _pending_prefix(room: str) -> bytes:
    return room.encode() + b"\x00"


def _pending_key(message: ChatText) -> bytes:
    """Pending messages sort by send time, so a queue is flushed in the order it was typed."""
    return _pending_prefix(message.room) + message.sent_at_ms.to_bytes(8, "big") + message.id


class PendingQueue:
    """Encoded messages waiting for their room to have a receiver, in the node's store.

    ``keys`` is the :data:`NAMESPACE` namespace of the node's store
    (``ctx.keys(NAMESPACE)``). Key layout, on disk:
    ``pend/<room>\\x00<sent_at_ms: 8 bytes big-endian><message id>`` -> the encoded message.
    Room names never contain ``\\x00``, so one room's queue is one contiguous run of keys, in
    send-time order. Only this peer adds to it (never a remote peer).
    """

    def __init__(self, keys: KeyValue) -> None:
        self._keys = keys

    def put(self, message: ChatText, data: bytes) -> None:
        """Queue ``data``, the encoding of ``message``, for ``message.room``."""
        self._keys.put(_pending_key(message), data)

    def queued(self, room: str) -> list[tuple[bytes, bytes]]:
        """(key, data) of every message queued for ``room``, oldest first."""
        return list(self._keys.items(_pending_prefix(room)))

    def remove(self, key: bytes) -> None:
        """Forget one queued message (once it is published)."""
        self._keys.delete(key)


class OutboxObserver(Protocol):
    """What the outbox reports (the role's metrics implement it). Called inline."""

    def message_published(self) -> None:
        """A text was published on its room's topic (sent now, or delivered from the queue)."""


class Outbox:
    """Sends texts to rooms (see the module's note)."""

    def __init__(
        self,
        pubsub: Publisher,
        pending: PendingQueue,
        observer: OutboxObserver,
        max_text_bytes: int,
    ) -> None:
        self._pubsub = pubsub
        self._pending = pending
        self._observer = observer
        self._max_text_bytes = max_text_bytes
        self._last_sent_ms = 0
        self._last_seen_ms = 0

    def saw(self, sent_at_ms: int) -> None:
        """A message dated ``sent_at_ms`` arrived live: date our next one after it (up to
        :data:`SEEN_AHEAD_MS` ahead of our clock), so that a reply never sorts before the
        message it answers, on any peer."""
        seen = min(sent_at_ms, now_ms() + SEEN_AHEAD_MS)
        if seen > self._last_seen_ms:
            self._last_seen_ms = seen

    async def send(
        self, room: str, sender_name: str, text: str, *, action: bool = False
    ) -> ChatEvent | None:
        """Publish ``text`` to ``room`` as ``sender_name`` (``action``: a /me), or queue it
        while nobody else is in the room. Returns what to tell the user: an error (not sent), a
        notice (queued), or None (published; it shows when it comes back through the room's
        subscription)."""
        command = "me" if action else None
        size = len(text.encode())
        if size > self._max_text_bytes:
            return ErrorEvent(
                "message_too_long",
                f"message not sent: {size} bytes, the limit is {self._max_text_bytes}",
                command,
            )
        message = ChatText(
            id=new_message_id(),
            room=room,
            sender_name=sender_name,
            text=text,
            sent_at_ms=self._next_send_time(),
            action=action,
        )
        try:
            data = encode(message)
            decode(data, max_text_bytes=self._max_text_bytes)  # what peers accept, checked now
        except (WireError, ValueError) as error:
            return ErrorEvent("not_sent", f"message not sent: {error}", command)
        if not self._pubsub.has_subscribers(room):
            self._pending.put(message, data)
            return NoticeEvent(
                "queued",
                f"nobody else is in {room} yet: message queued, it will be delivered when a "
                "peer joins",
                {"room": room},
            )
        await self.publish(room, data)
        return None

    async def publish(self, room: str, data: bytes) -> None:
        """Publish encoded ``data`` on ``room``'s topic and count it."""
        await self._pubsub.publish(room, data)
        self._observer.message_published()

    async def flush(self, room: str) -> int:
        """Publish every message queued for ``room``, oldest first; returns how many. Each is
        removed from the queue once published (a failure leaves the rest queued)."""
        queued = self._pending.queued(room)
        for key, data in queued:
            await self.publish(room, data)
            self._pending.remove(key)
        return len(queued)

    def _next_send_time(self) -> int:
        """Now, but always later than this peer's previous message and than the newest one it
        saw (:meth:`saw`): history is ordered by (send time, random id), so two lines typed or
        pasted within one millisecond would otherwise show in random order everywhere, and a
        reply to a burst (dated up to its length in ms ahead) could sort before the burst's
        last message."""
        self._last_sent_ms = max(now_ms(), self._last_sent_ms + 1, self._last_seen_ms + 1)
        return self._last_sent_ms
