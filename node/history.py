"""Per-room message history in the node's RocksDB store (chat peers keep it; archivers too).

Key layout (RocksDB's byte order is the history order, (sent_at_ms, message_id)):

- ``hist/<room>\\x00<sent_at_ms: 8 bytes big-endian><message id>`` -> the stored message;
- ``hid/<room>\\x00<message id>`` -> the ``hist/`` key (dedup, lookups, deletes);
- ``hmeta/ids`` -> present once every id is a history id (:func:`history_id`; stores written
  before 2026-12-02 are re-keyed once, when opened);
- ``hcnt/<room>`` -> the room's message count and stored bytes (keys + values), 8 bytes
  big-endian each, written in the same write batch as the messages they count (so
  :meth:`History.count` and :meth:`History.size` are one read); absent when the room is empty.
  Stores written before sizes were kept hold the count alone; their size reads as 0 until the
  room is emptied.
- ``hsnd/<room>\x00<sender length: 2 bytes><sender><sent_at_ms><message id>`` -> empty: the
  room's messages by sender, each sender's oldest first (the fair trim deletes a sender's
  oldest without walking the room);
- ``hscnt/<room>\x00<sender length: 2 bytes><sender>`` -> how many messages the sender holds
  in the room (8 bytes big-endian), in the same write batch as the messages; absent at 0;
- ``hmeta/senders`` -> present once the two above index every message (stores written before
  2026-12-05 are indexed once, when opened). The index's entries (about 80 bytes a message)
  are not part of a room's size (:meth:`History.size`, what ``max_bytes`` bounds).

Value layout (format 1): ``0x01``, received_at_ms (8 bytes big-endian), sender length (2 bytes
big-endian), the sender PeerId text (UTF-8), then the signed envelope to the end. Room, send
time and id are in the key. Format 2, written when the data dir has a passphrase (the store's
:attr:`~p2pchat.node.store.Store.keys`): the same header (``0x02``) and sender, then the
envelope sealed (:meth:`~p2pchat.node.atrest.AtRestKeys.seal`) with the ``hist/`` key as
associated data: the body is unreadable without the passphrase, and a body moved under another
key does not open. Room, times, sender and sizes stay readable: they are the keys and the
index every query, the retention and the per-sender quotas use.

Room names never contain ``\\x00`` (they are letters, digits, ``-_.``), so one room's keys all
lie in ``[hist/<room>\\x00, hist/<room>\\x01)`` and never inside another room's range, even when
one name is a prefix of another. Times are unsigned 64-bit milliseconds.

Durability: ``add_many(..., sync=True)`` returns only once the batch is in the write-ahead
log on disk (fdatasync), so a message it reported as added survives ``kill -9`` and power loss;
the archiver acknowledges nothing before that. Without ``sync`` a crash of the process (not of
the machine) loses nothing either: RocksDB has written the WAL, the kernel holds it.

Writes are serialized by a lock (each reads counts, then writes them): an archiver writes from a
worker thread while a chat peer of the same node writes from the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from p2pchat.node.atrest import AtRestKeys, SealError
from p2pchat.node.p2p.envelopes import envelope_data
from p2pchat.node.store import Store
from p2pchat.node.wire.chat import ChatText, Moderation, PrivateText, WireError, decode
from rocksdict import WriteBatch, WriteOptions

MESSAGE_ID_BYTES = 16

MAX_PAGE = 500  # the most messages one page or lookup returns

_HIST = b"hist/"
_HID = b"hid/"
_HCNT = b"hcnt/"
_HSND = b"hsnd/"
_HSCNT = b"hscnt/"
_FORMAT = 1
_FORMAT_SEALED = 2
# Present once every stored message id is its history_id() (stores written before 2026-12-02
# used the id the sender chose); see History._bind_ids_to_senders.
_IDS_KEY = b"hmeta/ids"
_IDS_BOUND = b"\x01"
_SENDERS_KEY = b"hmeta/senders"
_SENDERS_INDEXED = b"\x01"
_REKEY_BATCH = 20_000  # writes per batch while re-keying
_HEADER = struct.Struct(">BQH")  # format, received_at_ms, sender length
_U64 = struct.Struct(">Q")
_LEN = struct.Struct(">H")
_TOTALS = struct.Struct(">QQ")  # message count, bytes
_MAX_MS = (1 << 64) - 1
_MAX_SENDER = (1 << 16) - 1


def now_ms() -> int:
    """The wall clock in Unix milliseconds, the unit of every history time."""
    return int(time.time() * 1000)


def _synced() -> WriteOptions:
    options = WriteOptions()
    options.sync = True
    return options


_SYNCED = _synced()


class UnknownCursor(ValueError):
    """A page cursor that names no message of the room (never "start from anywhere")."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a room's history, oldest first; ``more`` when the range holds further
    messages in the direction of travel (continue from ``messages[-1]`` going forward, from
    ``messages[0]`` going backward)."""

    messages: list[StoredMessage]
    more: bool


def history_id(sender: str, chosen_id: bytes) -> bytes:
    """The id a chat message is stored, served and shown under: the first 16 bytes of SHA-256
    over its sender's PeerId (text, UTF-8), a NUL, and the id the sender chose for it.

    A sender chooses its messages' ids, so anybody can choose somebody else's: keyed by that id
    alone, a peer that saw Alice's message and sent one of its own under the same id (signed by
    itself: valid) had Alice's message dropped as a duplicate wherever its copy came first.
    Bound to the signer, an id can only collide with the same sender's own messages.
    """
    digest = hashlib.sha256(sender.encode() + b"\x00" + chosen_id).digest()
    return digest[:MESSAGE_ID_BYTES]


def chat_text_of(envelope: bytes) -> ChatText | None:
    """The chat text inside a stored signed ``envelope``; None if it holds none (or does not
    parse: a store written by an older or damaged node)."""
    try:
        payload = decode(envelope_data(envelope), max_text_bytes=1 << 20)
    except (DecodeError, WireError, ValueError):
        return None
    return payload if isinstance(payload, ChatText) else None


def _chosen_id(envelope: bytes) -> bytes | None:
    """The id the sender chose for the chat text inside ``envelope``; None if it holds none."""
    text = chat_text_of(envelope)
    return text.id if text is not None else None


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One message of a room's history."""

    room: str
    message_id: bytes  # 16 bytes, unique per message: history_id() of its sender and payload id
    sent_at_ms: int  # sender's clock: the ordering key
    received_at_ms: int  # our clock when stored
    sender: str  # sender PeerId text
    envelope: bytes  # the signed GossipSub message, serialized (opaque here)

    @classmethod
    def of_text(
        cls,
        text: ChatText | Moderation | PrivateText,
        sender: str,
        envelope: bytes,
        received_at_ms: int,
    ) -> StoredMessage:
        """The history entry of chat text ``text`` (or of a room owner's moderation decision,
        kept in the history so that peers that were away and archivers learn it), verified as
        signed by ``sender`` in ``envelope``."""
        return cls(
            room=text.room,
            message_id=history_id(sender, text.id),
            sent_at_ms=text.sent_at_ms,
            received_at_ms=received_at_ms,
            sender=sender,
            envelope=envelope,
        )


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


def _entry_bytes(key: bytes, value: bytes, id_key: bytes) -> int:
    """What one message adds to its room's size: both of its entries."""
    return len(key) + len(value) + len(id_key) + len(key)


def _sender_part(sender: bytes) -> bytes:
    """A sender's part of its index keys: its length first, so that no sender's keys lie
    among another's (one PeerId text is never a prefix of another's keys)."""
    return _LEN.pack(len(sender)) + sender


def _sender_of(value: bytes) -> bytes:
    """The sender (PeerId text, UTF-8) of a stored value."""
    sender_len = _HEADER.unpack_from(value)[2]
    return value[_HEADER.size : _HEADER.size + sender_len]


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


def _encode_value(message: StoredMessage, key: bytes, keys: AtRestKeys | None) -> bytes:
    """The stored value of ``message`` under ``key``: format 1, or 2 (sealed) with ``keys``."""
    sender = message.sender.encode()
    if keys is None:
        header = _HEADER.pack(_FORMAT, message.received_at_ms, len(sender))
        return header + sender + message.envelope
    header = _HEADER.pack(_FORMAT_SEALED, message.received_at_ms, len(sender))
    return header + sender + keys.seal(key, message.envelope)


def reseal_value(value: bytes, key: bytes, keys: AtRestKeys, seal: bool) -> bytes:
    """``value`` (stored under ``key``) in format 2 if ``seal``, else in format 1; unchanged if
    it is in that format already (for ``p2pchat passphrase set|remove``).

    Raises:
        ValueError: an unknown format, or a sealed body that does not open.
    """
    version, received_at_ms, sender_len = _HEADER.unpack_from(value)
    if version == (_FORMAT_SEALED if seal else _FORMAT):
        return value
    start = _HEADER.size + sender_len
    head = value[_HEADER.size : start]
    if version == _FORMAT:
        body = keys.seal(key, value[start:])
    elif version == _FORMAT_SEALED:
        body = keys.open(key, value[start:])
    else:
        raise ValueError(f"history value format {version} is not supported")
    new_version = _FORMAT_SEALED if seal else _FORMAT
    return _HEADER.pack(new_version, received_at_ms, sender_len) + head + body


def _moved(value: bytes, old_key: bytes, new_key: bytes, keys: AtRestKeys | None) -> bytes:
    """``value`` re-keyed from ``old_key`` to ``new_key`` (a sealed body is bound to its key)."""
    if keys is None or value[0] != _FORMAT_SEALED:
        return value
    return reseal_value(reseal_value(value, old_key, keys, False), new_key, keys, True)


def _decode(
    keys: AtRestKeys | None, room: str, room_prefix: bytes, key: bytes, value: bytes
) -> StoredMessage:
    version, received_at_ms, sender_len = _HEADER.unpack_from(value)
    start = _HEADER.size
    envelope = value[start + sender_len :]
    if version == _FORMAT_SEALED:
        if keys is None:
            raise ValueError("history value is sealed and the data dir's keys are not given")
        envelope = keys.open(key, envelope)  # SealError: tampered, or moved from another key
    elif version != _FORMAT:
        raise ValueError(f"history value format {version} is not supported")
    time_at = len(room_prefix)
    return StoredMessage(
        room=room,
        message_id=key[time_at + _U64.size :],
        sent_at_ms=_U64.unpack_from(key, time_at)[0],
        received_at_ms=received_at_ms,
        sender=value[start : start + sender_len].decode(),
        envelope=envelope,
    )


def _cuts(held: dict[bytes, int], excess: int, floor: int) -> dict[bytes, int]:
    """How many messages to take from each sender so that about ``excess`` go, the largest
    holders first, none cut under ``floor``: the highest level L >= ``floor`` with
    sum(max(0, n - L)) >= ``excess`` (or ``floor``, if even that is not enough)."""

    def taken(level: int) -> int:
        return sum(n - level for n in held.values() if n > level)

    low, high = floor, max(held.values(), default=floor)
    if taken(low) <= excess:
        level = low
    else:
        while low < high:  # the highest level that still takes at least ``excess``
            middle = (low + high + 1) // 2
            if taken(middle) >= excess:
                low = middle
            else:
                high = middle - 1
        level = low
    return {sender: n - level for sender, n in held.items() if n > level}


class History:
    """Room histories: ordered by (sent time, id), deduplicated by id, counted per room.

    Every method raises ValueError for a room name that is empty or contains NUL.
    """

    def __init__(self, store: Store) -> None:
        self._db = store.db
        self._keys = store.keys  # with a passphrase: bodies sealed (format 2)
        self._writing = threading.Lock()
        # A write not synced to disk yet: a synced add_many syncs it too (see add_many).
        self._unsynced = False
        if self._db.get(_IDS_KEY) is None:
            self._bind_ids_to_senders()
        if self._db.get(_SENDERS_KEY) is None:  # after re-keying: the index names the ids
            self._index_senders()

    def _index_senders(self) -> None:
        """Once per store: index every stored message by sender and count each sender's
        (``hsnd/``, ``hscnt/``). One walk per room; safe to interrupt: index entries are
        rewritten as they were and a room's counts are written whole, from its full walk."""
        batch = WriteBatch(raw_mode=True)
        for room in self.rooms():
            prefix = _room(_HIST, room)
            by_sender, counts = _room(_HSND, room), _room(_HSCNT, room)
            held: dict[bytes, int] = {}
            it = self._db.iter()
            it.seek(prefix)
            while it.valid() and it.key().startswith(prefix):
                sender = _sender_of(it.value())
                held[sender] = held.get(sender, 0) + 1
                batch.put(by_sender + _sender_part(sender) + it.key()[len(prefix) :], b"")
                if len(batch) >= _REKEY_BATCH:
                    self._db.write(batch)
                    batch = WriteBatch(raw_mode=True)
                it.next()
            for sender, n in held.items():
                batch.put(counts + _sender_part(sender), _U64.pack(n))
        batch.put(_SENDERS_KEY, _SENDERS_INDEXED)
        self._db.write(batch, _SYNCED)

    def held_by(self, room: str, sender: str) -> int:
        """Messages ``sender`` (PeerId text) holds in ``room`` (one read)."""
        raw = self._db.get(_room(_HSCNT, room) + _sender_part(sender.encode()))
        return int(_U64.unpack(raw)[0]) if raw is not None else 0

    def _charge(self, batch: WriteBatch, room: str, changes: dict[bytes, int]) -> None:
        """Write the senders' counts of ``room`` changed by ``changes`` (sender -> messages
        added, negative when deleted) into ``batch``."""
        counts = _room(_HSCNT, room)
        for sender, change in changes.items():
            key = counts + _sender_part(sender)
            raw = self._db.get(key)
            held = (int(_U64.unpack(raw)[0]) if raw is not None else 0) + change
            if held > 0:
                batch.put(key, _U64.pack(held))
            else:
                batch.delete(key)

    def _bind_ids_to_senders(self) -> None:
        """Once per store: re-key the messages stored before ids were bound to their senders
        (under the id the sender chose) under their :func:`history_id`, so that a message
        caught up again is a duplicate, not a second copy.

        Key lengths do not change, so neither do counts and sizes. Safe to interrupt: a message
        already re-keyed is skipped when the work is resumed at the next start. A message whose
        history id is already taken (an old store could hold another sender's message under
        any id) stays under its old id: re-keying it would overwrite or unindex the other one.
        """
        batch = WriteBatch(raw_mode=True)
        for room in self.rooms():
            prefix, id_prefix = _room(_HIST, room), _room(_HID, room)
            it = self._db.iter()  # a snapshot: the keys written below are not visited
            it.seek(prefix)
            while it.valid() and it.key().startswith(prefix):
                key, value = it.key(), it.value()
                try:
                    message = _decode(self._keys, room, prefix, key, value)
                except ValueError:  # a format this version does not read: left as it is
                    it.next()
                    continue
                chosen = _chosen_id(message.envelope)
                bound = history_id(message.sender, chosen) if chosen is not None else None
                if (
                    bound is not None
                    and bound != message.message_id
                    and self._db.get(id_prefix + bound) is None
                ):
                    new_key = key[:-MESSAGE_ID_BYTES] + bound
                    batch.delete(key)
                    batch.delete(id_prefix + message.message_id)
                    batch.put(new_key, _moved(value, key, new_key, self._keys))
                    batch.put(id_prefix + bound, new_key)
                if len(batch) >= _REKEY_BATCH:
                    self._db.write(batch)
                    batch = WriteBatch(raw_mode=True)
                it.next()
        batch.put(_IDS_KEY, _IDS_BOUND)
        self._db.write(batch, _SYNCED)

    def add(self, message: StoredMessage) -> bool:
        """Store ``message``; False (and nothing written) if its id is already in the room."""
        return bool(self.add_many([message]))

    def add_many(
        self, messages: Iterable[StoredMessage], *, sync: bool = False
    ) -> list[StoredMessage]:
        """Store the new ones of ``messages`` in one write batch; returns them, in order.

        Ids already stored for their room, or repeated within ``messages``, are skipped. With
        ``sync``, returns only after the batch is synced to disk (see the module's note).

        Raises:
            ValueError: a message has a bad room name, an id that is not 16 bytes, a time
                outside 0..2**64-1 or a sender over 65535 bytes; nothing is written then.
        """
        with self._writing:
            new = self._add_many(messages)
            # Synced also when nothing here was new: a chat peer of the same node may have
            # stored these unsynced, and what an archiver acknowledges must be on disk.
            syncing = sync and (bool(new) or self._unsynced)
            if syncing:
                self._unsynced = False
        if syncing:  # outside the lock: a writer on the event loop never waits for an fsync
            self._db.flush_wal(True)
        return new

    def _add_many(self, messages: Iterable[StoredMessage]) -> list[StoredMessage]:
        batch = WriteBatch(raw_mode=True)
        added: dict[str, tuple[int, int]] = {}  # room -> (messages, bytes) added
        charged: dict[str, dict[bytes, int]] = {}  # room -> sender -> messages added
        seen: set[bytes] = set()
        new: list[StoredMessage] = []
        prefixes: dict[str, tuple[bytes, bytes, bytes]] = {}  # room -> its hid, hist, hsnd
        for message in messages:
            _check(message)
            room_prefixes = prefixes.get(message.room)
            if room_prefixes is None:
                room_prefixes = prefixes[message.room] = (
                    _room(_HID, message.room),
                    _room(_HIST, message.room),
                    _room(_HSND, message.room),
                )
            id_prefix, prefix, by_sender = room_prefixes
            id_key = id_prefix + message.message_id
            if id_key in seen or self._db.get(id_key) is not None:
                continue
            seen.add(id_key)
            at = _U64.pack(message.sent_at_ms) + message.message_id
            key = prefix + at
            value = _encode_value(message, key, self._keys)
            batch.put(key, value)
            batch.put(id_key, key)
            sender = message.sender.encode()
            batch.put(by_sender + _sender_part(sender) + at, b"")
            senders = charged.setdefault(message.room, {})
            senders[sender] = senders.get(sender, 0) + 1
            count, size = added.get(message.room, (0, 0))
            added[message.room] = (count + 1, size + _entry_bytes(key, value, id_key))
            new.append(message)
        if not new:
            return new
        for room, (count, size) in added.items():
            old_count, old_size = self._totals(room)
            self._put_totals(batch, room, old_count + count, old_size + size)
            self._charge(batch, room, charged[room])
        self._db.write(batch)
        self._unsynced = True
        return new

    def _read(
        self, found: list[StoredMessage], room: str, prefix: bytes, key: bytes, value: bytes
    ) -> None:
        """Append the message stored as ``key``, ``value`` to ``found``; a sealed body that does
        not open (tampered, or moved under another key) is left out, never shown."""
        with contextlib.suppress(SealError):
            found.append(_decode(self._keys, room, prefix, key, value))

    def resize(self, deltas: dict[str, int]) -> None:
        """Add ``deltas`` (room -> bytes) to the rooms' sizes: their values were rewritten in
        place with another length (sealed or opened: ``p2pchat passphrase set|remove``)."""
        with self._writing:
            batch = WriteBatch(raw_mode=True)
            for room, delta in deltas.items():
                count, size = self._totals(room)
                if count:
                    self._put_totals(batch, room, count, max(0, size + delta))
            self._db.write(batch, _SYNCED)

    def contains(self, room: str, message_id: bytes) -> bool:
        """Whether ``message_id`` is stored for ``room``."""
        return self._db.get(_room(_HID, room) + message_id) is not None

    def count(self, room: str) -> int:
        """Messages stored for ``room`` (one read)."""
        return self._totals(room)[0]

    def size(self, room: str) -> int:
        """Bytes ``room``'s messages occupy in the store (keys and values, before compression)."""
        return self._totals(room)[1]

    def _totals(self, room: str) -> tuple[int, int]:
        raw = self._db.get(_count_key(room))
        if raw is None:
            return 0, 0
        if len(raw) == _U64.size:  # written before sizes were kept
            return int(_U64.unpack(raw)[0]), 0
        count, size = _TOTALS.unpack(raw)
        return int(count), int(size)

    def held(self, room: str, message_ids: Iterable[bytes]) -> set[bytes]:
        """Those of ``message_ids`` that ``room`` holds (one index read each, no value read)."""
        id_prefix = _room(_HID, room)
        return {i for i in dict.fromkeys(message_ids) if self._db.get(id_prefix + i) is not None}

    def lookup(self, room: str, message_ids: Iterable[bytes]) -> list[StoredMessage]:
        """The messages of ``room`` among ``message_ids`` (unknown ids are left out), in
        history order."""
        prefix = _room(_HIST, room)
        id_prefix = _room(_HID, room)
        found: list[StoredMessage] = []
        for message_id in dict.fromkeys(message_ids):
            key = self._db.get(id_prefix + message_id)
            if key is None:
                continue
            value = self._db.get(key)
            if value is not None:
                self._read(found, room, prefix, key, value)
        found.sort(key=lambda m: (m.sent_at_ms, m.message_id))
        return found

    def page(
        self,
        room: str,
        *,
        start_ms: int | None = None,
        end_ms: int | None = None,
        after: bytes | None = None,
        limit: int = 50,
        forward: bool = True,
    ) -> Page:
        """Up to ``limit`` messages with ``start_ms <= sent_at_ms < end_ms`` (None: unbounded),
        oldest first. Forward takes the oldest of the range, backward the newest.

        ``after`` is a cursor: the id of the last message of the previous page in the
        direction of travel; the page continues strictly beyond it. Reads at most ``limit + 1``
        entries.

        Raises:
            UnknownCursor: ``after`` is not a message of ``room``.
            ValueError: ``limit`` is not 1..:data:`MAX_PAGE`.
        """
        if not 1 <= limit <= MAX_PAGE:
            raise ValueError(f"limit must be 1..{MAX_PAGE}, not {limit}")
        prefix = _room(_HIST, room)
        low = _at(prefix, start_ms) if start_ms is not None else prefix
        high = _at(prefix, end_ms) if end_ms is not None else _end(prefix)
        cursor: bytes | None = None
        if after is not None:
            cursor = self._db.get(_room(_HID, room) + after) if after else None
            if cursor is None:
                raise UnknownCursor(f"cursor {after.hex()} is not a message of room {room}")
        found: list[StoredMessage] = []
        it = self._db.iter()
        if forward:
            lower = low if cursor is None else max(low, cursor)
            it.seek(lower)
            if it.valid() and it.key() == cursor:
                it.next()
            while it.valid() and len(found) <= limit:
                key = it.key()
                if key >= high:  # also true for every key after the room's range
                    break
                self._read(found, room, prefix, key, it.value())
                it.next()
        else:
            upper = high if cursor is None else min(high, cursor)  # exclusive
            it.seek_for_prev(upper)
            if it.valid() and it.key() >= upper:
                it.prev()
            while it.valid() and len(found) <= limit:
                key = it.key()
                if key < low:  # also true for every key before the room's range
                    break
                self._read(found, room, prefix, key, it.value())
                it.prev()
        more = len(found) > limit
        del found[limit:]
        if not forward:
            found.reverse()
        return Page(found, more)

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
            self._read(found, room, prefix, key, it.value())
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
            self._read(found, room, prefix, key, it.value())
            it.next()
        return found

    def newest_sent_at(self, room: str) -> int | None:
        """Send time of the room's newest message, or None if it has none."""
        newest = self.last(room, 1)
        return newest[0].sent_at_ms if newest else None

    def total_count(self) -> int:
        """Messages stored in every room together (one pass over the rooms' counts)."""
        total = 0
        it = self._db.iter()
        it.seek(_HCNT)
        while it.valid() and it.key().startswith(_HCNT):
            total += _U64.unpack_from(it.value())[0]  # the count leads both value formats
            it.next()
        return int(total)

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
        self,
        room: str,
        *,
        max_count: int | None,
        max_age_ms: int | None,
        now_ms: int,
        max_bytes: int | None = None,
        sender_share: float | None = None,
    ) -> int:
        """Delete the room's oldest messages beyond ``max_count`` or ``max_bytes`` (see
        :meth:`size`), and every message sent before ``now_ms - max_age_ms``, in one write
        batch. ``None`` disables that limit.

        With ``sender_share`` (0 < share <= 1), the messages over ``max_count`` are charged to
        their senders first: while a sender holds more than ``sender_share * max_count`` of the
        room, its oldest go before anyone else's (:meth:`_trim_fairly`), so one sender's flood
        cannot push the others' messages out; only what is still over the cap then goes
        oldest first.

        Walks from the oldest message and stops at the first one it keeps. Returns the number
        deleted.

        Raises:
            ValueError: a limit is negative, or the share not in (0, 1].
        """
        limits = (max_count, max_age_ms, max_bytes)
        if any(limit is not None and limit < 0 for limit in limits):
            raise ValueError("max_count, max_age_ms and max_bytes must not be negative")
        if sender_share is not None and not 0 < sender_share <= 1:
            raise ValueError("sender_share must be in (0, 1]")
        with self._writing:
            fair = 0
            if sender_share is not None and max_count is not None:
                fair = self._trim_fairly(room, max_count, sender_share)
            return fair + self._apply_retention(room, max_count, max_age_ms, now_ms, max_bytes)

    def _held_by_sender(self, room: str) -> dict[bytes, int]:
        """How many messages each sender holds in ``room``: one read per sender (``hscnt/``),
        not a walk over the room."""
        counts = _room(_HSCNT, room)
        held: dict[bytes, int] = {}
        it = self._db.iter()
        it.seek(counts)
        while it.valid():
            key = it.key()
            if not key.startswith(counts):
                break
            held[key[len(counts) + _LEN.size :]] = int(_U64.unpack(it.value())[0])
            it.next()
        return held

    def _trim_fairly(self, room: str, max_count: int, share: float) -> int:
        """Delete up to the room's excess over ``max_count`` from the senders over their share,
        the largest holders first (water-filling: each is cut down towards one level, never
        under the share), each its oldest messages.

        Costs one read per sender of the room (their counts) and, per message deleted, one
        step of that sender's index and one read of the message: O(senders + deleted), never a
        walk over the room (100k messages from 1k senders: 0.15 s before the index, see
        ``tests/bench/history_trim.py``)."""
        count, size = self._totals(room)
        excess = count - max_count
        if excess <= 0:
            return 0
        over = _cuts(self._held_by_sender(room), excess, max(1, int(max_count * share)))
        # The level cuts at least the excess; the senders cut one too many each give one back
        # (at most one each: the next level up would have cut less than the excess).
        surplus = sum(over.values()) - excess
        for sender in list(over)[: max(0, surplus)]:
            over[sender] -= 1
        prefix, id_prefix = _room(_HIST, room), _room(_HID, room)
        by_sender = _room(_HSND, room)
        batch = WriteBatch(raw_mode=True)
        deleted = freed = 0
        changes: dict[bytes, int] = {}
        for sender, take in over.items():
            own = by_sender + _sender_part(sender)
            it = self._db.iter()
            it.seek(own)
            taken = 0
            while taken < take and it.valid():
                index_key = it.key()
                if not index_key.startswith(own):
                    break
                suffix = index_key[len(own) :]
                key, id_key = prefix + suffix, id_prefix + suffix[_U64.size :]
                value = self._db.get(key)
                batch.delete(index_key)
                batch.delete(key)
                batch.delete(id_key)
                if value is not None:
                    freed += _entry_bytes(key, value, id_key)
                taken += 1
                it.next()
            if taken:
                changes[sender] = -taken
                deleted += taken
        if deleted:
            self._put_totals(batch, room, count - deleted, max(0, size - freed))
            self._charge(batch, room, changes)
            self._db.write(batch)
        return deleted

    def _apply_retention(
        self,
        room: str,
        max_count: int | None,
        max_age_ms: int | None,
        now_ms: int,
        max_bytes: int | None,
    ) -> int:
        prefix = _room(_HIST, room)
        id_prefix = _room(_HID, room)
        by_sender = _room(_HSND, room)
        count, size = self._totals(room)
        excess = max(0, count - max_count) if max_count is not None else 0
        changes: dict[bytes, int] = {}
        too_old = _at(prefix, now_ms - max_age_ms) if max_age_ms is not None else prefix
        batch = WriteBatch(raw_mode=True)
        deleted = freed = 0
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            key = it.key()
            over_size = max_bytes is not None and size - freed > max_bytes
            if not key.startswith(prefix) or (
                deleted >= excess and key >= too_old and not over_size
            ):
                break
            id_key = id_prefix + key[len(prefix) + _U64.size :]
            value = it.value()
            sender = _sender_of(value)
            batch.delete(key)
            batch.delete(id_key)
            batch.delete(by_sender + _sender_part(sender) + key[len(prefix) :])
            changes[sender] = changes.get(sender, 0) - 1
            deleted += 1
            freed += _entry_bytes(key, value, id_key)
            it.next()
        if deleted:
            self._put_totals(batch, room, count - deleted, max(0, size - freed))
            self._charge(batch, room, changes)
            self._db.write(batch)
        return deleted

    @staticmethod
    def _put_totals(batch: WriteBatch, room: str, count: int, size: int) -> None:
        if count:
            batch.put(_count_key(room), _TOTALS.pack(count, size))
        else:
            batch.delete(_count_key(room))
