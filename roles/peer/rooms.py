"""Rooms: which rooms this peer is in, which one is current, and who is in each.

Bookkeeping only, no I/O: subscribing and unsubscribing is the service's part. Each
:class:`Room` knows its members (subscribed peers we are connected to, kept by
:mod:`p2pchat.roles.peer.membership`) and the senders heard in it lately (the members that only
the mesh connects us to, whom pubsub does not list), the newest :data:`MAX_HEARD` of them, and
how many of its messages arrived while it was not the current room (unread).

The rooms joined are remembered in the store (:class:`RememberedRooms`) and joined again at the
next start, at most :data:`MAX_ROOMS` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.chat import validate_room

MAX_HEARD = 256  # senders remembered per room for /peers
MAX_ROOMS = 100  # rooms joined at once: each one is a subscription and a receiving task
NAMESPACE = "rooms"  # of the node's store (NodeContext.keys): one key per joined room


@dataclass
class Room:
    """One joined room. ``scope`` cancels its receiving task when the room is left."""

    name: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    members: set[str] = field(default_factory=set)  # subscribed peers we are connected to
    # Senders heard in the room (PeerId -> when, ms), the newest MAX_HEARD.
    heard: BoundedDict[str, int] = field(default_factory=lambda: BoundedDict(MAX_HEARD))
    unread: int = 0  # messages that arrived while another room was current
    infrastructure: int = 0  # subscribed nodes that are no members (archivers...), last look

    def hear(self, sender: str, at_ms: int) -> bool:
        """``sender`` signed a message for this room at ``at_ms`` (the latest time is kept).
        Returns whether it was not heard in this room before (as far as remembered)."""
        before = self.heard.get(sender)
        self.heard[sender] = max(at_ms, before or 0)
        return before is None

    def heard_since(self, since_ms: int) -> Iterator[tuple[str, int]]:
        """(PeerId, when) of the senders heard at ``since_ms`` or later, latest first."""
        for peer, at_ms in self.heard.newest_first():
            if at_ms >= since_ms:
                yield peer, at_ms


class Rooms:
    """The joined rooms (in joining order) and the current one.

    The current room need not be joined yet (at start, before the first join): ``current``
    names it, :meth:`current_room` is None until it is.
    """

    def __init__(self, current: str) -> None:
        self.current = current
        self._rooms: dict[str, Room] = {}

    def __contains__(self, room: object) -> bool:
        return room in self._rooms

    def __len__(self) -> int:
        return len(self._rooms)

    def __iter__(self) -> Iterator[Room]:
        """The joined rooms, a snapshot (safe while rooms are joined or left)."""
        return iter(list(self._rooms.values()))

    def names(self) -> list[str]:
        """The joined rooms' names, in joining order."""
        return list(self._rooms)

    def get(self, room: str) -> Room | None:
        return self._rooms.get(room)

    def current_room(self) -> Room | None:
        return self._rooms.get(self.current)

    def add(self, room: Room) -> None:
        """Record ``room`` as joined (not made current)."""
        self._rooms[room.name] = room

    def remove(self, room: str) -> Room:
        """Forget ``room``; if it was current, the first remaining one by name becomes current.

        Raises:
            KeyError: not joined.
            ValueError: it is the only room (the last room cannot be left).
        """
        if room not in self._rooms:
            raise KeyError(room)
        if len(self._rooms) == 1:
            raise ValueError(f"{room} is the only room")
        removed = self._rooms.pop(room)
        if self.current == room:
            self.current = sorted(self._rooms)[0]
        return removed

    def switch(self, room: str) -> None:
        """Make the joined ``room`` current.

        Raises:
            KeyError: not joined.
        """
        if room not in self._rooms:
            raise KeyError(room)
        self.current = room

    def arrived(self, room: str) -> None:
        """A live message of ``room`` was shown: unread if ``room`` is not the current one."""
        joined = self._rooms.get(room)
        if joined is not None and room != self.current:
            joined.unread += 1

    def take_unread(self, room: str) -> int:
        """How many messages of ``room`` arrived unread; it counts as read from now on."""
        joined = self._rooms.get(room)
        if joined is None:
            return 0
        unread, joined.unread = joined.unread, 0
        return unread

    def unread(self) -> dict[str, int]:
        """Unread messages per joined room (safe from another thread: a snapshot is read)."""
        return {name: room.unread for name, room in list(self._rooms.items())}


class RememberedRooms:
    """The rooms joined, kept in the store so that a restart joins them again.

    ``keys`` is the :data:`NAMESPACE` namespace of the node's store. Only valid room names are
    read back (the store may predate a rule), at most :data:`MAX_ROOMS`.
    """

    def __init__(self, keys: KeyValue) -> None:
        self._keys = keys

    def names(self) -> list[str]:
        """The remembered rooms, in byte order of their names."""
        rooms: list[str] = []
        for key, _ in self._keys.items():
            try:
                rooms.append(validate_room(key.decode()))
            except (UnicodeDecodeError, ValueError):
                continue
            if len(rooms) >= MAX_ROOMS:
                break
        return rooms

    def joined(self, room: str) -> None:
        self._keys.put(room.encode(), b"")

    def left(self, room: str) -> None:
        self._keys.delete(room.encode())
