"""The p2pchat host: a py-libp2p host built and run with every known trap neutralised.

Traps handled here (numbers refer to shared/notes/py-libp2p-0.8.1.md):

1. a raising stream handler kills the host -> every handler, the library's own included, is
   wrapped by :func:`guard_handler`: the failure is logged and counted, the stream reset;
2. plaintext and secio are accepted inbound -> the security options hold Noise only;
4. every dial waits 250 ms -> ``max_connections_per_peer=1`` ends the happy-eyeballs wait at the
   first connection;
5. the relay client is not wired into the swarm -> :meth:`P2PHost.connect` dials circuit
   addresses itself (:mod:`p2pchat.node.p2p.circuit`);
10. a failed bind only logs a warning -> :meth:`P2PHost.run` checks every listen address got bound
    and raises :class:`StartupError` otherwise;
12. the AutoConnector dials up to 200 peerstore peers -> it is replaced by one that never dials;
    connections are the node's decision (bootstrap, discovery), not the peerstore's;
17. (not in the notes) a peer whose addresses all failed once is refused by the swarm for 60 s
    (its negative cache) -> :meth:`P2PHost.connect` clears the entry: callers own their backoff;
18. (not in the notes) TCP listeners set SO_REUSEPORT (for hole punching), so a second process
    binds a port already in use without error and the kernel splits connections between the two
    -> :meth:`P2PHost.run` first probes each fixed port with an exclusive bind;
19. (not in the notes) Yamux sends a window update after nearly every read -> go-yamux's rule,
    see :mod:`p2pchat.node.p2p.yamux_window`;
20. (not in the notes) ``get_addrs()`` cuts a circuit address at the relay's /p2p/ and claims
    the relay's IP and port under this node's PeerId -> circuit addresses are appended after it
    (:meth:`P2PHost.set_circuit_addrs`);
22. (not in the notes) connections above ``high_watermark`` (300) are pruned whatever
    ``max_connections`` allows, and a ``max_connections`` under 300 is refused -> the
    watermarks follow ``node.max_connections``;
24. (not in the notes) ``new_host`` creates a resource manager of its own that admits 256
    established inbound connections (and 10,000 streams) whatever ``max_connections`` says,
    and whose circuit breaker refuses every connection for 60 s after 5 failures -> the host
    gets one sized from ``node.max_connections``, without the breaker
    (:func:`_resource_manager`);
25. (not in the notes) identify answers with the protocols that have handlers at that moment,
    and a peer keeps that list for the whole connection (nothing is pushed when a handler is
    added later): a peer that connected while a node was starting never saw the roles'
    protocols (catch-up, AutoRelay, hole punching and the DHT choose peers by them) ->
    :meth:`P2PHost.run` can start without listening, and the node listens (:meth:`P2PHost.listen`)
    once its roles are installed;
28. (not in the notes) the swarm dials one address per transport, the first the peerstore lists
    for the peer, not the one :meth:`P2PHost.connect` was given: a stale address listed first
    (a restarted peer's old random port) made every re-dial of a bootstrap peer fail -> the
    given address is put first;
29. (not in the notes) leaving the library host's ``run()`` leaves its listeners open -> closed
    when :meth:`P2PHost.run` ends;
31. (not in the notes) every inbound connection holds one of 250 swarm slots until the swarm
    stops (not until it closes), with no per-address limit, no deadline on identify and no byte
    bound on handshakes (a shared TCP+WebSocket port buffers 32 MiB messages before any), and
    ``get_remote_address()`` is None for IPv6: anyone locks the node out -> the swarm's inbound
    handler and the port demultiplexer's classifier are replaced
    (:mod:`p2pchat.node.p2p.inbound`, policy in :mod:`p2pchat.node.p2p.admission`).
32. (not in the notes) dials are bounded only by the swarm's total, shared with inbound
    connections, so a node strangers make dial (Kad, DCUtR, discovery) fills it and locks
    everyone out; circuits a relay brings are counted nowhere -> the swarm's dial methods are
    wrapped (:mod:`p2pchat.node.p2p.outbound`) and relayed connections admitted
    (:func:`p2pchat.node.p2p.circuit.serve_circuits`), policy in
    :mod:`p2pchat.node.p2p.dial_admission`.
33. (not in the notes) the peerstore keeps a record for every PeerId any peer names (Kad
    answers, peer exchange, identify), its 1000-peer bound evicts the oldest first (bootstrap
    and connected peers included) and its records never expire -> the host's peerstore is
    :class:`~p2pchat.node.p2p.peerstore_bounds.BoundedPeerStore`.
34. (not in the notes) ``new_host`` builds transports from the listen addresses only, so a node
    listening on TCP alone cannot dial a ``/ws`` address ("No supported transport found": a
    js-libp2p browser-style peer is unreachable), nor one listening on ``/ws`` alone a plain
    TCP one -> :func:`_dial_every_transport` adds the missing ones, for dialling (a transport
    listens only where a listen address asks it to); QUIC too.
35. (not in the notes) QUIC (``/udp/N/quic-v1``) brings its own TLS and streams, so neither the
    Noise-only options nor the muxer guards reach it, and it admits 1000 inbound streams per
    connection; the host layer assumed TCP (port probe, bound-address check, labels) -> its
    config takes the node's stream limits (:func:`p2pchat.node.p2p.quic.quic_config`), UDP ports
    are probed with UDP, connections are labelled ``quic``;
36. (not in the notes) the QUIC listener starts a TLS handshake for every Initial packet, with
    no per-address limit, and keeps 256 of them (evicting the oldest, honest ones included) ->
    new handshakes are admitted within the inbound admission limits (``transient``,
    ``per_ip``: :func:`p2pchat.node.p2p.quic.gate_handshakes`).
41. (not in the notes) the QUIC transport dials from a new socket on port 0 (and its
    ``_initiate_connection`` rebinds even a socket it is given), so a UDP hole punch, which
    must leave from the listen port a port-preserving NAT maps to the port the peer was told,
    never gets through -> the transport gets a ``dial_with_source`` that dials from the listen
    port on a socket of the listener's reuseport group connected to the peer
    (:mod:`p2pchat.node.p2p.quic_punch`).
43. (not in the notes) on a TCP port shared with ``/ws`` the library classifies a connection by
    the bytes of one ``receive_some(3)``, however few: a client whose first write is one byte
    (js-libp2p's multistream-select length byte, at times) is cut as an unknown protocol (2 of
    6 js-libp2p dials on loopback) -> the inbound gate waits for 3 bytes, peeked, before it
    (:func:`p2pchat.node.p2p.inbound._classification_bytes`).

Streams: handlers are given, and :meth:`P2PHost.new_stream` returns, the project's
:class:`~p2pchat.node.p2p.streams.Stream`, whose errors are the project's own; the library's are
mapped there (reads, writes, close, reset) and in :meth:`P2PHost.new_stream` (opening), once.

What a peer is: a host built with ``HostSettings.agent_version`` sends it in identify, and
:meth:`P2PHost.peer_roles` reads the p2pchat roles a peer sent (:mod:`p2pchat.node.p2p.agent`;
py-libp2p 0.8.1 can neither set the one nor keep the other).

Traps 3, 6-9, 13 and 21 concern capabilities built in later modules (GossipSub, relay,
AutoNAT, mDNS, Kad-DHT) and are handled where those are wired; trap 11 (logging) is handled in
``p2pchat.node.logs``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.exceptions import BaseLibp2pError
from libp2p.identity.identify_push.identify_push import push_identify_to_peers
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import LOW_WATERMARK as LIBRARY_LOW_WATERMARK
from libp2p.network.config import MIN_CONNECTIONS as LIBRARY_MIN_CONNECTIONS
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.peer.peerstore import PeerStoreError
from libp2p.rcmgr import ResourceLimits, ResourceManager, new_resource_manager
from libp2p.rcmgr.connection_limits import ConnectionLimits
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.quic.transport import QUICTransport
from libp2p.transport.tcp.tcp import TCP
from libp2p.transport.websocket.transport import WebsocketTransport
from p2pchat.node.errors import P2PChatError, StartupError
from p2pchat.node.p2p import (
    agent,
    dial_race,
    identify_retry,
    inbound,
    inbound_streams,
    outbound,
    patches,
    peer_keys,
    quic_punch,
)
from p2pchat.node.p2p.addresses import advertised_addrs_factory
from p2pchat.node.p2p.admission import (
    Admission,
    AdmissionLimits,
    AdmissionObserver,
    QuietAdmissionObserver,
)
from p2pchat.node.p2p.circuit import CircuitError, dial_through, split_circuit_addr
from p2pchat.node.p2p.circuit_usage import CircuitLedger
from p2pchat.node.p2p.dial_admission import DialLimits, Dials, Relayed
from p2pchat.node.p2p.identity import Identity
from p2pchat.node.p2p.muxer_guards import guard_muxers
from p2pchat.node.p2p.peerstore_bounds import BoundedPeerStore, PeerstoreLimits, PeerstoreObserver
from p2pchat.node.p2p.quic import gate_handshakes, quic_config
from p2pchat.node.p2p.stream_limits import StreamLimits
from p2pchat.node.p2p.streams import Stream as Stream  # re-exported: handlers are given one
from p2pchat.node.p2p.streams import StreamRefused, StreamTimeout, reset_quietly
from p2pchat.node.p2p.streams import transport_label as transport_label  # re-exported

log = logging.getLogger("p2pchat.host")

StreamHandler = Callable[[Stream], Awaitable[None]]
"""A protocol's handler, given each inbound stream (see :meth:`P2PHost.set_stream_handler`)."""
_LibraryHandler = Callable[[INetStream], Awaitable[None]]

_MUXERS: dict[str, tuple[str, type[Any]]] = {
    "yamux": (YAMUX_PROTOCOL_ID, Yamux),
    "mplex": (MPLEX_PROTOCOL_ID, Mplex),
}


class DialError(P2PChatError):
    """A peer could not be reached (bad address, unreachable, wrong peer id, timeout)."""


@dataclass(frozen=True)
class ConnectionInfo:
    """What the node learns about a connection; labels follow go-libp2p's swarm metrics."""

    peer_id: str
    direction: str  # inbound | outbound | unknown
    transport: str  # tcp | websocket | quic | p2p-circuit | other
    security: str  # e.g. /noise
    muxer: str  # e.g. /yamux/1.0.0

    @property
    def relayed(self) -> bool:
        """Whether the connection runs through a relay (a limited one), not directly."""
        return self.transport == "p2p-circuit"


@dataclass(frozen=True)
class IdentifyReceived:
    """A peer told us who it is (identify, or identify push): the protocols it speaks now
    (rust-libp2p: ``identify::Event::Received``), and the p2pchat roles it says it runs (None:
    not a p2pchat node; see :func:`~p2pchat.node.p2p.agent.roles_of`)."""

    peer_id: str
    protocols: tuple[str, ...]
    roles: frozenset[str] | None = None


class ConnectionWatcher(Protocol):
    """Told of every connection opened and closed. Called inline by the swarm: must not block."""

    def connection_opened(self, info: ConnectionInfo) -> None: ...

    def connection_closed(self, info: ConnectionInfo) -> None: ...


class HostObserver(ConnectionWatcher, Protocol):
    """Receives the host's events; the metrics module and the node implement it."""

    def handler_failed(self, protocol: str, error: BaseException) -> None: ...

    def stream_limit_exceeded(self, limit: str) -> None:
        """A stream or connection was refused by ``limit`` (one of
        :data:`~p2pchat.node.p2p.stream_limits.LIMITS`). Called inline: must not block."""

    def peerstore_refused(self, reason: str) -> None:
        """The peerstore evicted a record or refused (part of) one, for ``reason`` (one of
        :data:`~p2pchat.node.p2p.peerstore_bounds.REASONS`). Called inline: must not block."""

    def peerstore_peers(self, count: int) -> None:
        """The peerstore holds ``count`` peer records now. Called inline: must not block."""

    def unread_dropped(self, reason: str, size: int) -> None:
        """``size`` bytes of a Yamux stream nobody will read were dropped, by ``reason``
        (``reset``, ``abandoned``: :mod:`~p2pchat.node.p2p.yamux_unread`). Called inline: must
        not block."""


class QuietObserver:
    """A host observer that records nothing, for one-off clients (``p2pchat history``, the
    AutoNAT dial-back dialer)."""

    def connection_opened(self, info: ConnectionInfo) -> None:
        return None

    def connection_closed(self, info: ConnectionInfo) -> None:
        return None

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        return None

    def stream_limit_exceeded(self, limit: str) -> None:
        return None

    def peerstore_refused(self, reason: str) -> None:
        return None

    def peerstore_peers(self, count: int) -> None:
        return None

    def unread_dropped(self, reason: str, size: int) -> None:
        return None


@dataclass(frozen=True)
class HostSettings:
    """The host-level settings, taken from the node config section."""

    listen: Sequence[str]
    announce: Sequence[str] = ()
    muxers: Sequence[str] = ("yamux", "mplex")
    max_connections: int = 300
    dial_timeout: float = 10.0
    # Seconds a QUIC dial runs alone before TCP and WebSocket dials to the same peer start
    # (:mod:`~p2pchat.node.p2p.dial_race`; go-libp2p's 250 ms).
    quic_head_start: float = 0.25
    # Sent in identify (:func:`~p2pchat.node.p2p.agent.agent_version`: the node's roles);
    # None: the library's own, ``py-libp2p/<version>`` (one-off clients, helper hosts).
    agent_version: str | None = None
    # Inbound admission (config section ``connections``); its max_connections is this
    # settings' max_connections.
    connections: AdmissionLimits = field(default_factory=AdmissionLimits)
    # What a remote peer may hold through streams (:mod:`p2pchat.node.p2p.stream_limits`).
    streams: StreamLimits = field(default_factory=StreamLimits)
    # Outbound dials and relayed inbound connections (config section ``connections`` too).
    dials: DialLimits = field(default_factory=DialLimits)
    # What the peerstore keeps (:mod:`p2pchat.node.p2p.peerstore_bounds`), and the PeerIds it
    # never evicts besides this node's own (configured bootstrap and relay peers).
    peerstore: PeerstoreLimits = field(default_factory=PeerstoreLimits)
    protected_peers: Sequence[str] = ()
    # Seconds before each new identify of a peer the library left unidentified (trap 44,
    # :mod:`~p2pchat.node.p2p.identify_retry`); empty: never again.
    identify_retry_schedule: Sequence[float] = identify_retry.RETRY_SCHEDULE


# --- trap 1: guarded handlers -------------------------------------------------------------------


def guard_handler(
    protocol: str, handler: _LibraryHandler, on_failure: Callable[[str, BaseException], None]
) -> _LibraryHandler:
    """Wrap a library-level stream handler (ours, adapted by :meth:`P2PHost.set_stream_handler`,
    or the library's own) so that an exception is reported and the stream reset.

    Cancellation (a ``BaseException``) still propagates: shutting down must stay possible.
    """
    if getattr(handler, "__p2pchat_guarded__", False):
        return handler

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as error:  # trap 1: whatever a handler raises (a bug included), the
            # host must survive it; the library's handlers raise its errors unmapped, too
            on_failure(protocol, error)
            await reset_quietly(Stream(stream))  # it may already be gone: nothing more to do

    guarded.__p2pchat_guarded__ = True  # type: ignore[attr-defined]
    return guarded


def _install_handler_guard(host: IHost, on_failure: Callable[[str, BaseException], None]) -> None:
    """Guard the handlers already registered and every handler registered later.

    The library registers its own handlers (identify, ping, pubsub, kad) through the same
    multiselect table, so patching that table covers handlers we do not create ourselves.
    """
    multiselect = host.get_mux()
    for protocol, handler in list(multiselect.handlers.items()):
        if protocol is not None and handler is not None:
            multiselect.handlers[protocol] = guard_handler(str(protocol), handler, on_failure)
    original_add = multiselect.add_handler

    def add_handler(protocol: TProtocol | None, handler: _LibraryHandler | None) -> None:
        if protocol is not None and handler is not None:
            handler = guard_handler(str(protocol), handler, on_failure)
        original_add(protocol, handler)

    multiselect.add_handler = add_handler


# --- trap 12: no dial storms --------------------------------------------------------------------


class _NeverDialingAutoConnector(AutoConnector):  # type: ignore[misc]
    """Keeps the swarm's bookkeeping calls working but never dials peerstore peers."""

    async def maybe_connect(self) -> None:
        return None


def _disable_auto_connector(host: IHost) -> None:
    swarm = host.get_network()
    swarm.auto_connector = _NeverDialingAutoConnector(
        swarm=swarm, auto_connect_interval=swarm.connection_config.auto_connect_interval
    )


# --- identify events ----------------------------------------------------------------------------


def _report_identify(host: IHost, report: Callable[[IdentifyReceived], None]) -> None:
    """Report every identify this host receives.

    The library has no event for it: identify and identify push both end in
    ``update_peerstore_from_identify``, which replaces the peer's protocols with one
    ``add_protocols`` call on the host's peerstore, and nothing else calls that method. So this
    host's peerstore object (not the class) reports each call once it is done.
    """
    peerstore = host.get_peerstore()
    add_protocols = peerstore.add_protocols

    def add_protocols_and_report(peer_id: ID, protocols: Sequence[str]) -> None:
        add_protocols(peer_id, protocols)
        # The agent version of the same message is in the peerstore already (patches.PATCHES).
        roles = agent.roles_of(agent.received_agent_version(peerstore, peer_id))
        report(IdentifyReceived(str(peer_id), tuple(str(p) for p in protocols), roles))

    peerstore.add_protocols = add_protocols_and_report


# --- connection events --------------------------------------------------------------------------


def connection_info(conn: INetConn) -> ConnectionInfo:
    """Describe a live connection with go-libp2p's metric label values."""
    direction = str(getattr(conn, "direction", "unknown")).lower()
    if direction not in ("inbound", "outbound"):
        direction = "unknown"
    return ConnectionInfo(
        peer_id=str(conn.muxed_conn.peer_id),
        direction=direction,
        transport=transport_label(conn.muxed_conn),
        security=str(conn.get_negotiated_security_protocol() or "unknown"),
        muxer=str(conn.get_negotiated_muxer_protocol() or "unknown"),
    )


class _ConnectionNotifee(INotifee):  # type: ignore[misc]
    def __init__(self, observer: ConnectionWatcher) -> None:
        self._observer = observer

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._observer.connection_opened(connection_info(conn))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._observer.connection_closed(connection_info(conn))

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class _IdentifyRetryWatcher:
    """Hands every connection opened to the identify retry (trap 44)."""

    def __init__(self, retry: identify_retry.IdentifyRetry) -> None:
        self._retry = retry

    def connection_opened(self, info: ConnectionInfo) -> None:
        self._retry.connection_opened(info.peer_id)

    def connection_closed(self, info: ConnectionInfo) -> None:
        return None


class _PeerstoreWatcher:
    """Tells the peerstore when a peer's connection closes (its record's TTL starts)."""

    def __init__(self, peerstore: BoundedPeerStore) -> None:
        self._peerstore = peerstore

    def connection_opened(self, info: ConnectionInfo) -> None:
        return None

    def connection_closed(self, info: ConnectionInfo) -> None:
        with contextlib.suppress(ValueError):
            self._peerstore.disconnected(ID.from_base58(info.peer_id))


# --- the host -----------------------------------------------------------------------------------


LISTENER_CLOSE_SECONDS = 5.0
STREAMS_PER_CONNECTION = 64  # identify, ping, pubsub both ways, DHT queries, relay circuits


def _resource_manager(max_connections: int) -> ResourceManager:
    """py-libp2p's resource manager with limits that follow ``max_connections`` (trap 24).

    The swarm counts connections against it in each direction and in total: each may reach
    ``max_connections`` (the swarm's own limit, checked at registration, is the one that binds).
    Pending handshakes are bounded at a quarter of it (at least 64, the library's value). The
    circuit breaker, which turns five failed connections into a minute of refusing everyone,
    is off: a peer that fails its handshakes must not lock others out. So is its "graceful
    degradation", which lowers the connection limit (down to half) each time it is reached: a
    flood that fills the slots once would shrink them for everyone. Inbound admission (per
    address, per peer, transient) is :mod:`p2pchat.node.p2p.admission`'s, not this manager's.
    """
    limits = ConnectionLimits(
        max_pending_inbound=max(64, max_connections // 4),
        max_pending_outbound=max(64, max_connections // 4),
        max_established_inbound=max_connections,
        max_established_outbound=max_connections,
        max_established_per_peer=8,
        max_established_total=max_connections,
    )
    return new_resource_manager(
        limits=ResourceLimits(
            max_connections=max_connections,
            max_streams=max(10_000, max_connections * STREAMS_PER_CONNECTION),
        ),
        connection_limits=limits,
        enable_circuit_breaker=False,
        enable_graceful_degradation=False,
    )


def _peerstore(
    identity: Identity, settings: HostSettings, observer: PeerstoreObserver
) -> BoundedPeerStore:
    """Trap 32: the library's peerstore keeps whatever any peer names (see
    :mod:`p2pchat.node.p2p.peerstore_bounds`); this one is bounded, and never evicts this node
    nor its configured bootstrap and relay peers (a PeerId that does not parse is skipped: the
    config checked them)."""
    protected = [ID.from_base58(identity.peer_id_text)]
    for text in settings.protected_peers:
        try:
            protected.append(ID.from_base58(text))
        except ValueError:
            continue
    return BoundedPeerStore(settings.peerstore, observer, protected=protected)


def _build(
    identity: Identity,
    settings: HostSettings,
    listen: list[multiaddr.Multiaddr],
    peerstore: BoundedPeerStore,
    stream_limit_exceeded: Callable[[str], None],
) -> IHost:
    noise = NoiseTransport(identity.key_pair, noise_privkey=create_x25519_key_pair().private_key)
    muxers = {TProtocol(_MUXERS[name][0]): _MUXERS[name][1] for name in settings.muxers}
    # A QUIC transport's config is the swarm's too (it extends ConnectionConfig): the one
    # new_host passes to the QUIC transport it builds for a /quic-v1 listen address (trap 35).
    connection_config = quic_config(
        settings.streams,
        stream_limit_exceeded,
        max_connections=settings.max_connections,
        # Trap 22: the pruner cuts connections above high_watermark (default 300) whatever
        # max_connections says, and a max_connections below 300 fails validation.
        high_watermark=settings.max_connections,
        low_watermark=min(LIBRARY_LOW_WATERMARK, settings.max_connections),
        # ... and a low watermark under its min_connections (50) too: a node.max_connections
        # under 50 stopped the node at start with a traceback. (Only the library's
        # auto-connector reads it, and ours replaces that.)
        min_connections=min(LIBRARY_MIN_CONNECTIONS, settings.max_connections),
        max_connections_per_peer=1,
        dial_timeout=settings.dial_timeout,
    )
    host = new_host(
        key_pair=identity.key_pair,
        sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise},
        muxer_opt=muxers,
        listen_addrs=listen,
        connection_config=connection_config,
        addrs_factory=advertised_addrs_factory(settings.announce),
        resource_manager=_resource_manager(settings.max_connections),
        peerstore_opt=peerstore,
    )
    _dial_every_transport(host, identity, connection_config)
    return host


# One address of each transport a peer may advertise and this node can dial (trap 34).
_DIALABLE = {
    "tcp": multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1"),
    "ws": multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1/ws"),
    "quic": multiaddr.Multiaddr("/ip4/127.0.0.1/udp/1/quic-v1"),
}


def _dial_every_transport(host: IHost, identity: Identity, config: ConnectionConfig) -> None:
    """Trap 34: give the swarm a TCP, a WebSocket and a QUIC transport whatever it listens on,
    so it can dial every peer that speaks one (the upgrader, Noise and muxers, is the swarm's
    own; QUIC brings TLS and streams of its own, configured by ``config``)."""
    swarm = host.get_network()
    manager = swarm.transport_manager
    for name, example in _DIALABLE.items():
        # Not transport_for_dialing: it logs a warning when none can.
        if any(transport.can_dial(example) for transport in manager.get_transports()):
            continue
        if name == "tcp":
            manager.add_transport(TCP())
        elif name == "quic":
            manager.add_transport(QUICTransport(identity.key_pair.private_key, config=config))
        else:
            manager.add_transport(WebsocketTransport(swarm.upgrader))


def _advertise_circuit_addrs(
    host: IHost, circuit_addrs: Callable[[], list[multiaddr.Multiaddr]]
) -> None:
    """Trap 20: ``get_addrs()`` strips everything from an address's first /p2p/ on and appends
    this node's, so a circuit address (``.../p2p/<relay>/p2p-circuit``) would come out as the
    relay's IP and port claimed under our PeerId. Circuit addresses are appended after it."""
    library_get_addrs = host.get_addrs
    own = multiaddr.Multiaddr(f"/p2p/{host.get_id()}")

    def get_addrs() -> list[multiaddr.Multiaddr]:
        return list(library_get_addrs()) + [addr.encapsulate(own) for addr in circuit_addrs()]

    host.get_addrs = get_addrs


def _unbound(
    requested: Sequence[multiaddr.Multiaddr], bound: Sequence[multiaddr.Multiaddr]
) -> list[str]:
    """The requested listen addresses that have no bound counterpart (same stack, same port)."""

    def shape(addr: multiaddr.Multiaddr) -> tuple[tuple[str, ...], str]:
        names = tuple(proto.name for proto in addr.protocols())
        return names, str(_ip_port(addr)[1])

    bound_shapes = [shape(addr) for addr in bound]
    missing = []
    for addr in requested:
        names, port = shape(addr)
        matches = [b for b in bound_shapes if b[0] == names and (port == "0" or b[1] == port)]
        if not matches:
            missing.append(str(addr))
    return missing


def _ensure_ports_free(listen: Sequence[multiaddr.Multiaddr]) -> None:
    """Fail if a fixed listen port is already served by another socket.

    A plain bind (SO_REUSEADDR only, so TIME_WAIT leftovers do not count) fails on a port with a
    listening socket, even one that set SO_REUSEPORT, which the library's own bind would share.
    A UDP port (QUIC) is probed with a UDP socket: TCP and UDP ports are distinct.
    """
    for ip, port, kind in sorted({(*_ip_port(addr), _port_kind(addr)) for addr in listen}):
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock_type = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
        with socket.socket(family, sock_type) as probe:
            if kind == "tcp":  # TIME_WAIT leftovers; on UDP it would share the QUIC listener's
                # port (which sets SO_REUSEADDR and SO_REUSEPORT) instead of failing
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ip, port))
            except OSError as error:
                raise StartupError(
                    f"cannot listen on {ip} {'UDP port' if kind == 'udp' else 'port'} {port}: "
                    f"{error.strerror or error}"
                ) from None


def _port_kind(addr: multiaddr.Multiaddr) -> str:
    """``udp`` for a QUIC address, ``tcp`` for a TCP or WebSocket one."""
    return "udp" if any(p.name == "udp" for p in addr.protocols()) else "tcp"


def _ip_port(addr: multiaddr.Multiaddr) -> tuple[str, int]:
    # value_for_protocol raises for a protocol the address lacks: an /ip6 listen address
    # failed the start with a traceback before.
    family = next(p.name for p in addr.protocols() if p.name in ("ip4", "ip6"))
    return str(addr.value_for_protocol(family)), int(addr.value_for_protocol(_port_kind(addr)))


# What the library's new_stream raises when a stream cannot be opened: its own errors (swarm,
# multiselect, muxer), and the transports' where they leak untranslated.
_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    BaseLibp2pError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)


def _open_failure(error: BaseException, peer: str, protocols: Sequence[str]) -> Exception:
    """The project's error for a failed ``new_stream``: StreamTimeout for a negotiation that
    timed out, StreamRefused otherwise. The library says "timed out" in a message only (a
    MultiselectClientError, wrapped in a StreamFailure), so the chain's messages are read."""
    causes: list[str] = []
    cause: BaseException | None = error
    while cause is not None and len(causes) < 8:
        causes.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    detail = "; ".join(text for text in causes if text) or type(error).__name__
    what = f"stream to {peer} for {', '.join(protocols)}"
    if any("timed out" in text for text in causes):
        return StreamTimeout(f"{what}: timed out ({detail})")
    return StreamRefused(f"{what}: {detail}")


class P2PHost:
    """The node's door to libp2p: identity, listeners, connections and stream handlers.

    Create it, then enter :meth:`run`; the other methods are valid inside ``run`` only.
    """

    def __init__(
        self,
        identity: Identity,
        settings: HostSettings,
        observer: HostObserver,
        admission_observer: AdmissionObserver | None = None,
        race_observer: dial_race.RaceObserver | None = None,
    ) -> None:
        """``admission_observer`` is told of every connection refused (inbound, outbound dials,
        relayed; metrics); ``race_observer`` of every race of a peer's QUIC and TCP addresses.

        Raises:
        LibraryMismatch: the installed py-libp2p is not the one the host layer patches
            (:mod:`~p2pchat.node.p2p.patches`).
        """
        patches.apply()
        self._identity = identity
        self._settings = settings
        self._observer = observer
        self._listen = [multiaddr.Multiaddr(text) for text in settings.listen]
        self._peerstore = _peerstore(identity, settings, observer)
        self._host = _build(
            identity, settings, self._listen, self._peerstore, observer.stream_limit_exceeded
        )
        network = self._host.get_network()
        self._peerstore.bind(lambda peer: bool(network.get_connections(peer)))
        self.watch_connections(_PeerstoreWatcher(self._peerstore))
        if settings.agent_version is not None:
            agent.set_agent_version(self._host, settings.agent_version)
        self._circuit_addrs: list[multiaddr.Multiaddr] = []
        _advertise_circuit_addrs(self._host, lambda: self._circuit_addrs)
        _install_handler_guard(self._host, observer.handler_failed)
        # Issue #18: inbound streams admitted and negotiated within bounds, muxers guarded.
        inbound_streams.install(self._host, settings.streams, observer.stream_limit_exceeded)
        guard_muxers(
            self._host,
            settings.streams,
            observer.stream_limit_exceeded,
            observer.unread_dropped,
        )
        _disable_auto_connector(self._host)
        self.watch_connections(observer)
        self._identify_watchers: list[Callable[[IdentifyReceived], None]] = []
        self._identified = trio.Event()  # set (and replaced) at each identify received
        _report_identify(self._host, self._identify_received)
        self.identify_retry = identify_retry.IdentifyRetry(
            lambda peer: bool(self.peer_protocols(peer)),
            self.is_connected,
            self._identify_again,
            settings.identify_retry_schedule,
            max_watches=settings.max_connections,
        )
        self.watch_connections(_IdentifyRetryWatcher(self.identify_retry))
        self.admission = Admission(
            replace(settings.connections, max_connections=settings.max_connections)
        )
        self.admission_observer = admission_observer or QuietAdmissionObserver()
        inbound.install(
            self._host.get_network(),
            self.admission,
            self.admission_observer,
            self._wait_identified,
        )
        self._gate_quic_handshakes()
        # Issue #18: every dial takes a slot (outbound in all, per peer, in flight), and the
        # circuits relays bring take one of the relayed slots (circuit.serve_circuits).
        self.dials = outbound.install(
            self._host.get_network(), Dials(settings.dials), self.admission_observer
        )
        self.relayed = Relayed(settings.dials)
        # What each relayed connection used of its circuit's limit (circuit renewal, #21).
        self.circuits = CircuitLedger()
        self._race_observer = race_observer or dial_race.QuietRaceObserver()
        self._racing: dict[str, trio.Event] = {}  # peer -> set when its race ends

    def _gate_quic_handshakes(self) -> None:
        """Trap 36: QUIC handshakes within the inbound admission limits, refusals counted and
        logged like the inbound gate's."""
        refusals = inbound.refusal_log()

        def refused(reason: str, group: str) -> None:
            self.admission_observer.connection_refused(reason)
            if not refusals.refused(reason, group=group, transport="quic"):
                log.debug("inbound QUIC handshake refused (%s, %s)", reason, group)

        for transport in self._host.get_network().transport_manager.get_transports():
            if isinstance(transport, QUICTransport):
                gate_handshakes(transport, self.admission.limits, refused)
                # Hole punching over QUIC dials from the listen port (quic_punch).
                quic_punch.install(transport)

    @property
    def peer_id(self) -> str:
        """This node's PeerId as text."""
        return self._identity.peer_id_text

    def sign(self, data: bytes) -> bytes:
        """This node's libp2p identity key's signature over ``data`` (callers prefix ``data``
        with a domain of their own; others check it with
        :func:`~p2pchat.node.p2p.peer_keys.signed_by`)."""
        return peer_keys.sign(self._identity, data)

    @property
    def libp2p_host(self) -> IHost:
        """The wrapped py-libp2p host, for capability modules of this package only."""
        return self._host

    @asynccontextmanager
    async def run(self, *, listen: bool = True) -> AsyncIterator[None]:
        """Run the host, and listen on every configured address unless ``listen`` is False
        (then :meth:`listen` opens the listeners later); leave stops listeners and closes
        connections.

        A node starts with ``listen=False`` and listens once every protocol it serves has its
        handler (trap 25): a peer that connected earlier would be told an incomplete protocol
        list by identify and keep it for the whole connection.

        Raises:
            StartupError: a fixed listen port is already taken, or (with ``listen``) an address
                could not be bound.
        """
        _ensure_ports_free(self._listen)
        async with self._host.run([]), trio.open_nursery() as nursery:
            nursery.start_soon(self._sweep_peerstore)
            self.identify_retry.start(nursery)
            try:
                if listen:
                    await self.listen()
                yield
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await self._close_listeners()

    async def _identify_again(self, peer_id: str) -> None:
        # The library's own identify of one peer (private, pinned by patches.WRITTEN_FOR): it
        # records what the peer tells, reports it (``_report_identify``) and never raises for
        # a failed identify.
        await self._host._identify_peer(ID.from_base58(peer_id), reason="p2pchat-retry")

    async def _sweep_peerstore(self) -> None:
        """Trap 32: the library never removes a record; expired ones go here."""
        while True:
            await trio.sleep(self._settings.peerstore.sweep_interval)
            self._peerstore.sweep()

    async def _close_listeners(self) -> None:
        # Trap 29: leaving the library host's run() never closes its listeners: the listening
        # sockets outlived the host, so the same process could not listen there again.
        network = self._host.get_network()
        for listener in list(network.listeners.values()):
            with trio.move_on_after(LISTENER_CLOSE_SECONDS):
                await listener.close()

    async def listen(self) -> None:
        """Open a listener on every configured address (once, inside :meth:`run`).

        Raises:
            StartupError: an address could not be bound.
        """
        await self._host.get_network().listen(*self._listen)
        missing = _unbound(self._listen, self._host.get_transport_addrs())
        if missing:
            raise StartupError(
                f"cannot listen on {', '.join(missing)} (address in use, or not an address "
                "of this machine)"
            )

    def listen_addrs(self) -> list[str]:
        """The bound listen addresses (without /p2p/)."""
        return [str(addr) for addr in self._host.get_transport_addrs()]

    def advertised_addrs(self) -> list[str]:
        """The addresses other peers are told to dial, each ending in /p2p/<this peer>."""
        return [str(addr) for addr in self._host.get_addrs()]

    def set_circuit_addrs(self, addrs: Sequence[str]) -> None:
        """Advertise these ``.../p2p/<relay>/p2p-circuit`` addresses too (identify, DHT): the
        relays that hold a reservation for this node. Replaces the previous set."""
        self._circuit_addrs = [multiaddr.Multiaddr(addr) for addr in addrs]

    async def push_identify(self) -> None:
        """Tell every connected peer our addresses again (identify push): peers connected
        before a reservation was taken learn the circuit address (a circuit's listener dials
        its dialler back through it, :mod:`~p2pchat.node.circuit_renewal`). The library
        pushes to a bounded number of peers at a time; the caller bounds the whole."""
        await push_identify_to_peers(self._host)

    def watch_identify(self, watcher: Callable[[IdentifyReceived], None]) -> None:
        """Tell ``watcher`` of every identify (or identify push) received from now on. Called
        inline: it must not block."""
        self._identify_watchers.append(watcher)

    async def identify_received(self) -> None:
        """Wait until the next identify (or identify push) from any peer has been received."""
        await self._identified.wait()

    async def wait_identified(self, peer_id: str) -> None:
        """Until ``peer_id`` is identified (at once if identify already told its protocols)."""
        await self._wait_identified(peer_id)

    async def _wait_identified(self, peer_id: str) -> None:
        # A peer identify already told us about is not identified again on a new connection
        # (the library keeps its protocols): it counts as identified at once.
        while not self.peer_protocols(peer_id):
            await self._identified.wait()

    def _identify_received(self, event: IdentifyReceived) -> None:
        self._identified.set()
        self._identified = trio.Event()
        for watcher in self._identify_watchers:
            try:
                watcher(event)
            except Exception:  # one watcher's bug must not keep the event from the others
                log.exception("identify watcher failed")

    def watch_connections(self, watcher: ConnectionWatcher) -> None:
        """Tell ``watcher`` of every connection opened or closed from now on."""
        self._host.get_network().register_notifee(_ConnectionNotifee(watcher))

    def set_stream_handler(self, protocol: str, handler: StreamHandler) -> None:
        """Serve ``protocol``: ``handler`` gets each inbound stream as a :class:`Stream`, and
        is guarded (see :func:`guard_handler`)."""

        async def adapted(library_stream: INetStream) -> None:
            await handler(Stream(library_stream))

        self._host.set_stream_handler(TProtocol(protocol), adapted)

    async def new_stream(self, peer_id: str, protocols: Sequence[str]) -> Stream:
        """A stream to a connected (or known) peer, for the first of ``protocols`` it speaks.

        Raises:
            StreamRefused: the peer speaks none of ``protocols``, is not connected and could
                not be dialled, or ``peer_id`` is not a PeerId.
            StreamTimeout: the protocol negotiation did not finish in the library's time.
        """
        try:
            peer = ID.from_base58(peer_id)
        except ValueError:
            raise StreamRefused(f"{peer_id!r} is not a PeerId") from None
        try:
            library_stream = await self._host.new_stream(peer, [TProtocol(p) for p in protocols])
        except _OPEN_ERRORS as error:
            raise _open_failure(error, peer_id, protocols) from None
        return Stream(library_stream)

    async def connect(self, peer_addr: str, also: Sequence[str] = ()) -> str:
        """Dial a peer by a multiaddr ending in /p2p/<id>; return its PeerId. ``also``: more
        direct addresses of the same peer, dialled with it (a QUIC and a TCP address are
        raced: :mod:`~p2pchat.node.p2p.dial_race`).

        A circuit address (``<relay addr>/p2p/<relay>/p2p-circuit/p2p/<id>``) is dialled through
        that relay (connected first if need be): trap 5, the library's swarm refuses them.

        Raises:
            DialError: the address is invalid or the peer could not be reached in time.
        """
        circuit = split_circuit_addr(peer_addr)
        if circuit is not None:
            return await self._connect_through(peer_addr, *circuit)
        try:
            info = info_from_p2p_addr(multiaddr.Multiaddr(peer_addr))
        except Exception as error:  # the multiaddr and PeerId decoders raise many types
            raise DialError(f"invalid peer address {peer_addr!r}: {error}") from None
        if info.peer_id == self._identity.peer_id:
            raise DialError(f"{peer_addr} is this node itself")
        for other in also:
            try:
                more = info_from_p2p_addr(multiaddr.Multiaddr(other))
            except Exception as error:  # the multiaddr and PeerId decoders raise many types
                raise DialError(f"invalid peer address {other!r}: {error}") from None
            if more.peer_id != info.peer_id:
                raise DialError(f"{other} is not an address of {info.peer_id}")
            info.addrs += [addr for addr in more.addrs if addr not in info.addrs]
        # The swarm refuses for 60 s to dial a peer whose addresses all failed once (its
        # "negative cache"). Our dials come with their own backoff, so a peer that restarted
        # must be reachable on the next attempt, not a minute later.
        self._host.get_network()._negative_peer_cache.evict(str(info.peer_id))
        self._put_first(info.peer_id, info.addrs)
        planned = self._race_plan(info.peer_id, info.addrs)
        try:
            with trio.fail_after(self._settings.dial_timeout):
                if dial_race.worth_racing(planned):
                    await self._race(info.peer_id, info.addrs, planned)
                else:
                    await self._host.connect(info)
        except trio.TooSlowError:
            raise DialError(f"dial {peer_addr}: timed out") from None
        except Exception as error:  # the host layer's one mapping of a failed dial: the
            # library's come from every layer (swarm, transport, Noise, muxer), not all its own
            raise DialError(f"dial {peer_addr}: {outbound.refusal_in(error) or error}") from None
        return str(info.peer_id)

    def _race_plan(self, peer: ID, given: list[multiaddr.Multiaddr]) -> list[dial_race.Planned]:
        """The dial plan over ``given`` and the addresses the peerstore knows for ``peer``
        (identify, DHT, discovery), given ones first within each transport."""
        try:
            known = list(self._host.get_peerstore().addrs(peer))
        except PeerStoreError:
            known = []
        texts = [str(addr) for addr in given] + [str(addr) for addr in known]
        return dial_race.plan(texts, self._settings.quic_head_start)

    async def _race(
        self, peer: ID, given: list[multiaddr.Multiaddr], planned: list[dial_race.Planned]
    ) -> None:
        """Connect to ``peer`` by racing ``planned`` (:mod:`~p2pchat.node.p2p.dial_race`): QUIC
        first, TCP after the head start, the first connection kept. One race per peer at a
        time: a second caller waits for the first one's outcome."""
        key = str(peer)
        running = self._racing.get(key)
        if running is not None:
            await running.wait()
            if self.is_connected(key):
                return
        # As the library's connect does: the given addresses join the peerstore (120 s).
        self._host.get_peerstore().add_addrs(peer, given, 120)
        if self.is_connected(key):
            return
        swarm: Any = self._host.get_network()
        done = trio.Event()
        self._racing[key] = done

        async def dial(addr: str) -> Any:
            return await swarm._dial_with_retry(multiaddr.Multiaddr(addr), peer)

        async def discard(conn: Any) -> None:
            try:
                await conn.close()
            except Exception:  # already closing: whatever its layers raise, it is gone
                return

        start = trio.current_time()
        try:
            won = await dial_race.race(planned, dial, discard)
        except dial_race.RaceLost as lost:
            self._race_observer.dial_race_finished(None, trio.current_time() - start)
            swarm._negative_peer_cache.mark_failed(key)
            refused = next(filter(None, map(outbound.refusal_in, lost.errors.values())), None)
            raise DialError(f"dial {key}: {refused or lost}") from None
        finally:
            done.set()
            if self._racing.get(key) is done:
                del self._racing[key]
        self._race_observer.dial_race_finished(won.transport, won.elapsed)
        log.info(
            "dial race won by %s (%s) after %.0f ms, started at %.0f ms",
            won.transport,
            won.addr,
            won.elapsed * 1000,
            won.started_after * 1000,
        )

    def _put_first(self, peer: ID, addrs: list[multiaddr.Multiaddr]) -> None:
        # Trap 28: the swarm dials one address per transport, the first the peerstore lists
        # for the peer, whatever address connect() was given; a stale one listed first (the
        # random port of a peer's previous run, from identify or a DHT answer) hid the given
        # one for good. Known addresses are kept, after the given ones. Reordered in place:
        # clear_addrs() would also drop the peer's signed record (DHT and PX answers carry it,
        # and it is what an older, replayed record is compared against).
        if self.is_connected(str(peer)):
            return  # nothing will be dialled
        data = self._host.get_peerstore().peer_data_map.get(peer)
        if data is None or data.addrs[: len(addrs)] == addrs:
            return  # unknown (connect() adds the given addresses), or already first
        data.addrs = [*addrs, *(addr for addr in data.addrs if addr not in addrs)]

    async def _connect_through(
        self, peer_addr: str, relay_addr: str, relay: str, target: str
    ) -> str:
        if target == self.peer_id:
            raise DialError(f"{peer_addr} is this node itself")
        if self.is_connected(target):
            return target
        if not self.is_connected(relay):
            await self.connect(relay_addr)
        try:
            await dial_through(self, relay, target)
        except CircuitError as error:
            raise DialError(f"dial {peer_addr}: {error}") from None
        return target

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection to ``peer_id`` (no error if there is none)."""
        await self._host.disconnect(ID.from_base58(peer_id))

    def is_connected(self, peer_id: str) -> bool:
        """Whether at least one connection to ``peer_id`` is open."""
        try:
            return bool(self._host.get_network().get_connections(ID.from_base58(peer_id)))
        except ValueError:
            return False

    def peer_protocols(self, peer_id: str) -> list[str]:
        """The protocols ``peer_id`` said it speaks (identify); empty if not known yet."""
        try:
            return [
                str(p) for p in self._host.get_peerstore().get_protocols(ID.from_base58(peer_id))
            ]
        except (PeerStoreError, ValueError):  # unknown peer, or an unparsable id
            return []

    def peer_agent(self, peer_id: str) -> str | None:
        """The agent version ``peer_id`` sent in its last identify (the remote's words, at most
        :data:`~p2pchat.node.p2p.agent.MAX_AGENT_CHARS` + 1 characters; for showing only after
        sanitising), or None if none was received."""
        try:
            peer = ID.from_base58(peer_id)
        except ValueError:
            return None
        return agent.received_agent_version(self._host.get_peerstore(), peer)

    def peer_roles(self, peer_id: str) -> frozenset[str] | None:
        """The p2pchat roles ``peer_id`` said it runs in its last identify (known role names
        only; empty for a p2pchat node without roles); None if no identify was received from it
        yet or it is not a p2pchat node (another implementation, a malformed agent version).
        A claim, not a proof: for showing, never for trusting."""
        return agent.roles_of(self.peer_agent(peer_id))

    def connected_peers(self) -> list[str]:
        """PeerIds of every connected peer."""
        return [str(peer) for peer in self._host.get_network().connections]

    def connections(self) -> list[ConnectionInfo]:
        """Every open connection, described."""
        return [connection_info(conn) for conn in self._host.get_network().get_connections()]
