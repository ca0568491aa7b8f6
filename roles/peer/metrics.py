"""The chat peer's series, registered in the node's registry (no room or peer labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ChatMetrics:
    """Messages published, received and dropped (by reason); rooms; members; store size."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.published = Counter(
            "p2pchat_messages_published", "Chat messages this peer published.", registry=registry
        )
        self.received = Counter(
            "p2pchat_messages_received",
            "Chat messages from other peers, verified, new, stored and shown.",
            registry=registry,
        )
        self.dropped = Counter(
            "p2pchat_messages_dropped",
            "Messages dropped on receive, by reason (bad_signature, malformed, oversized, "
            "invalid, unsupported_version, wrong_room, future_timestamp, duplicate).",
            ("reason",),
            registry=registry,
        )
        self.rooms = Gauge("p2pchat_rooms_joined", "Rooms this peer is in.", registry=registry)
        self.room_peers = Gauge(
            "p2pchat_room_peers", "Other peers subscribed to the current room.", registry=registry
        )
        self.store_bytes = Gauge(
            "p2pchat_store_bytes", "Bytes the local store occupies on disk.", registry=registry
        )

    def message_dropped(self, topic: str, reason: str) -> None:
        """GossipObserver: a message failed verification in the pubsub layer."""
        self.dropped.labels(reason=reason).inc()
