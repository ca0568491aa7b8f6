"""Direct-message conversations: the DMs kept in the local store, both directions, and which
conversations are open in the console (``/dm``), shown like rooms (``@alice``).

Every DM body this peer keeps after delivery is written and read here, and only here
(:meth:`ConversationStore.add`, :meth:`ConversationStore.last`), so encryption at rest applies
to them in one place. Store layout (namespace :data:`NAMESPACE`):

- ``m/<PeerId>\\x00<ms: 8 bytes big-endian><message id: 16 bytes>`` ->
  ``<own: 1 byte><DmPlaintext>``: one message of the conversation with that peer, keyed by when
  it was recorded here (so each conversation lists in order, oldest first);
- ``c/<PeerId>`` -> ``<last ms: 8 bytes><count: 8 bytes>``: the conversation's index;
- ``i/<PeerId>\x00<message id>`` -> ``b""``: the ids kept, so a message resent after a restart
  of either side (its acknowledgement lost) is recognised and not shown twice
  (:meth:`ConversationStore.has`); deleted with their message.

Bounds: a conversation keeps at most ``max_messages`` (``chat.history_max_messages``), none
older than ``max_age_ms`` (``chat.history_max_age_days``), the oldest going first as new ones
come; at most ``max_conversations`` (:data:`MAX_CONVERSATIONS`) conversations are kept: any
fresh PeerId can open one by sending a DM, so past that the least recently active one is
deleted whole (counted: ``p2pchat_dm_history_dropped_total{reason="conversation_evicted"}``).
At most :data:`MAX_OPEN` conversations are open in the console at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.dm import DmWireError, Plaintext, decode_plaintext, encode_plaintext

NAMESPACE = "dmlog"  # of the node's store (NodeContext.keys)
MESSAGES = b"m/"
INDEX = b"c/"
IDS = b"i/"
MAX_CONVERSATIONS = 1000  # kept in the store; the least recently active is deleted past it
MAX_OPEN = 100  # open in the console at once (as many as rooms)
TAG = "@"  # a conversation's tag: @<name>


class ConversationsObserver(Protocol):
    """What the conversations report (the role's metrics implement it). Called inline."""

    def dm_history_dropped(self, reason: str, count: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Kept:
    """One message of a conversation, as kept."""

    plain: Plaintext
    own: bool


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConversationStore:
    """The DMs kept in the store, per peer, bounded (see the module's note)."""

    def __init__(
        self,
        keys: KeyValue,
        observer: ConversationsObserver,
        max_messages: int,
        max_age_ms: int,
        max_text_bytes: int,
        max_conversations: int = MAX_CONVERSATIONS,
        refusals: RefusalLog | None = None,
    ) -> None:
        """``refusals`` logs the conversations deleted for the bound (rate-limited)."""
        self._keys = keys
        self._refusals = refusals
        self._observer = observer
        self._max_messages = max_messages
        self._max_age_ms = max_age_ms
        self._max_text_bytes = max_text_bytes
        self._max_conversations = max_conversations
        # PeerId -> (last ms, count), least recently active first.
        self._index: OrderedDict[str, tuple[int, int]] = OrderedDict()
        found = []
        for key, value in keys.items(INDEX):
            if len(value) == 16:
                peer = key[len(INDEX) :].decode(errors="replace")
                found.append(
                    (int.from_bytes(value[:8], "big"), int.from_bytes(value[8:], "big"), peer)
                )
        for last, count, peer in sorted(found):
            self._index[peer] = (last, count)
        while len(self._index) > max_conversations:  # the bound was lowered
            self._evict()
        for peer in list(self._index):  # what aged out while the node was stopped
            self._expire(peer)

    def __len__(self) -> int:
        """How many conversations are kept."""
        return len(self._index)

    def count(self, peer: str) -> int:
        """How many messages of the conversation with ``peer`` are kept."""
        return self._index.get(peer, (0, 0))[1]

    def add(self, peer: str, plain: Plaintext, own: bool) -> None:
        """Keep one message of the conversation with ``peer`` (sent by this peer: ``own``),
        then trim the conversation and the conversations to their bounds."""
        now = max(_now_ms(), self._index.get(peer, (0, 0))[0])  # never before the last one
        if peer not in self._index and len(self._index) >= self._max_conversations:
            self._evict()
        key = MESSAGES + peer.encode() + b"\x00" + now.to_bytes(8, "big") + plain.id
        self._keys.put(key, (b"\x01" if own else b"\x00") + encode_plaintext(plain))
        self._keys.put(IDS + peer.encode() + b"\x00" + plain.id, b"")
        count = self.count(peer) + 1
        count -= self._trim(peer, count, now)
        self._set_index(peer, now, count)

    def has(self, peer: str, message_id: bytes) -> bool:
        """Whether a message ``message_id`` of the conversation with ``peer`` is kept."""
        return self._keys.get(IDS + peer.encode() + b"\x00" + message_id) is not None

    def last(self, peer: str, limit: int) -> list[Kept]:
        """The newest ``limit`` messages kept with ``peer``, oldest first (one that does not
        decode is left out)."""
        self._expire(peer)
        skip = max(0, self.count(peer) - limit)
        kept: list[Kept] = []
        for n, (_, value) in enumerate(self._keys.items(self._prefix(peer))):
            if n < skip:
                continue
            try:
                plain = decode_plaintext(value[1:], self._max_text_bytes)
            except DmWireError:
                continue
            kept.append(Kept(plain, value[:1] == b"\x01"))
        return kept[-limit:]

    def _expire(self, peer: str) -> None:
        """Delete the conversation's messages past their age (a conversation nobody adds to
        ages out when it is read, and at each start); one left empty is forgotten."""
        last, count = self._index.get(peer, (0, 0))
        deleted = self._trim(peer, count, _now_ms()) if count else 0
        if not deleted:
            return
        if count - deleted:
            self._index[peer] = (last, count - deleted)  # not activity: its place stays
            value = last.to_bytes(8, "big") + (count - deleted).to_bytes(8, "big")
            self._keys.put(INDEX + peer.encode(), value)
        else:
            del self._index[peer]
            self._keys.delete(INDEX + peer.encode())

    def _prefix(self, peer: str) -> bytes:
        return MESSAGES + peer.encode() + b"\x00"

    def _trim(self, peer: str, count: int, now: int) -> int:
        """Delete the conversation's messages over its count or past its age, oldest first;
        returns how many."""
        cutoff = now - self._max_age_ms
        doomed: list[bytes] = []
        for key, _ in self._keys.items(self._prefix(peer)):
            at = int.from_bytes(key[-24:-16], "big")
            if count - len(doomed) <= self._max_messages and at >= cutoff:
                break
            doomed.append(key)
        for key in doomed:
            self._keys.delete(key)
            self._keys.delete(IDS + peer.encode() + b"\x00" + key[-16:])
        return len(doomed)

    def _set_index(self, peer: str, last: int, count: int) -> None:
        self._index[peer] = (last, count)
        self._index.move_to_end(peer)
        self._keys.put(INDEX + peer.encode(), last.to_bytes(8, "big") + count.to_bytes(8, "big"))

    def _evict(self) -> None:
        """Delete the least recently active conversation whole."""
        peer, (_, count) = self._index.popitem(last=False)
        for key, _ in list(self._keys.items(self._prefix(peer))):
            self._keys.delete(key)
        for key, _ in list(self._keys.items(IDS + peer.encode() + b"\x00")):
            self._keys.delete(key)
        self._keys.delete(INDEX + peer.encode())
        self._observer.dm_history_dropped("conversation_evicted", count)
        if self._refusals is not None:
            self._refusals.refused("conversation_evicted", peer=peer, messages=count)


@dataclass
class OpenConversations:
    """The conversations open in the console (``/dm``), in opening order, the current one
    (None: a room is current) and their unread counts."""

    unread: dict[str, int] = field(default_factory=dict)  # PeerId -> unread, the open ones
    current: str | None = None

    def open(self, peer: str) -> bool:
        """Open (if needed) and make current; False when :data:`MAX_OPEN` are open already."""
        if peer not in self.unread:
            if len(self.unread) >= MAX_OPEN:
                return False
            self.unread[peer] = 0
        self.current = peer
        return True

    def close(self, peer: str) -> bool:
        if self.unread.pop(peer, None) is None:
            return False
        if self.current == peer:
            self.current = None
        return True

    def arrived(self, peer: str) -> None:
        """A DM with ``peer`` was shown: unread if its conversation is open, not current."""
        if peer in self.unread and peer != self.current:
            self.unread[peer] += 1

    def take_unread(self, peer: str) -> int:
        """How many DMs with ``peer`` arrived unread; read from now on."""
        if peer not in self.unread:
            return 0
        unread, self.unread[peer] = self.unread[peer], 0
        return unread
