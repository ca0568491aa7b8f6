"""Hole punching (DCUtR) through real NAT: network namespaces, veth links, iptables masquerade.

A listener behind one NAT holds a reservation on a relay; a dialer behind another NAT reaches it
through the relay, and the two try to punch through both NATs. Port-preserving NAT: they end
on a direct connection, the relayed one is closed and chat goes on directly. Symmetric NAT
(random ports): every attempt fails, they stay relayed, and chat still works.
See tests/nat_lab.py for the topology.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, start_node_in
from tests.nat_lab import Lab, nat_lab
from tests.test_autorelay import CHAT_FRIENDLY, chat_both_ways, connection_kind, logged
from tests.test_chat import wait_members

PUNCH_WAIT = 90.0  # three attempts of up to 5 s each, after identify, on a loaded machine


@pytest.fixture(params=["port-preserving", "symmetric"])
def lab(request: pytest.FixtureRequest) -> Iterator[tuple[str, Lab]]:
    with nat_lab(request.param) as built:
        yield request.param, built


def test_hole_punch_through_nat(
    tmp_path: Path, nodes: list[NodeProcess], lab: tuple[str, Lab]
) -> None:
    nat, net = lab
    relay = start_node_in(
        net.relay_ns, net.relay_ip, tmp_path / "relay", nodes, "--role", "relay", **CHAT_FRIENDLY
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{net.relay_ip}/tcp/")
    )
    listener = start_node_in(
        net.listener_ns,
        net.listener_ip,
        tmp_path / "listener",
        nodes,
        "--json",
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay_addr,
    )
    listener.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    circuit = f"{relay_addr}/p2p-circuit/p2p/{listener.peer_id}"
    logged(listener, "relay reservation", relay=relay.peer_id)
    # The dialer knows nothing but the listener's address through the relay.
    dialer = start_node_in(
        net.dialer_ns, net.dialer_ip, tmp_path / "dialer", nodes, "--json", "--bootstrap", circuit
    )
    dialer.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    wait_members(listener, 1)
    wait_members(dialer, 1)

    if nat == "port-preserving":
        punched = logged(listener, "hole punch succeeded", timeout=PUNCH_WAIT, peer=dialer.peer_id)
        assert punched["side"] == "initiator"
        logged(dialer, "hole punch succeeded", timeout=PUNCH_WAIT, peer=listener.peer_id)
        logged(listener, "relayed connection closed; chat is direct", timeout=PUNCH_WAIT)
        expected = "direct"
        outcome = "success"
    else:
        failed = logged(listener, "hole punch failed; staying relayed", timeout=PUNCH_WAIT)
        assert (failed["attempts"], failed["outcome"]) == (3, "failed")
        expected = "relayed"
        outcome = "failed"

    # Chat works both ways, on whichever connection the peers ended up with.
    chat_both_ways(listener, dialer, f"hello across {nat} NAT", "and back")
    assert connection_kind(dialer, listener.peer_id) == expected
    for node, side in ((listener, "initiator"), (dialer, "receiver")):
        assert node.metric("libp2p_holepunch_outcomes_total", side=side, outcome=outcome) == 1, side
        assert node.metric("p2pchat_holepunch_protocol_errors_total", side=side) == 0
    if nat == "port-preserving":
        # Each side retired the relayed connection once, and heard the other directly after.
        for node in (listener, dialer):
            assert _handovers(node) == {"not_needed": 1} or _handovers(node) == {"resumed": 1}


def _handovers(node: NodeProcess) -> dict[str, float]:
    """``node``'s p2pchat_relayed_handover_total by outcome (those above 0), once one is
    counted (the side that did not close the relayed connection counts after its grace)."""
    deadline = time.monotonic() + 30
    while True:
        counts = {
            outcome: node.metric("p2pchat_relayed_handover_total", outcome=outcome)
            for outcome in ("not_needed", "resumed", "failed")
        }
        if any(counts.values()) or time.monotonic() > deadline:
            return {outcome: count for outcome, count in counts.items() if count}
        time.sleep(0.2)
