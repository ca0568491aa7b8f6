"""The relay's resource accounting: who may hold a reservation, how many circuits may run.

Sans-IO: the hop server asks and reports; this module decides, with the time passed in. The
defaults are go-libp2p's (``p2p/protocol/circuitv2/relay/resources.go``), and every limit is
enforced, the per-IP one included (py-libp2p defines it and never applies it, trap 6):

- a reservation lasts :attr:`RelayLimits.reservation_ttl` seconds; renewing one (the same peer
  reserving again) moves its expiry and never takes a second slot;
- at most :attr:`~RelayLimits.max_reservations` in all and
  :attr:`~RelayLimits.max_reservations_per_ip` per address group (an IPv4 address, an IPv6 /64:
  :func:`~p2pchat.node.netprefix.address_group` with the configured prefixes; counted per exact
  address, one IPv6 host held any number);
- at most :attr:`~RelayLimits.max_circuits` circuits per peer at a time, counted for both ends;
  of the circuits to one reserved peer, one requester PeerId may hold
  :attr:`~RelayLimits.max_circuits_per_source` and one requester address group
  :attr:`~RelayLimits.max_circuits_per_source_group`, so that one attacker cannot hold all 16
  and leave the peer unreachable through the relay (the audit's attack);
- an allow-list of PeerIds and networks, when set, admits only those (reservations and
  circuit sources alike).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from p2pchat.node.netprefix import address_group
from p2pchat.node.wire.circuit import Status

_K = TypeVar("_K")


@dataclass(frozen=True)
class RelayLimits:
    """go-libp2p's defaults."""

    reservation_ttl: float = 3600.0
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    max_circuits: int = 16
    circuit_duration: int = 120  # seconds per relayed connection
    circuit_data: int = 128 * 1024  # bytes per direction per relayed connection
    # p2pchat's, not go-libp2p's: shares of one reserved peer's max_circuits per requester.
    max_circuits_per_source: int = 4
    max_circuits_per_source_group: int = 8
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64

    def group(self, peer: str, ip: str | None) -> str:
        """The address group ``ip`` counts under (a peer seen at no IP is a group alone)."""
        if ip is None:
            return f"peer:{peer}"
        try:
            return address_group(ip, self.ipv4_prefix, self.ipv6_prefix)
        except ValueError:
            return f"peer:{peer}"


@dataclass
class AllowList:
    """PeerIds and networks admitted; an empty list admits everyone."""

    peers: frozenset[str] = frozenset()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """From config entries (validated there): a CIDR network (``10.0.0.0/8``, ``::1/128``,
        a bare address) or else a PeerId."""
        peers: set[str] = set()
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            peers.add(entry)
        return cls(frozenset(peers), tuple(networks))

    def admits(self, peer: str, ip: str | None) -> bool:
        """Whether ``peer`` (seen at ``ip``) may use the relay."""
        if not self.peers and not self.networks:
            return True
        if peer in self.peers:
            return True
        if ip is None:
            return False
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.networks)


@dataclass
class _Slot:
    ip: str
    group: str
    expire: float


@dataclass
class Decision:
    """The answer to a request: ``status`` OK or the refusal to send, and why (for metrics)."""

    status: Status
    reason: str = ""
    expire: float = 0.0


@dataclass
class RelayResources:
    """Reservations and circuits of one relay."""

    limits: RelayLimits = field(default_factory=RelayLimits)
    allow: AllowList = field(default_factory=AllowList)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _circuits: dict[str, int] = field(default_factory=dict)
    # circuits to a reserved peer, per (requester, reserved peer) and (requester group, peer)
    _shares: dict[tuple[str, str], int] = field(default_factory=dict)

    def reserve(self, peer: str, ip: str | None, now: float) -> Decision:
        """A reservation (new or renewed) for ``peer`` connected from ``ip``."""
        self.expire(now)
        if ip is None:
            return Decision(Status.PERMISSION_DENIED, "no_observed_address")
        if not self.allow.admits(peer, ip):
            return Decision(Status.PERMISSION_DENIED, "not_allowed")
        expire = now + self.limits.reservation_ttl
        existing = self._slots.get(peer)
        if existing is not None and existing.ip == ip:
            existing.expire = expire
            return Decision(Status.OK, "renewed", expire)
        others = {p: s for p, s in self._slots.items() if p != peer}
        if len(others) >= self.limits.max_reservations:
            return Decision(Status.RESERVATION_REFUSED, "total_limit")
        group = self.limits.group(peer, ip)
        if sum(1 for s in others.values() if s.group == group) >= (
            self.limits.max_reservations_per_ip
        ):
            return Decision(Status.RESERVATION_REFUSED, "ip_limit")
        self._slots[peer] = _Slot(ip, group, expire)
        return Decision(Status.OK, "new", expire)

    def release(self, peer: str) -> bool:
        """Drop ``peer``'s reservation (it disconnected, or asked); whether it held one."""
        return self._slots.pop(peer, None) is not None

    def reserved_ip(self, peer: str) -> str | None:
        """The address ``peer`` reserved from (None: it holds no reservation)."""
        slot = self._slots.get(peer)
        return slot.ip if slot is not None else None

    def has_reservation(self, peer: str, now: float) -> bool:
        """Whether ``peer`` holds a live reservation."""
        slot = self._slots.get(peer)
        return slot is not None and slot.expire > now

    @property
    def reservations(self) -> int:
        """Reservations held (expired ones included until the next :meth:`expire`)."""
        return len(self._slots)

    def expire(self, now: float) -> int:
        """Drop expired reservations; returns how many."""
        gone = [peer for peer, slot in self._slots.items() if slot.expire <= now]
        for peer in gone:
            del self._slots[peer]
        return len(gone)

    def open_circuit(self, source: str, source_ip: str | None, target: str, now: float) -> Decision:
        """Whether ``source`` may be relayed to ``target``; on OK the circuit is counted until
        :meth:`close_circuit`."""
        if not self.allow.admits(source, source_ip):
            return Decision(Status.PERMISSION_DENIED, "not_allowed")
        if not self.has_reservation(target, now):
            return Decision(Status.NO_RESERVATION, "no_reservation")
        for peer in (source, target):
            if self._circuits.get(peer, 0) >= self.limits.max_circuits:
                return Decision(Status.RESOURCE_LIMIT_EXCEEDED, "circuit_limit")
        mine, my_group = self._share_keys(source, source_ip, target)
        if self._shares.get(mine, 0) >= self.limits.max_circuits_per_source:
            return Decision(Status.RESOURCE_LIMIT_EXCEEDED, "source_share")
        if self._shares.get(my_group, 0) >= self.limits.max_circuits_per_source_group:
            return Decision(Status.RESOURCE_LIMIT_EXCEEDED, "group_share")
        for key in (source, target):
            self._circuits[key] = self._circuits.get(key, 0) + 1
        for share in (mine, my_group):
            self._shares[share] = self._shares.get(share, 0) + 1
        return Decision(Status.OK, "open")

    def _share_keys(
        self, source: str, source_ip: str | None, target: str
    ) -> tuple[tuple[str, str], tuple[str, str]]:
        # Peer ids and groups never collide: a group is "a.b.c.d/n", "x::/n" or "peer:<id>".
        return (source, target), (self.limits.group(source, source_ip), target)

    def close_circuit(self, source: str, source_ip: str | None, target: str) -> None:
        """A circuit opened with :meth:`open_circuit` (with the same arguments) ended."""
        for peer in (source, target):
            _decrement(self._circuits, peer)
        for share in self._share_keys(source, source_ip, target):
            _decrement(self._shares, share)

    def circuits_of(self, peer: str) -> int:
        """Circuits ``peer`` is an end of."""
        return self._circuits.get(peer, 0)


def _decrement(counts: dict[_K, int], key: _K) -> None:
    """One fewer of ``key``; a count that reaches 0 is removed (the dict stays bounded)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
