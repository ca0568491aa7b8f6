"""Connection admission (inbound, outbound dials, relayed inbound): refusals by reason, and the
transient connections now."""

from __future__ import annotations

from p2pchat.node.p2p.admission import REASONS as INBOUND_REASONS
from p2pchat.node.p2p.dial_admission import REASONS as DIAL_REASONS
from p2pchat.node.p2p.dial_race import TRANSPORTS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConnectionMetrics:
    """Implements :class:`~p2pchat.node.p2p.admission.AdmissionObserver` and
    :class:`~p2pchat.node.p2p.dial_race.RaceObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refused = Counter(
            "p2pchat_connections_refused",
            "Connections refused or closed by admission, by reason. Inbound: per_ip, per_peer, "
            "transient_full, total_full, culled (a handshake closed to make room), deadline "
            "(not secured, muxed and identified in time), handshake_bytes, handshake_failed. "
            "Outbound dials: outbound_total, outbound_per_peer, dials_in_flight, "
            "dials_per_peer, direct_in_flight. Relayed inbound: relayed_total, relayed_per_relay, "
            "relayed_per_peer, relayed_deadline, relayed_failed.",
            ("reason",),
            registry=registry,
        )
        # every reason exported from the start, at 0
        for reason in (*INBOUND_REASONS, *DIAL_REASONS):
            self.refused.labels(reason=reason)
        self.transient = Gauge(
            "p2pchat_connections_transient",
            "Inbound connections not yet secured, muxed and identified.",
            registry=registry,
        )
        self.races = Histogram(
            "p2pchat_dial_race_seconds",
            "Races of a peer's QUIC and TCP/WebSocket addresses (QUIC first, the others after "
            "node.quic_head_start): seconds to the first connection, by the transport that won "
            "(quic, tcp, websocket; none: every dial failed).",
            ("transport",),
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        for transport in (*TRANSPORTS, "none"):
            self.races.labels(transport=transport)

    def dial_race_finished(self, transport: str | None, seconds: float) -> None:
        """Record a race won over ``transport`` (None: lost) after ``seconds``."""
        self.races.labels(transport=transport or "none").observe(seconds)

    def connection_refused(self, reason: str) -> None:
        """Count a connection refused for ``reason`` (one of a fixed few)."""
        self.refused.labels(reason=reason).inc()

    def transient_connections(self, count: int) -> None:
        """Set the number of transient inbound connections."""
        self.transient.set(count)
