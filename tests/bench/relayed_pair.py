"""Two p2pchat peers that reach each other only through a p2pchat relay, on 127.0.0.1: the
setup the relayed benches share (tests.bench.relayed_chat, tests.bench.dm, tests.bench.relay).

A holds a reservation on the relay; B knows only A's circuit address. Both announce a port
nothing listens on and punch no holes, so every byte between them crosses the relay, over as
many circuits as the relay's limits make it take.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_autorelay import dead_port, tcp_circuit

FORM_TIMEOUT = 60.0  # seconds for the pair to see each other in the room


def relayed_pair(
    base: Path,
    nodes: list[NodeProcess],
    *,
    relay_env: Mapping[str, str] | None = None,
    peer_env: Mapping[str, str] | None = None,
    b_discards_output: bool = False,
) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    """(relay, A, B), each started under ``base`` and appended to ``nodes``, once A and B see
    each other in the room.

    ``relay_env``: the relay's settings (``P2PCHAT_*``; e.g. chat-friendly circuits);
    ``peer_env``: both peers' extra settings. A's output is left for the caller to read
    (``read_output=False``); B's too, or thrown away with ``b_discards_output`` (a bench that
    reads only A's).

    Raises:
        RuntimeError: the pair did not form within :data:`FORM_TIMEOUT`.
    """
    relay = start_node(base / "relay", "--role", "relay", env=node_env(**(relay_env or {})))
    nodes.append(relay)
    unreachable = {
        "P2PCHAT_HOLEPUNCH__ENABLED": "false",
        **(peer_env or {}),
    }
    a = start_node(
        base / "a",
        "--json",
        env=node_env(
            P2PCHAT_AUTORELAY__MODE="on",
            P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
            P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
            **unreachable,
        ),
        read_output=False,
    )
    nodes.append(a)
    circuit = f"{tcp_circuit(a, relay)}/p2p/{a.peer_id}"
    b = start_node(
        base / "b",
        "--json",
        "--bootstrap",
        circuit,
        env=node_env(
            P2PCHAT_AUTORELAY__MODE="off",
            P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
            **unreachable,
        ),
        read_output=False,
        discard_output=b_discards_output,
    )
    nodes.append(b)
    deadline = time.monotonic() + FORM_TIMEOUT
    while a.metric("p2pchat_room_peers") < 1 or b.metric("p2pchat_room_peers") < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the relayed pair did not form")
        time.sleep(0.2)
    return relay, a, b
