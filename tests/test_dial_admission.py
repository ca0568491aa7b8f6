"""Outbound dial and relayed inbound admission (node/p2p/dial_admission.py), sans-IO: every
rule on its own."""

from __future__ import annotations

from p2pchat.node.p2p.dial_admission import (
    DIALS_IN_FLIGHT,
    DIALS_PER_PEER,
    DIRECT_IN_FLIGHT,
    OUTBOUND_PER_PEER,
    OUTBOUND_TOTAL,
    RELAYED_PER_PEER,
    RELAYED_PER_RELAY,
    RELAYED_TOTAL,
    DialLimits,
    Dials,
    Relayed,
    Slot,
)


def slot(decision: Slot | str) -> Slot:
    assert isinstance(decision, Slot), decision
    return decision


def test_defaults_are_go_libp2p_s() -> None:
    limits = DialLimits()
    assert (limits.max_outbound, limits.outbound_per_peer) == (128, 8)
    assert (limits.dials_in_flight, limits.dials_per_peer) == (160, 8)
    assert limits.direct_in_flight == 32
    assert (limits.relayed, limits.relayed_per_relay, limits.relayed_per_peer) == (64, 16, 2)


def test_dials_in_flight_are_bounded_in_all_and_given_back() -> None:
    dials = Dials(DialLimits(dials_in_flight=3, max_outbound=100))
    taken = [slot(dials.begin(f"peer{i}", 0, 0)) for i in range(3)]
    assert dials.begin("peer9", 0, 0) == DIALS_IN_FLIGHT
    dials.done(taken[0])
    dials.done(taken[0])  # idempotent
    assert dials.in_flight == 2
    slot(dials.begin("peer9", 0, 0))


def test_dials_to_one_peer_are_bounded_and_others_unaffected() -> None:
    dials = Dials(DialLimits(dials_per_peer=2, outbound_per_peer=100))
    first = slot(dials.begin("a", 0, 0))
    slot(dials.begin("a", 0, 0))
    assert dials.begin("a", 0, 0) == DIALS_PER_PEER
    slot(dials.begin("b", 0, 0))
    dials.done(first)
    slot(dials.begin("a", 0, 0))


def test_direct_dials_take_only_their_share_of_the_slots() -> None:
    dials = Dials(DialLimits(direct_in_flight=2, max_outbound=10))
    first = slot(dials.begin("a", 0, 0, direct=True))
    slot(dials.begin("b", 0, 0, direct=True))
    assert dials.begin("c", 0, 0, direct=True) == DIRECT_IN_FLIGHT
    slot(dials.begin("c", 0, 0))  # the node's own dial still gets one
    dials.done(first)
    slot(dials.begin("c", 0, 0, direct=True))


def test_outbound_total_counts_established_and_in_flight() -> None:
    dials = Dials(DialLimits(max_outbound=5))
    assert dials.begin("x", 5, 0) == OUTBOUND_TOTAL  # five open already
    slot(dials.begin("x", 3, 0))
    slot(dials.begin("y", 3, 0))
    assert dials.begin("z", 3, 0) == OUTBOUND_TOTAL  # three open, two dialling


def test_outbound_per_peer_counts_established_and_in_flight() -> None:
    dials = Dials(DialLimits(outbound_per_peer=2, dials_per_peer=8))
    assert dials.begin("a", 2, 2) == OUTBOUND_PER_PEER
    slot(dials.begin("a", 1, 1))
    assert dials.begin("a", 1, 1) == OUTBOUND_PER_PEER
    slot(dials.begin("b", 1, 0))


def test_relayed_per_peer_per_relay_and_total() -> None:
    relayed = Relayed(DialLimits(relayed=4, relayed_per_relay=3, relayed_per_peer=1))
    first = slot(relayed.admit("relay1", "a"))
    assert relayed.admit("relay2", "a") == RELAYED_PER_PEER  # through any relay
    slot(relayed.admit("relay1", "b"))
    slot(relayed.admit("relay1", "c"))
    assert relayed.admit("relay1", "d") == RELAYED_PER_RELAY
    slot(relayed.admit("relay2", "d"))
    assert relayed.admit("relay3", "e") == RELAYED_TOTAL
    relayed.release(first)
    relayed.release(first)  # idempotent
    assert relayed.total == 3
    slot(relayed.admit("relay2", "a"))


def test_relayed_zero_refuses_every_circuit() -> None:
    relayed = Relayed(DialLimits(relayed=0))
    assert relayed.admit("relay", "a") == RELAYED_TOTAL
