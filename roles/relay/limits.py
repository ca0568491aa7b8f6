"""The relay's resource accounting: who may hold a reservation, how many circuits may run.

Sans-IO: the hop server asks and reports; this module decides, with the time passed in. The
defaults are go-libp2p's (``p2p/protocol/circuitv2/relay/resources.go``), and every limit is
enforced, the per-IP one included (py-libp2p defines it and never applies it, trap 6):

- a reservation lasts :attr:`RelayLimits.reservation_ttl` seconds; renewing one (the same peer
  reserving again) moves its expiry and never takes a second slot;
- at most :attr:`~RelayLimits.max_reservations` in all and
  :attr:`~RelayLimits.max_reservations_per_ip` per IP address;
- at most :attr:`~RelayLimits.max_circuits` circuits per peer at a time, counted for both ends;
- an allow-list of PeerIds and networks, when set, admits only those (reservations and
  circuit sources alike).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from p2pchat.node.wire.circuit import Status


@dataclass(frozen=True)
class RelayLimits:
    """go-libp2p's defaults."""

    reservation_ttl: float = 3600.0
    max_reservations: int = 128
    max_reservations_per_ip: int = 8
    max_circuits: int = 16
    circuit_duration: int = 120  # seconds per relayed connection
    circuit_data: int = 128 * 1024  # bytes per direction per relayed connection


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
        if sum(1 for s in others.values() if s.ip == ip) >= self.limits.max_reservations_per_ip:
            return Decision(Status.RESERVATION_REFUSED, "ip_limit")
        self._slots[peer] = _Slot(ip, expire)
        return Decision(Status.OK, "new", expire)

    def release(self, peer: str) -> bool:
        """Drop ``peer``'s reservation (it disconnected, or asked); whether it held one."""
        return self._slots.pop(peer, None) is not None

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
        for peer in (source, target):
            self._circuits[peer] = self._circuits.get(peer, 0) + 1
        return Decision(Status.OK, "open")

    def close_circuit(self, source: str, target: str) -> None:
        """A circuit opened with :meth:`open_circuit` ended."""
        for peer in (source, target):
            left = self._circuits.get(peer, 0) - 1
            if left > 0:
                self._circuits[peer] = left
            else:
                self._circuits.pop(peer, None)

    def circuits_of(self, peer: str) -> int:
        """Circuits ``peer`` is an end of."""
        return self._circuits.get(peer, 0)
