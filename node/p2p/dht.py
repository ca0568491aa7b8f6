"""Kad-DHT for rendezvous, on py-libp2p's ``KadDHT``, with its traps handled.

What the library does, and what this module does instead:

- the routing table is never filled from connections (trap 13): a peer is only learned through
  lookups -> every connected peer that speaks the DHT protocol is added when identify says so
  (:class:`~p2pchat.node.p2p.host.IdentifyReceived`);
- ``find_providers`` returns one provider several times (trap 13) -> deduplicated, and this
  node is never its own result;
- ``find_providers`` answers from the local provider store whenever it holds anything for the
  key, and it holds our own record once we provide it, or the providers a previous lookup found:
  two peers that both advertise a room never find each other, and nobody finds a later joiner
  -> our lookups always ask the network (the store's own lookup skips what it holds);
- a server adds every peer that opens a DHT stream to it to its routing table ("it must be a
  server"), though clients open streams too; it then refers others to peers that cannot answer
  -> a peer enters the table only once identify shows it serves the DHT protocol;
- while the routing table holds fewer than 5 peers, every lookup (provide, find) also starts from
  every connected peer and every peer in the peerstore, so each room lookup dials peers that
  were never asked for, clients and long-gone peers included -> lookups see only the routing
  table (:class:`_TableOnlyHost`);
- every peer a lookup's answers name goes into the routing table (its server-mode check passes
  a peer identify never described), with all the addresses the answer gave: a peer answering
  one lookup put 4,800 invented PeerIds in a chat peer's table (of 5,120 places), ten with
  100 addresses each -> a peer enters the table only once identify, on a connection of ours,
  shows it serves the DHT protocol (go-libp2p: only peers that answered a query);
  the others are refused (``table_unidentified``);
- ``protocol_prefix`` is accepted but ignored: streams always use ``/ipfs/kad/1.0.0``, and the
  routing table's server-mode check tests that id -> we use that id (:data:`PROTOCOL_ID`) and do
  the server-mode check ourselves;
- provider records carry the addresses of ``host.get_addrs()``, which are this node's advertised
  addresses (see :mod:`p2pchat.node.p2p.addresses`), so they are dialable;
- the provider store is bounded only per key, and a server reads inbound streams without a
  deadline, all peers under 12 slots, and stores PUT_VALUE records of up to 1 MiB -> the store
  is :class:`~p2pchat.node.p2p.kad_providers.BoundedProviderStore` and inbound streams are
  served by :class:`~p2pchat.node.p2p.kad_inbound.InboundKad` (:class:`KadLimits`);
- a lookup walks every peer an answer names with list lookups (quadratic, no checkpoint): one
  lying answer naming 1,500 peers held the node's thread for seconds, and the chat it relayed
  waited -> answers are cut to the 20 closer peers and 20 providers a server sends
  (:mod:`~p2pchat.node.p2p.kad_answers`; ``closer_peers``, ``providers``).

Server mode (bootstrap nodes) answers queries and stores records; client mode (chat peers)
only asks, as go-libp2p's peers behind NAT do, and is never added to other routing tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from libp2p.abc import IHost
from libp2p.kad_dht.common import PROTOCOL_ID as _LIBRARY_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.peer.peerstore import PeerStoreError
from libp2p.tools.anyio_service import background_trio_service
from p2pchat.node.errors import P2PChatError
from p2pchat.node.p2p.host import IdentifyReceived, P2PHost
from p2pchat.node.p2p.kad_answers import counting_on
from p2pchat.node.p2p.kad_inbound import InboundKad, InboundLimits, KadObserver
from p2pchat.node.p2p.kad_providers import BoundedProviderStore, ProviderLimits

PROTOCOL_ID = str(_LIBRARY_PROTOCOL_ID)
_SHA2_256_MULTIHASH = b"\x12\x20"  # multihash code and length of a sha2-256 digest


class DhtError(P2PChatError):
    """A DHT query failed (the network, or the peers asked); the library's own errors are
    mapped to it here, so callers need not know them."""


def content_key(namespace: str, name: str) -> bytes:
    """The DHT key of ``name`` within ``namespace``: a sha2-256 multihash, as CIDs use."""
    digest = hashlib.sha256(f"/p2pchat/{namespace}/{name}".encode()).digest()
    return _SHA2_256_MULTIHASH + digest


@dataclass(frozen=True)
class KadLimits:
    """Every bound of the DHT against strangers: its provider store's and its inbound
    streams'."""

    providers: ProviderLimits = field(default_factory=ProviderLimits)
    inbound: InboundLimits = field(default_factory=InboundLimits)


def _always(peer_id: ID) -> bool:
    return True


class _QuietObserver:
    def kad_refused(self, reason: str) -> None:
        return None


class _TableOnlyHost:
    """The host as the library's lookups see it: the connected peers and the peerstore's peer
    list are narrowed to the routing table; everything else is the host itself."""

    def __init__(self, host: IHost, table: Callable[[], list[ID]]) -> None:
        self._host = host
        self._table = table

    def get_connected_peers(self) -> list[ID]:
        in_table = set(self._table())
        return [peer for peer in self._host.get_connected_peers() if peer in in_table]

    def get_peerstore(self) -> _TablePeerstore:
        return _TablePeerstore(self._host.get_peerstore(), self._table)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._host, name)


class _TablePeerstore:
    def __init__(self, peerstore: Any, table: Callable[[], list[ID]]) -> None:
        self._peerstore = peerstore
        self._table = table

    def peer_ids(self) -> list[ID]:
        return list(self._table())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._peerstore, name)


def _addrs_of(peerstore: Any, peer: ID) -> list[Any]:
    try:
        return list(peerstore.addrs(peer))
    except PeerStoreError:  # a peer the peerstore holds no record of
        return []


class Dht:
    """The node's DHT: run it (:meth:`run`), then provide and find keys."""

    def __init__(
        self,
        host: P2PHost,
        *,
        server: bool,
        limits: KadLimits | None = None,
        observer: KadObserver | None = None,
    ) -> None:
        self._host = host
        self.server = server
        limits = limits if limits is not None else KadLimits()
        observer = observer if observer is not None else _QuietObserver()
        self._observer = observer
        mode = DHTMode.SERVER if server else DHTMode.CLIENT
        self._kad = KadDHT(host.libp2p_host, mode, enable_random_walk=False)
        self._providers = BoundedProviderStore(
            host.libp2p_host, self._kad.peer_routing, limits.providers, observer
        )
        self._kad.provider_store = self._providers
        self._inbound = InboundKad(self._kad._do_handle_stream, limits.inbound, observer)
        self._keep_every_announcement()
        if server:  # the library registered its own handler; ours replaces it
            host.libp2p_host.set_stream_handler(_LIBRARY_PROTOCOL_ID, self._inbound.handle)
        self._admit_identified_servers_only(observer)
        self._add_to_table = self._kad.add_peer
        # The library's inbound handler calls self.add_peer: route it through the check.
        self._kad.add_peer = self._add_if_server
        routing = self._kad.peer_routing
        routing.host = _TableOnlyHost(routing.host, self._kad.routing_table.get_peer_ids)
        # Connected peers identify has named since they were last looked at (at most the
        # node's connections: identify runs on connections only).
        self._identified: set[str] = set()
        self._wake = trio.Event()

    def _admit_identified_servers_only(self, observer: KadObserver) -> None:
        """The routing table's ``add_peer`` (the library's lookups call it for every peer an
        answer names) admits only peers identify showed serving the DHT."""
        table = self._kad.routing_table
        library_add = table.add_peer

        async def add_peer(peer: PeerInfo | ID, *, skip_server_mode_check: bool = False) -> bool:
            peer_id = peer.peer_id if isinstance(peer, PeerInfo) else peer
            if PROTOCOL_ID not in self._host.peer_protocols(str(peer_id)):
                observer.kad_refused("table_unidentified")
                # The library calls this for each peer of an answer in one loop: without a
                # checkpoint here, 1,500 refusals in a row would hold the node's one thread.
                await trio.lowlevel.checkpoint()
                return False
            return bool(await library_add(peer, skip_server_mode_check=True))

        table.add_peer = add_peer

    def _keep_every_announcement(self) -> None:
        """The library's own ADD_PROVIDER budget (10 per peer per 10 s; past it, the stream is
        reset) is lifted: an announcement gets no answer (the library's and go-libp2p's
        clients send it and close), so a refused one is lost until the peer's next
        re-announcement, and a peer in 30 rooms lost 20 of them at start. ADD_PROVIDER counts
        against the peer's request budget like any request (:mod:`.kad_inbound`), and what it
        stores is bounded per peer (:mod:`.kad_providers`)."""
        self._kad._check_provider_rate_limit = _always

    def _identify_received(self, event: IdentifyReceived) -> None:
        if PROTOCOL_ID in event.protocols:
            self._identified.add(event.peer_id)
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve (in server mode) and keep the routing table filled until cancelled: every
        connected peer identify shows serving the DHT is added, those connected before this
        started included."""
        # The library's own lookups (its routing-table refresh) count their answers' cuts too.
        with counting_on(self._observer):
            async with background_trio_service(self._kad):
                self._host.watch_identify(self._identify_received)
                self._identified.update(self._host.connected_peers())
                task_status.started()
                while True:
                    peers, self._identified = self._identified, set()
                    for peer in sorted(peers):
                        if self._host.is_connected(peer):  # a client is refused by the check
                            await self._add_if_server(ID.from_base58(peer))
                    await self._wake.wait()
                    self._wake = trio.Event()

    async def _add_if_server(self, peer_id: ID, *, skip_server_mode_check: bool = False) -> bool:
        if PROTOCOL_ID not in self._host.peer_protocols(str(peer_id)):
            return False
        return bool(await self._add_to_table(peer_id, skip_server_mode_check=True))

    def routing_table_size(self) -> int:
        """Peers in the routing table."""
        return int(self._kad.get_routing_table_size())

    def provider_records(self) -> int:
        """Provider records stored (this node's own included)."""
        return self._providers.size()

    def inbound_streams(self) -> int:
        """Inbound DHT streams open now (server mode)."""
        return self._inbound.open_streams

    async def provide(self, key: bytes) -> bool:
        """Announce this node as a provider of ``key`` to the peers closest to it.

        Returns whether at least one peer accepted the record.

        Raises:
            DhtError: the announcement failed.
        """
        try:
            with counting_on(self._observer):
                return bool(await self._kad.provide(key.hex()))
        except Exception as error:  # the library raises assorted errors for network failures
            raise DhtError(f"provide failed: {error!r}") from error

    async def find_providers(self, key: bytes, count: int = 20) -> list[tuple[str, list[str]]]:
        """Up to ``count`` providers of ``key`` other than this node: (PeerId, dialable
        addresses ending in /p2p/<id>, at most ``max_addrs_per_provider``), each provider once.

        Raises:
            DhtError: the lookup failed.
        """
        try:
            with counting_on(self._observer):
                infos = await self._network_providers(key, count)
        except Exception as error:  # the library raises assorted errors for network failures
            raise DhtError(f"lookup failed: {error!r}") from error
        found: dict[str, list[str]] = {}
        most = self._providers.limits.addrs_per_provider  # an answer may name any number
        for info in infos:
            peer = str(info.peer_id)
            if peer == self._host.peer_id:
                continue
            addrs = found.setdefault(peer, [])
            for addr in info.addrs:
                if len(addrs) >= most:
                    break
                text = str(addr)
                # A circuit address holds the relay's /p2p/ part before the provider's.
                if not text.endswith(f"/p2p/{peer}"):
                    text = f"{text}/p2p/{peer}"
                if text not in addrs:
                    addrs.append(text)
        return list(found.items())

    async def find_peer(self, peer_id: str) -> list[str]:
        """Peer routing: the addresses the network knows for ``peer_id`` (Kad FIND_NODE for
        the PeerId, iterative from the routing table), each ending in /p2p/<id>, those the
        lookup brought first, at most ``max_addrs_per_provider`` of them; empty when nobody
        knows the peer.

        Always asks the network (the library's ``find_peer`` answers from the peerstore
        whenever it holds any address for the peer, so a peer that restarted on another port
        was never found again). A server answering FIND_NODE names the target itself when its
        peerstore has its addresses (a client connected to it, say), as go-libp2p does; what
        an answer names goes through the bounded peerstore. The lookup is the library's, with
        its own bounds (3 queries at once, 20 peers per round, 30 s); callers bound it tighter.

        Raises:
            DhtError: the lookup failed, or ``peer_id`` is not a PeerId.
        """
        try:
            target = ID.from_base58(peer_id)
        except ValueError:
            raise DhtError(f"{peer_id!r} is not a PeerId") from None
        if peer_id == self._host.peer_id:
            return []
        peerstore = self._host.libp2p_host.get_peerstore()
        known = _addrs_of(peerstore, target)
        try:
            await self._kad.peer_routing.find_closest_peers_network(target.to_bytes())
        except Exception as error:  # the library raises assorted errors for network failures
            raise DhtError(f"peer lookup failed: {error!r}") from error
        after = _addrs_of(peerstore, target)
        ordered = [a for a in after if a not in known] + [a for a in after if a in known]
        found: list[str] = []
        for addr in ordered[: self._providers.limits.addrs_per_provider]:
            text = str(addr)
            if not text.endswith(f"/p2p/{peer_id}"):
                text = f"{text}/p2p/{peer_id}"
            found.append(text)
        return found

    async def _network_providers(self, key: bytes, count: int) -> list[PeerInfo]:
        return await self._providers.find_providers_in_network(key, count)
