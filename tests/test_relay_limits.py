"""Circuit Relay v2 groundwork: the codec (vectors, the library's schema as a second opinion,
bad input) and the relay's resource accounting, every limit exceeded once."""

from __future__ import annotations

import contextlib
import random

import pytest
from libp2p.relay.circuit_v2.pb import circuit_pb2 as library_pb
from p2pchat.node.wire.circuit import (
    MAX_MESSAGE_BYTES,
    CircuitWireError,
    Connect,
    HopStatus,
    Limit,
    Reservation,
    Reserve,
    Status,
    StopConnect,
    StopStatus,
    decode_hop,
    decode_stop,
    encode,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError
from p2pchat.roles.relay.limits import AllowList, RelayLimits, RelayResources

PEER = bytes.fromhex("00240801122036c9f2d1e6e6e3a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718")
PEER_TEXT = "12D3KooWLcpGQadRha8CsuUByzaGRwXuCdUBM4s4jWLa3a7Bd6RX"


def payload(record: object) -> bytes:
    [only] = FrameDecoder(MAX_MESSAGE_BYTES).feed(encode(record))  # type: ignore[arg-type]
    return only


# --- codec --------------------------------------------------------------------------------------


def test_hop_and_stop_records_round_trip() -> None:
    reservation = Reservation(expire=1_800_000_000, addrs=(b"\x04\x7f\x00\x00\x01",), voucher=b"v")
    for record in (
        Reserve(),
        Connect(PEER),
        HopStatus(Status.OK, reservation, Limit(duration=120, data=131072)),
        HopStatus(Status.NO_RESERVATION),
    ):
        assert decode_hop(payload(record)) == record
    for stop in (StopConnect(PEER, Limit(duration=120)), StopStatus(Status.CONNECTION_FAILED)):
        assert decode_stop(payload(stop)) == stop


def test_the_libraries_schema_reads_our_bytes_and_we_read_its() -> None:
    # py-libp2p's circuit.proto (proto3, same field numbers) as a second implementation.
    theirs = library_pb.HopMessage()
    theirs.ParseFromString(
        payload(HopStatus(Status.OK, Reservation(expire=42), Limit(duration=120, data=7)))
    )
    assert theirs.type == library_pb.HopMessage.STATUS and theirs.status == library_pb.OK
    assert theirs.reservation.expire == 42 and theirs.limit.data == 7
    connect = library_pb.HopMessage(
        type=library_pb.HopMessage.CONNECT, peer=library_pb.PeerId(id=PEER)
    )
    assert decode_hop(connect.SerializeToString()) == Connect(PEER)
    stop = library_pb.StopMessage(type=library_pb.StopMessage.STATUS, status=library_pb.OK)
    assert decode_stop(stop.SerializeToString()) == StopStatus(Status.OK)


def test_bad_relay_messages_get_the_status_the_spec_asks_for() -> None:
    cases = [
        (b"\x08\x07", "missing or unknown message type"),  # type 7 is undefined (not RESERVE!)
        (b"", "missing or unknown message type"),
        (b"\x08\x01", "CONNECT without a peer id"),
        (b"\x08\x02", "STATUS without a known status"),
        (b"\x08\x02\x28\x00", "status UNUSED"),
        (b"\x08\x02\x28\x64\x1a\x00", "reservation without expiry"),
        (b"\x08\x00" + b"\x00" * MAX_MESSAGE_BYTES, "limit"),
        (b"\x0a\xff", "not a relay message"),
    ]
    for data, detail in cases:
        with pytest.raises(CircuitWireError, match=detail) as raised:
            decode_hop(data)
        assert raised.value.status == Status.MALFORMED_MESSAGE


def test_random_bytes_only_ever_raise_the_codecs_own_errors() -> None:
    rng = random.Random(11)
    valid = payload(HopStatus(Status.OK, Reservation(expire=9, addrs=(b"a",)), Limit(1, 2)))
    for _ in range(5000):
        data = bytearray(valid)
        for _ in range(rng.randrange(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        for decode in (decode_hop, decode_stop):
            with contextlib.suppress(CircuitWireError):
                decode(bytes(data))
        with contextlib.suppress(FrameError):
            FrameDecoder(MAX_MESSAGE_BYTES).feed(bytes(data))


# --- limits -------------------------------------------------------------------------------------


def test_go_libp2p_defaults() -> None:
    limits = RelayLimits()
    assert (limits.reservation_ttl, limits.max_reservations, limits.max_reservations_per_ip) == (
        3600.0,
        128,
        8,
    )
    assert (limits.max_circuits, limits.circuit_duration, limits.circuit_data) == (16, 120, 131072)


def test_one_reservation_per_peer_renewed_not_doubled_and_expiring() -> None:
    relay = RelayResources()
    first = relay.reserve("p", "10.0.0.1", now=0)
    assert first.status == Status.OK and first.reason == "new" and first.expire == 3600
    again = relay.reserve("p", "10.0.0.1", now=100)
    assert again.reason == "renewed" and again.expire == 3700 and relay.reservations == 1
    assert relay.has_reservation("p", now=3699) and not relay.has_reservation("p", now=3700)
    assert relay.expire(now=3700) == 1 and relay.reservations == 0


def test_per_ip_and_total_reservation_limits() -> None:
    relay = RelayResources(RelayLimits(max_reservations=10, max_reservations_per_ip=8))
    assert all(relay.reserve(f"a{n}", "10.0.0.1", now=0).status == Status.OK for n in range(8))
    refused = relay.reserve("a8", "10.0.0.1", now=0)
    assert (refused.status, refused.reason) == (Status.RESERVATION_REFUSED, "ip_limit")
    assert relay.reserve("b0", "10.0.0.2", now=0).status == Status.OK
    assert relay.reserve("b1", "10.0.0.2", now=0).status == Status.OK  # 10 in all now
    full = relay.reserve("c0", "10.0.0.3", now=0)
    assert (full.status, full.reason) == (Status.RESERVATION_REFUSED, "total_limit")
    assert relay.reserve("a0", "10.0.0.1", now=1).status == Status.OK  # renewal still fits
    relay.release("b1")
    assert relay.reserve("c0", "10.0.0.3", now=1).status == Status.OK
    assert relay.reserve("x", None, now=1).status == Status.PERMISSION_DENIED


def test_circuits_need_a_reservation_and_are_capped_per_peer() -> None:
    relay = RelayResources(RelayLimits(max_circuits=2))
    assert relay.open_circuit("src", "10.0.0.9", "dst", now=0).status == Status.NO_RESERVATION
    relay.reserve("dst", "10.0.0.1", now=0)
    assert relay.open_circuit("src", "10.0.0.9", "dst", now=1).status == Status.OK
    assert relay.open_circuit("other", "10.0.0.8", "dst", now=1).status == Status.OK
    capped = relay.open_circuit("third", "10.0.0.7", "dst", now=1)
    assert (capped.status, capped.reason) == (Status.RESOURCE_LIMIT_EXCEEDED, "circuit_limit")
    relay.close_circuit("other", "10.0.0.8", "dst")
    assert relay.circuits_of("dst") == 1 and relay.circuits_of("other") == 0
    assert relay.open_circuit("third", "10.0.0.7", "dst", now=2).status == Status.OK
    assert relay.open_circuit("late", "10.0.0.6", "dst", now=3601).status == Status.NO_RESERVATION


def test_the_allow_list_admits_listed_peers_and_networks_only() -> None:
    allow = AllowList.parse([PEER_TEXT, "10.1.0.0/16", "192.0.2.7", "fd00::/8"])
    relay = RelayResources(allow=allow)
    assert relay.reserve(PEER_TEXT, "203.0.113.1", now=0).status == Status.OK
    assert relay.reserve("12D3KooWOther", "10.1.200.3", now=0).status == Status.OK
    assert relay.reserve("12D3KooWThird", "192.0.2.7", now=0).status == Status.OK
    assert relay.reserve("12D3KooWIPv6", "fd12::1", now=0).status == Status.OK
    refused = relay.reserve("12D3KooWStranger", "203.0.113.2", now=0)
    assert (refused.status, refused.reason) == (Status.PERMISSION_DENIED, "not_allowed")
    denied = relay.open_circuit("12D3KooWStranger", "203.0.113.2", PEER_TEXT, now=1)
    assert denied.status == Status.PERMISSION_DENIED
    assert AllowList().admits("anyone", None)


def test_reservations_per_ip_count_an_ipv6_slash_64_as_one_address() -> None:
    # Counted per exact address, one IPv6 host (a /64 of its own) reserved without limit.
    relay = RelayResources(RelayLimits(max_reservations_per_ip=2))
    assert relay.reserve("a", "2001:db8:1:2::1", now=0).status == Status.OK
    assert relay.reserve("b", "2001:db8:1:2::ffff", now=0).status == Status.OK
    third = relay.reserve("c", "2001:db8:1:2:abcd::9", now=0)
    assert (third.status, third.reason) == (Status.RESERVATION_REFUSED, "ip_limit")
    assert relay.reserve("d", "2001:db8:1:3::1", now=0).status == Status.OK  # another /64
    wide = RelayResources(RelayLimits(max_reservations_per_ip=1, ipv4_prefix=24))
    assert wide.reserve("a", "192.0.2.1", now=0).status == Status.OK
    assert wide.reserve("b", "192.0.2.200", now=0).reason == "ip_limit"


def test_circuits_to_one_peer_are_shared_by_requester_and_by_address_group() -> None:
    relay = RelayResources(RelayLimits(max_circuits_per_source=4, max_circuits_per_source_group=8))
    relay.reserve("dst", "10.0.0.1", now=0)
    for _ in range(4):
        assert relay.open_circuit("mallory", "10.6.6.6", "dst", now=1).status == Status.OK
    hog = relay.open_circuit("mallory", "10.6.6.6", "dst", now=1)
    assert (hog.status, hog.reason) == (Status.RESOURCE_LIMIT_EXCEEDED, "source_share")
    for _ in range(4):  # a second PeerId of the same host
        assert relay.open_circuit("mallory2", "10.6.6.6", "dst", now=1).status == Status.OK
    sybil = relay.open_circuit("mallory3", "10.6.6.6", "dst", now=1)
    assert (sybil.status, sybil.reason) == (Status.RESOURCE_LIMIT_EXCEEDED, "group_share")
    # Someone else still reaches the reserved peer: 8 of its 16 circuits are left.
    assert relay.open_circuit("alice", "10.7.7.7", "dst", now=1).status == Status.OK
    assert relay.circuits_of("dst") == 9
    relay.close_circuit("mallory", "10.6.6.6", "dst")
    assert relay.open_circuit("mallory", "10.6.6.6", "dst", now=2).status == Status.OK
    for _ in range(4):
        relay.close_circuit("mallory2", "10.6.6.6", "dst")
    assert relay.circuits_of("mallory2") == 0 and ("mallory2", "dst") not in relay._shares
