"""AutoNAT: the reachability this node found, its probes, and the dial-backs it answered."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

# go-libp2p's values of libp2p_autonat_reachability_status.
REACHABILITY_VALUES = {"unknown": 0, "public": 1, "private": 2}


class AutoNatMetrics:
    """Implements :class:`~p2pchat.node.autonat.AutoNatClientObserver` and
    :class:`~p2pchat.node.autonat.AutoNatServerObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.reachability = Gauge(
            "libp2p_autonat_reachability_status",
            "This node's reachability as AutoNAT found it: 0 unknown, 1 public, 2 private "
            "(go-libp2p's name and values).",
            registry=registry,
        )
        self.reachability.set(REACHABILITY_VALUES["unknown"])
        self.probes = Counter(
            "p2pchat_autonat_probes",
            "Reachability probes this node sent, by the server's answer (ok, e_dial_error, "
            "e_dial_refused, e_bad_request, e_internal_error) or bad_response / error.",
            ("outcome",),
            registry=registry,
        )
        self.dialbacks = Counter(
            "p2pchat_autonat_dialbacks",
            "Dial-back requests this node answered, by status (ok, e_dial_error, e_dial_refused, "
            "e_bad_request).",
            ("outcome",),
            registry=registry,
        )
        self.refusals = Counter(
            "p2pchat_autonat_refusals",
            "Dial-back requests refused, by reason (peer_limit, group_limit, total_limit, "
            "no_address, no_tcp_address).",
            ("reason",),
            registry=registry,
        )

    def dialback_refused(self, reason: str) -> None:
        """Count a dial-back refused, by reason."""
        self.refusals.labels(reason=reason).inc()

    def reachability_decided(self, reachability: str) -> None:
        """Set the reachability gauge: ``unknown``, ``public`` or ``private``."""
        self.reachability.set(REACHABILITY_VALUES[reachability])

    def probe_answered(self, outcome: str) -> None:
        """Count a probe by the server's status in lower case, ``bad_response`` or ``error``."""
        self.probes.labels(outcome=outcome).inc()

    def dialback_answered(self, status: str) -> None:
        """Count a dial-back request this node answered, by its status in lower case."""
        self.dialbacks.labels(outcome=status).inc()
