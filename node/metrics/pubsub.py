"""The pubsub's defences against hostile peers (#18): control messages dropped, peers
penalised, peers graylisted, mesh peers pruned for their score. Labels are fixed words."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class PubsubMetrics:
    """Implements :class:`~p2pchat.node.p2p.pubsub.PubsubObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.control_dropped = Counter(
            "p2pchat_pubsub_control_dropped",
            "GossipSub control and subscription entries ignored, by limit (subscriptions_per_peer,"
            " topics_total, graft_prune, ihave_messages, ihave_ids, iwant_ids, "
            "iwant_retransmissions, unknown_topic, graylisted, low_score).",
            ("limit",),
            registry=registry,
        )
        self.penalties = Counter(
            "p2pchat_pubsub_penalties",
            "Peer-score penalties given, by reason (invalid_message, flood, control_flood).",
            ("reason",),
            registry=registry,
        )
        self.graylisted = Gauge(
            "p2pchat_pubsub_graylisted_peers",
            "Peers whose score is under the graylist threshold: everything they send is ignored.",
            registry=registry,
        )
        self.score_pruned = Counter(
            "p2pchat_pubsub_score_pruned",
            "Mesh peers pruned, or GRAFTs refused, because of a negative score.",
            registry=registry,
        )

    def control_dropped_by(self, limit: str, count: int = 1) -> None:
        """``count`` entries were ignored by ``limit``."""
        self.control_dropped.labels(limit=limit).inc(count)

    def penalised(self, reason: str) -> None:
        """A peer's score was penalised for ``reason``."""
        self.penalties.labels(reason=reason).inc()

    def graylisted_changed(self, delta: int) -> None:
        """A peer went under (+1) or back over (-1) the graylist threshold."""
        self.graylisted.inc(delta)

    def mesh_pruned_for_score(self) -> None:
        """A peer was pruned from a mesh (or its GRAFT refused) for a negative score."""
        self.score_pruned.inc()
