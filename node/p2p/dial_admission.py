"""Outbound dials and relayed inbound connections: who gets a slot (sans-IO).

The policies of :mod:`p2pchat.node.p2p.outbound` (the swarm's dials) and of
:func:`p2pchat.node.p2p.circuit.serve_circuits` (circuits a relay brings), free of sockets and
clocks so every rule is tested directly (``tests/test_dial_admission.py``). Inbound direct
connections are :mod:`p2pchat.node.p2p.admission`'s.

**Outbound.** Strangers can make a node dial: Kad closer-peers, DCUtR CONNECT addresses,
discovery and rendezvous answers, catch-up sources. py-libp2p 0.8.1 bounds its dials only by
the swarm's total (``max_connections``, inbound and outbound together, checked before each
dial) and a queue of 32 concurrent dials inside ``dial_peer`` (the DCUtR dials, which call the
swarm's single-attempt dial directly, are not in it): a node made to dial 300 peers fills
every slot of the swarm, after which no one connects to it (the swarm refuses inbound
connections at its total). So, as go-libp2p's resource manager (system ``ConnsOutbound``
128, per peer ``ConnsOutbound`` 8) and its swarm's dial limiter (160 concurrent
file-descriptor dials, 8 per peer):

- **outbound in total**: dials in flight plus established outbound connections stay under
  ``max_outbound`` (default 128 of the 300 connections: the rest stay for inbound peers);
- **outbound per peer**: in flight plus established to one peer stay under
  ``outbound_per_peer``;
- **dials in flight**: at most ``dials_in_flight`` in all and ``dials_per_peer`` to one peer;
- **direct dials to named addresses** (DCUtR: the addresses a peer that reached us through a
  relay claims, up to 8 per peer, for every relayed connection): at most ``direct_in_flight``
  at once, so strangers through relays cannot take every outbound slot and the node's own
  dials (bootstrap, relays, lookups) still find one.

A dial over a bound is refused at once (go-libp2p's limiter queues; a queue the remote can
fill is itself an allocation it causes, and every caller here retries on its own schedule).

**Relayed inbound.** A relay's STOP stream brings a connection from a PeerId the relay names;
py-libp2p's swarm does not count it and the inbound admission never sees it (it arrives as a
stream of an existing connection), so one relay could deliver any number of connections from
any number of PeerIds. Each relayed connection takes a slot:

- at most ``relayed`` of them in all, ``relayed_per_relay`` through one relay (go-libp2p's
  relay grants 16 circuits per peer) and ``relayed_per_peer`` from one source PeerId;
- the upgrade on top of the circuit (Noise, muxer, identify) runs within the inbound
  ``transient_deadline`` (enforced by the glue).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

# Why a dial or a relayed connection was refused: more bounded label values of
# ``p2pchat_connections_refused_total{reason}`` (with admission.REASONS).
OUTBOUND_TOTAL = "outbound_total"  # max_outbound dials and outbound connections already
OUTBOUND_PER_PEER = "outbound_per_peer"  # outbound_per_peer to this peer already
DIALS_IN_FLIGHT = "dials_in_flight"  # dials_in_flight dials running already
DIALS_PER_PEER = "dials_per_peer"  # dials_per_peer dials to this peer running already
DIRECT_IN_FLIGHT = "direct_in_flight"  # direct_in_flight DCUtR dials running already
RELAYED_TOTAL = "relayed_total"  # relayed relayed connections already
RELAYED_PER_RELAY = "relayed_per_relay"  # relayed_per_relay through this relay already
RELAYED_PER_PEER = "relayed_per_peer"  # relayed_per_peer from this source PeerId already
RELAYED_DEADLINE = "relayed_deadline"  # circuit not secured, muxed and identified in time
RELAYED_FAILED = "relayed_failed"  # its upgrade failed, or Noise named another PeerId
REASONS = (
    OUTBOUND_TOTAL,
    OUTBOUND_PER_PEER,
    DIALS_IN_FLIGHT,
    DIALS_PER_PEER,
    DIRECT_IN_FLIGHT,
    RELAYED_TOTAL,
    RELAYED_PER_RELAY,
    RELAYED_PER_PEER,
    RELAYED_DEADLINE,
    RELAYED_FAILED,
)


@dataclass(frozen=True)
class DialLimits:
    """The outbound and relayed-inbound limits (config section ``connections``)."""

    max_outbound: int = 128
    outbound_per_peer: int = 8
    dials_in_flight: int = 160
    dials_per_peer: int = 8
    direct_in_flight: int = 32
    relayed: int = 64
    relayed_per_relay: int = 16
    relayed_per_peer: int = 2


_serial = itertools.count()


@dataclass(eq=False)
class Slot:
    """One dial in flight, or one relayed connection. Give it back with ``done``/``release``
    (idempotent)."""

    peer: str
    relay: str | None = None
    direct: bool = False
    released: bool = False
    serial: int = field(default_factory=lambda: next(_serial))


class Dials:
    """The dials in flight, by peer. Established outbound connections are the swarm's: the
    glue reads them live and passes their counts (a count kept here could drift from it)."""

    def __init__(self, limits: DialLimits) -> None:
        self.limits = limits
        self._in_flight: set[Slot] = set()
        self._by_peer: dict[str, int] = {}
        self._direct = 0

    @property
    def in_flight(self) -> int:
        """Dials running now."""
        return len(self._in_flight)

    def begin(
        self, peer: str, outbound: int, outbound_to_peer: int, *, direct: bool = False
    ) -> Slot | str:
        """A dial to ``peer`` is about to start while ``outbound`` outbound connections are
        open (``outbound_to_peer`` of them to ``peer``): its slot, or the reason it must not.
        ``direct``: a DCUtR dial to an address the peer named."""
        limits = self.limits
        to_peer = self._by_peer.get(peer, 0)
        if to_peer >= limits.dials_per_peer:
            return DIALS_PER_PEER
        if direct and self._direct >= limits.direct_in_flight:
            return DIRECT_IN_FLIGHT
        if self.in_flight >= limits.dials_in_flight:
            return DIALS_IN_FLIGHT
        if outbound_to_peer + to_peer >= limits.outbound_per_peer:
            return OUTBOUND_PER_PEER
        if outbound + self.in_flight >= limits.max_outbound:
            return OUTBOUND_TOTAL
        slot = Slot(peer, direct=direct)
        self._in_flight.add(slot)
        self._by_peer[peer] = to_peer + 1
        self._direct += direct
        return slot

    def done(self, slot: Slot) -> None:
        """The dial ended (connected or not)."""
        if slot.released:
            return
        slot.released = True
        self._in_flight.discard(slot)
        _decrement(self._by_peer, slot.peer)
        self._direct -= slot.direct


class Relayed:
    """The relayed inbound connections, by relay and by source PeerId."""

    def __init__(self, limits: DialLimits) -> None:
        self.limits = limits
        self._slots: set[Slot] = set()
        self._by_relay: dict[str, int] = {}
        self._by_peer: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Relayed connections holding a slot now."""
        return len(self._slots)

    def admit(self, relay: str, peer: str) -> Slot | str:
        """``relay`` brings a connection from ``peer``: its slot, or the reason it must not."""
        limits = self.limits
        if self._by_peer.get(peer, 0) >= limits.relayed_per_peer:
            return RELAYED_PER_PEER
        if self._by_relay.get(relay, 0) >= limits.relayed_per_relay:
            return RELAYED_PER_RELAY
        if self.total >= limits.relayed:
            return RELAYED_TOTAL
        slot = Slot(peer, relay)
        self._slots.add(slot)
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        self._by_relay[relay] = self._by_relay.get(relay, 0) + 1
        return slot

    def release(self, slot: Slot) -> None:
        """The relayed connection is gone (or was refused after admission)."""
        if slot.released:
            return
        slot.released = True
        self._slots.discard(slot)
        _decrement(self._by_peer, slot.peer)
        if slot.relay is not None:
            _decrement(self._by_relay, slot.relay)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
