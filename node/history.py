"""Per-room message history in the node's RocksDB store (chat peers keep it; archivers too).

Key layout (RocksDB's byte order is the history order):

- ``hist/<room>\\x00<sent_at_ms: 8 bytes big-endian><message id>`` -> the stored message;
- ``hid/<room>\\x00<message id>`` -> the ``hist/`` key (dedup, lookups, deletes);
- ``hcnt/<room>`` -> the room's message count, 8 bytes big-endian, updated in the same write
  batch as the messages, so :meth:`History.count` is one read.

Value layout (format 1): ``0x01``, received_at_ms (8 bytes big-endian), sender length (2 bytes)
and sender PeerId (UTF-8), then the signed envelope to the end. Room, send time and id are in
the key.

Room names never contain ``\\x00`` (they are letters, digits, ``-_.``), so one room's keys can
never fall inside another's range, even when one name is a prefix of another.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from p2pchat.node.store import Store
from rocksdict import WriteBatch

_HIST = b"hist/"
_HID = b"hid/"
_HCNT = b"hcnt/"
_FORMAT = 1
_HEADER = struct.Struct(">BQH")
_TIME = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a room's history."""

    room: str
    message_id: bytes
    sent_at_ms: int  # sender's clock: the ordering key
    received_at_ms: int  # our clock when stored
    sender: str  # sender PeerId text
    envelope: bytes  # the signed GossipSub message, serialized (opaque here)


def _room_prefix(prefix: bytes, room: str) -> bytes:
    if "\x00" in room or not room:
        raise ValueError(f"invalid room name {room!r}")
    return prefix + room.encode() + b"\x00"


def _hist_key(room: str, sent_at_ms: int, message_id: bytes) -> bytes:
    return _room_prefix(_HIST, room) + _TIME.pack(sent_at_ms) + message_id


def _encode_value(message: StoredMessage) -> bytes:
    sender = message.sender.encode()
    return _HEADER.pack(_FORMAT, message.received_at_ms, len(sender)) + sender + message.envelope


def _decode(key: bytes, value: bytes) -> StoredMessage:
    body = key[len(_HIST) :]
    room_bytes, _, rest = body.partition(b"\x00")
    (sent_at_ms,) = _TIME.unpack_from(rest)
    version, received_at_ms, sender_len = _HEADER.unpack_from(value)
    if version != _FORMAT:
        raise ValueError(f"history value format {version} is not supported")
    start = _HEADER.size
    return StoredMessage(
        room=room_bytes.decode(),
        message_id=rest[_TIME.size :],
        sent_at_ms=sent_at_ms,
        received_at_ms=received_at_ms,
        sender=value[start : start + sender_len].decode(),
        envelope=value[start + sender_len :],
    )


class History:
    """Room histories: ordered by (sent time, id), deduplicated by id, counted per room."""

    def __init__(self, store: Store) -> None:
        self._db = store.db

    def add(self, message: StoredMessage) -> bool:
        """Store ``message``; False (and nothing written) if its id is already in the room."""
        return self.add_many([message]) == 1

    def add_many(self, messages: Iterable[StoredMessage]) -> int:
        """Store new messages in one write batch; returns how many were new."""
        batch = WriteBatch(raw_mode=True)
        added: dict[str, int] = {}
        seen: set[bytes] = set()
        for message in messages:
            id_key = _room_prefix(_HID, message.room) + message.message_id
            if id_key in seen or self._db.get(id_key) is not None:
                continue
            seen.add(id_key)
            key = _hist_key(message.room, message.sent_at_ms, message.message_id)
            batch.put(key, _encode_value(message))
            batch.put(id_key, key)
            added[message.room] = added.get(message.room, 0) + 1
        for room, count in added.items():
            batch.put(_HCNT + room.encode(), _TIME.pack(self.count(room) + count))
        if added:
            self._db.write(batch)
        return sum(added.values())

    def contains(self, room: str, message_id: bytes) -> bool:
        """Whether ``message_id`` is stored for ``room``."""
        return self._db.get(_room_prefix(_HID, room) + message_id) is not None

    def count(self, room: str) -> int:
        """Messages stored for ``room``."""
        raw = self._db.get(_HCNT + room.encode())
        return int(_TIME.unpack(raw)[0]) if raw is not None else 0

    def last(self, room: str, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages of ``room``, oldest first (walks back from the end)."""
        prefix = _room_prefix(_HIST, room)
        it = self._db.iter()
        it.seek_for_prev(prefix + b"\xff" * 9)
        found: list[StoredMessage] = []
        while it.valid() and len(found) < limit:
            key = it.key()
            if not key.startswith(prefix):
                break
            found.append(_decode(key, it.value()))
            it.prev()
        found.reverse()
        return found

    def range(
        self, room: str, start_ms: int, end_ms: int | None = None, limit: int | None = None
    ) -> list[StoredMessage]:
        """Messages with ``start_ms <= sent_at_ms < end_ms``, oldest first, at most ``limit``."""
        found: list[StoredMessage] = []
        for message in self._scan(room, start_ms):
            if (end_ms is not None and message.sent_at_ms >= end_ms) or (
                limit is not None and len(found) >= limit
            ):
                break
            found.append(message)
        return found

    def newest_sent_at(self, room: str) -> int | None:
        """Send time of the room's newest message, or None if it has none."""
        newest = self.last(room, 1)
        return newest[0].sent_at_ms if newest else None

    def rooms(self) -> list[str]:
        """Every room with a stored count (rooms that ever had a message)."""
        rooms = []
        it = self._db.iter()
        it.seek(_HCNT)
        while it.valid() and it.key().startswith(_HCNT):
            rooms.append(it.key()[len(_HCNT) :].decode())
            it.next()
        return rooms

    def apply_retention(
        self, room: str, *, max_count: int | None, max_age_ms: int | None, now_ms: int
    ) -> int:
        """Delete the room's oldest messages beyond ``max_count`` and older than ``max_age_ms``.

        Returns the number deleted.
        """
        excess = max(0, self.count(room) - max_count) if max_count is not None else 0
        cutoff = now_ms - max_age_ms if max_age_ms is not None else None
        batch = WriteBatch(raw_mode=True)
        deleted = 0
        for message in self._scan(room, 0):
            too_old = cutoff is not None and message.sent_at_ms < cutoff
            if deleted >= excess and not too_old:
                break
            batch.delete(_hist_key(room, message.sent_at_ms, message.message_id))
            batch.delete(_room_prefix(_HID, room) + message.message_id)
            deleted += 1
        if deleted:
            batch.put(_HCNT + room.encode(), _TIME.pack(self.count(room) - deleted))
            self._db.write(batch)
        return deleted

    def _scan(self, room: str, start_ms: int) -> Iterator[StoredMessage]:
        prefix = _room_prefix(_HIST, room)
        it = self._db.iter()
        it.seek(prefix + _TIME.pack(start_ms))
        while it.valid():
            key = it.key()
            if not key.startswith(prefix):
                return
            yield _decode(key, it.value())
            it.next()
