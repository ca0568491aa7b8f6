"""A node dials every transport a peer may listen on, whatever it listens on itself (#20).

py-libp2p builds a host's transports from its listen addresses only: a node listening on TCP
alone failed every dial of a ``/ws`` address with "No supported transport found" (an outside
js-libp2p peer listening on WebSocket could not be reached), and a node listening on ``/ws``
alone could not dial TCP. Real processes, each listening on one transport only, chat both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess, start_node

WAIT = 60


def peer(path: Path, nodes: list[NodeProcess], listen: str, *args: str) -> NodeProcess:
    node = start_node(path, "--json", "--listen", listen, *args)
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def is_message(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "message" and e["text"] == text


@pytest.mark.parametrize(
    ("dialler_listens", "listener_listens", "transport"),
    [
        ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws", "ws"),
        ("/ip4/127.0.0.1/tcp/0/ws", "/ip4/127.0.0.1/tcp/0", "tcp"),
    ],
    ids=["tcp-only-dials-ws", "ws-only-dials-tcp"],
)
def test_a_node_dials_a_transport_it_does_not_listen_on(
    tmp_path: Path,
    nodes: list[NodeProcess],
    dialler_listens: str,
    listener_listens: str,
    transport: str,
) -> None:
    listener = peer(tmp_path / "listener", nodes, listener_listens)
    assert all(("/ws" in a) == (transport == "ws") for a in listener.ready["advertised"])
    dialler = peer(
        tmp_path / "dialler", nodes, dialler_listens, "--bootstrap", listener.addr(transport)
    )
    opened = dialler.next_event(lambda e: e["type"] == "connection", timeout=WAIT)
    assert (opened["change"], opened["peer"]) == ("opened", listener.peer_id)
    for who in (listener, dialler):
        who.next_event(lambda e: e["type"] == "peer" and e["change"] == "joined", timeout=WAIT)
    dialler.say("over the other transport")
    got = listener.next_event(is_message("over the other transport"), timeout=WAIT)
    assert got["sender"] == dialler.peer_id
    listener.say("and back")
    assert dialler.next_event(is_message("and back"), timeout=WAIT)["sender"] == listener.peer_id
