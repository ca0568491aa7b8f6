"""QUIC with go-libp2p (#20, must-have 2): a p2pchat peer and our go-libp2p peer
(tests/interop/go, go-libp2p's QUIC transport, quic-go) chat over ``/udp/N/quic-v1``, each
side dialling the other: libp2p TLS in QUIC (no Noise, no Yamux), identify, GossipSub with
StrictSign and p2pchat's payload. Real processes on 127.0.0.1; ``make interop-go`` builds the
go peer (these tests fail, never skip, without it).

Under load (a load average of 10-12) these failed about 1 run in 8 until two library traps
were handled in the host layer: identify left a go peer unidentified for the whole connection,
so it was never shown in the room (trap 44), and a go peer's words said before its mesh held
us reached nobody, go-libp2p-pubsub publishing to its mesh only (trap 45).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import NodeProcess
from tests.test_chat import is_message, wait_members
from tests.test_interop_go import ROOM, WAIT, GoPeer, chat_peer, go_peer, sees_peer
from tests.test_interop_go import go_peers as go_peers  # the fixture

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
QUIET = 40.0  # seconds without a word: past py-libp2p's 30 s QUIC read timeout


def go_quic_addr(go: GoPeer) -> str:
    return next(str(a) for a in go.ready["addrs"] if "/quic-v1/" in a)


def chat_with_go(a: NodeProcess, go: GoPeer) -> None:
    sees_peer(a, go.peer_id)
    wait_members(a, 1)
    # Our GRAFT goes before this on our stream (trap 45): once go has it, we are in its mesh.
    a.say("hello go over quic")
    got = go.message("hello go over quic")
    assert (got["from"], got["room"]) == (a.peer_id, ROOM)
    go.wait_topic_peer(a.peer_id)
    go.run("say quic from go", "published")
    from_go = a.next_event(is_message("quic from go"), timeout=WAIT)
    assert from_go["sender"] == go.peer_id
    assert a.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
    assert a.metric("libp2p_swarm_connections_opened_total", transport="tcp") == 0


@pytest.mark.interop("go", "quic", "chat")
def test_a_p2pchat_peer_dials_go_over_quic(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers, "-listen", f"/ip4/127.0.0.1/tcp/0,{QUIC}")
    a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC, "--bootstrap", go_quic_addr(go))
    chat_with_go(a, go)


@pytest.mark.interop("go", "quic", "chat")
def test_go_dials_a_p2pchat_peer_over_quic(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers, "-listen", QUIC)
    a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    # go-libp2p's identify answers with STOP_SENDING first: a loaded machine made our read of
    # the answer fail and the connection close unidentified (trap 37, node/p2p/quic_streams.py).
    go.run(f"dial {a.addr('quic')}", "dialed")
    chat_with_go(a, go)


@pytest.mark.interop("go", "quic", "chat")
def test_a_quiet_quic_conversation_with_go_goes_on(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    # py-libp2p gives up a QUIC read after 30 s and resets the stream: go's GossipSub stream to
    # us, quiet for 30 s, was reset, and go-libp2p-pubsub forgot our subscription with it, so
    # nothing the go peer said reached us again (trap 38, node/p2p/quic.py).
    go = go_peer(go_peers, "-listen", QUIC)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", go_quic_addr(go))
    chat_with_go(a, go)
    time.sleep(QUIET)
    assert a.peer_id in go.run("topic-peers", "topic_peers")
    go.run("say still here", "published")
    assert a.next_event(is_message("still here"), timeout=WAIT)["sender"] == go.peer_id
    a.say("and here too")
    assert go.message("and here too")["from"] == a.peer_id
