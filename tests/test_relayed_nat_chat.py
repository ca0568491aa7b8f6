"""A conversation that stays relayed, through real symmetric NATs (issue #21, must-have 1).

The NAT lab of tests/nat_lab.py with symmetric NAT on both sides (random ports: every hole
punch fails, so the peers stay relayed for as long as they talk): a relay on the lab's
internet with go-libp2p's default limits (a circuit is reset after 2 minutes or 128 KiB per
direction), A behind one NAT holding a reservation on it, B behind the other knowing only A's
circuit address. Both talk at a human pace with a burst (tests/relayed_conversation.py, the
driver the 30-minute benchmark uses too: tests/bench/relayed_nat.py), long enough that the
conversation needs at least two circuits after the first. Asserted: every text delivered
exactly once, in order within each sender, on both sides; the hole punch failed and no direct
connection was made. Needs root, iproute2 and iptables: without them it fails, never skips.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import NodeProcess, node_env, start_node, start_node_in
from tests.nat_lab import Lab, nat_lab
from tests.relayed_conversation import Scenario, circuit_figures, converse, faults, summary
from tests.test_autorelay import logged

# About two minutes of talk: texts of up to 4 KiB at 1/s each way (~2.3 KB/s with framing) and a
# burst of 50 of them (~100 KiB) at 20 s move ~400 KiB each way, over three 128 KiB circuits.
CI_SCENARIO = Scenario(seconds=110, first_burst=20, burst_every=10_000, settle=60)
PUNCH_WAIT = 90.0  # three attempts of up to 5 s each, after identify, on a loaded machine
PEERS = {
    "P2PCHAT_PUBSUB__SENDER_BURST": "100",  # the 50-text burst, with the 1/s pace around it
}


def _peer(
    netns: str, ip: str, path: Path, nodes: list[NodeProcess], *args: str, **env: str
) -> NodeProcess:
    """A ``--json`` peer in ``netns`` whose stdout the conversation driver reads."""
    node = start_node(
        path,
        "--json",
        *args,
        "--listen",
        f"/ip4/{ip}/tcp/0",
        "--metrics",
        "127.0.0.1:0",
        env=node_env(**PEERS, **env),
        netns=netns,
        read_output=False,
    )
    nodes.append(node)
    return node


def symmetric_pair(
    lab: Lab, base: Path, nodes: list[NodeProcess], **relay_env: str
) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    """(relay, A, B) in ``lab``: A (listener) holds a reservation on the relay, B (dialer)
    reaches A through it, and both see each other in the room."""
    relay = start_node_in(
        lab.relay_ns, lab.relay_ip, base / "relay", nodes, "--role", "relay", **relay_env
    )
    relay_addr = next(
        a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/tcp/")
    )
    a = _peer(
        lab.listener_ns,
        lab.listener_ip,
        base / "a",
        nodes,
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay_addr,
    )
    logged(a, "relay reservation", timeout=60, relay=relay.peer_id)
    circuit = f"{relay_addr}/p2p-circuit/p2p/{a.peer_id}"
    b = _peer(lab.dialer_ns, lab.dialer_ip, base / "b", nodes, "--bootstrap", circuit)
    deadline = time.monotonic() + 60
    while a.metric("p2pchat_room_peers") < 1 or b.metric("p2pchat_room_peers") < 1:
        assert time.monotonic() < deadline, "A and B did not meet through the relay"
        time.sleep(0.5)
    return relay, a, b


def test_a_conversation_through_symmetric_nats_loses_nothing_over_many_circuits(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    with nat_lab("symmetric") as lab:
        relay, a, b = symmetric_pair(lab, tmp_path, nodes)
        report = summary(converse(a, b, CI_SCENARIO))
        report.update(circuit_figures(relay, (a, b), report["messages"]))
        print(json.dumps(report))  # the figures, for whoever reads the test's output

        assert report["a_to_b"]["sent"] >= 150 and report["b_to_a"]["sent"] >= 150
        assert not faults(report), (faults(report), report)
        # It stayed relayed: the punch failed (the initiator is A, the side B dialled), and
        # the conversation needed at least two circuits after the first.
        logged(a, "hole punch failed; staying relayed", timeout=PUNCH_WAIT)
        for node in (a, b):
            assert node.metric("libp2p_holepunch_outcomes_total", outcome="success") == 0
        moved = sum(report["next_circuits"].values()) + sum(report["circuit_resets"].values())
        assert moved >= 2, report
        assert report["relayed_connections_opened"] >= 3, report
