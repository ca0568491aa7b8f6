"""The Kad-DHT and room rendezvous through it."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class DhtMetrics:
    """The routing table's size (read when scraped), rendezvous' announcements and lookups,
    and what the DHT's bounds refused; implements
    :class:`~p2pchat.node.rendezvous.RendezvousObserver` and the host layer's ``KadObserver``."""

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

        self.refused = Counter(
            "p2pchat_dht_refused",
            "DHT requests, streams and provider records refused by a bound, by reason "
            "(streams_per_peer, streams_total, evicted, idle, partial_frame, write_timeout, "
            "frame_size, malformed, rate, put_value, providers_per_key, "
            "providers_per_peer, providers_total, providers_evicted, provider_addrs, "
            "table_unidentified; closer_peers, providers: a lookup answer naming more than the "
            "20 a Kademlia server sends, cut to 20).",
            ("reason",),
            registry=registry,
        )
        self.provider_records = Gauge(
            "p2pchat_dht_provider_records",
            "Provider records the DHT stores (this node's own included).",
            registry=registry,
        )
        self.inbound_streams = Gauge(
            "p2pchat_dht_inbound_streams",
            "Inbound DHT streams open now (a DHT server's).",
            registry=registry,
        )

    def measure_store(
        self, provider_records: Callable[[], int], streams: Callable[[], int]
    ) -> None:
        """Report the provider records stored and the inbound streams open, read at each
        scrape."""
        self.provider_records.set_function(provider_records)
        self.inbound_streams.set_function(streams)

    def kad_refused(self, reason: str) -> None:
        """Count a refusal of the DHT's bounds (one of the reasons listed in the help)."""
        self.refused.labels(reason=reason).inc()

    def measure_routing_table(self, size: Callable[[], int]) -> None:
        """Report ``size()`` as the routing table's size, called at each scrape."""
        self.routing_table_peers.set_function(size)

    def provide_finished(self, outcome: str) -> None:
        """Count an announcement: ``accepted``, ``refused`` or ``error``."""
        self.rendezvous_provides.labels(outcome=outcome).inc()

    def lookup_finished(self, outcome: str) -> None:
        """Count a room-member lookup: ``found``, ``none`` or ``error``."""
        self.rendezvous_lookups.labels(outcome=outcome).inc()
