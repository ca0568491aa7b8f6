"""The archiver's series (nwaku's archive names, ``p2pchat_`` prefix; no room or peer labels).

:class:`ArchiveMetrics` implements the pubsub's :class:`~p2pchat.node.p2p.pubsub.GossipObserver`
and the archiver's :class:`~p2pchat.roles.archiver.role.ArchiverObserver`; only the role wires it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

INSERT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ArchiveMetrics:
    """Messages held and inserted, write time, errors, drops, rooms, retention, store size.

    ``store_size`` (bytes the store occupies) is read at each scrape.
    """

    def __init__(
        self, registry: CollectorRegistry, store_size: Callable[[], float] | None = None
    ) -> None:
        self.messages = Gauge(
            "p2pchat_archive_messages", "Messages held by the archive.", registry=registry
        )
        self.inserted = Counter(
            "p2pchat_archive_inserted",
            "Messages written and synced to disk (acknowledged); duplicates are not counted, "
            "nor, in a process that is also a chat peer, messages it stored first.",
            registry=registry,
        )
        self.insert_duration = Histogram(
            "p2pchat_archive_insert_duration_seconds",
            "Time to write and sync one batch of messages.",
            buckets=INSERT_BUCKETS,
            registry=registry,
        )
        self.insert_batch = Histogram(
            "p2pchat_archive_insert_batch_messages",
            "Messages per synced write.",
            buckets=(1, 4, 16, 64, 256, 1024, 4096),
            registry=registry,
        )
        self.errors = Counter(
            "p2pchat_archive_errors",
            "Archive failures, by type (write, retention).",
            ("type",),
            registry=registry,
        )
        self.dropped = Counter(
            "p2pchat_archive_dropped",
            "Messages refused before archiving, by reason (bad_signature, malformed, oversized, "
            "invalid, unsupported_version, wrong_room, future_timestamp, muted, removed, "
            "not_owner, moderation_full, flood, flood_new_senders).",
            ("reason",),
            registry=registry,
        )
        self.rooms = Gauge("p2pchat_archive_rooms", "Rooms being archived.", registry=registry)
        self.room_admissions = Counter(
            "p2pchat_archive_room_admissions",
            "Rooms heard of (archiver.all_rooms), by outcome: admitted (members heard), "
            "expired (not within archiver.probation), refused_full (max_rooms, none idle), "
            "evicted_idle (gave its slot to an admitted room).",
            ("outcome",),
            registry=registry,
        )
        self.room_candidates = Gauge(
            "p2pchat_archive_room_candidates",
            "Rooms heard of listened to now for evidence of members (on probation).",
            registry=registry,
        )
        self.retention_deleted = Counter(
            "p2pchat_archive_retention_deleted",
            "Messages deleted by retention (age, count or size).",
            registry=registry,
        )
        self.store_bytes = Gauge(
            "p2pchat_archive_store_bytes", "Bytes the store occupies on disk.", registry=registry
        )
        if store_size is not None:
            self.store_bytes.set_function(store_size)
        self.mailbox_refused_total = Counter(
            "p2pchat_mailbox_refused",
            "Mailbox requests refused, by reason (busy, timeout, too_large, malformed, rate, "
            "unauthorized, full, mailbox_full, quota).",
            ("reason",),
            registry=registry,
        )
        self.mailbox_deposits = Counter(
            "p2pchat_mailbox_deposits", "Sealed letters kept in a mailbox.", registry=registry
        )
        self.mailbox_served = Counter(
            "p2pchat_mailbox_served",
            "Mailbox letters, by what became of them: fetched (listed to their holder), "
            "deleted (by their holder), expired (mailbox.ttl).",
            ("outcome",),
            registry=registry,
        )
        self.mailbox_letters = Gauge(
            "p2pchat_mailbox_letters", "Sealed letters held in all mailboxes.", registry=registry
        )
        self.mailbox_bytes = Gauge(
            "p2pchat_mailbox_bytes", "Bytes of the sealed letters held.", registry=registry
        )
        self.mailboxes = Gauge(
            "p2pchat_mailboxes", "Mailboxes holding at least one letter.", registry=registry
        )

    def message_dropped(self, topic: str, reason: str) -> None:
        """A message failed verification or validation; ``topic`` is not a label (unbounded)."""
        self.dropped.labels(reason=reason).inc()

    def messages_held(self, count: int) -> None:
        """The archive holds ``count`` messages now."""
        self.messages.set(count)

    def batch_written(self, seconds: float, size: int, new: int) -> None:
        """A batch of ``size`` messages was written and synced in ``seconds``; ``new`` of them
        were new to the store."""
        self.insert_duration.observe(seconds)
        self.insert_batch.observe(size)
        self.inserted.inc(new)

    def write_failed(self) -> None:
        """A batch could not be written."""
        self.errors.labels(type="write").inc()

    def retention_failed(self) -> None:
        """Retention failed for one room."""
        self.errors.labels(type="retention").inc()

    def messages_deleted(self, count: int) -> None:
        """Retention deleted ``count`` messages."""
        self.retention_deleted.inc(count)

    def rooms_archived(self, count: int) -> None:
        """``count`` rooms are being archived now."""
        self.rooms.set(count)

    def room_admission(self, outcome: str) -> None:
        """Count a room heard of by what became of it."""
        self.room_admissions.labels(outcome=outcome).inc()

    def rooms_on_probation(self, count: int) -> None:
        """``count`` rooms heard of are on probation now."""
        self.room_candidates.set(count)

    def mailbox_refused(self, reason: str) -> None:
        """A mailbox request was refused for ``reason``."""
        self.mailbox_refused_total.labels(reason=reason).inc()

    def mailbox_deposited(self) -> None:
        self.mailbox_deposits.inc()

    def mailbox_fetched(self, entries: int, deleted: int) -> None:
        self.mailbox_served.labels(outcome="fetched").inc(entries)
        self.mailbox_served.labels(outcome="deleted").inc(deleted)

    def mailbox_expired(self, count: int) -> None:
        self.mailbox_served.labels(outcome="expired").inc(count)

    def mailbox_held(self, entries: int, size: int, mailboxes: int) -> None:
        self.mailbox_letters.set(entries)
        self.mailbox_bytes.set(size)
        self.mailboxes.set(mailboxes)
