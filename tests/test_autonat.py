"""AutoNAT: the codecs, the server's rules, and real processes told the truth about their
ports (py-libp2p's own AutoNAT dials back over the existing connection and calls every port
open)."""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

import multiaddr
import pytest
from p2pchat.node.autonat import Throttle, dialable_at
from p2pchat.node.wire.autonat import (
    MAX_ADDRS,
    MAX_MESSAGE_BYTES,
    AutoNatWireError,
    DialRequest,
    DialResponse,
    Status,
    decode_request,
    decode_response,
    encode,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError, encode_uvarint, frame

from tests.conftest import NodeProcess, start_node_in, wait_metric
from tests.nat_lab import nat_lab
from tests.test_autorelay import logged
from tests.test_chat import chat_peer
from tests.test_dht import bootstrap_node

PEER = bytes.fromhex("0024080112201c4c2d45b6c6b6d6e2d5a8c2e3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4")


# --- framing ------------------------------------------------------------------------------------


def test_frames_survive_any_split_of_the_stream() -> None:
    payloads = [b"", b"a", b"x" * 300, b"y" * 5000]
    stream = b"".join(frame(p) for p in payloads)
    for step in (1, 2, 7, 64, len(stream)):
        decoder = FrameDecoder(max_frame_bytes=8192)
        got: list[bytes] = []
        for start in range(0, len(stream), step):
            got += decoder.feed(stream[start : start + step])
        assert got == payloads and decoder.buffered == 0


def test_a_length_bomb_is_refused_before_anything_is_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=4096)
    with pytest.raises(FrameError, match="4096"):
        decoder.feed(encode_uvarint(4 * 1024**3))  # "a 4 GB frame follows"
    with pytest.raises(FrameError, match="malformed"):
        FrameDecoder(max_frame_bytes=1 << 70).feed(b"\xff" * 11)


def test_random_bytes_only_ever_raise_the_decoders_own_errors() -> None:
    rng = random.Random(7)
    valid = encode(DialRequest(PEER, (multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1").to_bytes(),)))
    for _ in range(5000):
        data = bytearray(rng.randbytes(rng.randrange(0, 80)))
        if rng.random() < 0.5:  # mutate a valid message rather than pure noise
            data = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(FrameError):
            FrameDecoder(max_frame_bytes=MAX_MESSAGE_BYTES).feed(bytes(data))
        for decode in (decode_request, decode_response):
            with contextlib.suppress(AutoNatWireError):
                decode(bytes(data[1:]))


# --- messages -----------------------------------------------------------------------------------


def test_messages_round_trip_and_match_the_spec_bytes() -> None:
    addr = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/4001").to_bytes()
    request = DialRequest(PEER, (addr,))
    [payload] = FrameDecoder(MAX_MESSAGE_BYTES).feed(encode(request))
    # type DIAL (field 1 = 0), dial (field 2) { peer (field 1) { id (1), addrs (2) } }
    assert payload.startswith(b"\x08\x00\x12")
    assert decode_request(payload) == request
    response = DialResponse(Status.E_DIAL_ERROR, "dial-back failed")
    [payload] = FrameDecoder(MAX_MESSAGE_BYTES).feed(encode(response))
    assert payload.startswith(b"\x08\x01\x1a")  # type DIAL_RESPONSE, dialResponse (field 3)
    assert decode_response(payload) == response


def test_bad_messages_are_refused_and_address_lists_bounded() -> None:
    with pytest.raises(AutoNatWireError, match="expected a DIAL message"):
        decode_request(FrameDecoder(MAX_MESSAGE_BYTES).feed(encode(DialResponse(Status.OK)))[0])
    with pytest.raises(AutoNatWireError, match="without a peer id"):
        decode_request(b"\x08\x00\x12\x00")
    with pytest.raises(AutoNatWireError, match="unknown status"):
        decode_response(b"\x08\x01\x1a\x02\x08\x07")  # status 7: undefined, not OK
    with pytest.raises(AutoNatWireError, match="missing"):
        decode_response(b"\x08\x01\x1a\x00")
    with pytest.raises(AutoNatWireError, match="limit"):
        decode_request(b"\x00" * (MAX_MESSAGE_BYTES + 1))
    many = tuple(b"\x04\x7f\x00\x00\x01\x06" + bytes([n, 0]) for n in range(MAX_ADDRS * 2))
    [payload] = FrameDecoder(MAX_MESSAGE_BYTES).feed(encode(DialRequest(PEER, many)))
    assert len(decode_request(payload).addrs) == MAX_ADDRS


# --- the server's rules -------------------------------------------------------------------------


def _bin(text: str) -> bytes:
    return multiaddr.Multiaddr(text).to_bytes()


def test_only_tcp_addresses_at_the_observed_ip_are_dialled() -> None:
    addrs = (
        _bin("/ip4/10.0.0.5/tcp/4002/ws"),
        _bin("/ip4/10.0.0.5/tcp/4001"),
        _bin("/ip4/10.0.0.5/udp/4001/quic-v1"),
        b"\xff\xfe junk",
        _bin("/ip4/10.0.0.5/tcp/4001"),
        _bin("/dns4/example.org/tcp/4003"),
        _bin(
            "/ip4/10.0.0.5/tcp/4011/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit"
        ),
    )
    # Plain TCP before WebSocket; no duplicates, no QUIC, DNS, circuit or junk.
    assert dialable_at(addrs, "10.0.0.5") == ["/ip4/10.0.0.5/tcp/4001", "/ip4/10.0.0.5/tcp/4002/ws"]


def test_a_claimed_address_on_another_ip_is_tried_at_the_observed_ip() -> None:
    # A peer behind NAT claims only private addresses; its ports are tried at the IP it is
    # observed at (go-libp2p's rule), never at the claimed IP: nobody else is dialled.
    addrs = (
        _bin("/ip4/192.168.1.7/tcp/4101/ws"),
        _bin("/ip4/192.168.1.7/tcp/4101"),
        _bin("/ip4/127.0.0.1/tcp/4101"),
        _bin("/ip4/203.0.113.1/tcp/4001"),
    )
    assert dialable_at(addrs, "203.0.113.1") == [
        "/ip4/203.0.113.1/tcp/4001",  # claimed at the observed IP: first
        "/ip4/203.0.113.1/tcp/4101",
        "/ip4/203.0.113.1/tcp/4101/ws",
    ]
    assert dialable_at((_bin("/ip4/192.168.1.7/tcp/4101"),), "2001:db8::1") == [
        "/ip6/2001:db8::1/tcp/4101"
    ]


def test_requests_are_throttled_per_peer_and_in_all() -> None:
    throttle = Throttle(per_peer=3, total=5, period=60)
    assert [throttle.allow("a", now=0) for _ in range(4)] == [True, True, True, False]
    assert [throttle.allow(p, now=1) for p in "bcd"] == [True, True, False]  # 5 in all
    assert throttle.allow("a", now=61)  # a new window


def test_requests_are_throttled_per_address_group_so_one_host_cannot_spend_the_window() -> None:
    # The audit: 12 PeerIds x 3 requests spent go-libp2p's 30 a minute for everyone.
    throttle = Throttle(per_peer=3, total=30, period=60, per_group=8)
    spent = [
        throttle.refusal(f"sybil{n}", "192.0.2.7/32", now=0) for n in range(12) for _ in range(3)
    ]
    assert spent.count(None) == 8 and set(spent) == {None, "group_limit"}
    assert throttle.refusal("alice", "2001:db8::/64", now=1) is None  # someone else still can
    assert throttle.refusal("alice", "2001:db8::/64", now=1) is None
    assert throttle.refusal("alice", "2001:db8::/64", now=1) is None
    assert throttle.refusal("alice", "2001:db8::/64", now=1) == "peer_limit"
    for n in range(19):
        throttle.refusal(f"p{n}", f"198.51.100.{n}/32", now=2)
    assert throttle.refusal("late", "203.0.113.1/32", now=2) == "total_limit"


# --- real processes -----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again once the socket is


def info_reachability(node: NodeProcess) -> str:
    node.say("/info")
    info = node.next_event(lambda e: e["type"] == "output" and e["command"] == "info")
    return str(info["data"]["reachability"])


def test_an_open_port_is_public_and_a_closed_one_private(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    boot = bootstrap_node(tmp_path / "boot", nodes)
    open_peer = chat_peer(tmp_path / "open", nodes, "--bootstrap", boot.addr())
    # Listens on a port of its own but tells everyone a port nobody listens on: what a peer
    # behind a NAT without port forwarding looks like from outside.
    hidden = chat_peer(
        tmp_path / "hidden",
        nodes,
        "--bootstrap",
        boot.addr(),
        "--announce",
        f"/ip4/127.0.0.1/tcp/{closed_port()}",
    )
    wait_metric(open_peer, "libp2p_autonat_reachability_status", 1)
    wait_metric(hidden, "libp2p_autonat_reachability_status", 2)
    assert info_reachability(open_peer) == "public"
    assert info_reachability(hidden) == "private"
    assert hidden.metric("p2pchat_autonat_probes_total", outcome="e_dial_error") >= 1
    assert boot.metric("p2pchat_autonat_dialbacks_total", outcome="ok") >= 1
    assert boot.metric("p2pchat_autonat_dialbacks_total", outcome="e_dial_error") >= 1
    # "private" is itself the proof that the dial-back needed a new connection: reusing the
    # hidden peer's open connection to the bootstrap node (the library's way) would have
    # succeeded. Nothing ever reached the hidden peer's advertised port:
    assert hidden.metric("libp2p_swarm_connections_opened_total", dir="inbound") == 0


def test_a_peer_behind_nat_learns_it_is_private_and_reserves_a_relay_slot(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # Behind a NAT a peer knows only its private address. The server tries that port at the
    # address it sees the peer at (the NAT's, which drops the dial), so the peer learns it is
    # private and, with auto-relay left on "auto", takes a slot on the relay. A server that
    # refused such a peer left it "unknown" for good, never seeking a relay.
    with nat_lab("port-preserving") as lab:
        hub = start_node_in(
            lab.relay_ns, lab.relay_ip, tmp_path / "hub", nodes, "--role", "bootstrap,relay"
        )
        hub_addr = next(a for a in hub.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/"))
        peer = start_node_in(
            lab.dialer_ns, lab.dialer_ip, tmp_path / "peer", nodes, "--bootstrap", hub_addr
        )
        wait_metric(peer, "libp2p_autonat_reachability_status", 2)
        logged(peer, "relay reservation", relay=hub.peer_id)
        assert hub.metric("p2pchat_autonat_dialbacks_total", outcome="e_dial_error") >= 1
        assert peer.metric("libp2p_swarm_connections_opened_total", dir="inbound") == 0
