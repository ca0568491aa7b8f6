"""Two chat peers behind symmetric NATs (ops/compose/nat.yml with random ports, real
containers): they meet through the bootstrap node and chat through the relay; every hole-punch
attempt fails, as it must, and they stay relayed with chat still working; nothing on the
internet can dial them.

The topology is up and its peers have met before the first test (see conftest.py).
"""

from __future__ import annotations

from tests.nat.checks import (
    chat_over,
    check_isolation,
    logged,
    logged_by_either,
    mapped_listen_port,
    met_through_the_relay,
    peers,
)
from tests.nat.lab import Topology

# The topology, up and met, comes from conftest.py's `lab` fixture, by this NAT type.
NAT = "symmetric"


def test_peers_behind_different_nats_chat_through_the_relay(lab: Topology) -> None:
    a, b = met_through_the_relay(lab)
    for node in (a, b):  # each holds a slot on the relay, found unreachable by AutoNAT
        assert node.metric("p2pchat_autorelay_reservations") == 1
    relayed = chat_over(lab, "relayed", "hello through the relay", "and back through it")
    assert relayed > 0  # the relay carried the chat


def test_hole_punching_fails_through_symmetric_nat_and_chat_stays_relayed(
    lab: Topology,
) -> None:
    a, b = peers(lab)
    initiator, failed = logged_by_either(
        (a, b), "hole punch failed; staying relayed", side="initiator"
    )
    assert (failed["side"], failed["attempts"], failed["outcome"]) == ("initiator", 3, "failed")
    receiver = b if initiator is a else a
    assert initiator.metric("libp2p_holepunch_outcomes_total", side="initiator", outcome="failed")
    for node in (a, b):
        assert node.metric("libp2p_holepunch_outcomes_total", outcome="success") == 0
        assert node.metric("p2pchat_holepunch_protocol_errors_total") == 0
    assert not logged(receiver, "hole punch succeeded")

    # Proof from the NATs: a dial from a peer's listen port, as a punch dials, leaves its
    # router from another, random port, which the other side cannot predict.
    for router, peer in (("router-a", "peer-a"), ("router-b", "peer-b")):
        assert mapped_listen_port(lab, peer, router) != lab.port(peer), router

    relayed = chat_over(lab, "relayed", "still here after the failed punch", "still relayed")
    assert relayed > 0


def test_nothing_on_the_internet_can_dial_a_peer(lab: Topology) -> None:
    check_isolation(lab)
