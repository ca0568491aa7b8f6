"""The chat peer's series, registered in the node's registry (no room or peer labels).

:class:`ChatMetrics` implements the observers of the peer's parts: the pubsub's
:class:`~p2pchat.node.p2p.pubsub.GossipObserver`,
:class:`~p2pchat.roles.peer.inbound.InboundObserver`,
:class:`~p2pchat.roles.peer.outbox.OutboxObserver` and
:class:`~p2pchat.roles.peer.service.ChatObserver`. Only the role wires it; the parts never
import it.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge


class ChatMetrics:
    """Messages published, received and dropped (by reason); rooms; members; store size.

    ``store_size`` (bytes the local store occupies) is read at each scrape.
    """

    def __init__(
        self, registry: CollectorRegistry, store_size: Callable[[], float] | None = None
    ) -> None:
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
            "invalid, unsupported_version, wrong_room, future_timestamp, duplicate, ignored, "
            "muted, removed, not_owner, moderation_full, flood, flood_new_senders).",
            ("reason",),
            registry=registry,
        )
        self.rooms = Gauge("p2pchat_rooms_joined", "Rooms this peer is in.", registry=registry)
        self.room_peers = Gauge(
            "p2pchat_room_peers",
            "Other chat peers subscribed to the current room (its members).",
            registry=registry,
        )
        self.room_infrastructure = Gauge(
            "p2pchat_room_infrastructure_peers",
            "Infrastructure nodes (archivers...) subscribed to the current room: no members, "
            "but they receive its messages.",
            registry=registry,
        )
        self.dm_sent = Counter(
            "p2pchat_dm_sent",
            "Direct messages this peer sent, by outcome (delivered: the recipient acknowledged "
            "it; waiting: not reachable or refused for now, kept to send again; counted at each "
            "attempt).",
            ("outcome",),
            registry=registry,
        )
        self.dm_peer_lookups = Counter(
            "p2pchat_dm_peer_lookups",
            "DHT peer-routing lookups for a direct message's recipient not connected, by outcome "
            "(found: addresses found and one dialled; not_found: nobody knew it, or no address "
            "found answered; failed: the lookup failed or timed out).",
            ("outcome",),
            registry=registry,
        )
        self.dm_received = Counter(
            "p2pchat_dm_received",
            "Direct messages from other peers, decrypted, acknowledged and shown.",
            registry=registry,
        )
        self.dm_dropped = Counter(
            "p2pchat_dm_dropped",
            "Direct messages and key bundles refused on receive, by reason (oversized, "
            "malformed, bad_bundle, undecryptable, session_rate, busy, timeout; for letters "
            "fetched from mailboxes also unsealable).",
            ("reason",),
            registry=registry,
        )
        self.dm_sessions = Gauge(
            "p2pchat_dm_sessions",
            "Olm sessions this peer holds with other peers.",
            registry=registry,
        )
        self.dm_fallback_rotations = Counter(
            "p2pchat_dm_fallback_rotations",
            "Fallback keys replaced in this peer's published key bundle "
            "(chat.dm_fallback_rotation).",
            registry=registry,
        )
        self.dm_history_dropped_total = Counter(
            "p2pchat_dm_history_dropped",
            "Kept direct messages deleted for a bound, by reason (conversation_evicted: the "
            "least recently active conversation, deleted whole past 1000 conversations).",
            ("reason",),
            registry=registry,
        )
        self.name_bindings = Gauge(
            "p2pchat_name_bindings",
            "Names bound to the first PeerId seen using them (trust on first use).",
            registry=registry,
        )
        self.name_bindings_dropped = Counter(
            "p2pchat_name_bindings_dropped",
            "Name bindings not kept, by reason (evicted: the least recently used of an "
            "unverified peer, forgotten for a new one past chat.max_name_bindings; full: every "
            "binding is a verified contact's, the new name was not bound).",
            ("reason",),
            registry=registry,
        )
        self.name_conflicts = Counter(
            "p2pchat_name_conflicts",
            "A known name used by another PeerId than the one it is bound to, by outcome "
            "(key_change: a verified contact's name from another key, always warned; warned; "
            "rate_limited: not shown, over the warning rate).",
            ("outcome",),
            registry=registry,
        )
        self.mail_deposits = Counter(
            "p2pchat_dm_mail_deposits",
            "Sealed letters this peer deposited for an unreachable recipient, one per archiver, "
            "by outcome (ok, refused: the archiver's limits; failed: no answer).",
            ("outcome",),
            registry=registry,
        )
        self.mail_routes = Counter(
            "p2pchat_dm_mail_routes",
            "Throwaway connections this peer opened for its mailbox requests (mailbox.unlinkable), "
            "by outcome (ok; failed: the dial failed, the request is retried later, never from "
            "this peer's own identity).",
            ("outcome",),
            registry=registry,
        )
        self.mail_letters = Counter(
            "p2pchat_dm_mail_fetched",
            "Sealed letters fetched from this peer's mailboxes (new ones, before the checks).",
            registry=registry,
        )
        self.private_dropped = Counter(
            "p2pchat_private_dropped",
            "Private-room messages and room keys dropped on receive, by reason (not_member, "
            "unknown_session, undecryptable, replayed, mismatch, plaintext, malformed, "
            "bad_key, invalid, ignored, too_many_rooms).",
            ("reason",),
            registry=registry,
        )
        self.uc_refused_total = Counter(
            "p2pchat_uc_refused",
            "universal-connectivity input refused, by reason (oversized, malformed, "
            "bad_file_id, wrong_key, no_dialable_address, dial_rate, dial_busy, rate, busy, "
            "timeout, unknown_file, file_too_large).",
            ("reason",),
            registry=registry,
        )
        self.uc_done_total = Counter(
            "p2pchat_uc_events",
            "What the universal-connectivity peer did, by what (chat_received, chat_sent, "
            "file_shared, file_announced, file_served, file_fetched, peer_announced, "
            "peer_dialled, peer_dial_failed).",
            ("what",),
            registry=registry,
        )
        self.store_bytes = Gauge(
            "p2pchat_store_bytes", "Bytes the local store occupies on disk.", registry=registry
        )
        if store_size is not None:
            self.store_bytes.set_function(store_size)

    def message_dropped(self, topic: str, reason: str) -> None:
        """A message failed verification or validation (the pubsub layer, or the inbound
        pipeline's own decoding); ``topic`` is not a label (unbounded)."""
        self.dropped.labels(reason=reason).inc()

    def duplicates_dropped(self, count: int) -> None:
        """``count`` texts of a batch were already in the history."""
        self.dropped.labels(reason="duplicate").inc(count)

    def message_received(self) -> None:
        """A text from another peer was stored and shown."""
        self.received.inc()

    def message_published(self) -> None:
        """This peer published a text."""
        self.published.inc()

    def rooms_joined(self, count: int) -> None:
        """This peer is in ``count`` rooms now."""
        self.rooms.set(count)

    def room_members(self, count: int, infrastructure: int) -> None:
        """``count`` other chat peers and ``infrastructure`` nodes are in the current room."""
        self.room_peers.set(count)
        self.room_infrastructure.set(infrastructure)

    def dm_sent_outcome(self, outcome: str) -> None:
        """A direct message was delivered, or is waiting (not reachable or refused for now)."""
        self.dm_sent.labels(outcome=outcome).inc()

    def dm_peer_lookup(self, outcome: str) -> None:
        """A recipient not connected was looked up through the DHT: found, not_found, failed."""
        self.dm_peer_lookups.labels(outcome=outcome).inc()

    def dm_message_received(self) -> None:
        self.dm_received.inc()

    def dm_refused(self, reason: str) -> None:
        """A direct message or key bundle from another peer was refused for ``reason``."""
        self.dm_dropped.labels(reason=reason).inc()

    def mail_deposited(self, outcome: str) -> None:
        """One deposit of a sealed letter with one archiver, by ``outcome``."""
        self.mail_deposits.labels(outcome=outcome).inc()

    def mail_routed(self, outcome: str) -> None:
        """One throwaway connection for a mailbox request, by ``outcome``."""
        self.mail_routes.labels(outcome=outcome).inc()

    def mail_fetched(self, letters: int) -> None:
        """``letters`` new sealed letters were fetched."""
        self.mail_letters.inc(letters)

    def dm_session_count(self, count: int) -> None:
        self.dm_sessions.set(count)

    def dm_fallback_rotated(self) -> None:
        self.dm_fallback_rotations.inc()

    def name_bindings_count(self, count: int) -> None:
        self.name_bindings.set(count)

    def name_binding_dropped(self, reason: str) -> None:
        self.name_bindings_dropped.labels(reason=reason).inc()

    def name_conflict(self, outcome: str) -> None:
        """A known name from another PeerId: key_change, warned or rate_limited."""
        self.name_conflicts.labels(outcome=outcome).inc()

    def dm_history_dropped(self, reason: str, count: int) -> None:
        self.dm_history_dropped_total.labels(reason=reason).inc(count)

    def private_dropped_reason(self, reason: str) -> None:
        """A private room's message or key was dropped for ``reason``."""
        self.private_dropped.labels(reason=reason).inc()

    def uc_refused(self, reason: str) -> None:
        """universal-connectivity input refused for ``reason``."""
        self.uc_refused_total.labels(reason=reason).inc()

    def uc_done(self, what: str) -> None:
        """The universal-connectivity peer did ``what``."""
        self.uc_done_total.labels(what=what).inc()
