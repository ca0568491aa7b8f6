"""The DCUtR codec and the address rules of hole punching, as pure functions."""

from __future__ import annotations

import pytest
from p2pchat.node.p2p.direct import MAX_PUNCH_ADDRS, punch_addrs, tcp_addrs, worth_a_direct_dial
from p2pchat.node.wire import dcutr_pb2
from p2pchat.node.wire.dcutr import (
    MAX_ADDRS,
    MAX_MESSAGE_BYTES,
    Connect,
    DcutrWireError,
    Sync,
    decode,
    encode,
)
from p2pchat.node.wire.framing import FrameDecoder


def payload(framed: bytes) -> bytes:
    (only,) = FrameDecoder(MAX_MESSAGE_BYTES).feed(framed)
    return only


def test_messages_round_trip_with_the_specs_type_values() -> None:
    connect = Connect((b"\x04\x01\x02\x03\x04\x06\x0f\xa1",))
    assert decode(payload(encode(connect))) == connect
    assert decode(payload(encode(Sync()))) == Sync()
    wire = dcutr_pb2.HolePunch.FromString(payload(encode(Sync())))
    assert wire.type == 300  # the spec's SYNC; CONNECT is 100
    assert dcutr_pb2.HolePunch.FromString(payload(encode(connect))).type == 100


def test_the_frame_is_uvarint_length_prefixed() -> None:
    framed = encode(Sync())
    assert framed[0] == len(framed) - 1  # py-libp2p 0.8.1's DCUtR sends no prefix


@pytest.mark.parametrize(
    "data",
    [b"\xff\xfe\x00", b"\x08\x07", b"", b"\x12\x03ab"],
    ids=["garbage", "unknown type", "no type", "truncated addr"],
)
def test_malformed_messages_are_refused(data: bytes) -> None:
    with pytest.raises(DcutrWireError):
        decode(data)


def test_oversized_messages_are_refused_and_addresses_capped() -> None:
    with pytest.raises(DcutrWireError, match="limit"):
        decode(bytes(MAX_MESSAGE_BYTES + 1))
    many = Connect(tuple(bytes([4, 10, 0, 0, n, 6, 0, 1]) for n in range(40)))
    decoded = decode(payload(encode(many)))
    assert isinstance(decoded, Connect)
    assert len(decoded.addrs) == MAX_ADDRS


def test_tcp_addrs_keep_plain_dialable_tcp_only() -> None:
    assert tcp_addrs(
        [
            "/ip4/10.0.0.1/tcp/4001/p2p/12D3KooWabc",
            "/ip4/10.0.0.1/tcp/4001",  # duplicate once /p2p/ is dropped
            "/ip4/10.0.0.1/tcp/4001/ws",
            "/ip4/10.0.0.9/tcp/1/p2p/R/p2p-circuit/p2p/X",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip4/10.0.0.1/udp/4001/quic-v1",
            "/dns4/example.org/tcp/4001",
            "/ip4/10.0.0.1/tcp/0",
            "/ip6/::1/tcp/4002",
        ]
    ) == ["/ip4/10.0.0.1/tcp/4001", "/ip6/::1/tcp/4002"]


def test_only_public_and_loopback_addresses_are_dialled_before_a_punch() -> None:
    # A NATed peer's LAN addresses lead nowhere from another network (or to one of our own
    # LAN's hosts): go-libp2p skips them; loopback is a peer on this host.
    assert worth_a_direct_dial(
        [
            "/ip4/192.168.1.7/tcp/4001",
            "/ip4/10.0.0.1/tcp/4001",
            "/ip4/100.64.0.9/tcp/4001",  # carrier-grade NAT space
            "/ip4/203.0.113.5/tcp/4001",  # documentation range: not global either
            "/ip4/127.0.0.1/tcp/4002",
            "/ip4/8.8.8.8/tcp/4001/p2p/12D3KooWabc",
            "/ip6/fd00::1/tcp/4001",
            "/ip6/2606:4700::1/tcp/4001",
            "/ip4/8.8.8.8/tcp/4001/ws",
        ]
    ) == ["/ip4/127.0.0.1/tcp/4002", "/ip4/8.8.8.8/tcp/4001", "/ip6/2606:4700::1/tcp/4001"]


def test_punch_addrs_predict_the_nat_mapping_of_the_listen_port() -> None:
    # The relay saw us at the NAT's IP with the ephemeral port of our dial to it; a hole punch
    # leaves from the listen port, which a port-preserving NAT maps to the same port.
    assert punch_addrs(
        observed=["/ip4/198.51.100.7/tcp/53012", "/ip4/198.51.100.7/tcp/53999"],
        listen=["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/tcp/4001/ws", "/ip6/::/tcp/4002"],
        advertised=["/ip4/192.168.1.5/tcp/4001/p2p/12D3KooWabc"],
    ) == ["/ip4/198.51.100.7/tcp/4001", "/ip4/192.168.1.5/tcp/4001"]


def test_punch_addrs_without_observations_offer_the_advertised_ones_capped() -> None:
    advertised = [f"/ip4/10.1.0.{n}/tcp/4001" for n in range(1, 40)]
    assert punch_addrs([], ["/ip4/0.0.0.0/tcp/4001"], advertised) == advertised[:MAX_PUNCH_ADDRS]
    assert punch_addrs([], [], []) == []
