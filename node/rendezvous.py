"""Room rendezvous: find the other members of a room through the DHT.

A peer in a room announces itself as a provider of the room's key (a hash of the room name, so
the DHT never sees the name) and looks the key up; the providers it finds go to the discovery
connector, which dials them within its bounds. Two peers that only know a bootstrap node thus
meet and mesh. Lookups start at 1 s and back off to ``dht.lookup_interval_max``; an announcement
nobody accepted (no DHT server reachable yet) is retried at the lookup pace, an accepted one
every ``dht.reprovide_interval``, or sooner once this node's advertised addresses change (a relay
reservation came or went): the record carries them.

Services announce themselves the same way (:meth:`Rendezvous.announce`): relays under
:data:`RELAY_KEY` (auto-relay looks them up), archivers under :data:`ARCHIVER_KEY`, where a chat
peer that knows only a bootstrap node finds them for catch-up (:class:`ArchiverFinder`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

import structlog
import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.config import DhtSection
from p2pchat.node.p2p.dht import Dht, content_key
from p2pchat.node.p2p.host import DialError, P2PHost

FIRST_LOOKUP_DELAY = 1.0
QUERY_TIMEOUT = 30.0  # one provide or lookup, whatever the library's own timeouts do

FoundPeer = Callable[[tuple[str, list[str]]], None]


def room_key(room: str) -> bytes:
    """The DHT key under which the members of ``room`` announce themselves."""
    return content_key("room", room)


RELAY_KEY = content_key("service", "circuit-relay-v2")
"""The DHT key under which relay nodes announce themselves (auto-relay looks it up)."""

ARCHIVER_KEY = content_key("service", "p2pchat-archiver")
"""The DHT key under which archivers announce themselves (chat peers look it up to catch up)."""


class RendezvousObserver(Protocol):
    """What rendezvous reports (the metrics implement it). Called inline: must not block."""

    def provide_finished(self, outcome: str) -> None:
        """An announcement ended: ``accepted``, ``refused`` (no DHT server took it) or
        ``error``."""

    def lookup_finished(self, outcome: str) -> None:
        """A room-member lookup ended: ``found``, ``none`` or ``error``."""


class QuietRendezvousObserver:
    """A rendezvous observer that records nothing (tests, one-off tools)."""

    def provide_finished(self, outcome: str) -> None:
        return None

    def lookup_finished(self, outcome: str) -> None:
        return None


class Rendezvous:
    """Announces rooms in the DHT and reports the members it finds to ``found``."""

    def __init__(
        self,
        dht: Dht,
        found: FoundPeer,
        settings: DhtSection,
        observer: RendezvousObserver,
        log: structlog.stdlib.BoundLogger,
        advertised: Callable[[], list[str]] = list,
    ) -> None:
        self._dht = dht
        self._advertised = advertised
        self._found = found
        self._settings = settings
        self._observer = observer
        self._log = log

    async def run_room(self, room: str) -> None:
        """Announce and look up ``room`` until cancelled (when the node leaves the room)."""
        key = room_key(room)
        delay = FIRST_LOOKUP_DELAY
        next_provide = trio.current_time()
        provided_with: list[str] | None = None
        while True:
            moved = provided_with is not None and self._advertised() != provided_with
            if moved or trio.current_time() >= next_provide:
                addrs = self._advertised()
                accepted = await self._provide(f"room {room}", key)
                provided_with = addrs if accepted else None
                pause = self._settings.reprovide_interval if accepted else delay
                next_provide = trio.current_time() + pause
            await self._look_up(room, key)
            await trio.sleep(delay)
            delay = min(delay * 2, self._settings.lookup_interval_max)

    async def announce(self, what: str, key: bytes) -> None:
        """Keep this node announced as a provider of ``key`` until cancelled (``what`` names
        it in the logs): retried at the lookup pace until accepted, then renewed every
        ``dht.reprovide_interval``."""
        delay = FIRST_LOOKUP_DELAY
        while True:
            if await self._provide(what, key):
                await trio.sleep(self._settings.reprovide_interval)
            else:
                await trio.sleep(delay)
                delay = min(delay * 2, self._settings.lookup_interval_max)

    async def find(self, what: str, key: bytes) -> list[tuple[str, list[str]]] | None:
        """The providers of ``key`` the DHT knows of now; None if the lookup failed (``what``
        names it in the log)."""
        try:
            with trio.fail_after(QUERY_TIMEOUT):
                return await self._dht.find_providers(key)
        except Exception as error:  # the library raises its own errors for network failures
            self._log.debug("lookup failed", what=what, error=repr(error))
            return None

    async def _provide(self, what: str, key: bytes) -> bool:
        try:
            with trio.fail_after(QUERY_TIMEOUT):
                accepted = await self._dht.provide(key)
        except Exception as error:  # the library raises its own errors for network failures
            self._observer.provide_finished("error")
            self._log.debug("announcement failed", what=what, error=repr(error))
            return False
        self._observer.provide_finished("accepted" if accepted else "refused")
        return accepted

    async def _look_up(self, room: str, key: bytes) -> None:
        members = await self.find(f"room {room}", key)
        if members is None:
            self._observer.lookup_finished("error")
            return
        self._observer.lookup_finished("found" if members else "none")
        for member in members:
            self._found(member)


# Archivers: what one lookup may cost, and what is remembered of them.
ARCHIVER_CHECK_INTERVAL = 5.0  # seconds between checks that enough archivers are connected
ARCHIVER_RETRY_AFTER = 60.0  # an archiver that could not be dialled is skipped this long
MAX_ARCHIVER_DIALS = 4  # archivers dialled per lookup at most
MAX_ARCHIVER_ADDRS = 4  # addresses tried per archiver at most
MAX_REMEMBERED_ARCHIVERS = 256  # archivers found, and failed dials, remembered (each)


class ArchiverFinder:
    """Keeps up to ``wanted`` archivers connected, found in the DHT under
    :data:`ARCHIVER_KEY`, so that catch-up (:mod:`p2pchat.node.catchup`, which asks the
    connected peers serving history, and starts on every new connection to one) has them.

    While fewer than ``wanted`` of the archivers it found are connected, it looks the key up:
    at once, then 1 s apart, doubling to ``lookup_interval_max``; with enough connected it only
    checks, every :data:`ARCHIVER_CHECK_INTERVAL` seconds, without network traffic. A lookup
    dials at most :data:`MAX_ARCHIVER_DIALS` archivers not connected, each at its first
    :data:`MAX_ARCHIVER_ADDRS` direct addresses (a circuit through a relay is limited in time
    and bytes: a catch-up would be cut), and skips one whose dial failed for
    :data:`ARCHIVER_RETRY_AFTER` seconds. Archivers found and failed dials are remembered for
    the newest :data:`MAX_REMEMBERED_ARCHIVERS` each. Archivers are not reported to discovery:
    they are not room members.
    """

    def __init__(
        self,
        host: P2PHost,
        rendezvous: Rendezvous,
        wanted: int,
        lookup_interval_max: float,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._host = host
        self._rendezvous = rendezvous
        self._wanted = wanted
        self._interval_max = lookup_interval_max
        self._log = log
        self._found: BoundedDict[str, None] = BoundedDict(MAX_REMEMBERED_ARCHIVERS)
        self._failed_at: BoundedDict[str, float] = BoundedDict(MAX_REMEMBERED_ARCHIVERS)

    def connected(self) -> list[str]:
        """The archivers found in the DHT that are connected now."""
        return [peer for peer in self._found if self._host.is_connected(peer)]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep archivers connected until cancelled."""
        task_status.started()
        delay = FIRST_LOOKUP_DELAY
        while True:
            if len(self.connected()) >= self._wanted:
                delay = FIRST_LOOKUP_DELAY  # when one goes, look again at once, then back off
                await trio.sleep(ARCHIVER_CHECK_INTERVAL)
                continue
            await self._look_up()
            await trio.sleep(delay)
            delay = min(delay * 2, self._interval_max)

    async def _look_up(self) -> None:
        providers = await self._rendezvous.find("archivers", ARCHIVER_KEY)
        self._log.debug("archivers looked up", found=None if providers is None else len(providers))
        dials = 0
        for archiver, addrs in providers or []:
            if len(self.connected()) >= self._wanted or dials >= MAX_ARCHIVER_DIALS:
                return
            if self._host.is_connected(archiver):
                self._found[archiver] = None
                continue
            now = time.monotonic()
            if now - self._failed_at.get(archiver, float("-inf")) < ARCHIVER_RETRY_AFTER:
                continue
            dials += 1
            direct = [addr for addr in addrs if "/p2p-circuit" not in addr]
            for addr in direct[:MAX_ARCHIVER_ADDRS]:
                try:
                    await self._host.connect(addr)
                except DialError as error:
                    self._log.debug("archiver not reachable", addr=addr, error=str(error))
                    continue
                self._found[archiver] = None
                self._log.info("archiver found in the DHT", archiver=archiver, addr=addr)
                break
            else:
                self._failed_at[archiver] = now
