"""Auto-relay: a peer others cannot dial keeps slots on relays and advertises its circuit
addresses, so that they can reach it through them.

While wanted (``autorelay.mode`` on, or auto and AutoNAT says private), it holds
``autorelay.reservations`` reservations, chosen from the configured relays (kept connected, with
backoff) and, with ``autorelay.discover``, from connected peers whose identify shows the hop
protocol, and when those are too few, from relays announced in the DHT (looked up from 1 s
apart, doubling, to every :data:`RETRY_AFTER` seconds, then connected). A reservation is renewed
when three quarters of its time are gone; one whose relay disconnects, refuses a renewal or
expires is dropped and another relay is tried (failover). A relay that refused or failed is not
asked again for :data:`RETRY_AFTER` seconds, except a configured one: the operator chose it, and
one that refused while it was still starting would otherwise leave the node unreachable for a
minute, so it is asked again after :data:`CONFIGURED_FIRST_RETRY` seconds, doubling to
:data:`RETRY_AFTER`. The circuit addresses (``<relay
addr>/p2p/<relay>/p2p-circuit``) go into the host's advertised addresses, hence into identify
and the DHT provider records of room rendezvous.

Every node also accepts the circuits relays bring to it (the stop protocol), as ordinary
libp2p connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import multiaddr
import structlog
import trio
from p2pchat.node.bounded import BoundedDict
from p2pchat.node.config import AutoRelaySection
from p2pchat.node.ids import addr_peer
from p2pchat.node.keepalive import keep_connected
from p2pchat.node.p2p.circuit import CircuitError, request_reservation, serve_circuits
from p2pchat.node.p2p.host import DialError, P2PHost
from p2pchat.node.rendezvous import RELAY_KEY, Rendezvous
from p2pchat.node.wire.circuit import HOP_PROTOCOL_ID

CHECK_INTERVAL = 1.0
# Seconds to tell connected peers our new circuit addresses (identify push), at most.
PUSH_SECONDS = 10.0
RETRY_AFTER = 60.0
CONFIGURED_FIRST_RETRY = 2.0  # seconds after a configured relay's first failure (doubling)
MAX_REMEMBERED_RELAYS = 1024  # relays whose last failure is remembered
FIRST_LOOKUP_DELAY = 1.0
RENEW_AT = 0.75  # of a reservation's lifetime
RELAY_BACKOFF_MAX = 60.0


@dataclass
class _Held:
    """A reservation this node holds (keyed by its relay)."""

    addrs: list[str]  # circuit addresses through the relay, without /p2p/<this node>
    expire: float  # time.time() seconds
    renew_at: float


def circuit_addrs(relay: str, relay_addrs: list[bytes], fallback: list[str]) -> list[str]:
    """This node's circuit addresses through ``relay``: one per address the relay announced
    in its reservation (``fallback``, the addresses we know it by, when it announced none)."""
    texts = []
    for raw in relay_addrs:
        try:
            texts.append(str(multiaddr.Multiaddr(raw)))
        except Exception:  # the relay's bytes are not a multiaddr: skip that one
            continue
    result = []
    for text in texts or fallback:
        if "/p2p-circuit" in text:
            continue
        base = text.removesuffix(f"/p2p/{relay}")
        if "/p2p/" in base:  # another peer's address: not the relay's
            continue
        addr = f"{base}/p2p/{relay}/p2p-circuit"
        if addr not in result:
            result.append(addr)
    return result


class AutoRelayObserver(Protocol):
    """What AutoRelay reports (the metrics implement it). Called inline: must not block."""

    def reservation_requested(self, request_type: str, outcome: str) -> None:
        """A request to a relay ended. ``request_type``: ``new`` or ``refresh``; ``outcome``:
        ``success``, the relay's refusal status in lower case, or ``error``."""

    def reservation_opened(self) -> None:
        """A reservation was obtained (not a renewal)."""

    def reservation_closed(self) -> None:
        """A reservation held ended (relay gone, renewal refused, expired, not needed)."""

    def reservations_advertised(self, reservations: int, addresses: int) -> None:
        """The reservations held and the circuit addresses advertised, now."""


class QuietAutoRelayObserver:
    """An AutoRelay observer that records nothing, for tests."""

    def reservation_requested(self, request_type: str, outcome: str) -> None:
        return None

    def reservation_opened(self) -> None:
        return None

    def reservation_closed(self) -> None:
        return None

    def reservations_advertised(self, reservations: int, addresses: int) -> None:
        return None


class AutoRelay:
    """Keeps this node reachable through relays while it needs to be."""

    def __init__(
        self,
        host: P2PHost,
        settings: AutoRelaySection,
        reachability: Callable[[], str],
        observer: AutoRelayObserver,
        log: structlog.stdlib.BoundLogger,
        rendezvous: Rendezvous | None = None,
    ) -> None:
        self._host = host
        self._rendezvous = rendezvous
        self._lookup_delay = FIRST_LOOKUP_DELAY
        self._next_lookup = float("-inf")
        self._settings = settings
        self._reachability = reachability
        self._observer = observer
        self._log = log
        self._held: dict[str, _Held] = {}
        self._advertised: list[str] = []  # the circuit addresses last advertised
        # relay PeerId -> configured address
        self._configured = {addr_peer(addr): addr for addr in settings.relays}
        # When a relay that failed may be asked again (time.monotonic()). Keyed by any peer
        # that offers the relay protocol, so bounded: fresh identities are free.
        self._retry_at: BoundedDict[str, float] = BoundedDict(MAX_REMEMBERED_RELAYS)
        # A configured relay's current wait after a failure (one entry per configured relay).
        self._configured_backoff: dict[str, float] = {}

    @property
    def relays(self) -> list[str]:
        """The relays holding a reservation for this node."""
        return list(self._held)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept circuits; hold reservations while wanted; until cancelled."""
        serve_circuits(self._host)
        task_status.started()
        async with trio.open_nursery() as nursery:
            for addr in self._settings.relays:
                nursery.start_soon(
                    partial(
                        keep_connected,
                        self._host,
                        addr,
                        what="relay",
                        backoff_max=RELAY_BACKOFF_MAX,
                        log=self._log,
                    )
                )
            while True:
                await self._step()
                await trio.sleep(CHECK_INTERVAL)

    async def _step(self) -> None:
        now = time.time()
        for relay, held in list(self._held.items()):
            if not self._host.is_connected(relay) or now >= held.expire:
                self._drop(relay, "relay disconnected" if now < held.expire else "expired")
            elif now >= held.renew_at:
                await self._reserve(relay, renewal=True)
        wanted = self._settings.wanted(self._reachability())
        if not wanted:
            for relay in list(self._held):
                self._drop(relay, "not needed (publicly reachable)")
        else:
            candidates = self._candidates()
            if len(self._held) + len(candidates) < self._settings.reservations:
                await self._find_relays()
                candidates = self._candidates()
            for relay in candidates:
                if len(self._held) >= self._settings.reservations:
                    break
                await self._reserve(relay, renewal=False)
        if self._advertise():
            with trio.move_on_after(PUSH_SECONDS):
                await self._host.push_identify()

    async def _find_relays(self) -> None:
        """Connect relays announced in the DHT; connected, they become candidates."""
        now = time.monotonic()
        if not self._settings.discover or self._rendezvous is None:
            return
        if now < self._next_lookup:
            return
        # Until a lookup connects a relay (the DHT may not be reachable yet), retry at 1 s,
        # doubling up to RETRY_AFTER; after one that did, wait RETRY_AFTER.
        self._next_lookup = now + self._lookup_delay
        self._lookup_delay = min(self._lookup_delay * 2, RETRY_AFTER)
        wanted = self._settings.reservations - len(self._held)
        for relay, addrs in await self._rendezvous.find("relays", RELAY_KEY) or []:
            if wanted <= 0:
                return
            if relay in self._held or self._host.is_connected(relay):
                continue
            if not self._may_ask(relay, now):
                continue
            for addr in addrs:
                if "/p2p-circuit" in addr:  # a relay reachable only through a relay: no use
                    continue
                try:
                    await self._host.connect(addr)
                except DialError:
                    continue
                self._log.info("relay found in the DHT", relay=relay, addr=addr)
                self._next_lookup = now + RETRY_AFTER
                wanted -= 1
                break
            else:
                self._failed(relay, now)

    def _candidates(self) -> list[str]:
        """Connected relays to try, configured ones first; not those held or recently failed."""
        now = time.monotonic()
        found = [peer for peer in self._configured if self._host.is_connected(peer)]
        if self._settings.discover:
            found += [
                peer
                for peer in self._host.connected_peers()
                if peer not in self._configured
                and HOP_PROTOCOL_ID in self._host.peer_protocols(peer)
            ]
        return [peer for peer in found if peer not in self._held and self._may_ask(peer, now)]

    def _may_ask(self, relay: str, now: float) -> bool:
        return now >= self._retry_at.get(relay, float("-inf"))

    def _failed(self, relay: str, now: float) -> None:
        """``relay`` failed or refused at ``now`` (time.monotonic()): not asked again for a
        while (:data:`RETRY_AFTER`; a configured relay sooner, doubling)."""
        wait = RETRY_AFTER
        if relay in self._configured:
            previous = self._configured_backoff.get(relay)
            wait = CONFIGURED_FIRST_RETRY if previous is None else min(previous * 2, RETRY_AFTER)
            self._configured_backoff[relay] = wait
        self._retry_at[relay] = now + wait

    async def _reserve(self, relay: str, *, renewal: bool) -> None:
        kind = "refresh" if renewal else "new"
        try:
            granted = await request_reservation(self._host, relay)
        except CircuitError as error:
            outcome = error.status.name.lower() if error.status is not None else "error"
            self._observer.reservation_requested(kind, outcome)
            self._failed(relay, time.monotonic())
            self._log.warning("relay reservation failed", relay=relay, error=str(error))
            if renewal:
                self._drop(relay, "renewal refused")
            return
        self._observer.reservation_requested(kind, "success")
        self._configured_backoff.pop(relay, None)
        self._retry_at.pop(relay, None)
        now = time.time()
        expire = float(granted.reservation.expire)
        if expire <= now:  # a relay clock far off ours: trust neither, renew soon
            expire = now + RETRY_AFTER
        addrs = circuit_addrs(relay, list(granted.reservation.addrs), self._known_addrs(relay))
        self._held[relay] = _Held(addrs, expire, now + (expire - now) * RENEW_AT)
        if not renewal:
            self._observer.reservation_opened()
            self._log.info("relay reservation", relay=relay, addrs=addrs, expire=int(expire))

    def _known_addrs(self, relay: str) -> list[str]:
        configured = self._configured.get(relay)
        return [configured] if configured else []

    def _drop(self, relay: str, why: str) -> None:
        if self._held.pop(relay, None) is not None:
            self._observer.reservation_closed()
            self._log.info("relay reservation lost", relay=relay, reason=why)

    def _advertise(self) -> bool:
        """Advertise the circuit addresses of the reservations held; whether they changed."""
        addrs = [addr for held in self._held.values() for addr in held.addrs]
        self._observer.reservations_advertised(len(self._held), len(addrs))
        self._host.set_circuit_addrs(addrs)
        changed = addrs != self._advertised
        self._advertised = addrs
        return changed
