"""The peerstore, bounded: how many peers it holds, and how much of each.

py-libp2p 0.8.1's ``PeerStore`` makes a record for every PeerId anyone names: the closer
peers of every Kad answer (``add_addrs``, TTL 3600 s or 600 s), their signed records, GossipSub
peer exchange, identify and identify push (addresses, protocols, public key, agent version),
DCUtR, mDNS. What bounds it does have do not hold:

- its ``max_peers`` (1000) is checked in ``add_addrs`` only (``add_protocols``, ``put``,
  ``add_pubkey``, ``record_latency`` create records past it), and it evicts in insertion order:
  the first peers it met (the configured bootstrap and relay peers, connected peers) go first,
  so a stranger naming a thousand invented PeerIds pushes out the peers the node relies on;
- ``add_protocols`` appends without removing duplicates, and neither protocols nor addresses
  are counted per peer (identify takes 1000 addresses, nothing bounds a protocol name);
- a TTL is one per peer (the last write's), addresses whose TTL passed are hidden when read but
  the record stays, and the periodic cleanup (``start_cleanup_task``) is never started: a peer
  once named stays for the life of the process.

:class:`BoundedPeerStore` is the library's store with every bound of :class:`PeerstoreLimits`
(go-libp2p's numbers where it has them); each refusal is reported by reason
(:data:`REASONS`) to a :class:`PeerstoreObserver`:

- ``max_peers`` records in all. A new peer past it takes the place of the least valuable:
  never this node's own, a configured bootstrap or relay peer (``protected``) or a peer with a
  live connection; of the rest the one seen longest ago (``lru``). When every record is one of
  those, the newcomer is not stored (``peers``);
- a record of a peer with no connection expires: ``learned_ttl`` after a third party named it
  (go-libp2p keeps a DHT's closer peers 2 min, its provider addresses 30 min), or
  ``disconnected_ttl`` after it was last seen connected (go-libp2p's RecentlyConnectedAddrTTL,
  15 min); naming a peer again does not renew it, only a connection does (``expired``).
  Expired records are swept every ``sweep_interval`` seconds (the host calls :meth:`sweep`;
  a write of a new peer sweeps too when one is due);
- per peer: ``max_addrs_per_peer`` addresses (``addrs``), each at most ``max_addr_bytes``
  (``addr_size``); ``max_protocols_per_peer`` distinct protocols (``protocols``), each name at
  most ``max_protocol_chars`` (``protocol_name``); ``max_metadata_keys`` metadata entries, a text
  value cut at ``max_metadata_chars`` (``metadata``); a signed peer record of at most
  ``max_record_bytes`` (``record``, go-libp2p's identify reads 8 KiB messages).

Sans-IO: the store learns which peers are connected through the ``is_live`` callable and the
time through ``clock``; the unit tests drive it directly. Its writes and sweeps hold one lock:
the library's mDNS listener writes from zeroconf's thread (trap 8) while the node's own writes
and the sweep run on the trio thread, and a sweep must not iterate a dict another thread grows.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from libp2p.crypto.keys import PublicKey
from libp2p.custom_types import MetadataValue
from libp2p.peer.envelope import Envelope
from libp2p.peer.id import ID
from libp2p.peer.peerdata import PeerData
from libp2p.peer.peerstore import PeerStore, PeerStoreError
from multiaddr import Multiaddr

REASONS = (
    "lru",
    "expired",
    "peers",
    "addrs",
    "addr_size",
    "protocols",
    "protocol_name",
    "metadata",
    "record",
)
"""Every reason a :class:`PeerstoreObserver` is told of (fixed words: a bounded label).
``lru`` and ``expired`` remove a whole record; the others refuse part of one (or, ``peers``,
a new one)."""

EVICTIONS = ("lru", "expired")


@dataclass(frozen=True)
class PeerstoreLimits:
    """Bounds of the peerstore (config section ``peerstore``).

    ``max_peers``: a chat peer holds its connections (``node.max_connections``, 300), the Kad
    routing table (a few hundred in practice), the members of its rooms and what lookups
    named; 2048 covers that many times over. Measured (tracemalloc): 2048 records at every
    per-peer bound (32 addresses, 128 protocols of 128 characters, a 512-character agent)
    take 54 MiB; 2048 records as a Kad answer leaves them (two addresses) 1.8 MiB.
    """

    max_peers: int = 2048
    max_addrs_per_peer: int = 32
    max_addr_bytes: int = 256
    max_protocols_per_peer: int = 128
    max_protocol_chars: int = 128
    max_metadata_keys: int = 16
    max_metadata_chars: int = 512  # over agent.MAX_AGENT_CHARS + 1: a cut agent stays too long
    max_record_bytes: int = 8 * 1024
    learned_ttl: float = 600.0
    disconnected_ttl: float = 900.0
    sweep_interval: float = 30.0


class PeerstoreObserver(Protocol):
    """Told of each refusal and of the number of peers held. Called inline: must not block."""

    def peerstore_refused(self, reason: str) -> None: ...

    def peerstore_peers(self, count: int) -> None: ...


class QuietPeerstoreObserver:
    """Records nothing."""

    def peerstore_refused(self, reason: str) -> None:
        return None

    def peerstore_peers(self, count: int) -> None:
        return None


@dataclass
class _Seen:
    at: float  # when the record was made, or its peer last seen connected
    met: bool = False  # ever seen connected


def _never_live(peer_id: ID) -> bool:
    return False


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(
    method: Callable[Concatenate[BoundedPeerStore, _P], _R],
) -> Callable[Concatenate[BoundedPeerStore, _P], _R]:
    """Run ``method`` holding the store's lock (see the module docstring)."""

    @functools.wraps(method)
    def locked(store: BoundedPeerStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with store._lock:
            return method(store, *args, **kwargs)

    return locked


class BoundedPeerStore(PeerStore):  # type: ignore[misc]
    """py-libp2p's ``PeerStore`` with the bounds of :class:`PeerstoreLimits` (module docstring).

    ``protected``: PeerIds never evicted nor expired (this node, configured bootstrap and relay
    peers). ``is_live``: whether a peer has a connection now (set later with :meth:`bind` when
    the swarm is built after the store).
    """

    def __init__(
        self,
        limits: PeerstoreLimits,
        observer: PeerstoreObserver | None = None,
        *,
        protected: Iterable[ID] = (),
        is_live: Callable[[ID], bool] = _never_live,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The library's own count bound and its insertion-order eviction are replaced by ours.
        super().__init__(max_records=limits.max_peers, max_peers=2**62)
        self.limits = limits
        self._observer = observer or QuietPeerstoreObserver()
        self._protected = set(protected)
        self._is_live = is_live
        self._clock = clock
        self._seen: OrderedDict[ID, _Seen] = OrderedDict()  # oldest first
        self._swept_at = clock()
        self._lock = threading.RLock()  # re-entrant: the library's methods call ours

    def bind(self, is_live: Callable[[ID], bool], protected: Iterable[ID] = ()) -> None:
        """Learn how to tell a connected peer, and more peers never to evict."""
        self._is_live = is_live
        self._protected.update(protected)

    @_locked
    def disconnected(self, peer_id: ID) -> None:
        """``peer_id`` was connected until now: its record's ``disconnected_ttl`` starts now
        (a connection shorter than a sweep interval counts too)."""
        seen = self._seen.get(peer_id)
        if seen is not None:
            seen.at = self._clock()
            seen.met = True
            self._seen.move_to_end(peer_id)

    def protect(self, peer_id: ID) -> None:
        """Never evict nor expire ``peer_id`` (a configured bootstrap or relay peer)."""
        self._protected.add(peer_id)

    # --- admission, eviction, expiry ----------------------------------------------------------

    def _admit(self, peer_id: ID) -> bool:
        """Whether ``peer_id`` has a record now, making one (and room for it) if it may."""
        if peer_id in self.peer_data_map:
            if peer_id not in self._seen:  # made by a library path we do not see
                self._seen[peer_id] = _Seen(self._clock())
            return True
        now = self._clock()
        if now - self._swept_at >= self.limits.sweep_interval:
            self.sweep(now)
        full = len(self.peer_data_map) >= self.limits.max_peers
        if full and peer_id not in self._protected and not self._evict_one(now):
            self._observer.peerstore_refused("peers")
            return False
        self.peer_data_map[peer_id] = PeerData()
        self._seen[peer_id] = _Seen(now)
        self._observer.peerstore_peers(len(self.peer_data_map))
        return True

    def _keeps(self, peer_id: ID, seen: _Seen, now: float) -> bool:
        """Whether ``peer_id`` is never to be evicted now; a live one is seen again."""
        if peer_id in self._protected:
            return True
        if self._is_live(peer_id):
            seen.at = now
            seen.met = True
            return True
        return False

    def _evict_one(self, now: float) -> bool:
        """Remove the least recently seen record no one keeps; False if there is none.

        Kept records met on the way go to the back, so a flood of newcomers walks past each
        connected or protected peer once per pass, not once per newcomer.
        """
        for _ in range(len(self._seen)):
            peer_id, seen = next(iter(self._seen.items()))
            if self._keeps(peer_id, seen, now):
                self._seen.move_to_end(peer_id)
                continue
            self._remove(peer_id, "lru")
            return True
        return False

    @_locked
    def sweep(self, now: float | None = None) -> int:
        """Remove every record whose peer is unconnected, unprotected and past its TTL; the
        number removed."""
        if now is None:
            now = self._clock()
        self._swept_at = now
        for peer_id in self.peer_data_map.keys() - self._seen.keys():
            self._seen[peer_id] = _Seen(now)
        expired = []
        for peer_id, seen in self._seen.items():
            if self._keeps(peer_id, seen, now):
                continue
            ttl = self.limits.disconnected_ttl if seen.met else self.limits.learned_ttl
            if now - seen.at >= ttl:
                expired.append(peer_id)
        for peer_id in expired:
            self._remove(peer_id, "expired")
        return len(expired)

    def _remove(self, peer_id: ID, reason: str) -> None:
        self._seen.pop(peer_id, None)
        self.peer_data_map.pop(peer_id, None)
        self.peer_record_map.pop(peer_id, None)
        self._observer.peerstore_refused(reason)
        self._observer.peerstore_peers(len(self.peer_data_map))

    @_locked
    def clear_peerdata(self, peer_id: ID) -> None:
        super().clear_peerdata(peer_id)
        self._seen.pop(peer_id, None)
        self._observer.peerstore_peers(len(self.peer_data_map))

    def held(self) -> int:
        """Peers with a record."""
        return len(self.peer_data_map)

    # --- per-peer bounds ----------------------------------------------------------------------

    @_locked
    def add_addrs(self, peer_id: ID, addrs: Sequence[Multiaddr], ttl: int = 0) -> None:
        if not self._admit(peer_id):
            return
        data = self.peer_data_map[peer_id]
        limits = self.limits
        fresh: list[Multiaddr] = []
        oversized = False
        for addr in addrs:
            if len(addr.to_bytes()) > limits.max_addr_bytes:
                oversized = True
            elif addr not in data.addrs and addr not in fresh:
                fresh.append(addr)
        if oversized:
            self._observer.peerstore_refused("addr_size")
        room = limits.max_addrs_per_peer - len(data.addrs)
        if len(fresh) > room:
            self._observer.peerstore_refused("addrs")
            fresh = fresh[: max(room, 0)]
        super().add_addrs(peer_id, fresh, ttl)

    @_locked
    def consume_peer_record(self, envelope: Envelope, ttl: int) -> bool:
        size = len(envelope.raw_payload) + len(envelope.signature)
        if size > self.limits.max_record_bytes:
            self._observer.peerstore_refused("record")
            return False
        try:
            peer_id = envelope.record().peer_id
            signer = ID.from_pubkey(envelope.public_key)
        except Exception:  # a record the library would refuse too
            return False
        # The library makes the record before it checks the signer: check first, then admit.
        if signer != peer_id or not self._admit(peer_id):
            return False
        return bool(super().consume_peer_record(envelope, ttl))

    def _protocols_within(self, protocols: Sequence[str], have: Sequence[str]) -> list[str]:
        limits = self.limits
        kept: list[str] = []
        known = set(have)
        too_long = False
        for protocol in protocols:
            if len(protocol) > limits.max_protocol_chars:
                too_long = True
            elif protocol not in known:
                known.add(protocol)
                kept.append(protocol)
        if too_long:
            self._observer.peerstore_refused("protocol_name")
        room = limits.max_protocols_per_peer - len(have)
        if len(kept) > room:
            self._observer.peerstore_refused("protocols")
            kept = kept[: max(room, 0)]
        return kept

    @_locked
    def add_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        if not self._admit(peer_id):
            return
        have = self.peer_data_map[peer_id].get_protocols()
        super().add_protocols(peer_id, self._protocols_within(protocols, have))

    @_locked
    def set_protocols(self, peer_id: ID, protocols: Sequence[str]) -> None:
        if not self._admit(peer_id):
            return
        super().set_protocols(peer_id, self._protocols_within(protocols, ()))

    @_locked
    def put(self, peer_id: ID, key: str, val: MetadataValue) -> None:
        if not self._admit(peer_id):
            return
        limit = self.limits.max_metadata_chars
        metadata = self.peer_data_map[peer_id].metadata
        if len(key) > limit or (
            key not in metadata and len(metadata) >= self.limits.max_metadata_keys
        ):
            self._observer.peerstore_refused("metadata")
            return
        if isinstance(val, str) and len(val) > limit:
            self._observer.peerstore_refused("metadata")
            val = val[:limit]
        super().put(peer_id, key, val)

    @_locked
    def add_pubkey(self, peer_id: ID, pubkey: PublicKey) -> None:
        # The library makes the record before it checks the key matches: check first.
        if ID.from_pubkey(pubkey) != peer_id:
            raise PeerStoreError("peer ID and pubkey does not match")
        if self._admit(peer_id):
            super().add_pubkey(peer_id, pubkey)

    @_locked
    def record_latency(self, peer_id: ID, RTT: float) -> None:
        if self._admit(peer_id):
            super().record_latency(peer_id, RTT)
