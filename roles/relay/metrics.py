"""The relay's series, with go-libp2p's ``libp2p_relaysvc_*`` names (no peer or address labels).

:class:`RelayMetrics` implements :class:`~p2pchat.roles.relay.hop.HopObserver`; only the role
wires it.
"""

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
            "Relayed connections refused, by reason (no_reservation, circuit_limit, source_share, "
            "group_share, not_allowed, bad_peer_id, connection_failed, malformed).",
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
        self.bytes_by_entry = Counter(
            "p2pchat_relay_bytes",
            "Bytes relayed, both directions, by the relay.chat_peers entry (PeerId or network) "
            'a circuit\'s ends matched; entry="other": circuits with the default limits.',
            ("entry",),
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

    def service_started(self, max_reservations: int) -> None:
        """The hop protocol is served, granting at most ``max_reservations``."""
        self.status.set(1)
        self.reservations_limit.set(max_reservations)

    def reservation_granted(self, renewed: bool) -> None:
        """A reservation was opened, or renewed."""
        self.reservations.labels(type="renewed" if renewed else "opened").inc()

    def reservation_refused(self, reason: str) -> None:
        """A reservation was refused, by the limits' reason."""
        self.reservation_rejections.labels(reason=reason).inc()

    def reservations_closed(self, count: int) -> None:
        """``count`` reservations ended (expired, or their holder left); 0 is reported too."""
        self.reservations.labels(type="closed").inc(count)

    def reservations_changed(self, held: int) -> None:
        """The relay holds ``held`` reservations now."""
        self.reservations_held.set(held)

    def request_malformed(self) -> None:
        """A hop request could not be read (malformed, oversized or late)."""
        self.connection_rejections.labels(reason="malformed").inc()

    def circuit_refused(self, reason: str) -> None:
        """A circuit was refused, by reason."""
        self.connection_rejections.labels(reason=reason).inc()

    def circuit_opened(self) -> None:
        """A circuit was accepted by its destination and relays from now."""
        self.connections.labels(type="opened").inc()

    def circuit_closed(self, seconds: float) -> None:
        """A circuit told to :meth:`circuit_opened` ended after ``seconds``."""
        self.connections.labels(type="closed").inc()
        self.connection_duration.observe(seconds)

    def circuit_reset(self, limit: str) -> None:
        """A circuit was reset for exceeding ``limit`` (``data`` or ``duration``)."""
        self.limit_resets.labels(limit=limit).inc()

    def bytes_relayed(self, count: int, entries: tuple[str, ...]) -> None:
        """``count`` bytes were relayed (either direction), on a circuit whose ends matched
        ``entries`` (bounded: the configured entries and "other")."""
        self.data_transferred.inc(count)
        for entry in entries:
            self.bytes_by_entry.labels(entry=entry).inc(count)
