"""Two chat peers behind port-preserving NATs (ops/compose/nat.yml, real containers): they
meet through the bootstrap node and the relay, hole punching makes their connection direct
and chat goes on over it; nothing on the internet can dial them; a peer that was away gets
what it missed from the archiver when it comes back.

The topology is up and its peers have met before the first test (see conftest.py).
"""

from __future__ import annotations

import time

from tests.nat.checks import (
    PUNCH_WAIT,
    chat_over,
    check_isolation,
    logged,
    logged_by_either,
    mapped_listen_port,
    mappings,
    met_through_the_relay,
    peers,
)
from tests.nat.lab import Topology
from tests.test_archive import AWAY, caught_up, history_texts
from tests.test_chat import WAIT, is_message

# The topology, up and met, comes from conftest.py's `lab` fixture, by this NAT type.
NAT = "port-preserving"


def test_hole_punching_makes_the_relayed_connection_direct(lab: Topology) -> None:
    a, b = met_through_the_relay(lab)

    initiator, punched = logged_by_either((a, b), "hole punch succeeded", side="initiator")
    assert punched["side"] == "initiator"
    receiver = b if initiator is a else a
    deadline = time.monotonic() + PUNCH_WAIT
    while not logged(receiver, "hole punch succeeded", peer=initiator.peer_id, side="receiver"):
        assert time.monotonic() < deadline, "the receiver never saw the punch succeed"
        time.sleep(0.2)
    logged_by_either((a, b), "relayed connection closed; chat is direct")
    for node, side in ((initiator, "initiator"), (receiver, "receiver")):
        assert node.metric("libp2p_holepunch_outcomes_total", side=side, outcome="success") == 1
        assert node.metric("libp2p_holepunch_outcomes_total", outcome="failed") == 0
        assert node.metric("p2pchat_holepunch_protocol_errors_total") == 0
    # The relayed connection is gone: the relay saw it close.
    assert lab.metric("relay", "libp2p_relaysvc_connections_total", type="closed") >= 1

    # Chat goes on over the direct connection; the relay carries none of it.
    relayed = chat_over(lab, "direct", "hello through the hole", "and back, directly")
    assert relayed == 0

    # Proof from the NATs themselves: each mapped its peer's listen port to the same port
    # outside, for the direct connection and for any dial from it (what made the punch work).
    for router, peer in (("router-a", "peer-a"), ("router-b", "peer-b")):
        port = lab.port(peer)
        assert (port, port) in mappings(lab, router, peer), (router, mappings(lab, router, peer))
        assert mapped_listen_port(lab, peer, router) == port, router


def test_nothing_on_the_internet_can_dial_a_peer(lab: Topology) -> None:
    check_isolation(lab)


def test_a_peer_that_was_away_catches_up_from_the_archiver(lab: Topology) -> None:
    a, b = peers(lab)
    bob, archiver = b.peer_id, lab.public_id("archiver")
    a.say("before bob left")
    b.next_event(is_message("before bob left"), timeout=WAIT)
    archived = lab.metric("archiver", "p2pchat_archive_inserted_total")
    connected = lab.metric("archiver", "p2pchat_connected_peers")
    assert b.stop() == 0  # docker stop: SIGTERM, a clean exit
    # Bob is away once the others have noticed: alice saw him leave the room and the archiver
    # lost his connection.
    a.next_event(lambda e: e["type"] == "peer" and e["change"] == "left" and e["peer"] == bob)
    deadline = time.monotonic() + WAIT
    while lab.metric("archiver", "p2pchat_connected_peers") >= connected:
        assert time.monotonic() < deadline, "the archiver never noticed bob leave"
        time.sleep(0.2)

    missed = [f"while bob was away {n}" for n in range(1, 21)]
    for text in missed:
        a.say(text)
    a.next_event(is_message(missed[-1]), timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while lab.metric("archiver", "p2pchat_archive_inserted_total") < archived + len(missed):
        assert time.monotonic() < deadline, "the archiver did not store what alice said"
        time.sleep(0.2)
    time.sleep(AWAY)  # longer than GossipSub keeps messages for peers that come back

    b.start()
    event = caught_up(b)
    assert event["count"] == len(missed)  # all of it through catch-up, nothing live
    assert archiver in event["sources"]
    assert b.metric("p2pchat_history_rejected_total") == 0
    texts = history_texts(b, len(missed) + 1)
    assert texts[-len(missed) - 1 :] == ["before bob left", *missed]  # in order, once each
