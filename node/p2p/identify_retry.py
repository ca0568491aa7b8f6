"""A peer left unidentified is asked again (py-libp2p 0.8.1 trap 44).

The library identifies the peer of a new connection once, and gives up silently (a debug log
line) when the connection's start takes more than 5 s, when the identify stream cannot be
opened, or when the answer cannot be read or takes more than 10 s. Nothing asks again for the
life of the connection: the peer keeps no protocols, so the chat counts it neither as a member
nor as infrastructure (a go-libp2p peer over QUIC, at a load average of 10, chatted with us for
a minute without ever being shown in the room), the DHT will not take it into its table, and
nothing else learns its addresses.

:class:`IdentifyRetry` watches every connection opened: a peer still connected and not
identified ``schedule[0]`` seconds later is identified again, through the library's own
identify, and again after each further delay of the schedule; then it is left alone. One
watch per peer at a time (a second connection of a peer being watched adds nothing), at most
``max_watches`` at once (the host's connection limit: peers connecting and leaving faster than
the watches end cannot pile them up; a connection past it is not watched), and each ends
within the schedule's sum plus one identify's deadline per attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

log = logging.getLogger(__name__)

RETRY_SCHEDULE = (6.0, 12.0, 24.0)
"""Seconds before each new identify: the first past the library's own 5 s wait for the
connection's start, the next ones doubling."""
ATTEMPT_DEADLINE = 30.0
"""At most this long for one identify (the library's read deadline is 10 s; opening the stream
has its own negotiation deadline)."""


class IdentifyRetry:
    """Identifies again the peers the library's one identify left unidentified.

    ``identified(peer)``: whether identify told us the peer's protocols; ``connected(peer)``:
    whether it still has a connection; ``identify(peer)``: one identify, as the library runs it
    (never raises for a failed identify). PeerIds are text.
    """

    def __init__(
        self,
        identified: Callable[[str], bool],
        connected: Callable[[str], bool],
        identify: Callable[[str], Awaitable[None]],
        schedule: Sequence[float] = RETRY_SCHEDULE,
        max_watches: int = 300,
    ) -> None:
        self._identified = identified
        self._connected = connected
        self._identify = identify
        self._schedule = tuple(schedule)
        self._max_watches = max_watches
        self._watched: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self.retried = 0  # identifies made again (after the library's own failed)
        self.unwatched = 0  # connections not watched: max_watches were being watched

    @property
    def watching(self) -> int:
        """Peers being watched now."""
        return len(self._watched)

    def start(self, nursery: trio.Nursery) -> None:
        """Watch connections from now on, each watch a task of ``nursery`` (the host's)."""
        self._nursery = nursery

    def connection_opened(self, peer: str) -> None:
        """A connection to ``peer`` opened (called by the host's connection watcher)."""
        if self._nursery is None or not self._schedule or peer in self._watched:
            return
        if len(self._watched) >= self._max_watches:
            self.unwatched += 1
            return
        self._watched.add(peer)
        self._nursery.start_soon(self._watch, peer)

    async def _watch(self, peer: str) -> None:
        try:
            for attempt, delay in enumerate(self._schedule, start=1):
                await trio.sleep(delay)
                if self._identified(peer) or not self._connected(peer):
                    return
                self.retried += 1
                log.info("peer %s still unidentified: identify again (attempt %d)", peer, attempt)
                with trio.move_on_after(ATTEMPT_DEADLINE):
                    await self._identify(peer)
        except Exception:  # the library's identify is meant not to raise; a bug must not spread
            log.exception("identifying %s again failed", peer)
        finally:
            self._watched.discard(peer)
