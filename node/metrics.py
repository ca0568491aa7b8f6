"""Prometheus metrics: an observer that turns node events into series.

Names follow go-libp2p where a series exists there (operators already have dashboards for them),
``p2pchat_*`` otherwise. Label values are bounded: never a peer id or an address. Each node owns a
registry, so several nodes in one process (tests) do not collide.
"""

from __future__ import annotations

from p2pchat.node import __version__
from p2pchat.node.p2p.host import ConnectionInfo
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_CONNECTION_LABELS = ("dir", "transport", "security", "muxer")


class NodeMetrics:
    """The node-level series; roles add theirs to :attr:`registry`."""

    def __init__(self, roles: list[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_* (CPU, resident memory, open and max file descriptors, start time), as every
        # Prometheus client exports them on its default registry, which a node does not use.
        ProcessCollector(registry=self.registry)
        build_info = Gauge(
            "p2pchat_build_info",
            "Always 1; labels carry the version and the roles this process runs.",
            ("version", "roles"),
            registry=self.registry,
        )
        build_info.labels(version=__version__, roles=",".join(roles)).set(1)
        self.connections_opened = Counter(
            "libp2p_swarm_connections_opened",
            "Connections opened (go-libp2p name and labels).",
            _CONNECTION_LABELS,
            registry=self.registry,
        )
        self.connections_closed = Counter(
            "libp2p_swarm_connections_closed",
            "Connections closed (go-libp2p name and labels).",
            _CONNECTION_LABELS,
            registry=self.registry,
        )
        self.connected_peers = Gauge(
            "p2pchat_connected_peers",
            "Peers with at least one open connection.",
            registry=self.registry,
        )
        self.handler_failures = Counter(
            "p2pchat_stream_handler_failures",
            "Stream handlers that raised; the stream was reset and the node kept running.",
            ("protocol",),
            registry=self.registry,
        )
        self.bootstrap_dials = Counter(
            "p2pchat_bootstrap_dials",
            "Dials to configured bootstrap peers, by outcome.",
            ("outcome",),
            registry=self.registry,
        )
        self.dht_routing_table_peers = Gauge(
            "p2pchat_dht_routing_table_peers",
            "Peers in the Kad-DHT routing table (0 without a DHT).",
            registry=self.registry,
        )
        self.rendezvous_lookups = Counter(
            "p2pchat_rendezvous_lookups",
            "Room-member lookups in the DHT, by outcome (found, none, error).",
            ("outcome",),
            registry=self.registry,
        )
        self.rendezvous_provides = Counter(
            "p2pchat_rendezvous_provides",
            "Announcements of this node's rooms (and a relay's service) in the DHT, by outcome "
            "(accepted, refused, error).",
            ("outcome",),
            registry=self.registry,
        )
        self.autonat_reachability = Gauge(
            "libp2p_autonat_reachability_status",
            "This node's reachability as AutoNAT found it: 0 unknown, 1 public, 2 private "
            "(go-libp2p's name and values).",
            registry=self.registry,
        )
        self.autonat_probes = Counter(
            "p2pchat_autonat_probes",
            "Reachability probes this node sent, by the server's answer (ok, e_dial_error, "
            "e_dial_refused, e_bad_request, e_internal_error) or bad_response / error.",
            ("outcome",),
            registry=self.registry,
        )
        self.autonat_dialbacks = Counter(
            "p2pchat_autonat_dialbacks",
            "Dial-back requests this node answered, by status (ok, e_dial_error, e_dial_refused, "
            "e_bad_request).",
            ("outcome",),
            registry=self.registry,
        )
        # Auto-relay, after go-libp2p's libp2p_autorelay_* series.
        self.autorelay_requests = Counter(
            "libp2p_autorelay_reservation_requests_outcome",
            "Reservation requests to relays, by request_type (new, refresh) and outcome "
            "(success, a refusal status in lower case, error).",
            ("request_type", "outcome"),
            registry=self.registry,
        )
        self.autorelay_opened = Counter(
            "libp2p_autorelay_reservations_opened",
            "Reservations obtained.",
            registry=self.registry,
        )
        self.autorelay_closed = Counter(
            "libp2p_autorelay_reservations_closed",
            "Reservations ended (relay gone, renewal refused, expired, no longer needed).",
            registry=self.registry,
        )
        self.autorelay_reservations = Gauge(
            "p2pchat_autorelay_reservations", "Reservations held now.", registry=self.registry
        )
        self.autorelay_addresses = Gauge(
            "libp2p_autorelay_relay_addresses_count",
            "Circuit addresses this node advertises.",
            registry=self.registry,
        )
        # Hole punching (DCUtR), after go-libp2p's libp2p_holepunch_* series.
        self.holepunch_outcomes = Counter(
            "libp2p_holepunch_outcomes",
            "Hole punches, by side (initiator, receiver), num_attempts and outcome (success, "
            "failed, no_suitable_address).",
            ("side", "num_attempts", "outcome"),
            registry=self.registry,
        )
        self.holepunch_direct_dials = Counter(
            "libp2p_holepunch_direct_dials",
            "Direct dials tried before hole punching (the peer advertised an address), by "
            "outcome (success, failed).",
            ("outcome",),
            registry=self.registry,
        )
        self.holepunch_protocol_errors = Counter(
            "p2pchat_holepunch_protocol_errors",
            "DCUtR exchanges dropped: malformed, oversized or unexpected messages, timeouts, or a "
            "DCUtR stream over a connection that is not relayed.",
            ("side",),
            registry=self.registry,
        )
        self.ready = Gauge(
            "p2pchat_ready",
            "1 once every role has started and the listeners are bound.",
            registry=self.registry,
        )
        self._open_by_peer: dict[str, int] = {}

    # HostObserver -------------------------------------------------------------------------------

    def connection_opened(self, info: ConnectionInfo) -> None:
        """Count an opened connection and track the peer."""
        self.connections_opened.labels(*self._labels(info)).inc()
        self._open_by_peer[info.peer_id] = self._open_by_peer.get(info.peer_id, 0) + 1
        self.connected_peers.set(len(self._open_by_peer))

    def connection_closed(self, info: ConnectionInfo) -> None:
        """Count a closed connection and forget the peer once its last connection closed."""
        self.connections_closed.labels(*self._labels(info)).inc()
        remaining = self._open_by_peer.get(info.peer_id, 0) - 1
        if remaining > 0:
            self._open_by_peer[info.peer_id] = remaining
        else:
            self._open_by_peer.pop(info.peer_id, None)
        self.connected_peers.set(len(self._open_by_peer))

    def bootstrap_dial(self, succeeded: bool) -> None:
        """Count a dial of a configured bootstrap peer."""
        self.bootstrap_dials.labels(outcome="success" if succeeded else "failure").inc()

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        """Count a stream handler that raised."""
        self.handler_failures.labels(protocol=protocol).inc()

    # exposition ---------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition of every series in the registry."""
        return generate_latest(self.registry)

    @staticmethod
    def _labels(info: ConnectionInfo) -> tuple[str, str, str, str]:
        return info.direction, info.transport, info.security, info.muxer
