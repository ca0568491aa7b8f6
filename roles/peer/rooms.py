"""Rooms: which rooms this peer is in, which one is current, and who is in each.

Bookkeeping only, no I/O: subscribing and unsubscribing is the service's part. Each
:class:`Room` knows its members (subscribed peers we are connected to, kept by
:mod:`p2pchat.roles.peer.membership`) and the senders heard in it lately (the members that only
the mesh connects us to, whom pubsub does not list), the newest :data:`MAX_HEARD` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import trio
from p2pchat.node.bounded import BoundedDict

MAX_HEARD = 256  # senders remembered per room for /peers


@dataclass
class Room:
    """One joined room. ``scope`` cancels its receiving task when the room is left."""

    name: str
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    members: set[str] = field(default_factory=set)  # subscribed peers we are connected to
    # Senders heard in the room (PeerId -> when, ms), the newest MAX_HEARD.
    heard: BoundedDict[str, int] = field(default_factory=lambda: BoundedDict(MAX_HEARD))

    def hear(self, sender: str, at_ms: int) -> None:
        """``sender`` signed a message for this room at ``at_ms`` (the latest time is kept)."""
        self.heard[sender] = max(at_ms, self.heard.get(sender, 0))

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
