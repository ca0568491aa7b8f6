"""A node listening on TCP and WebSocket at one port tells them apart by a connection's first 3
bytes (node/p2p/inbound.py ``_classification_bytes``): a dialler whose first TCP segment holds
fewer, as js-libp2p's often does (multistream-select's length prefix alone), is served, not
closed as unknown. A real ``p2pchat`` process and a raw socket on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from tests.conftest import NodeProcess, start_node

HEADER = b"\x13/multistream/1.0.0\n"  # multistream-select's header, length-prefixed
SPLIT_PAUSE = 1.0  # long enough for the node to read the first segment on its own


def test_a_dialler_whose_first_segment_is_one_byte_is_served(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = start_node(tmp_path / "n", "--json")  # conftest: TCP and /ws, one port
    nodes.append(node)
    _, _, host, _, port, *_ = node.addr("tcp").split("/")
    assert node.addr("ws").split("/")[4] == port  # one port: the classifier decides
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(HEADER[:1])
        time.sleep(SPLIT_PAUSE)
        sock.sendall(HEADER[1:])
        answer = b""
        while len(answer) < len(HEADER):
            chunk = sock.recv(len(HEADER) - len(answer))
            if not chunk:
                break  # closed: classified as unknown on the one byte
            answer += chunk
    assert answer == HEADER
    assert node.metric("p2pchat_connections_refused_total", reason="handshake_failed") == 0
