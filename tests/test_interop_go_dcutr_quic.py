"""Hole punching over QUIC with go-libp2p through the NAT lab (#20 must-have 2).

As tests/test_interop_go_dcutr.py, with both peers listening on TCP and QUIC and the lab's
routers dropping TCP between each other (``block_tcp_between_nats``): the direct connection can
only be a punched QUIC one. go-libp2p punches QUIC from its listen socket (quic-go reuses it)
and sends random packets from it on the other side, as p2pchat does (node/p2p/quic_punch.py).
go-libp2p's CONNECT names no QUIC address here (it offers only public addresses, and it learnt
its NAT's address for TCP only: the relay saw it over TCP), so p2pchat punches the QUIC listen
port its identify named at the IP its CONNECT names (``direct.with_listen_ports``).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, start_node_in
from tests.nat_lab import Lab, block_tcp_between_nats
from tests.test_autorelay import CHAT_FRIENDLY, connection_kind, logged
from tests.test_chat import is_message, wait_members
from tests.test_holepunch_quic import quic_peer
from tests.test_interop_go import GoPeer, go_peers
from tests.test_interop_go_dcutr import _is_connection, lab, serves_dcutr
from tests.test_interop_js_dcutr import PUNCH_WAIT, WAIT, _open_relayed, _total

__all__ = ["go_peers", "lab"]


def _go(ip: str, netns: str) -> GoPeer:
    return GoPeer("-holepunch", "-listen", f"/ip4/{ip}/tcp/0,/ip4/{ip}/udp/0/quic-v1", netns=netns)


@pytest.mark.parametrize(
    "go_role",
    [
        pytest.param("go-dialer", marks=pytest.mark.interop("go", "quic", "dcutr-they-dial")),
        pytest.param("go-listener", marks=pytest.mark.interop("go", "quic", "dcutr-we-dial")),
    ],
)
def test_hole_punch_over_quic_between_p2pchat_and_go_libp2p(
    lab: Lab,  # first: built first, torn down after every process is gone
    tmp_path: Path,
    nodes: list[NodeProcess],
    go_peers: list[GoPeer],
    go_role: str,
) -> None:
    block_tcp_between_nats(lab)
    relay = start_node_in(
        lab.relay_ns, lab.relay_ip, tmp_path / "relay", nodes, "--role", "relay", **CHAT_FRIENDLY
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/tcp/")
    )
    if go_role == "go-listener":
        go = _go(lab.listener_ip, lab.listener_ns)
        go_peers.append(go)
        circuit = go.run(f"reserve {relay_addr}", "reserved")["circuit"]
        serves_dcutr(go)
        py = quic_peer(lab.dialer_ns, lab.dialer_ip, tmp_path / "py", nodes, "--bootstrap", circuit)
        py_ns, py_side = lab.dialer_ns, "receiver"
    else:
        py = quic_peer(
            lab.listener_ns,
            lab.listener_ip,
            tmp_path / "py",
            nodes,
            P2PCHAT_AUTORELAY__MODE="on",
            P2PCHAT_AUTORELAY__RELAYS=relay_addr,
        )
        logged(py, "relay reservation", relay=relay.peer_id)
        go = _go(lab.dialer_ip, lab.dialer_ns)
        go_peers.append(go)
        go.run(f"dial {relay_addr}/p2p-circuit/p2p/{py.peer_id}", "dialed")
        py_ns, py_side = lab.listener_ns, "initiator"
    go.next(_is_connection("open", py.peer_id, relayed=True))

    punched = logged(py, "hole punch succeeded", timeout=PUNCH_WAIT, peer=go.peer_id)
    assert punched["side"] == py_side
    direct = go.next(_is_connection("open", py.peer_id, relayed=False), PUNCH_WAIT)
    assert direct["connection"]["addr"].startswith(f"/ip4/{lab.outside_ip(py_ns)}/udp/")
    assert "/quic-v1" in direct["connection"]["addr"]

    wait_members(py, 1)
    py.say("hello go, over quic")
    assert go.message("hello go, over quic")["from"] == py.peer_id
    go.wait_topic_peer(py.peer_id)
    go.run("say hello p2pchat, over quic", "published")
    got = py.next_event(is_message("hello p2pchat, over quic"), timeout=WAIT)
    assert got["sender"] == go.peer_id

    deadline = time.monotonic() + WAIT
    while _open_relayed(py) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert connection_kind(py, go.peer_id) == "direct"
    assert _total(py, "libp2p_holepunch_outcomes_total", side=py_side, outcome="success") == 1
    assert _total(py, "p2pchat_holepunch_protocol_errors_total") == 0
