"""Room keys from peers not yet known as members of their room, held until they are.

B invites C to a private room: B tells A the new member list, and gives C the room; C then
gives A its key at once. The two messages to A travel by different DMs (B's and C's), so C's
key may come first, and the same holds for a member's key reaching the newcomer before its
invitation. Dropped there, the key cost a round trip (each side asks the other again once it
learns of it) and whatever C said meanwhile was unreadable to A. Held, it is taken the moment
the list or the invitation naming C arrives.

Only a key share is held (a session key, no member list): a member list from a non-member
is never taken. Bounds: at most ``limit`` keys in all, the oldest making room first, each kept
``hold_for`` seconds. A key that goes unclaimed is what it would have been: a key from a
non-member, dropped and reported through ``on_dropped``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from p2pchat.node.wire.dm import RoomKey

HELD_KEYS = 64  # keys held at once, for every room and sender together
HOLD_SECONDS = 60.0  # far longer than one DM's delivery; the sender retries DMs meanwhile


class HeldKeys:
    """Keys waiting for their sender to become a member (one per room and sender; a newer key
    from the same sender replaces the held one)."""

    def __init__(
        self,
        on_dropped: Callable[[str, str], None],
        *,
        limit: int = HELD_KEYS,
        hold_for: float = HOLD_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``on_dropped(topic, sender)`` is called for every key given up (expired or pushed
        out by a newer one), once."""
        self._on_dropped = on_dropped
        self._limit = limit
        self._hold_for = hold_for
        self._clock = clock
        self._held: OrderedDict[tuple[str, str], tuple[float, RoomKey]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, sender: str, key: RoomKey) -> None:
        """Keep ``key`` from ``sender`` until claimed or expired."""
        self._expire()
        slot = (key.topic, sender)
        self._held.pop(slot, None)
        self._held[slot] = (self._clock() + self._hold_for, key)
        while len(self._held) > self._limit:
            (topic, oldest), _ = self._held.popitem(last=False)
            self._on_dropped(topic, oldest)

    def claim(self, topic: str, sender: str) -> RoomKey | None:
        """The key ``sender`` gave for ``topic``, now a member's (taken out), or None."""
        self._expire()
        held = self._held.pop((topic, sender), None)
        return held[1] if held is not None else None

    def forget(self, topic: str) -> None:
        """This peer is no member of ``topic`` any more: its held keys go, uncounted (they
        were for a room this peer left, not refused)."""
        for slot in [s for s in self._held if s[0] == topic]:
            del self._held[slot]

    def _expire(self) -> None:
        now = self._clock()
        while self._held:
            slot, (deadline, _) = next(iter(self._held.items()))
            if deadline > now:
                return
            del self._held[slot]
            self._on_dropped(*slot)
