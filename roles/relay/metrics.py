"""The relay's series, with go-libp2p's ``libp2p_relaysvc_*`` names (no peer or address labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class RelayMetrics:
    """Reservations, circuits and relayed bytes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.status = Gauge(
            "libp2p_relaysvc_status", "1 while the relay service runs.", registry=registry
        )
        self.reservations = Counter(
            "libp2p_relaysvc_reservations",
            "Reservations, by type (opened, renewed, closed).",
            ("type",),
            registry=registry,
        )
        self.reservation_rejections = Counter(
            "libp2p_relaysvc_reservation_rejections",
            "Reservations refused, by reason (ip_limit, total_limit, not_allowed, "
            "no_observed_address, malformed).",
            ("reason",),
            registry=registry,
        )
        self.connections = Counter(
            "libp2p_relaysvc_connections",
            "Relayed connections, by type (opened, closed).",
            ("type",),
            registry=registry,
        )
        self.connection_rejections = Counter(
            "libp2p_relaysvc_connection_rejections",
            "Relayed connections refused, by reason (no_reservation, circuit_limit, not_allowed, "
            "bad_peer_id, connection_failed, malformed).",
            ("reason",),
            registry=registry,
        )
        self.connection_duration = Histogram(
            "libp2p_relaysvc_connection_duration_seconds",
            "How long relayed connections lasted.",
            buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.data_transferred = Counter(
            "libp2p_relaysvc_data_transferred_bytes",
            "Bytes relayed, both directions.",
            registry=registry,
        )
        self.limit_resets = Counter(
            "p2pchat_relay_circuit_resets",
            "Relayed connections reset for exceeding a limit, by limit (data, duration).",
            ("limit",),
            registry=registry,
        )
        self.reservations_held = Gauge(
            "p2pchat_relay_reservations", "Reservations currently held.", registry=registry
        )
        # The limit beside the count, so dashboards and alerts need not know the config.
        self.reservations_limit = Gauge(
            "p2pchat_relay_max_reservations",
            "relay.max_reservations: the most reservations this relay grants.",
            registry=registry,
        )
