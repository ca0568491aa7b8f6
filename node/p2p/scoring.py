"""GossipSub v1.1 peer scoring for chat rooms, with go-libp2p-pubsub's semantics, cached.

What py-libp2p 0.8.1's ``PeerScorer`` (``libp2p/pubsub/score.py``) really implements, and why
this module replaces its arithmetic (it keeps its interface, which the library's GossipSub
calls):

- P1 (time in mesh) adds 1 per GRAFT, not per second in the mesh; P3 (mesh deliveries) is a
  credit, not the spec's deficit penalty; P4 (invalid messages) is linear, not squared, and its
  weight must be positive to be a penalty (the spec's weights are negative);
- every counter is a ``defaultdict`` of a ``defaultdict``: asking the score of a peer in a
  topic creates its entries, so a peer naming junk topics grows the tables;
- the score is recomputed from scratch for every question, and the library asks several per
  message forwarded (the publish gate of the forwarder, and the gossip, graylist and publish
  gates of every mesh peer): that is trap 19's 7-10% of a relaying peer's CPU;
- everything is forgotten when a peer disconnects: a graylisted peer reconnects clean;
- the IP-colocation factor (P6 in the spec, P7 in the library) counts /24s as well, with a
  made-up lighter weight.

:class:`ChatScorer` instead computes the spec's score (go-libp2p-pubsub ``score.go``):

    score = sum over rooms of topic_weight * (P1 + P2 + P4) + P6 + P7

- P1 ``time_in_mesh_weight * min(seconds in mesh, time_in_mesh_cap)``;
- P2 ``first_deliveries_weight * min(first deliveries, first_deliveries_cap)``, decaying;
- P3 (mesh delivery deficit) is off, as in Lotus's message topic: chat rooms are quiet and
  small, and a deficit penalty unmeshes honest peers of a quiet room;
- P4 ``invalid_weight * invalid**2``, decaying;
- P6 ``ip_colocation_weight * max(0, peers on the IP - threshold)**2`` (loopback exempt:
  peers of one machine, as in the tests, share it);
- P7 ``behaviour_weight * max(0, penalty - threshold)**2``, decaying: GRAFT and control floods,
  messages over a sender's budget (:mod:`~p2pchat.node.p2p.sender_budget`).

Only the rooms we are in are scored (:meth:`ChatScorer.track_topics`); a peer's junk topics
cost nothing. Scores are cached: each peer's is computed at most once per heartbeat, and again
at once after a penalty; every gate the library asks is a dict lookup. A peer that leaves with
a negative score keeps it for ``retain_seconds`` (at most :data:`MAX_RETAINED` peers): it
cannot reconnect clean.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Protocol

from libp2p.peer.id import ID
from libp2p.pubsub.score import PeerScorer, ScoreParams

MAX_RETAINED = 1000  # peers gone with a negative score whose stats are kept
DECAY_TO_ZERO = 0.01  # go-libp2p-pubsub DefaultDecayToZero


def decay_factor(half_life_to_1pct_seconds: float, interval: float = 1.0) -> float:
    """go-libp2p-pubsub's ``ScoreParameterDecay``: the per-``interval`` factor that takes a
    counter to 1% of its value in ``half_life_to_1pct_seconds``."""
    return float(DECAY_TO_ZERO ** (interval / half_life_to_1pct_seconds))


@dataclass(frozen=True, slots=True)
class ScoreSettings:
    """Chat-room score parameters and thresholds. Defaults: Lotus's message topic and
    thresholds (go-libp2p-pubsub's best-known published set, anchors.md), see README."""

    topic_weight: float = 0.05
    time_in_mesh_weight: float = 1 / 3600  # per second in the mesh: +1 after an hour
    time_in_mesh_cap: float = 3600.0
    first_deliveries_weight: float = 1.0
    first_deliveries_cap: float = 1000.0
    first_deliveries_decay: float = field(default_factory=lambda: decay_factor(600))
    invalid_weight: float = -1000.0
    invalid_decay: float = field(default_factory=lambda: decay_factor(3600))
    ip_colocation_weight: float = -100.0
    ip_colocation_threshold: int = 5
    behaviour_weight: float = -10.0
    behaviour_threshold: float = 6.0
    behaviour_decay: float = field(default_factory=lambda: decay_factor(3600))
    gossip_threshold: float = -500.0
    publish_threshold: float = -1000.0
    graylist_threshold: float = -2500.0
    accept_px_threshold: float = 0.0
    retain_seconds: float = 6 * 3600.0


@dataclass(slots=True)
class _TopicStats:
    mesh_since: float | None = None
    first_deliveries: float = 0.0
    invalid: float = 0.0


@dataclass(slots=True)
class _PeerStats:
    topics: dict[str, _TopicStats] = field(default_factory=dict)
    behaviour: float = 0.0
    ip: str | None = None
    gone_at: float | None = None  # disconnected (retained for its negative score)


def _colocation_key(ip: str) -> str | None:
    """The key peers share for P6: the IP, or None for loopback (exempt)."""
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return None
    except ValueError:
        return None
    return ip


class ScoreObserver(Protocol):
    """Told of penalties and of graylisting (for metrics)."""

    def penalised(self, reason: str) -> None:
        """A peer was penalised: ``invalid_message``, ``flood`` or ``control_flood``."""

    def graylisted_changed(self, delta: int) -> None:
        """A peer went under (+1) or back over (-1) the graylist threshold."""


class _NoScoreObserver:
    def penalised(self, reason: str) -> None:
        return None

    def graylisted_changed(self, delta: int) -> None:
        return None


class ChatScorer(PeerScorer):  # type: ignore[misc]
    """The spec's peer score with cached results (see the module's note). The library's
    GossipSub and Pubsub call it through ``PeerScorer``'s interface."""

    def __init__(
        self,
        settings: ScoreSettings,
        clock: Callable[[], float] = time.monotonic,
        observer: ScoreObserver | None = None,
    ) -> None:
        super().__init__(
            ScoreParams(
                publish_threshold=settings.publish_threshold,
                gossip_threshold=settings.gossip_threshold,
                graylist_threshold=settings.graylist_threshold,
                accept_px_threshold=settings.accept_px_threshold,
            )
        )
        self.settings = settings
        self._clock = clock
        self._observer: ScoreObserver = observer or _NoScoreObserver()
        # Set by the pubsub just before the library reports a message it dropped as invalid
        # that is no fault of the forwarder (over its sender's budget): not counted then.
        self.ignore_next_invalid = False
        # The library asks allow_publish about the forwarder of every message it receives
        # (Pubsub.push_msg) as well as about every peer it sends to. The spec's publish
        # threshold is only the latter; receiving is gated by the graylist (go-libp2p's
        # AcceptFrom). The pubsub names the forwarder here just before: that question passes.
        self.receiving_from: ID | None = None
        self._stats: dict[ID, _PeerStats] = {}
        self._retained: OrderedDict[ID, None] = OrderedDict()  # gone, negative, oldest first
        self._scores: dict[ID, float] = {}
        self.graylisted: set[ID] = set()
        self._topics: Collection[str] = ()
        self._by_ip: dict[str, set[ID]] = {}
        self.ip_by_peer: dict[ID, str] = {}

    def track_topics(self, topics: Collection[str]) -> None:
        """Score only these topics (the rooms we are in: a live view, e.g. the mesh's keys)."""
        self._topics = topics

    # -- the score ---------------------------------------------------------------------------

    def _compute(self, peer: ID, stats: _PeerStats, now: float) -> float:
        s = self.settings
        total = 0.0
        for topic_stats in stats.topics.values():
            in_mesh = 0.0
            if topic_stats.mesh_since is not None:
                in_mesh = min(now - topic_stats.mesh_since, s.time_in_mesh_cap)
            topic_score = (
                s.time_in_mesh_weight * in_mesh
                + s.first_deliveries_weight
                * min(topic_stats.first_deliveries, s.first_deliveries_cap)
                + s.invalid_weight * topic_stats.invalid**2
            )
            total += s.topic_weight * topic_score
        key = stats.ip
        if key is not None:
            excess = len(self._by_ip.get(key, ())) - s.ip_colocation_threshold
            if excess > 0:
                total += s.ip_colocation_weight * excess**2
        over = stats.behaviour - s.behaviour_threshold
        if over > 0:
            total += s.behaviour_weight * over**2
        return total

    def _refresh(self, peer: ID, now: float | None = None) -> float:
        stats = self._stats.get(peer)
        when = self._clock() if now is None else now
        value = 0.0 if stats is None else self._compute(peer, stats, when)
        self._scores[peer] = value
        was = peer in self.graylisted
        if value < self.settings.graylist_threshold:
            self.graylisted.add(peer)
            if not was:
                self._observer.graylisted_changed(1)
        elif was:
            self.graylisted.discard(peer)
            self._observer.graylisted_changed(-1)
        return value

    def peer_score(self, peer: ID) -> float:
        """The peer's score (cached; 0 for a peer never seen)."""
        value = self._scores.get(peer)
        return self._refresh(peer) if value is None else value

    def score(self, peer: ID, topics: list[str]) -> float:
        return self.peer_score(peer)

    def topic_score(self, peer: ID, topic: str) -> float:
        return self.peer_score(peer)

    def allow_publish(self, peer: ID, topics: list[str]) -> bool:
        if peer == self.receiving_from:
            self.receiving_from = None
            return peer not in self.graylisted
        return self.peer_score(peer) >= self.settings.publish_threshold

    def allow_gossip(self, peer: ID, topics: list[str]) -> bool:
        return self.peer_score(peer) >= self.settings.gossip_threshold

    def is_graylisted(self, peer: ID, topics: list[str] | None = None) -> bool:
        if peer not in self._scores:
            self._refresh(peer)
        return peer in self.graylisted

    def allow_px_from(self, peer: ID, topics: list[str]) -> bool:
        return self.peer_score(peer) >= self.settings.accept_px_threshold

    # -- events ------------------------------------------------------------------------------

    def _peer(self, peer: ID) -> _PeerStats:
        stats = self._stats.get(peer)
        if stats is None:
            stats = self._stats[peer] = _PeerStats()
        elif stats.gone_at is not None:  # back within retain_seconds: its score with it
            stats.gone_at = None
            self._retained.pop(peer, None)
        return stats

    def _topic(self, peer: ID, topic: str) -> _TopicStats | None:
        if topic not in self._topics:
            return None  # junk topics are not scored (nor stored)
        stats = self._peer(peer)
        topic_stats = stats.topics.get(topic)
        if topic_stats is None:
            topic_stats = stats.topics[topic] = _TopicStats()
        return topic_stats

    def on_join_mesh(self, peer: ID, topic: str) -> None:
        topic_stats = self._topic(peer, topic)
        if topic_stats is not None and topic_stats.mesh_since is None:
            topic_stats.mesh_since = self._clock()

    def on_leave_mesh(self, peer: ID, topic: str) -> None:
        stats = self._stats.get(peer)
        topic_stats = stats.topics.get(topic) if stats is not None else None
        if topic_stats is not None:
            topic_stats.mesh_since = None

    def on_first_delivery(self, peer: ID, topic: str) -> None:
        topic_stats = self._topic(peer, topic)
        if topic_stats is not None:
            # A credit: the cached score catches up at the next heartbeat.
            topic_stats.first_deliveries += 1.0

    def on_mesh_delivery(self, peer: ID, topic: str) -> None:
        return None  # P3 is off (see the module's note)

    def on_invalid_message(self, peer: ID, topic: str) -> None:
        if self.ignore_next_invalid:
            self.ignore_next_invalid = False
            return
        topic_stats = self._topic(peer, topic)
        if topic_stats is not None:
            topic_stats.invalid += 1.0
            self._observer.penalised("invalid_message")
            self._refresh(peer)

    def penalize_behavior(self, peer: ID, amount: float = 1.0) -> None:
        """One misbehaviour (P7 counts offences: the library's amounts are not the spec's)."""
        self.add_behaviour(peer, 1.0, "control_flood")

    def add_behaviour(self, peer: ID, amount: float, reason: str) -> None:
        """Add ``amount`` to the peer's behaviour penalty counter (P7) and rescore it."""
        self._peer(peer).behaviour += amount
        self._observer.penalised(reason)
        self._refresh(peer)

    def penalize_graft_flood(self, peer: ID, amount: float = 10.0) -> None:
        self.add_behaviour(peer, 1.0, "control_flood")

    def penalize_iwant_spam(self, peer: ID, amount: float = 5.0) -> None:
        self.add_behaviour(peer, 1.0, "control_flood")

    def penalize_ihave_spam(self, peer: ID, amount: float = 5.0) -> None:
        self.add_behaviour(peer, 1.0, "control_flood")

    def penalize_equivocation(self, peer: ID, amount: float = 100.0) -> None:
        self.add_behaviour(peer, 1.0, "equivocation")

    def add_peer_ip(self, peer: ID, ip_str: str) -> None:
        self.remove_peer_ip(peer)
        key = _colocation_key(ip_str)
        stats = self._peer(peer)
        stats.ip = key
        if key is None:
            return
        self.ip_by_peer[peer] = key
        sharing = self._by_ip.setdefault(key, set())
        sharing.add(peer)
        for other in sharing:  # every peer on that IP moved
            self._refresh(other)

    def remove_peer_ip(self, peer: ID) -> None:
        key = self.ip_by_peer.pop(peer, None)
        if key is None:
            return
        sharing = self._by_ip.get(key)
        if sharing is not None:
            sharing.discard(peer)
            if not sharing:
                del self._by_ip[key]
            for other in sharing:
                self._refresh(other)
        stats = self._stats.get(peer)
        if stats is not None:
            stats.ip = None

    def remove_peer(self, peer: ID) -> None:
        """The peer disconnected: forget it, unless its score is negative (then kept for
        ``retain_seconds``, so that it cannot reconnect clean)."""
        self.remove_peer_ip(peer)
        stats = self._stats.get(peer)
        if stats is None:
            self._forget(peer)
            return
        for topic_stats in stats.topics.values():
            topic_stats.mesh_since = None
        if self._refresh(peer) < 0:
            stats.gone_at = self._clock()
            self._retained[peer] = None
            self._retained.move_to_end(peer)
            while len(self._retained) > MAX_RETAINED:
                oldest, _ = self._retained.popitem(last=False)
                self._forget(oldest)
        else:
            self._forget(peer)

    def _forget(self, peer: ID) -> None:
        self._stats.pop(peer, None)
        self._scores.pop(peer, None)
        if peer in self.graylisted:
            self.graylisted.discard(peer)
            self._observer.graylisted_changed(-1)

    def on_heartbeat(self, dt_seconds: float = 1.0) -> None:
        """Decay every counter (go: once per DecayInterval, 1 s; the heartbeat is 1 s), drop
        the retained peers past ``retain_seconds`` and the rooms we left, and rescore all."""
        s = self.settings
        now = self._clock()
        for peer, stats in list(self._stats.items()):
            for topic in [topic for topic in stats.topics if topic not in self._topics]:
                del stats.topics[topic]
            for topic_stats in stats.topics.values():
                topic_stats.first_deliveries = _decayed(
                    topic_stats.first_deliveries, s.first_deliveries_decay
                )
                topic_stats.invalid = _decayed(topic_stats.invalid, s.invalid_decay)
            stats.behaviour = _decayed(stats.behaviour, s.behaviour_decay)
            if stats.gone_at is not None and (
                now - stats.gone_at > s.retain_seconds or self._refresh(peer, now) >= 0
            ):
                self._retained.pop(peer, None)
                self._forget(peer)
                continue
            self._refresh(peer, now)

    def stats_of(self, peer: ID) -> dict[str, float]:
        """The peer's counters and score (for tests and debugging)."""
        stats = self._stats.get(peer)
        if stats is None:
            return {"score": 0.0}
        return {
            "score": self.peer_score(peer),
            "behaviour": stats.behaviour,
            "invalid": sum(t.invalid for t in stats.topics.values()),
            "first_deliveries": sum(t.first_deliveries for t in stats.topics.values()),
        }

    def __len__(self) -> int:
        """Peers with stats now (connected or retained)."""
        return len(self._stats)


def _decayed(value: float, factor: float) -> float:
    value *= factor
    return 0.0 if value < DECAY_TO_ZERO else value


__all__ = ["ChatScorer", "ScoreObserver", "ScoreSettings", "decay_factor"]
