"""Catch-up over a relayed connection whose circuit has a data limit (issue #21): history
bigger than what one circuit may carry still all arrives, page by page, over as many circuits
as it takes.

Real processes on loopback: a relay that resets a circuit after 64 KiB per direction; A holds
a reservation on it and 40 messages of 3 KB (120 KB) of history; B knows only A's circuit
address and cannot be dialled (its announced port is dead), so its only way to A is through
the relay, re-dialled by B's bootstrap keep-alive each time the relay resets the circuit.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_archive import AWAY, history_texts
from tests.test_autorelay import relayed_peer, tcp_circuit, unreachable_peer
from tests.test_chat import WAIT, chat_peer, is_message, wait_members

CIRCUIT_DATA = 64 * 1024
MESSAGES = 40
TEXT_BYTES = 3000
CATCH_UP_WAIT = 180.0  # several circuits, each re-dialled with backoff, on a loaded machine


def test_history_bigger_than_a_circuit_arrives_whole_over_several_circuits(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay",
        env=node_env(P2PCHAT_RELAY__CIRCUIT_DATA=str(CIRCUIT_DATA)),
    )
    nodes.append(relay)
    a = relayed_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    circuit = f"{tcp_circuit(a, relay)}/p2p/{a.peer_id}"
    # C fills A's history directly, then leaves: B's one source is A, through the relay.
    c = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    wait_members(c, 1)
    texts = [f"{n:02d} " + "x" * TEXT_BYTES for n in range(MESSAGES)]
    for text in texts:
        c.say(text)
    a.next_event(is_message(texts[-1]), timeout=WAIT)
    assert c.stop() == 0
    time.sleep(AWAY)  # past GossipSub's message cache: B can get them from history only

    b = unreachable_peer(tmp_path / "b", nodes, circuit)
    caught = 0
    deadline = time.monotonic() + CATCH_UP_WAIT
    while caught < MESSAGES:
        left = deadline - time.monotonic()
        assert left > 0, f"caught up {caught} of {MESSAGES} messages"
        caught += b.next_event(lambda e: e["type"] == "caught_up", timeout=left)["count"]
    assert caught == MESSAGES
    assert history_texts(b, MESSAGES) == texts
    # It took more than one circuit: the relay reset at least one for its data limit.
    assert relay.metric("p2pchat_relay_circuit_resets_total", limit="data") >= 1
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") >= 2
    # A relayed connection's end is told as relayed too (it once said "relayed": false).
    b.drain_events()
    closed = [e for e in b.chat if e["type"] == "connection" and e["change"] == "closed"]
    assert closed and all(e["relayed"] for e in closed if e["peer"] == a.peer_id)
