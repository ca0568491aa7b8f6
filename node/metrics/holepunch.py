"""Hole punching (DCUtR), after go-libp2p's libp2p_holepunch_* series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class HolePunchMetrics:
    """Implements :class:`~p2pchat.node.holepunch.HolePunchObserver` and
    :class:`~p2pchat.node.relay_handover.HandoverObserver` and
    :class:`~p2pchat.node.circuit_renewal.RenewalObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "libp2p_holepunch_outcomes",
            "Hole punches, by side (initiator, receiver), num_attempts and outcome (success, "
            "failed, no_suitable_address).",
            ("side", "num_attempts", "outcome"),
            registry=registry,
        )
        self.direct_dials = Counter(
            "libp2p_holepunch_direct_dials",
            "Direct dials tried before hole punching (the peer advertised an address), by "
            "outcome (success, failed).",
            ("outcome",),
            registry=registry,
        )
        self.protocol_errors = Counter(
            "p2pchat_holepunch_protocol_errors",
            "DCUtR exchanges dropped: malformed, oversized or unexpected messages, timeouts, or a "
            "DCUtR stream over a connection that is not relayed.",
            ("side",),
            registry=registry,
        )
        self.handovers = Counter(
            "p2pchat_relayed_handover",
            "Relayed connections retired after a direct one replaced them, by outcome: "
            "not_needed (the peer's pubsub stream was not on the relay only), resumed (kept while "
            "the peer's stream was on it, then the peer heard on the direct one again), failed "
            "(not heard on the direct one after the renewals of our stream and 20 nudges; a "
            "rust-libp2p peer that has said nothing yet is counted here too).",
            ("outcome",),
            registry=registry,
        )
        for outcome in ("not_needed", "resumed", "failed"):
            self.handovers.labels(outcome=outcome)
        self.renewals = Counter(
            "p2pchat_relayed_circuit_renewals",
            "Next circuits opened to a relayed peer, by trigger (limit: the circuit we dialled "
            "neared its relay's limit; listener_limit: the circuit the peer dialled came nearer "
            "still, not renewed by it; relay_gone: one we dialled ended with no other connection "
            "to the peer) and outcome (renewed: the peer heard on the new circuit; unheard: a new "
            "circuit, the peer's stream not on it in time; failed: no circuit through any relay).",
            ("trigger", "outcome"),
            registry=registry,
        )
        for trigger in ("limit", "listener_limit", "relay_gone"):
            for outcome in ("renewed", "unheard", "failed"):
                self.renewals.labels(trigger=trigger, outcome=outcome)

    def direct_dial_finished(self, succeeded: bool) -> None:
        """Count a direct dial tried before hole punching."""
        self.direct_dials.labels(outcome="success" if succeeded else "failed").inc()

    def punch_finished(self, side: str, attempts: int, outcome: str) -> None:
        """Count a hole punch by side, attempts (a few: the protocol bounds them) and outcome."""
        self.outcomes.labels(side=side, num_attempts=str(attempts), outcome=outcome).inc()

    def exchange_dropped(self, side: str) -> None:
        """Count a DCUtR exchange dropped for breaking the protocol or timing out."""
        self.protocol_errors.labels(side=side).inc()

    def circuit_renewal_finished(self, trigger: str, outcome: str) -> None:
        """Count a next circuit, by trigger and outcome (fixed words)."""
        self.renewals.labels(trigger=trigger, outcome=outcome).inc()

    def handover_finished(self, outcome: str) -> None:
        """Count a relayed connection retired, by outcome (a fixed word)."""
        self.handovers.labels(outcome=outcome).inc()
