"""Connections and streams: the host's events as go-libp2p's swarm series."""

from __future__ import annotations

from p2pchat.node.p2p.host import ConnectionInfo
from prometheus_client import CollectorRegistry, Counter, Gauge

_CONNECTION_LABELS = ("dir", "transport", "security", "muxer")


class SwarmMetrics:
    """Implements :class:`~p2pchat.node.p2p.host.HostObserver` and
    :class:`~p2pchat.node.p2p.pubsub.PxObserver`, and counts bootstrap dials
    (:func:`~p2pchat.node.keepalive.keep_connected`'s ``on_dial``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connections_opened = Counter(
            "libp2p_swarm_connections_opened",
            "Connections opened (go-libp2p name and labels).",
            _CONNECTION_LABELS,
            registry=registry,
        )
        self.connections_closed = Counter(
            "libp2p_swarm_connections_closed",
            "Connections closed (go-libp2p name and labels).",
            _CONNECTION_LABELS,
            registry=registry,
        )
        self.connected_peers = Gauge(
            "p2pchat_connected_peers",
            "Peers with at least one open connection.",
            registry=registry,
        )
        self.handler_failures = Counter(
            "p2pchat_stream_handler_failures",
            "Stream handlers that raised; the stream was reset and the node kept running.",
            ("protocol",),
            registry=registry,
        )
        self.bootstrap_dials = Counter(
            "p2pchat_bootstrap_dials",
            "Dials to configured bootstrap peers, by outcome.",
            ("outcome",),
            registry=registry,
        )
        self.px_refused_records = Counter(
            "p2pchat_pubsub_px_refused",
            "Peer-exchange records (GossipSub PRUNE) not dialled, by the first gate refusing.",
            ("reason",),
            registry=registry,
        )
        self.stream_limits = Counter(
            "p2pchat_stream_limit_exceeded",
            "Streams and connections refused by a stream limit (streams: section), by limit: "
            "a stream reset, a ping unanswered, or a connection closed (yamux_window, "
            "yamux_connection_buffer, yamux_protocol, refusals_per_connection).",
            ("limit",),
            registry=registry,
        )
        self.peerstore_refusals = Counter(
            "p2pchat_peerstore_refused",
            "Peerstore records evicted (lru, expired) or refused in whole or part by a bound "
            "(peerstore: section): peers, addrs, addr_size, protocols, protocol_name, "
            "metadata, record.",
            ("reason",),
            registry=registry,
        )
        self.peerstore_size = Gauge(
            "p2pchat_peerstore_peers",
            "Peer records the peerstore holds (bounded by peerstore.max_peers).",
            registry=registry,
        )
        self.unread_dropped_bytes = Counter(
            "p2pchat_yamux_unread_dropped_bytes",
            "Bytes a peer sent on a Yamux stream that nobody will read, dropped at once, by "
            "reason: reset (by either side), abandoned (its handler returned, our side closed).",
            ("reason",),
            registry=registry,
        )
        # PeerId -> open connections; only peers connected now, so bounded by the host's
        # connection limit.
        self._open_by_peer: dict[str, int] = {}

    def connection_opened(self, info: ConnectionInfo) -> None:
        """Count an opened connection and track the peer."""
        self.connections_opened.labels(*_labels(info)).inc()
        self._open_by_peer[info.peer_id] = self._open_by_peer.get(info.peer_id, 0) + 1
        self.connected_peers.set(len(self._open_by_peer))

    def connection_closed(self, info: ConnectionInfo) -> None:
        """Count a closed connection and forget the peer once its last connection closed."""
        self.connections_closed.labels(*_labels(info)).inc()
        remaining = self._open_by_peer.get(info.peer_id, 0) - 1
        if remaining > 0:
            self._open_by_peer[info.peer_id] = remaining
        else:
            self._open_by_peer.pop(info.peer_id, None)
        self.connected_peers.set(len(self._open_by_peer))

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        """Count a stream handler that raised."""
        self.handler_failures.labels(protocol=protocol).inc()

    def stream_limit_exceeded(self, limit: str) -> None:
        """Count a refusal by a stream limit (one of the fixed names of
        :data:`~p2pchat.node.p2p.stream_limits.LIMITS`)."""
        self.stream_limits.labels(limit=limit).inc()

    def peerstore_refused(self, reason: str) -> None:
        """Count a peerstore eviction or refusal (one of the fixed words of
        :data:`~p2pchat.node.p2p.peerstore_bounds.REASONS`)."""
        self.peerstore_refusals.labels(reason=reason).inc()

    def peerstore_peers(self, count: int) -> None:
        """The number of peer records held now."""
        self.peerstore_size.set(count)

    def unread_dropped(self, reason: str, size: int) -> None:
        """Count unread bytes of a Yamux stream, dropped (``reason``: ``reset``,
        ``abandoned``)."""
        self.unread_dropped_bytes.labels(reason=reason).inc(size)

    def px_refused(self, reason: str) -> None:
        """Count a peer-exchange record refused
        (:class:`~p2pchat.node.p2p.pubsub.PxObserver`)."""
        self.px_refused_records.labels(reason=reason).inc()

    def bootstrap_dial(self, succeeded: bool) -> None:
        """Count a dial of a configured bootstrap peer."""
        self.bootstrap_dials.labels(outcome="success" if succeeded else "failure").inc()


def _labels(info: ConnectionInfo) -> tuple[str, str, str, str]:
    return info.direction, info.transport, info.security, info.muxer
