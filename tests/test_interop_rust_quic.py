"""QUIC with rust-libp2p (#20, must-have 2): a p2pchat peer and our rust-libp2p peer
(tests/interop/rust with rust-libp2p's QUIC transport, libp2p-quic 0.14 on quinn) chat over
``/udp/N/quic-v1``, each side dialling the other: libp2p TLS in QUIC (no Noise, no Yamux),
identify, GossipSub with strict signing and p2pchat's payload. Real processes on 127.0.0.1; the
first test to start the rust peer builds it (`make interop-rust`, tests/interop_peers.py); a
failed build fails these tests, never skips them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import NodeProcess
from tests.interop_peers import ROOM, WAIT, RustPeer, chat_peer, rust_peers, sees_peer
from tests.test_chat import is_message, wait_members

__all__ = ["rust_peers"]  # the fixture, used by name

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
QUIET = 40.0  # seconds without a word: past py-libp2p's 30 s QUIC read timeout (trap 38)


def rust_peer(rust_peers: list[RustPeer], *args: str) -> RustPeer:
    peer = RustPeer(*args)
    rust_peers.append(peer)
    return peer


def rust_quic_addr(rust: RustPeer) -> str:
    return next(str(a) for a in rust.ready["addrs"] if "/quic-v1/" in a)


def chat_with_rust(a: NodeProcess, rust: RustPeer) -> None:
    """``a`` and ``rust``, connected over QUIC, chat both ways; nothing went over TCP."""
    sees_peer(a, rust.peer_id)
    wait_members(a, 1)
    a.say("hello rust over quic")
    got = rust.message("hello rust over quic")
    assert (got["from"], got["room"]) == (a.peer_id, ROOM)
    rust.wait_topic_peer(a.peer_id)
    rust.run("say quic from rust", "published")
    from_rust = a.next_event(is_message("quic from rust"), timeout=WAIT)
    assert (from_rust["sender"], from_rust["sender_name"]) == (rust.peer_id, "rust")
    assert a.metric("libp2p_swarm_connections_opened_total", transport="quic") == 1
    assert a.metric("libp2p_swarm_connections_opened_total", transport="tcp") == 0
    assert all("/quic-v1" in c["addr"] for c in rust.run("peers", "peers"))


@pytest.mark.interop("rust", "quic", "chat")
def test_a_p2pchat_peer_dials_rust_over_quic(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    # rust listens on TCP too: p2pchat, told only its QUIC address, must not end on TCP.
    rust = rust_peer(rust_peers, "-listen", f"/ip4/127.0.0.1/tcp/0,{QUIC}")
    a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC, "--bootstrap", rust_quic_addr(rust))
    chat_with_rust(a, rust)


@pytest.mark.interop("rust", "quic", "chat")
def test_rust_dials_a_p2pchat_peer_over_quic(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    rust = rust_peer(rust_peers, "-listen", QUIC)
    a = chat_peer(tmp_path / "a", nodes, "--listen", QUIC)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    rust.run(f"dial {a.addr('quic')}", "dialed")
    chat_with_rust(a, rust)


@pytest.mark.interop("rust", "quic", "chat")
def test_a_quiet_quic_conversation_with_rust_goes_on(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    # 40 s without a word: past py-libp2p's own 30 s QUIC read timeout (lifted by
    # node/p2p/quic.py), and many times libp2p-quic's 10 s idle timeout, which its 5 s
    # keep-alive pings hold off. rust's GossipSub stream to us must still be the one it uses.
    rust = rust_peer(rust_peers, "-listen", QUIC)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", rust_quic_addr(rust))
    chat_with_rust(a, rust)
    time.sleep(QUIET)
    assert a.peer_id in rust.run("topic-peers", "topic_peers")
    rust.run("say still here", "published")
    assert a.next_event(is_message("still here"), timeout=WAIT)["sender"] == rust.peer_id
    a.say("and here too")
    assert rust.message("and here too")["from"] == a.peer_id
