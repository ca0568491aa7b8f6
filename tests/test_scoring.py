"""The chat-room peer score (sans-IO parts of node/p2p/scoring.py): the spec's arithmetic with
the published parameters, cached, only for rooms we are in, kept for a peer gone negative."""

from __future__ import annotations

from libp2p.peer.id import ID
from p2pchat.node.p2p.scoring import ChatScorer, ScoreSettings, decay_factor

from tests.peer_ids import fresh_peer_id


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Events:
    def __init__(self) -> None:
        self.penalties: list[str] = []
        self.graylisted = 0

    def penalised(self, reason: str) -> None:
        self.penalties.append(reason)

    def graylisted_changed(self, delta: int) -> None:
        self.graylisted += delta


def scorer(**settings: float) -> tuple[ChatScorer, Clock, Events, set[str]]:
    clock, events, rooms = Clock(), Events(), {"room"}
    s = ChatScorer(ScoreSettings(**settings), clock=clock, observer=events)  # type: ignore[arg-type]
    s.track_topics(rooms)
    return s, clock, events, rooms


_PEERS: dict[int, ID] = {}


def a_peer(n: int = 0) -> ID:
    if n not in _PEERS:
        _PEERS[n] = ID.from_base58(fresh_peer_id())
    return _PEERS[n]


def test_decay_factor_takes_a_counter_to_one_percent_in_the_given_time() -> None:
    assert abs(decay_factor(600) ** 600 - 0.01) < 1e-9


def test_invalid_messages_grow_quadratically_and_graylist_after_eight() -> None:
    s, _, events, _ = scorer()
    peer = a_peer()
    s.on_invalid_message(peer, "room")
    assert s.peer_score(peer) == 0.05 * -1000  # topic weight x invalid weight x 1**2
    assert s.allow_gossip(peer, ["room"])
    for _ in range(3):
        s.on_invalid_message(peer, "room")
    assert not s.allow_gossip(peer, ["room"])  # -800 < gossip threshold -500
    assert not s.is_graylisted(peer, ["room"])
    for _ in range(4):
        s.on_invalid_message(peer, "room")
    assert s.is_graylisted(peer, ["room"])  # 8**2 x 50 = 3200 > 2500
    assert events.graylisted == 1 and events.penalties.count("invalid_message") == 8


def test_junk_topics_are_neither_scored_nor_stored() -> None:
    s, _, events, _ = scorer()
    peer = a_peer()
    for n in range(1000):
        s.on_invalid_message(peer, f"junk-{n}")
        s.on_first_delivery(peer, f"junk-{n}")
        s.on_join_mesh(peer, f"junk-{n}")
    assert s.peer_score(peer) == 0 and len(s) == 0 and not events.penalties


def test_first_deliveries_are_a_capped_decaying_credit_seen_at_the_next_heartbeat() -> None:
    s, _, _, _ = scorer()
    peer = a_peer()
    assert s.peer_score(peer) == 0
    for _ in range(5000):
        s.on_first_delivery(peer, "room")
    assert s.peer_score(peer) == 0  # cached until the heartbeat
    s.on_heartbeat()
    assert 0 < s.peer_score(peer) <= 0.05 * 1000  # capped at 1000 deliveries
    for _ in range(3600):
        s.on_heartbeat()
    assert s.peer_score(peer) == 0  # decayed to nothing


def test_behaviour_penalty_has_a_threshold_then_grows_quadratically() -> None:
    s, _, _, _ = scorer()
    peer = a_peer()
    for _ in range(6):
        s.add_behaviour(peer, 1.0, "flood")
    assert s.peer_score(peer) == 0  # under the threshold: an honest peer's odd slip
    for _ in range(16):
        s.add_behaviour(peer, 1.0, "flood")
    assert s.is_graylisted(peer)  # (22 - 6)**2 x -10 = -2560


def test_ip_colocation_penalises_past_the_threshold_and_exempts_loopback() -> None:
    s, _, _, _ = scorer(ip_colocation_threshold=2)
    peers = [a_peer(n) for n in range(5)]
    for peer in peers:
        s.add_peer_ip(peer, "203.0.113.7")
    assert s.peer_score(peers[0]) == -100 * (5 - 2) ** 2
    s.remove_peer_ip(peers[4])
    assert s.peer_score(peers[0]) == -100 * (4 - 2) ** 2
    local, _, _, _ = scorer(ip_colocation_threshold=1)
    for n in range(10):
        local.add_peer_ip(a_peer(n), "127.0.0.1")
    assert local.peer_score(a_peer(0)) == 0


def test_a_negative_peer_keeps_its_score_when_it_reconnects() -> None:
    s, clock, _, _ = scorer()
    bad, good = a_peer(1), a_peer(2)
    for _ in range(8):
        s.on_invalid_message(bad, "room")
    s.on_first_delivery(good, "room")
    s.remove_peer(bad)
    s.remove_peer(good)
    assert len(s) == 1  # only the negative one is retained
    assert s.is_graylisted(bad)  # reconnecting does not clean it
    clock.now += 7 * 3600
    s.on_heartbeat()
    assert len(s) == 0 and not s.is_graylisted(bad)


def test_the_flood_verdict_is_not_counted_as_an_invalid_message() -> None:
    s, _, events, _ = scorer()
    peer = a_peer()
    s.ignore_next_invalid = True
    s.on_invalid_message(peer, "room")
    assert s.peer_score(peer) == 0 and not events.penalties
    s.on_invalid_message(peer, "room")
    assert s.peer_score(peer) < 0
