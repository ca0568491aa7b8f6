"""History: the history protocol served from the local store, and history fetched from others
(store client and catch-up)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class StoreServerMetrics:
    """Queries answered, by status; query time; streams being served. Implements
    :class:`~p2pchat.node.store_server.StoreServerObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "p2pchat_store_queries",
            "History queries answered, by status (ok, bad_request, too_many_requests, "
            "unavailable).",
            ("status",),
            registry=registry,
        )
        self.query_duration = Histogram(
            "p2pchat_archive_query_duration_seconds",
            "Time to answer one history query from the local store (read and encode).",
            buckets=QUERY_BUCKETS,
            registry=registry,
        )
        self.streams = Gauge(
            "p2pchat_store_query_streams",
            "History protocol streams being served now.",
            registry=registry,
        )
        self.refusals = Counter(
            "p2pchat_store_refusals",
            "History queries and streams refused, by reason (query_rate, peer_bytes, "
            "group_bytes, peer_streams, group_streams, total_streams, evicted, read_timeout).",
            ("reason",),
            registry=registry,
        )
        self.served_bytes = Counter(
            "p2pchat_store_served_bytes",
            "Bytes of history replies this node answered (admitted queries).",
            registry=registry,
        )

    def stream_opened(self) -> None:
        """A history stream is being served."""
        self.streams.inc()

    def stream_closed(self) -> None:
        """A history stream served is over."""
        self.streams.dec()

    def query_answered(self, status: str) -> None:
        """Count a query answered, by its status in lower case."""
        self.queries.labels(status=status).inc()

    def query_read(self, seconds: float) -> None:
        """Record the time one query took to answer from the store."""
        self.query_duration.observe(seconds)

    def refused(self, reason: str) -> None:
        """Count a refusal by reason."""
        self.refusals.labels(reason=reason).inc()

    def bytes_served(self, count: int) -> None:
        """Count the bytes of one reply."""
        self.served_bytes.inc(count)


class StoreClientMetrics:
    """What history fetches brought: accepted, rejected by reason, queries by outcome.
    Implements :class:`~p2pchat.node.store_client.StoreClientObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.rejected = Counter(
            "p2pchat_history_rejected",
            "Messages from history sources dropped, by reason (bad_signature, malformed, "
            "wrong_room, mismatch, not_text, not_owner, future_timestamp, oversized, invalid, "
            "unsupported_version).",
            ("reason",),
            registry=registry,
        )
        self.fetched = Counter(
            "p2pchat_history_fetched",
            "Messages from history sources that verified (before de-duplication).",
            registry=registry,
        )
        self.queries = Counter(
            "p2pchat_history_queries",
            "History queries this node sent, by outcome (ok, bad_request, too_many_requests, "
            "unavailable, error).",
            ("outcome",),
            registry=registry,
        )

    def entry_rejected(self, reason: str) -> None:
        """Count a returned message that failed verification, by reason."""
        self.rejected.labels(reason=reason).inc()

    def entries_fetched(self, count: int) -> None:
        """Count the verified messages of one walk."""
        self.fetched.inc(count)

    def query_finished(self, outcome: str) -> None:
        """Count a query sent, by the reply's status in lower case, or ``error``."""
        self.queries.labels(outcome=outcome).inc()


class CatchUpMetrics:
    """What catch-ups stored, and the sources that failed or lacked messages. Implements
    :class:`~p2pchat.node.catchup.CatchUpObserver`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.stored = Counter(
            "p2pchat_history_caught_up",
            "Messages a catch-up stored that this node did not have.",
            registry=registry,
        )
        self.source_gaps = Counter(
            "p2pchat_history_source_gaps",
            "Messages a history source lacked that another source of the same catch-up had.",
            registry=registry,
        )
        self.source_errors = Counter(
            "p2pchat_history_source_errors",
            "History sources that failed during a catch-up (unreachable, refused, broken).",
            registry=registry,
        )
        self.refused_messages = Counter(
            "p2pchat_history_catchup_refused",
            "Messages a catch-up left out, by reason (sender_share: "
            "the sender over its share of the room's history; newcomers: senders new to the "
            "room over their shared budget; source: newcomers' messages over what their source "
            "may bring per room and window).",
            ("reason",),
            registry=registry,
        )

    def caught_up(self, stored: int) -> None:
        """Count the messages one catch-up stored that were new to this node."""
        self.stored.inc(stored)

    def source_lacked(self, missing: int) -> None:
        """Count the messages a source lacked that another source of the catch-up had."""
        self.source_gaps.inc(missing)

    def source_failed(self) -> None:
        """Count a source that failed during a catch-up."""
        self.source_errors.inc()

    def refused(self, reason: str, count: int) -> None:
        """Count messages a catch-up left out, by reason."""
        self.refused_messages.labels(reason=reason).inc(count)
