"""AutoRelay: reservations this node holds on relays, after go-libp2p's libp2p_autorelay_*."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class AutoRelayMetrics:
    """Implements :class:`~p2pchat.node.autorelay.AutoRelayObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "libp2p_autorelay_reservation_requests_outcome",
            "Reservation requests to relays, by request_type (new, refresh) and outcome "
            "(success, a refusal status in lower case, error).",
            ("request_type", "outcome"),
            registry=registry,
        )
        self.opened = Counter(
            "libp2p_autorelay_reservations_opened",
            "Reservations obtained.",
            registry=registry,
        )
        self.closed = Counter(
            "libp2p_autorelay_reservations_closed",
            "Reservations ended (relay gone, renewal refused, expired, no longer needed).",
            registry=registry,
        )
        self.reservations = Gauge(
            "p2pchat_autorelay_reservations", "Reservations held now.", registry=registry
        )
        self.addresses = Gauge(
            "libp2p_autorelay_relay_addresses_count",
            "Circuit addresses this node advertises.",
            registry=registry,
        )

    def reservation_requested(self, request_type: str, outcome: str) -> None:
        """Count a request (``new`` or ``refresh``) by its outcome."""
        self.requests.labels(request_type=request_type, outcome=outcome).inc()

    def reservation_opened(self) -> None:
        """Count a reservation obtained (not a renewal)."""
        self.opened.inc()

    def reservation_closed(self) -> None:
        """Count a reservation that ended."""
        self.closed.inc()

    def reservations_advertised(self, reservations: int, addresses: int) -> None:
        """Set the reservations held and the circuit addresses advertised now."""
        self.reservations.set(reservations)
        self.addresses.set(addresses)
