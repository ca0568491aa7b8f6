"""The Kad-DHT and room rendezvous through it."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class DhtMetrics:
    """The routing table's size (read when scraped) and rendezvous' announcements and lookups;
    implements :class:`~p2pchat.node.rendezvous.RendezvousObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.routing_table_peers = Gauge(
            "p2pchat_dht_routing_table_peers",
            "Peers in the Kad-DHT routing table (0 without a DHT).",
            registry=registry,
        )
        self.rendezvous_lookups = Counter(
            "p2pchat_rendezvous_lookups",
            "Room-member lookups in the DHT, by outcome (found, none, error).",
            ("outcome",),
            registry=registry,
        )
        self.rendezvous_provides = Counter(
            "p2pchat_rendezvous_provides",
            "Announcements of this node's rooms (and a relay's service) in the DHT, by outcome "
            "(accepted, refused, error).",
            ("outcome",),
            registry=registry,
        )

    def measure_routing_table(self, size: Callable[[], int]) -> None:
        """Report ``size()`` as the routing table's size, called at each scrape."""
        self.routing_table_peers.set_function(size)

    def provide_finished(self, outcome: str) -> None:
        """Count an announcement: ``accepted``, ``refused`` or ``error``."""
        self.rendezvous_provides.labels(outcome=outcome).inc()

    def lookup_finished(self, outcome: str) -> None:
        """Count a room-member lookup: ``found``, ``none`` or ``error``."""
        self.rendezvous_lookups.labels(outcome=outcome).inc()
