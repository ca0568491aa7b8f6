"""Membership: who is around, as changes since the last look.

:meth:`Membership.refresh` compares what the node knows now (peers discovered, peers connected,
each joined room's subscribers) with what it saw last time, updates each room's members and
returns the differences. The service calls it when something may have changed
(:class:`ChangeSignal`: a peer discovered, a connection opened or closed, a peer subscribing to
or leaving a topic, this peer joining or leaving a room), once for all that happened meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import trio
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.roles.peer.rooms import Rooms


class ChangeSignal:
    """Raised by events that may change who is around (it is a host connection watcher, and
    :meth:`note` takes any event's arguments); :meth:`wait` returns once at least one came
    since the previous wait, however many."""

    def __init__(self) -> None:
        self._raised = trio.Event()

    def note(self, *_: object) -> None:
        self._raised.set()

    def connection_opened(self, info: ConnectionInfo) -> None:
        self._raised.set()

    def connection_closed(self, info: ConnectionInfo) -> None:
        self._raised.set()

    async def wait(self) -> None:
        await self._raised.wait()
        self._raised = trio.Event()


@dataclass(frozen=True)
class MembershipChanges:
    """What changed since the previous :meth:`Membership.refresh`, each list sorted."""

    discovered: list[tuple[str, str]] = field(default_factory=list)  # (PeerId, "mdns" | "dht")
    connected: list[str] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    joined: dict[str, list[str]] = field(default_factory=dict)  # room -> peers (rooms in order)
    left: dict[str, list[str]] = field(default_factory=dict)


class Membership:
    """Tracks peers discovered and connected, and the members of ``rooms``.

    Args:
        me: this peer's PeerId (never a member of its own rooms).
        rooms: the joined rooms; their ``members`` are updated in place.
        subscribers: the peers known to be subscribed to a room.
        connected: the peers this node is connected to.
        discovered: PeerId -> how discovery found it.
        chat_peer: whether a peer is a chat peer (True), infrastructure (False: a bootstrap,
            relay or archiver node subscribes to rooms but is no member of them), or not known
            yet (None: left out until identify tells, which raises the change signal again).
    """

    def __init__(
        self,
        me: str,
        rooms: Rooms,
        subscribers: Callable[[str], Iterable[str]],
        connected: Callable[[], Iterable[str]],
        discovered: Callable[[], Mapping[str, str]],
        chat_peer: Callable[[str], bool | None] = lambda peer: True,
    ) -> None:
        self._me = me
        self._rooms = rooms
        self._subscribers = subscribers
        self._connected_now = connected
        self._discovered_now = discovered
        self._chat_peer = chat_peer
        self._connected: set[str] = set()
        self._discovered: set[str] = set()

    def refresh(self) -> MembershipChanges:
        """Look at the node's state now; return what changed since the previous call."""
        discovered = self._discovered_now()
        found = [(peer, discovered[peer]) for peer in sorted(discovered.keys() - self._discovered)]
        self._discovered = set(discovered)
        connected = set(self._connected_now())
        opened, closed = sorted(connected - self._connected), sorted(self._connected - connected)
        self._connected = connected
        joined: dict[str, list[str]] = {}
        left: dict[str, list[str]] = {}
        for room in self._rooms:
            members: set[str] = set()
            room.infrastructure = 0
            for peer in self._subscribers(room.name):
                if peer == self._me:
                    continue
                kind = self._chat_peer(peer)  # once per peer and pass: it scans the rooms
                if kind:
                    members.add(peer)
                elif kind is False:
                    room.infrastructure += 1
            if members - room.members:
                joined[room.name] = sorted(members - room.members)
            if room.members - members:
                left[room.name] = sorted(room.members - members)
            room.members = members
        return MembershipChanges(found, opened, closed, joined, left)
