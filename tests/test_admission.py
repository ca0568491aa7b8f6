"""Inbound connection admission (node/p2p/admission.py), sans-IO: every rule on its own; and
the rate limit of the refusal log (node/p2p/inbound.py)."""

from __future__ import annotations

import pytest
from p2pchat.node.p2p.admission import (
    DEADLINE,
    PER_IP,
    PER_PEER,
    TOTAL_FULL,
    TRANSIENT_FULL,
    Admission,
    AdmissionLimits,
    Ticket,
)
from p2pchat.node.p2p.inbound import LOG_EVERY, refusal_log


def admitted(admission: Admission, ip: str, now: float = 0.0) -> Ticket:
    decision = admission.admit(ip, now)
    assert decision.ticket is not None, decision.reason
    return decision.ticket


def test_one_address_group_gets_per_ip_slots_and_no_more() -> None:
    admission = Admission(AdmissionLimits(per_ip=3))
    tickets = [admitted(admission, "192.0.2.7") for _ in range(3)]
    assert admission.admit("192.0.2.7", 0.0).reason == PER_IP
    admitted(admission, "192.0.2.8")  # another address is not affected
    admission.release(tickets[0])
    admitted(admission, "192.0.2.7")  # a closed connection gives its slot back


def test_ipv6_addresses_count_by_their_slash_64() -> None:
    admission = Admission(AdmissionLimits(per_ip=2))
    admitted(admission, "2001:db8:1:2::1")
    admitted(admission, "2001:db8:1:2:ffff::9")
    assert admission.admit("2001:db8:1:2:abcd::5", 0.0).reason == PER_IP
    admitted(admission, "2001:db8:1:3::1")  # the next /64 is another group
    # An IPv4-mapped address counts as its IPv4 address.
    admitted(admission, "192.0.2.1")
    admitted(admission, "::ffff:192.0.2.1")
    assert admission.admit("192.0.2.1", 0.0).reason == PER_IP


def test_prefixes_are_configurable() -> None:
    admission = Admission(AdmissionLimits(per_ip=1, ipv4_prefix=24, ipv6_prefix=48))
    admitted(admission, "198.51.100.1")
    assert admission.admit("198.51.100.200", 0.0).reason == PER_IP
    admitted(admission, "2001:db8:aa::1")
    assert admission.admit("2001:db8:aa:ffff::1", 0.0).reason == PER_IP


def test_loopback_of_this_machine_is_exempt_from_per_ip_only() -> None:
    admission = Admission(AdmissionLimits(per_ip=1, transient=100))
    for _ in range(5):
        admitted(admission, "127.0.0.1")
        admitted(admission, "::1")
    admitted(admission, "127.0.0.2")  # other loopback addresses are other hosts
    assert admission.admit("127.0.0.2", 0.0).reason == PER_IP
    strict = Admission(AdmissionLimits(per_ip=1, per_ip_exempt=()))
    admitted(strict, "127.0.0.1")
    assert strict.admit("127.0.0.1", 0.0).reason == PER_IP


def test_unreadable_addresses_share_one_group() -> None:
    admission = Admission(AdmissionLimits(per_ip=2))
    admitted(admission, "")
    admitted(admission, "not an address")
    assert admission.admit(None, 0.0).reason == PER_IP


def test_a_peer_named_by_the_handshake_gets_per_peer_connections() -> None:
    admission = Admission(AdmissionLimits(per_peer=2, per_ip=100))
    first, second, third = (admitted(admission, f"192.0.2.{n}") for n in (1, 2, 3))
    assert admission.named(first, "peer-a") is None
    assert admission.named(second, "peer-a") is None
    assert admission.named(third, "peer-a") == PER_PEER
    assert third.released and admission.total == 2  # refused: its slot is free again
    admission.release(first)
    fourth = admitted(admission, "192.0.2.4")
    assert admission.named(fourth, "peer-a") is None


def test_transient_slots_go_to_the_newcomer_from_the_address_holding_the_fewest() -> None:
    admission = Admission(AdmissionLimits(transient=4, per_ip=8))
    flood = [admitted(admission, "203.0.113.9", now=float(n)) for n in range(3)]
    other = admitted(admission, "198.51.100.4", now=3.0)
    # Full. The flooding address may not push anyone out: it holds the most already.
    assert admission.admit("203.0.113.9", 4.0).reason == TRANSIENT_FULL
    # Nor may the other address, which would hold 2 then (the flood holds 3): it may.
    decision = admission.admit("198.51.100.4", 5.0)
    assert decision.ticket is not None and decision.culled == (flood[0],)
    # An honest newcomer from a fresh address takes the flood's oldest handshake.
    decision = admission.admit("192.0.2.1", 6.0)
    assert decision.ticket is not None and decision.culled == (flood[1],)
    assert flood[0].released and flood[1].released and not other.released
    assert admission.transient == 4


def test_equal_groups_give_up_their_oldest_handshake() -> None:
    admission = Admission(AdmissionLimits(transient=3))
    tickets = [admitted(admission, f"192.0.2.{n}", now=float(n)) for n in range(3)]
    decision = admission.admit("192.0.2.100", 10.0)
    assert decision.culled == (tickets[0],)


def test_established_connections_leave_the_transient_slots_and_are_never_culled() -> None:
    admission = Admission(AdmissionLimits(transient=2, max_connections=3, per_ip=8))
    established = admitted(admission, "203.0.113.9")
    admission.named(established, "peer-a")
    admission.established(established)
    assert admission.transient == 0 and admission.total == 1
    admitted(admission, "203.0.113.9")
    admitted(admission, "203.0.113.9")
    # All 3 slots are taken, 2 of them transient from the newcomer's own address: refused.
    assert admission.admit("203.0.113.9", 0.0).reason == TOTAL_FULL
    # A newcomer from elsewhere takes a transient slot; the established one stays.
    decision = admission.admit("192.0.2.1", 0.0)
    assert decision.ticket is not None and len(decision.culled) == 1
    assert not established.released and decision.culled[0] is not established


def test_release_is_idempotent_and_counts_return_to_zero() -> None:
    admission = Admission(AdmissionLimits())
    tickets = [admitted(admission, f"2001:db8::{n}") for n in range(5)]
    admission.named(tickets[0], "peer-a")
    admission.established(tickets[1])
    for ticket in tickets + tickets:
        admission.release(ticket)
    assert admission.total == 0 and admission.transient == 0
    assert admission.group_count("2001:db8::/64") == 0
    # After a release, naming or establishing it changes nothing.
    assert admission.named(tickets[2], "peer-b") is not None
    admission.established(tickets[3])
    assert admission.total == 0 and admission.transient == 0


@pytest.mark.parametrize("groups", [1, 5, 40])
def test_under_any_flood_a_fresh_address_gets_a_slot(groups: int) -> None:
    """The no-lock-out property: while some address holds two or more transient slots, a
    newcomer from a fresh address is admitted."""
    limits = AdmissionLimits(transient=32, max_connections=300, per_ip=8)
    admission = Admission(limits)
    for n in range(1000):  # the flood: as many as it can, from ``groups`` addresses
        admission.admit(f"10.0.{n % groups}.1", float(n))
    assert admission.transient <= limits.transient
    assert all(admission.group_count(f"10.0.{g}.1/32") <= limits.per_ip for g in range(groups))
    if groups < limits.transient:
        decision = admission.admit("192.0.2.1", 2000.0)
        assert decision.ticket is not None


def test_refusals_are_logged_as_a_warning_at_most_every_ten_seconds_per_reason() -> None:
    warnings: list[dict[str, object]] = []

    class Log:
        def warning(self, event: str, **fields: object) -> None:
            warnings.append({"event": event, **fields})

    now = [0.0]
    refusals = refusal_log(Log(), clock=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(100):
        refusals.refused(PER_IP, group="203.0.113.9/32")
    refusals.refused(DEADLINE, group="203.0.113.9/32")  # another reason has its own budget
    now[0] = LOG_EVERY
    refusals.refused(PER_IP, group="203.0.113.9/32")
    assert len(warnings) == 3, warnings
    assert warnings[2]["reason"] == PER_IP
    assert warnings[2]["since_last_logged"] == 99
