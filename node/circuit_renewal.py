"""Seamless relayed conversations: the next circuit before the relay resets this one, and
another relay when one dies (issue #21, must-have 3).

A relay resets a circuit after ``duration`` seconds or ``data`` bytes in either direction
(go-libp2p's defaults: 2 minutes, 128 KiB). Until now the peers noticed only the reset; the
dialler's keep-alive dialled again after its backoff, and catch-up filled the gap: seconds
without the conversation at every reset. Here, every :data:`POLL` seconds, each relayed
connection *we dialled* is looked at (its usage is counted in the host layer,
:mod:`~p2pchat.node.p2p.circuit_usage`); one that has used ``renew_at`` of its limit gets a
successor (trigger ``limit``):

1. a new circuit to the same peer, through the same relay or, failing that, another relay the
   peer says (identify) it can be reached through;
2. our pubsub stream moves onto it (:meth:`~p2pchat.node.p2p.pubsub.NodeGossip.renew_stream_on`,
   the renewal the relayed->direct handover uses, on a chosen connection); the other peer does
   the same when it sees a second relayed connection from us (:meth:`CircuitRenewal.
   connection_opened`), so that both sides send on the new circuit;
3. once the peer is heard on the new circuit (at most :data:`HEAR_WAIT` seconds, our stream
   renewed once more in between), the old connection is closed; catch-up asks again at once when a
   connection to a source closes while another stays (:meth:`~p2pchat.node.catchup.CatchUp.
   connection_closed`), so whatever the old circuit dropped is filled.

When a relayed connection ends while another to the same peer stays, our pubsub stream is
renewed on the newest (:meth:`CircuitRenewal._refresh`): a relay reset that came before both
sides had moved makes the side whose write failed forget the peer's subscriptions.

The listener of a circuit (the peer that holds the reservation) renews it too when the dialler
did not (gone quiet, or its next circuits refused: a relay's per-source budget spent): once the
circuit has used :func:`listener_share` of its limit, halfway from ``renew_at`` to the reset, it
dials the peer through a relay the peer's identify names (trigger ``listener_limit``); the
dialler follows as a listener does. A dialler that names no relay (it holds no reservation)
cannot be dialled back through one: then nothing is tried, and the relay's reset and the
dialler's re-dial are what is left.

When a relayed connection we dialled ends and the peer is left with none (the relay reset it
before a successor was up, or the relay died), a new circuit is dialled at once (trigger
``relay_gone``), through another relay the peer holds a reservation on first, the one just lost
last.

Outcomes, counted in ``p2pchat_relayed_circuit_renewals_total`` by trigger: ``renewed`` (the peer
is heard on the new circuit), ``unheard`` (a new circuit, but the peer's stream did not come to
it in time: the old one is closed all the same, the library's writer reopens on what is left),
``failed`` (no new circuit through any relay). Bounded: one renewal per peer at a time, at most
:data:`ATTEMPTS` per circuit, each through at most
:data:`~p2pchat.node.p2p.circuit.MAX_CIRCUIT_RELAYS` relays; peers are bounded by the
connection limits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import structlog
import trio
from p2pchat.node.p2p.circuit import (
    CircuitError,
    circuit_relays,
    close_connection,
    dial_through,
    relayed_circuits,
)
from p2pchat.node.p2p.direct import has_direct_connection
from p2pchat.node.p2p.host import ConnectionInfo, DialError, P2PHost
from p2pchat.node.refusals import RefusalLog

POLL = 0.5  # seconds between two looks at the relayed connections' usage
ATTEMPTS = 2  # next circuits tried per circuit, at most (a failed one is tried again once)
RETRY_AFTER = 5.0  # seconds before a failed attempt is tried again
# Seconds between renewals of our stream while waiting to hear the peer on the new circuit.
LOOKS = (0.2, 0.4, 0.8, 1.6, 3.2)
HEAR_WAIT = sum(LOOKS)
# At which looks our stream is (re)moved onto the new circuit: at once, and once more if the
# peer is still not heard there 1.4 s later (its library may wait for a new stream of ours).
RENEW_AT_LOOKS = (0, 3)
REFRESH_AFTER = 0.5  # seconds after a relayed connection ended before our hello is sent again
DIAL_SECONDS = 15.0  # a next circuit: relay connection, hop, Noise, muxer

TRIGGERS = ("limit", "listener_limit", "relay_gone")
OUTCOMES = ("renewed", "unheard", "failed")


def listener_share(renew_at: float) -> float:
    """The share of a circuit's limit at which its listener renews it: halfway from the
    dialler's ``renew_at`` to the reset, so that the dialler's attempts come first."""
    return renew_at + (1.0 - renew_at) / 2


class PubsubOnConnections(Protocol):
    """What the renewal needs of the pubsub (:class:`~p2pchat.node.p2p.pubsub.NodeGossip`)."""

    def heard_on(self, peer: str, conn: object) -> bool:
        """Whether one of ``peer``'s pubsub streams to us is on ``conn``."""
        ...

    def has_stream_to(self, peer: str) -> bool:
        """Whether we have a pubsub stream to ``peer``."""
        ...

    async def renew_stream_on(self, peer: str, conn: object) -> bool:
        """Move our pubsub stream to ``peer`` onto ``conn``."""
        ...


class RenewalObserver(Protocol):
    """What the renewal reports (the metrics implement it). Called inline: must not block."""

    def circuit_renewal_finished(self, trigger: str, outcome: str) -> None:
        """A renewal for ``trigger`` (:data:`TRIGGERS`) ended with ``outcome``
        (:data:`OUTCOMES`)."""


class CircuitRenewal:
    """Keeps relayed conversations on a live circuit (a capability)."""

    def __init__(
        self,
        host: P2PHost,
        pubsub: Callable[[], PubsubOnConnections | None],
        observer: RenewalObserver,
        log: structlog.stdlib.BoundLogger,
        *,
        renew_at: float,
    ) -> None:
        """``renew_at``: the share of a circuit's limit (data either way, or time) at which
        its successor is opened."""
        self._host = host
        self._pubsub = pubsub
        self._observer = observer
        self._log = log
        self._renew_at = renew_at
        self._listener_at = listener_share(renew_at)
        self._running: set[str] = set()  # peers with a renewal or a follow under way
        self._refreshing: set[str] = set()  # peers whose subscriptions are said again
        # peer -> the relay of the last circuit we dialled to it (kept while it is connected
        # through one, and until its recovery ends: bounded by the connections)
        self._dialled: dict[str, str] = {}
        self._nursery: trio.Nursery | None = None
        self._failures = RefusalLog(log, "no next circuit to a relayed peer", level="warning")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the relayed connections until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._host.watch_connections(self)
            task_status.started()
            while True:
                await trio.sleep(POLL)
                self._look(nursery)

    def _look(self, nursery: trio.Nursery) -> None:
        now = trio.current_time()
        for peer in [p for p in self._dialled if p not in self._running]:
            if not self._host.is_connected(peer):
                del self._dialled[peer]  # gone, and its recovery (if any) is over
        for peer in self._host.connected_peers():
            if peer in self._running or has_direct_connection(self._host, peer):
                continue
            circuits = relayed_circuits(self._host, peer)
            if not circuits:
                continue
            conn, usage = circuits[-1]  # the newest: older ones are on their way out
            if usage.outbound:
                self._dialled[peer] = usage.relay
            if usage.renewals >= ATTEMPTS or now < usage.retry_at:
                continue
            used = usage.used(now)
            if usage.outbound and used >= self._renew_at:
                trigger = "limit"
            elif (
                not usage.outbound
                and used >= self._listener_at
                and circuit_relays(self._host, peer)  # else it cannot be dialled back
            ):
                trigger = "listener_limit"
            else:
                continue
            usage.renewals += 1
            self._running.add(peer)
            nursery.start_soon(self._renew, peer, conn, usage.relay, trigger)

    async def _renew(self, peer: str, old: Any, relay: str, trigger: str) -> None:
        try:
            new = await self._next_circuit(peer, prefer=relay)
            if new is None:
                usage = self._host.circuits.usage_of(old)
                if usage is not None:
                    usage.retry_at = trio.current_time() + RETRY_AFTER
                self._finished(peer, trigger, "failed")
                return
            outcome = await self._move(peer, new)
            # The old circuit, and any other left over (a keep-alive's dial racing ours).
            older = [conn for conn, _ in relayed_circuits(self._host, peer) if conn is not new]
            for conn in older:
                await close_connection(conn)
            # Whether the old one carried the conversation until it had moved (not closed by
            # the relay or the swarm meanwhile): logged for tests and operators.
            self._finished(peer, trigger, outcome, old_kept=old in older)
        finally:
            self._running.discard(peer)

    async def _recover(self, peer: str, lost: str) -> None:
        try:
            await trio.lowlevel.checkpoint()  # let the swarm finish the close that woke us
            if self._host.is_connected(peer):
                return  # another connection took over (a keep-alive dial, a direct one)
            new = await self._next_circuit(peer, avoid=lost)
            if new is None:
                self._dialled.pop(peer, None)
                self._finished(peer, "relay_gone", "failed")
                return
            self._finished(peer, "relay_gone", await self._move(peer, new))
        finally:
            self._running.discard(peer)

    async def _next_circuit(
        self, peer: str, *, prefer: str | None = None, avoid: str | None = None
    ) -> Any:
        """A new relayed connection to ``peer``: through ``prefer`` first, ``avoid`` last."""
        relays = circuit_relays(self._host, peer)
        relays.sort(key=lambda pair: (pair[1] != prefer, pair[1] == avoid))
        if prefer is not None and prefer not in {r for _, r in relays}:
            relays.insert(0, ("", prefer))
        for relay_addr, relay in relays:
            try:
                with trio.fail_after(DIAL_SECONDS):
                    if not self._host.is_connected(relay):
                        if not relay_addr:
                            continue
                        await self._host.connect(relay_addr)
                    conn = await dial_through(self._host, relay, peer)
            except (CircuitError, DialError, trio.TooSlowError) as error:
                self._log.info("next circuit failed", peer=peer, relay=relay, error=str(error))
                continue
            if conn is not None:
                self._dialled[peer] = relay
                self._log.info("next circuit open", peer=peer, relay=relay)
                return conn
        return None

    async def _move(self, peer: str, new: Any) -> str:
        """Move our pubsub stream onto ``new`` until the peer is heard there: the outcome."""
        pubsub = self._pubsub()
        if pubsub is None or not pubsub.has_stream_to(peer):
            return "renewed"  # no pubsub between us: the connection is all there is to move
        for n, look in enumerate(LOOKS):
            if pubsub.heard_on(peer, new):
                return "renewed"
            if new.is_closed:
                break
            if n in RENEW_AT_LOOKS:
                await pubsub.renew_stream_on(peer, new)
            await trio.sleep(look)
        return "renewed" if pubsub.heard_on(peer, new) else "unheard"

    async def _follow(self, peer: str) -> None:
        """The peer dialled a next circuit to us: send on it too (our stream moves onto it)."""
        try:
            pubsub = self._pubsub()
            for look in LOOKS:
                await trio.sleep(look)
                circuits = relayed_circuits(self._host, peer)
                if len(circuits) < 2:
                    # A first circuit (or the old one is gone): nothing to follow. Waiting on
                    # would keep the peer "running" for HEAR_WAIT, its own renewal skipped.
                    return
                if pubsub is None or not pubsub.has_stream_to(peer):
                    continue
                if await pubsub.renew_stream_on(peer, circuits[-1][0]):
                    self._log.info("pubsub stream moved to the next circuit", peer=peer)
                    return
        finally:
            self._running.discard(peer)

    async def _refresh(self, peer: str) -> None:
        """A relayed connection to ``peer`` ended while another stays. If the relay reset it
        before both sides had moved, the side whose stream was on it took the peer for dead
        (its write failed), forgot its subscriptions and reopened a stream without them: it
        would never send that peer anything again. A new stream of ours carries our
        subscriptions (the hello) again."""
        try:
            await trio.sleep(REFRESH_AFTER)
            pubsub = self._pubsub()
            circuits = relayed_circuits(self._host, peer)
            if (
                pubsub is None
                or not circuits
                or has_direct_connection(self._host, peer)  # the handover's business
                or not pubsub.has_stream_to(peer)
            ):
                return
            await pubsub.renew_stream_on(peer, circuits[-1][0])
        finally:
            self._refreshing.discard(peer)

    def _finished(
        self, peer: str, trigger: str, outcome: str, *, old_kept: bool | None = None
    ) -> None:
        self._observer.circuit_renewal_finished(trigger, outcome)
        if outcome == "failed":
            self._failures.refused(trigger, peer=peer)
        else:
            self._log.info(
                "relayed conversation moved",
                peer=peer,
                trigger=trigger,
                outcome=outcome,
                old_kept=old_kept,
            )

    # --- ConnectionWatcher: called inline by the swarm, must not block -------------------------

    def connection_opened(self, info: ConnectionInfo) -> None:
        """A second relayed connection from a peer (its next circuit): follow it."""
        nursery = self._nursery
        if (
            nursery is None
            or not info.relayed
            or info.direction != "inbound"
            or info.peer_id in self._running
        ):
            return
        self._running.add(info.peer_id)
        nursery.start_soon(self._follow, info.peer_id)

    def connection_closed(self, info: ConnectionInfo) -> None:
        """A relayed connection ended: if another is left, say our subscriptions again on it;
        if it was the last and we dialled it, dial another at once."""
        nursery = self._nursery
        peer = info.peer_id
        if nursery is None or not info.relayed:
            return
        if self._host.is_connected(peer) and peer not in self._refreshing:
            self._refreshing.add(peer)
            nursery.start_soon(self._refresh, peer)
            return
        if info.direction != "outbound":
            return
        lost = self._dialled.get(peer)
        if lost is None or peer in self._running or self._host.is_connected(peer):
            return
        self._running.add(peer)
        nursery.start_soon(self._recover, peer, lost)
