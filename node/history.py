"""Per-room message history in the node's RocksDB store (chat peers keep it; archivers too).

Key layout (RocksDB's byte order is the history order, (sent_at_ms, message_id)):

- ``hist/<room>\\x00<sent_at_ms: 8 bytes big-endian><message id>`` -> the stored message;
- ``hid/<room>\\x00<message id>`` -> the ``hist/`` key (dedup, lookups, deletes);
- ``hcnt/<room>`` -> the room's message count, 8 bytes big-endian, written in the same write
  batch as the messages it counts (so :meth:`History.count` is one read); absent when zero.

Value layout (format 1): ``0x01``, received_at_ms (8 bytes big-endian), sender length (2 bytes
big-endian), the sender PeerId text (UTF-8), then the signed envelope to the end. Room, send
time and id are in the key.

Room names never contain ``\\x00`` (they are letters, digits, ``-_.``), so one room's keys all
lie in ``[hist/<room>\\x00, hist/<room>\\x01)`` and never inside another room's range, even when
one name is a prefix of another. Times are unsigned 64-bit milliseconds.

Not thread-safe: each method reads then writes without a lock (fine on one trio thread).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from p2pchat.node.store import Store
from rocksdict import WriteBatch

MESSAGE_ID_BYTES = 16

_HIST = b"hist/"
_HID = b"hid/"
_HCNT = b"hcnt/"
_FORMAT = 1
_HEADER = struct.Struct(">BQH")  # format, received_at_ms, sender length
_U64 = struct.Struct(">Q")
_MAX_MS = (1 << 64) - 1
_MAX_SENDER = (1 << 16) - 1


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a room's history."""

    room: str
    message_id: bytes  # 16 bytes, unique per message
    sent_at_ms: int  # sender's clock: the ordering key
    received_at_ms: int  # our clock when stored
    sender: str  # sender PeerId text
    envelope: bytes  # the signed GossipSub message, serialized (opaque here)


def _room_name(room: str) -> bytes:
    """The room name in UTF-8; ValueError if it is empty or contains NUL."""
    if not room or "\x00" in room:
        raise ValueError(f"invalid room name {room!r}: must be non-empty and contain no NUL")
    return room.encode()


def _room(prefix: bytes, room: str) -> bytes:
    """``prefix + room + \\x00``: where the room's keys under ``prefix`` start."""
    return prefix + _room_name(room) + b"\x00"


def _end(room_prefix: bytes) -> bytes:
    """The first key after every key that starts with ``room_prefix`` (which ends in NUL)."""
    return room_prefix[:-1] + b"\x01"


def _at(room_prefix: bytes, ms: int) -> bytes:
    """The position of the room's first possible key sent at ``ms`` (clamped to the room)."""
    if ms < 0:
        return room_prefix
    if ms > _MAX_MS:
        return _end(room_prefix)
    return room_prefix + _U64.pack(ms)


def _count_key(room: str) -> bytes:
    return _HCNT + _room_name(room)


def _check(message: StoredMessage) -> None:
    _room_name(message.room)
    if len(message.message_id) != MESSAGE_ID_BYTES:
        raise ValueError(f"message id of {len(message.message_id)} bytes, not {MESSAGE_ID_BYTES}")
    if not (0 <= message.sent_at_ms <= _MAX_MS and 0 <= message.received_at_ms <= _MAX_MS):
        raise ValueError(
            f"times must be 0..2**64-1 ms (sent {message.sent_at_ms},"
            f" received {message.received_at_ms})"
        )
    if len(message.sender.encode()) > _MAX_SENDER:
        raise ValueError("sender is longer than 65535 bytes")


def _encode_value(message: StoredMessage) -> bytes:
    sender = message.sender.encode()
    return _HEADER.pack(_FORMAT, message.received_at_ms, len(sender)) + sender + message.envelope


def _decode(room: str, room_prefix: bytes, key: bytes, value: bytes) -> StoredMessage:
    version, received_at_ms, sender_len = _HEADER.unpack_from(value)
    if version != _FORMAT:
        raise ValueError(f"history value format {version} is not supported")
    start = _HEADER.size
    time_at = len(room_prefix)
    return StoredMessage(
        room=room,
        message_id=key[time_at + _U64.size :],
        sent_at_ms=_U64.unpack_from(key, time_at)[0],
        received_at_ms=received_at_ms,
        sender=value[start : start + sender_len].decode(),
        envelope=value[start + sender_len :],
    )


class History:
    """Room histories: ordered by (sent time, id), deduplicated by id, counted per room.

    Every method raises ValueError for a room name that is empty or contains NUL.
    """

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def add(self, message: StoredMessage) -> bool:
        """Store ``message``; False (and nothing written) if its id is already in the room."""
        return bool(self.add_many([message]))

    def add_many(self, messages: Iterable[StoredMessage]) -> list[StoredMessage]:
        """Store the new ones of ``messages`` in one write batch; returns them, in order.

        Ids already stored for their room, or repeated within ``messages``, are skipped.

        Raises:
            ValueError: a message has a bad room name, an id that is not 16 bytes, a time
                outside 0..2**64-1 or a sender over 65535 bytes; nothing is written then.
        """
        batch = WriteBatch(raw_mode=True)
        added: dict[str, int] = {}
        seen: set[bytes] = set()
        new: list[StoredMessage] = []
        for message in messages:
            _check(message)
            id_key = _room(_HID, message.room) + message.message_id
            if id_key in seen or self._db.get(id_key) is not None:
                continue
            seen.add(id_key)
            key = _room(_HIST, message.room) + _U64.pack(message.sent_at_ms) + message.message_id
            batch.put(key, _encode_value(message))
            batch.put(id_key, key)
            added[message.room] = added.get(message.room, 0) + 1
            new.append(message)
        if not new:
            return new
        for room, count in added.items():
            self._put_count(batch, room, self.count(room) + count)
        self._db.write(batch)
        return new

    def contains(self, room: str, message_id: bytes) -> bool:
        """Whether ``message_id`` is stored for ``room``."""
        return self._db.get(_room(_HID, room) + message_id) is not None

    def count(self, room: str) -> int:
        """Messages stored for ``room`` (one read)."""
        raw = self._db.get(_count_key(room))
        return int(_U64.unpack(raw)[0]) if raw is not None else 0

    def last(self, room: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``room``, oldest first.

        Walks back from the end of the room's key range; reads at most ``limit`` entries.
        """
        prefix = _room(_HIST, room)
        found: list[StoredMessage] = []
        it = self._db.iter()
        it.seek_for_prev(_end(prefix))  # no key equals the end bound, so this is the newest
        while it.valid() and len(found) < limit:
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append(_decode(room, prefix, key, it.value()))
            it.prev()
        found.reverse()
        return found

    def range(
        self, room: str, start_ms: int, end_ms: int | None = None, limit: int | None = None
    ) -> list[StoredMessage]:
        """Messages with ``start_ms <= sent_at_ms < end_ms``, oldest first, at most ``limit``.

        ``end_ms=None`` means no upper bound, ``limit=None`` no limit. Reads at most ``limit``
        entries (plus one to see the end).
        """
        prefix = _room(_HIST, room)
        end = _at(prefix, end_ms) if end_ms is not None else _end(prefix)
        found: list[StoredMessage] = []
        it = self._db.iter()
        it.seek(_at(prefix, start_ms))
        while it.valid() and (limit is None or len(found) < limit):
            key = it.key()
            if key >= end:  # also true for every key after the room's range
                break
            found.append(_decode(room, prefix, key, it.value()))
            it.next()
        return found

    def newest_sent_at(self, room: str) -> int | None:
        """Send time of the room's newest message, or None if it has none."""
        newest = self.last(room, 1)
        return newest[0].sent_at_ms if newest else None

    def rooms(self) -> list[str]:
        """Every room that has at least one stored message, in byte order of the name."""
        rooms: list[str] = []
        it = self._db.iter()
        it.seek(_HCNT)
        while it.valid():
            key = it.key()
            if not key.startswith(_HCNT):
                break
            rooms.append(key[len(_HCNT) :].decode())
            it.next()
        return rooms

    def apply_retention(
        self, room: str, *, max_count: int | None, max_age_ms: int | None, now_ms: int
    ) -> int:
        """Delete the room's oldest messages beyond ``max_count``, and every message sent before
        ``now_ms - max_age_ms``, in one write batch. ``None`` disables that limit.

        Walks from the oldest message and stops at the first one it keeps. Returns the number
        deleted.

        Raises:
            ValueError: ``max_count`` or ``max_age_ms`` is negative.
        """
        if (max_count is not None and max_count < 0) or (max_age_ms is not None and max_age_ms < 0):
            raise ValueError("max_count and max_age_ms must not be negative")
        prefix = _room(_HIST, room)
        id_prefix = _room(_HID, room)
        count = self.count(room)
        excess = max(0, count - max_count) if max_count is not None else 0
        too_old = _at(prefix, now_ms - max_age_ms) if max_age_ms is not None else prefix
        batch = WriteBatch(raw_mode=True)
        deleted = 0
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            if not key.startswith(prefix) or (deleted >= excess and key >= too_old):
                break
            batch.delete(key)
            batch.delete(id_prefix + key[len(prefix) + _U64.size :])
            deleted += 1
            it.next()
        if deleted:
            self._put_count(batch, room, count - deleted)
            self._db.write(batch)
        return deleted

    @staticmethod
    def _put_count(batch: WriteBatch, room: str, count: int) -> None:
        if count:
            batch.put(_count_key(room), _U64.pack(count))
        else:
            batch.delete(_count_key(room))
