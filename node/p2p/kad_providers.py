"""The DHT's provider records, bounded: per key, per providing peer, in all, in addresses, in age.

py-libp2p 0.8.1's ``ProviderStore`` keeps at most k (20) providers per key and nothing else:
no bound on the keys, on the keys one peer provides, on the addresses of a record (a provider
record keeps every address its ADD_PROVIDER carried), and records live 48 hours. A server adds
what ADD_PROVIDER requests bring (one record per request, the sender's own), a client what
the answers to its lookups name (any PeerIds the answering peer chooses). Fresh PeerIds cost
nothing, so every one of these is memory a stranger can make us spend.

:class:`BoundedProviderStore` is the library's store with every bound of :class:`ProviderLimits`
(rust-libp2p's ``MemoryStoreConfig`` is the model: 20 providers per key, a bounded number of
records); a record over a bound is not stored and the refusal is counted
(:class:`ProviderObserver`):

- ``providers_per_key``: the key has ``per_key`` providers already (refreshes of those stay
  welcome: a room's first members keep their places while strangers queue);
- ``providers_per_peer``: that provider has records for ``per_peer`` keys already;
- ``providers_total``: ``total`` records are stored and nobody holds more than the newcomer
  would; otherwise the oldest record of the peer holding the most is evicted
  (``providers_evicted``): a flood of sybils fills the store only with its own records, and
  an honest provider with few records is the last to go;
- ``provider_addrs``: a record's addresses past the first ``addrs_per_provider`` are dropped
  (the record is kept).

Records expire ``ttl`` seconds after they were last announced (go-libp2p: 48 h, for IPFS's
22 h re-announcement; p2pchat peers re-announce every ``dht.reprovide_interval``). This node's
own records are never refused nor evicted.

It also answers the lookups the host layer starts from the network, never from what it holds
(:meth:`BoundedProviderStore.find_providers_in_network`, see :mod:`p2pchat.node.p2p.dht`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from libp2p.abc import IHost
from libp2p.kad_dht.provider_store import ProviderRecord, ProviderStore
from libp2p.peer.peerinfo import PeerInfo


@dataclass(frozen=True)
class ProviderLimits:
    """The bounds of the provider store (see the module's docstring)."""

    per_key: int = 20
    per_peer: int = 256
    total: int = 10_000
    addrs_per_provider: int = 8
    ttl: float = 3600.0


class ProviderObserver(Protocol):
    """Told of each provider record (or part of one) refused, by reason."""

    def kad_refused(self, reason: str) -> None: ...


class BoundedProviderStore(ProviderStore):  # type: ignore[misc]
    """py-libp2p's provider store with the bounds of :class:`ProviderLimits`.

    ``providers`` (the library's map key -> PeerId text -> record) is only changed through
    :meth:`add_provider`, :meth:`get_providers` and :meth:`cleanup_expired`, which keep the
    per-peer index in step with it.
    """

    def __init__(
        self,
        host: IHost,
        peer_routing: Any,
        limits: ProviderLimits,
        observer: ProviderObserver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, peer_routing=peer_routing)
        self.limits = limits
        self._observer = observer
        self._clock = clock
        self._me = str(host.get_id())
        # PeerId text -> the keys it provides, least recently announced first.
        self._keys_by_peer: dict[str, dict[bytes, None]] = {}
        self._count = 0
        self._network_only = False

    # -- the library's interface ------------------------------------------------------------

    def add_provider(self, key: bytes, provider: PeerInfo) -> None:
        """Store (or refresh) ``provider``'s record for ``key`` unless a bound refuses it."""
        if not provider or not provider.peer_id:
            return
        peer = str(provider.peer_id)
        addrs = list(provider.addrs)
        if len(addrs) > self.limits.addrs_per_provider:
            addrs = addrs[: self.limits.addrs_per_provider]
            self._observer.kad_refused("provider_addrs")
        record = ProviderRecord(PeerInfo(provider.peer_id, addrs), timestamp=self._clock())
        held = self.providers.get(key)
        if held is not None and peer in held:
            held[peer] = record
            keys = self._keys_by_peer[peer]
            keys.pop(key, None)
            keys[key] = None
            return
        if peer != self._me and not self._admit(key, peer):
            return
        self.providers.setdefault(key, {})[peer] = record
        self._keys_by_peer.setdefault(peer, {})[key] = None
        self._count += 1

    def get_providers(self, key: bytes) -> list[PeerInfo]:
        """The live providers of ``key`` (expired ones are dropped on the way); nothing for
        the one call a network lookup makes first (:meth:`find_providers_in_network`)."""
        if self._network_only:
            self._network_only = False
            return []
        self._expire_key(key, self._clock())
        return [record.provider_info for record in self.providers.get(key, {}).values()]

    def cleanup_expired(self) -> None:
        """Drop every record older than ``ttl`` (the DHT's maintenance calls it)."""
        now = self._clock()
        for key in list(self.providers):
            self._expire_key(key, now)

    def size(self) -> int:
        """Provider records stored (this node's own included)."""
        return self._count

    # -- ours ------------------------------------------------------------------------------

    async def find_providers_in_network(self, key: bytes, count: int) -> list[PeerInfo]:
        """The library's lookup of ``key``'s providers, asked of the network even when this
        store holds some: the library answers from the local store whenever it holds anything
        for the key (our own record, once we provide), so two members that both announce a
        room would never find each other. (It reads the store once, before its first await.)
        """
        self._network_only = True
        try:
            return list(await super().find_providers(key, count))
        finally:
            self._network_only = False

    def keys_of(self, peer: str) -> int:
        """How many keys ``peer`` has records for."""
        return len(self._keys_by_peer.get(peer, ()))

    def _admit(self, key: bytes, peer: str) -> bool:
        now = self._clock()
        self._expire_key(key, now)
        if len(self.providers.get(key, ())) >= self.limits.per_key:
            self._observer.kad_refused("providers_per_key")
            return False
        mine = self.keys_of(peer)
        if mine >= self.limits.per_peer:
            self._observer.kad_refused("providers_per_peer")
            return False
        if self._count >= self.limits.total:
            self.cleanup_expired()
        if self._count >= self.limits.total and not self._evict_for(mine + 1):
            self._observer.kad_refused("providers_total")
            return False
        return True

    def _evict_for(self, newcomer_would_hold: int) -> bool:
        """Evict the oldest record of the peer holding the most, if it holds more than the
        newcomer would; whether one was evicted."""
        holders = (item for item in self._keys_by_peer.items() if item[0] != self._me)
        largest = max(holders, key=lambda item: len(item[1]), default=None)
        if largest is None or len(largest[1]) <= newcomer_would_hold:
            return False
        peer, keys = largest
        self._remove(next(iter(keys)), peer)
        self._observer.kad_refused("providers_evicted")
        return True

    def _expire_key(self, key: bytes, now: float) -> None:
        held = self.providers.get(key)
        if held is None:
            return
        horizon = now - self.limits.ttl
        for peer in [peer for peer, record in held.items() if record.timestamp <= horizon]:
            self._remove(key, peer)

    def _remove(self, key: bytes, peer: str) -> None:
        held = self.providers.get(key)
        if held is None or held.pop(peer, None) is None:
            return
        self._count -= 1
        if not held:
            del self.providers[key]
        keys = self._keys_by_peer.get(peer)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self._keys_by_peer[peer]
