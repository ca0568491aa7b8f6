"""Inbound connection admission: who gets a connection slot, and who loses one (sans-IO).

The policy of :mod:`p2pchat.node.p2p.inbound` (the I/O glue), kept free of sockets and clocks
so every rule is tested directly (``tests/test_admission.py``).

What py-libp2p 0.8.1 offers, and why this replaces it (measured and read in ``libp2p/rcmgr``
and ``libp2p/network/swarm.py``):

- ``rcmgr.connection_limits.ConnectionLimits``: flat counters (pending and established inbound,
  outbound, total, per peer). No notion of an address: one IP may take every slot. The swarm
  checks the established ones in ``add_conn``; the pending ones are checked nowhere.
- ``rcmgr.cidr_limits.CIDRLimiter``: one shared counter per *configured* network ("all of
  10.0.0.0/8 together may hold 100"): it cannot say "each IPv4 address, each IPv6 /64, may hold
  8", which is what stops one host. It fails open on an address it cannot parse.
- ``rcmgr.allowlist.Allowlist``: exact multiaddr strings and PeerIds; sound, but nothing here
  needs to bypass limits, so unused.
- ``rcmgr.manager.ResourceManager``: counts a handshake's "pre-upgrade" scope and its
  established scope in the same counter as every other connection; its *circuit breaker*
  refuses everyone for 60 s after 5 failures (trap 24: off), and its *graceful degradation*
  lowers the connection limit (to half, at worst) each time it is reached: an attacker who
  fills the slots once shrinks them for everyone. The host keeps it as a backstop sized
  above these limits, degradation and breaker off (``host._resource_manager``).
- The swarm itself: every inbound connection holds a slot of ``_inbound_limiter``
  (``max_connections - min_connections`` = 250 at our defaults) from accept to the end of the
  *swarm*, not of the connection (its handler waits for the swarm to finish): connections
  opened and held, or even opened and closed, fill it for good; then no one connects again.
  Its only deadline is ``inbound_upgrade_timeout`` (10 s, security and muxer; identify is not
  covered) and no byte bound.

So the swarm's inbound handler is replaced (:mod:`~p2pchat.node.p2p.inbound`), and admission
follows go-libp2p's resource manager and connection limiter:

- **per address group** (:func:`~p2pchat.node.netprefix.address_group`: IPv4 address, IPv6
  /64): at most ``per_ip`` inbound connections, handshaking or established (go-libp2p: 8 per
  IPv4 /32); this machine's own loopback addresses, 127.0.0.1 and ::1, are exempt by default
  (``per_ip_exempt``; go-libp2p exempts all of loopback);
- **per peer**: at most ``per_peer`` inbound connections once the security handshake named it;
- **in total**: at most ``max_connections`` inbound connections;
- **transient** (accepted, not yet secured, muxed and identified): at most ``transient``
  of them, each with a deadline (enforced by the glue). When the transient slots or all slots
  are full, a newcomer takes the slot of a transient connection of the address group holding
  the most transient connections (its oldest), provided that group holds more than the
  newcomer's would; otherwise the newcomer is refused. One address can thus never push out
  another address's handshake, and a newcomer from a fresh address always finds a slot while
  any address holds two or more transient connections: an honest peer can connect under a
  flood from fewer addresses than there are transient slots. (What no per-address rule stops:
  an attacker with more addresses than transient slots; their connections still die at the
  deadline.)
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from p2pchat.node.netprefix import IPV4_PREFIX, IPV6_PREFIX, address_group

# Why a connection was refused or cut: the bounded label values of
# ``p2pchat_connections_refused_total{reason}``.
PER_IP = "per_ip"  # its address group holds per_ip inbound connections already
PER_PEER = "per_peer"  # the peer holds per_peer inbound connections already
TRANSIENT_FULL = "transient_full"  # every transient slot is taken, none could be freed
TOTAL_FULL = "total_full"  # every inbound slot is taken, no transient one could be freed
CULLED = "culled"  # a transient connection closed to make room for a newcomer
DEADLINE = "deadline"  # secure + mux + identify not done within transient_deadline
HANDSHAKE_BYTES = "handshake_bytes"  # over handshake_max_bytes before the muxer was agreed
HANDSHAKE_FAILED = "handshake_failed"  # junk, a broken Noise handshake, no common muxer
REASONS = (
    PER_IP,
    PER_PEER,
    TRANSIENT_FULL,
    TOTAL_FULL,
    CULLED,
    DEADLINE,
    HANDSHAKE_BYTES,
    HANDSHAKE_FAILED,
)


@dataclass(frozen=True)
class AdmissionLimits:
    """The inbound connection limits (config section ``connections``)."""

    max_connections: int = 300
    per_ip: int = 8
    per_peer: int = 4
    transient: int = 32
    transient_deadline: float = 15.0
    handshake_max_bytes: int = 32 * 1024
    ipv4_prefix: int = IPV4_PREFIX
    ipv6_prefix: int = IPV6_PREFIX
    # Networks whose connections the per-IP limit does not count (go-libp2p exempts all of
    # loopback); still counted in total, per peer and as transient.
    per_ip_exempt: tuple[str, ...] = ("127.0.0.1/32", "::1/128")

    def exempt(self, ip: str | None) -> bool:
        """Whether ``ip`` is in a network of :attr:`per_ip_exempt`."""
        if not ip or not self.per_ip_exempt:
            return False
        try:
            address = ipaddress.ip_address(ip.strip("[]"))
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(
            address in ipaddress.ip_network(network, strict=False) for network in self.per_ip_exempt
        )

    def group_of(self, ip: str | None) -> str:
        """The address group ``ip`` counts under; every address that cannot be read counts
        under one group (``"unknown"``), so it cannot escape the per-address limit."""
        if not ip:
            return "unknown"
        try:
            return address_group(ip, self.ipv4_prefix, self.ipv6_prefix)
        except ValueError:
            return "unknown"


class AdmissionObserver(Protocol):
    """Told of every refusal and of the transient count (the metrics implement it)."""

    def connection_refused(self, reason: str) -> None: ...

    def transient_connections(self, count: int) -> None: ...


class QuietAdmissionObserver:
    """Records nothing (one-off hosts, tests of the host alone)."""

    def connection_refused(self, reason: str) -> None:
        return None

    def transient_connections(self, count: int) -> None:
        return None


_serial = itertools.count()


@dataclass(eq=False)
class Ticket:
    """One admitted inbound connection's slot. ``cull`` is set by the glue: it closes the
    connection (called at most once, when the policy takes the slot for a newcomer)."""

    group: str
    opened_at: float
    peer: str | None = None
    transient: bool = True
    released: bool = False
    cull: Callable[[], None] | None = None
    serial: int = field(default_factory=lambda: next(_serial))


@dataclass(frozen=True)
class Decision:
    """A newcomer's fate: its ticket (None: refused, for ``reason``) and the transient
    connections to close to make room for it (their slots are already released)."""

    ticket: Ticket | None
    reason: str | None = None
    culled: tuple[Ticket, ...] = ()


class Admission:
    """The slots of inbound connections, by address group, peer, and state."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._tickets: set[Ticket] = set()
        self._by_group: dict[str, int] = {}
        self._transient_by_group: dict[str, list[Ticket]] = {}  # oldest first
        self._by_peer: dict[str, int] = {}
        self._transient = 0

    @property
    def transient(self) -> int:
        """Transient (not yet identified) inbound connections now."""
        return self._transient

    @property
    def total(self) -> int:
        """Inbound connections holding a slot now."""
        return len(self._tickets)

    def group_count(self, group: str) -> int:
        """Inbound connections of ``group`` now."""
        return self._by_group.get(group, 0)

    def admit(self, ip: str | None, now: float) -> Decision:
        """A connection from ``ip`` was accepted: give it a transient slot, or refuse it."""
        limits = self.limits
        group = limits.group_of(ip)
        if self._by_group.get(group, 0) >= limits.per_ip and not limits.exempt(ip):
            return Decision(None, PER_IP)
        culled: list[Ticket] = []
        if self.total >= limits.max_connections:
            victim = self._victim_for(group)
            if victim is None:
                return Decision(None, TOTAL_FULL)
            self.release(victim)
            culled.append(victim)
        if self._transient >= limits.transient:
            victim = self._victim_for(group)
            if victim is None:
                return Decision(None, TRANSIENT_FULL, tuple(culled))
            self.release(victim)
            culled.append(victim)
        ticket = Ticket(group=group, opened_at=now)
        self._tickets.add(ticket)
        self._by_group[group] = self._by_group.get(group, 0) + 1
        self._transient_by_group.setdefault(group, []).append(ticket)
        self._transient += 1
        return Decision(ticket, None, tuple(culled))

    def _victim_for(self, group: str) -> Ticket | None:
        """The oldest transient connection of the group holding the most of them, if that
        group holds more than ``group`` would with the newcomer."""
        newcomer_would_hold = len(self._transient_by_group.get(group, ())) + 1
        best: list[Ticket] | None = None
        for tickets in self._transient_by_group.values():
            if best is None or (len(tickets), -tickets[0].serial) > (
                len(best),
                -best[0].serial,
            ):
                best = tickets
        if best is None or len(best) < newcomer_would_hold:
            return None
        return best[0]

    def named(self, ticket: Ticket, peer: str) -> str | None:
        """The security handshake named the remote ``peer``: None if it may go on, else the
        reason it must not (the ticket is released then)."""
        if ticket.released:
            return CULLED
        if self._by_peer.get(peer, 0) >= self.limits.per_peer:
            self.release(ticket)
            return PER_PEER
        ticket.peer = peer
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        return None

    def established(self, ticket: Ticket) -> None:
        """The connection is secured, muxed and identified: it leaves the transient slots."""
        if ticket.released or not ticket.transient:
            return
        ticket.transient = False
        self._drop_transient(ticket)

    def release(self, ticket: Ticket) -> None:
        """The connection is gone (or culled): free its slots. Idempotent."""
        if ticket.released:
            return
        ticket.released = True
        self._tickets.discard(ticket)
        _decrement(self._by_group, ticket.group)
        if ticket.peer is not None:
            _decrement(self._by_peer, ticket.peer)
        if ticket.transient:
            self._drop_transient(ticket)

    def _drop_transient(self, ticket: Ticket) -> None:
        self._transient -= 1
        tickets = self._transient_by_group.get(ticket.group, [])
        if ticket in tickets:
            tickets.remove(ticket)
        if not tickets:
            self._transient_by_group.pop(ticket.group, None)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
