"""Hole punching over QUIC through the NAT lab (DCUtR with ``/udp/N/quic-v1`` addresses; #20).

As tests/test_holepunch.py, with both peers listening on TCP and QUIC (on their LAN address)
and the lab's routers dropping TCP between each other (``block_tcp_between_nats``), so a direct
connection can only be a punched QUIC one: the routers translate UDP with iptables' MASQUERADE
(conntrack) and drop unsolicited packets, as they do TCP. (The peers listen on TCP too because
they learn their NAT's address from what the relay observes of their TCP connection to it: the
library keeps an observation only for a listen address of the same transport.) Port-preserving
NAT: the peer that dialled through the relay dials the other's predicted QUIC address from its
QUIC listen port while the other sends it random packets from its own (node/p2p/quic_punch.py);
they end on a direct QUIC connection and chat over it. Symmetric NAT (random ports): every
attempt fails, they stay relayed, and chat still works. See tests/nat_lab.py for the topology.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.p2p.direct import (
    MAX_IMPLIED,
    implied_quic_addrs,
    punch_addrs,
    punch_targets,
    quic_addrs,
    with_listen_ports,
)

from tests.conftest import NodeProcess, start_node_in
from tests.nat_lab import Lab, block_tcp_between_nats, nat_lab
from tests.test_autorelay import CHAT_FRIENDLY, chat_both_ways, connection_kind, logged
from tests.test_chat import wait_members
from tests.test_holepunch import PUNCH_WAIT


def test_quic_addrs_keep_plain_dialable_quic_only() -> None:
    assert quic_addrs(
        [
            "/ip4/10.0.0.1/udp/4001/quic-v1/p2p/12D3KooWabc",
            "/ip4/10.0.0.1/udp/4001/quic-v1",  # duplicate once /p2p/ is dropped
            "/ip4/10.0.0.1/udp/4001/quic",  # draft-29
            "/ip4/10.0.0.1/udp/4001/quic-v1/webtransport",
            "/ip4/0.0.0.0/udp/4001/quic-v1",
            "/ip4/10.0.0.1/udp/0/quic-v1",
            "/ip4/10.0.0.1/tcp/4001",
            "/ip4/10.0.0.9/tcp/1/p2p/R/p2p-circuit/p2p/X",
            "/ip6/::1/udp/4002/quic-v1",
        ]
    ) == ["/ip4/10.0.0.1/udp/4001/quic-v1", "/ip6/::1/udp/4002/quic-v1"]
    assert punch_targets(["/ip4/1.2.3.4/udp/1/quic-v1", "/ip4/1.2.3.4/tcp/1"]) == [
        "/ip4/1.2.3.4/tcp/1",
        "/ip4/1.2.3.4/udp/1/quic-v1",
    ]


def test_punch_addrs_predict_the_quic_listen_port_at_the_observed_ip() -> None:
    # Observed over TCP (the connection to the relay), the NAT's IP is the same for UDP: a
    # punch from the QUIC listen port is mapped to that port by a port-preserving NAT.
    assert punch_addrs(
        observed=["/ip4/198.51.100.7/tcp/53012"],
        listen=["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"],
        advertised=["/ip4/192.168.1.5/udp/4001/quic-v1"],
    ) == [
        "/ip4/198.51.100.7/tcp/4001",
        "/ip4/198.51.100.7/udp/4001/quic-v1",
        "/ip4/192.168.1.5/udp/4001/quic-v1",
    ]


def test_a_tcp_only_connect_gets_the_quic_listen_port_at_its_ip() -> None:
    # go-libp2p observed over TCP only: its CONNECT names its NAT's TCP address; its identify
    # named its QUIC listen port at its LAN address.
    theirs = ["/ip4/11.77.0.2/tcp/33127"]
    known = ["/ip4/10.77.1.2/udp/33373/quic-v1"]
    assert with_listen_ports(theirs, known) == [
        "/ip4/11.77.0.2/tcp/33127",
        "/ip4/11.77.0.2/udp/33373/quic-v1",
    ]
    assert with_listen_ports(theirs, []) == theirs
    # Nothing is implied across address families, and what the peer said stays first.
    assert with_listen_ports(["/ip6/2001:db8::1/tcp/1"], known) == ["/ip6/2001:db8::1/tcp/1"]


def test_implied_addresses_are_bounded_whatever_a_peer_names() -> None:
    many = [f"/ip4/11.0.{i // 250}.{i % 250}/tcp/1" for i in range(1000)]
    many += [f"/ip4/10.0.0.1/udp/{port}/quic-v1" for port in range(1000, 2000)]
    implied = implied_quic_addrs(many)
    assert len(implied) == MAX_IMPLIED * MAX_IMPLIED
    assert implied[0] == "/ip4/11.0.0.0/udp/1000/quic-v1"


@pytest.fixture(params=["port-preserving", "symmetric"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, Lab]]:
    with nat_lab(request.param) as built:
        yield request.param, built


def quic_peer(
    netns: str, ip: str, path: Path, nodes: list[NodeProcess], *args: str, **env: str
) -> NodeProcess:
    """A p2pchat peer in ``netns`` listening on TCP and QUIC at ``ip``."""
    node = start_node_in(netns, ip, path, nodes, "--json", *args, quic=True, **env)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def test_hole_punch_over_quic_through_nat(
    tmp_path: Path, nodes: list[NodeProcess], lab: tuple[str, Lab]
) -> None:
    nat, net = lab
    block_tcp_between_nats(net)
    relay = start_node_in(
        net.relay_ns, net.relay_ip, tmp_path / "relay", nodes, "--role", "relay", **CHAT_FRIENDLY
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{net.relay_ip}/tcp/")
    )
    listener = quic_peer(
        net.listener_ns,
        net.listener_ip,
        tmp_path / "listener",
        nodes,
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay_addr,
    )
    circuit = f"{relay_addr}/p2p-circuit/p2p/{listener.peer_id}"
    logged(listener, "relay reservation", relay=relay.peer_id)
    dialer = quic_peer(
        net.dialer_ns, net.dialer_ip, tmp_path / "dialer", nodes, "--bootstrap", circuit
    )
    wait_members(listener, 1)
    wait_members(dialer, 1)

    if nat == "port-preserving":
        punched = logged(listener, "hole punch succeeded", timeout=PUNCH_WAIT, peer=dialer.peer_id)
        assert punched["side"] == "initiator"
        logged(dialer, "hole punch succeeded", timeout=PUNCH_WAIT, peer=listener.peer_id)
        # How the relayed connection is retired (at once, or kept while the peer's pubsub
        # stream is on it) is node/relay_handover.py's business, tested on its own.
        expected, outcome = "direct", "success"
    else:
        failed = logged(listener, "hole punch failed; staying relayed", timeout=PUNCH_WAIT)
        assert (failed["attempts"], failed["outcome"]) == (3, "failed")
        expected, outcome = "relayed", "failed"

    chat_both_ways(listener, dialer, f"hello over quic across {nat} NAT", "and back")
    assert connection_kind(dialer, listener.peer_id) == expected
    for node, side in ((listener, "initiator"), (dialer, "receiver")):
        assert node.metric("libp2p_holepunch_outcomes_total", side=side, outcome=outcome) == 1, side
        assert node.metric("p2pchat_holepunch_protocol_errors_total", side=side) == 0
    if nat == "port-preserving":
        # The direct connection is QUIC: dialled by the dialer, accepted by the listener.
        assert dialer.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
        assert (
            listener.metric(
                "libp2p_swarm_connections_opened_total", transport="quic", dir="inbound"
            )
            == 1
        )
