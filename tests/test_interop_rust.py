"""Interop with rust-libp2p: what only the rust peer shows.

The rust peer (tests/interop/rust: rust-libp2p pinned by Cargo.lock; TCP, Noise, Yamux,
GossipSub with strict signing, identify, p2pchat's payload and history protocol with prost
code generated from node/wire's .proto files, circuit relay v2 server and client, DCUtR) speaks
the go peer's command protocol, JSON lines over stdin/stdout (tests/interop_peers.py). The
scenarios go and rust pass alike (chat both ways, hubs both ways, history, their relay) are
tests/test_interop_go_rust.py, run for each. Here, with real processes on 127.0.0.1: a p2pchat
relay serving a rust client, over whose limited circuit rust-libp2p's GossipSub runs, unlike
go-libp2p-pubsub's (README, rust-libp2p); and a machine without cargo failing in one line.
The first test to start the rust peer builds it (`make interop-rust`, under a lock: a fresh
machine's cold build runs beside the rest of the suite); a failed build fails these tests with
its last lines, never skips them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, node_env, start_node
from tests.interop_peers import (
    ROOM,
    RUST_PEER,
    TRANSPORTS,
    WAIT,
    RustPeer,
    chat_peer,
    ensure_rust_built,
    only_over,
    p2pchat_listening_on,
    rust_peers,
)
from tests.test_autorelay import CHAT_FRIENDLY, command, connection_kind
from tests.test_chat import is_message, wait_members

ROOT = Path(__file__).parent.parent
ensure_built = ensure_rust_built  # its name before tests/interop_peers.py

# Imported by the other rust test files (names kept from before tests/interop_peers.py).
__all__ = ["ROOM", "RUST_PEER", "WAIT", "RustPeer", "ensure_built", "rust_peer", "rust_peers"]


def rust_peer(rust_peers: list[RustPeer], *args: str) -> RustPeer:
    peer = RustPeer(*args)
    rust_peers.append(peer)
    return peer


@pytest.mark.parametrize(
    "transport",
    [
        pytest.param(t, marks=pytest.mark.interop("rust", t, "relay-ours"))
        for t in TRANSPORTS["rust"]
    ],
)
def test_a_p2pchat_relay_serves_a_rust_client(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer], transport: str
) -> None:
    # The relay is no member of the room: the chat can only cross the circuit. Every circuit
    # of a p2pchat relay is limited (relay.circuit_duration, circuit_data), and rust-libp2p's
    # GossipSub, unlike go-libp2p-pubsub's, runs over a limited connection all the same.
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay",
        *p2pchat_listening_on(transport),
        env=node_env(**CHAT_FRIENDLY),
    )
    nodes.append(relay)
    rust = rust_peer(rust_peers)  # WebSocket beside TCP always; dials QUIC too
    reserved = rust.run(f"reserve {relay.addr(transport)}", "reserved")
    assert relay.metric("p2pchat_relay_reservations") == 1
    assert reserved["circuit"] == f"{relay.addr(transport)}/p2p-circuit/p2p/{rust.peer_id}"
    assert reserved["limit_duration_s"] == int(CHAT_FRIENDLY["P2PCHAT_RELAY__CIRCUIT_DURATION"])
    # B knows nothing but rust's address through the relay.
    b = chat_peer(
        tmp_path / "b",
        nodes,
        "--bootstrap",
        reserved["circuit"],
        P2PCHAT_HOLEPUNCH__ENABLED="false",
        **CHAT_FRIENDLY,
    )
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == rust.peer_id, timeout=WAIT)
    assert connection_kind(b, rust.peer_id) == "relayed"
    assert relay.metric("libp2p_relaysvc_connections_total", type="opened") >= 1
    wait_members(b, 1)
    rust.wait_topic_peer(b.peer_id)

    b.say("to rust, over the circuit")
    got = rust.message("to rust, over the circuit")
    assert (got["from"], got["via"]) == (b.peer_id, b.peer_id)
    rust.run("say from rust, over the circuit", "published")
    from_rust = b.next_event(is_message("from rust, over the circuit"), timeout=WAIT)
    assert from_rust["sender"] == rust.peer_id
    to_b = [c for c in rust.run("peers", "peers") if c["peer"] == b.peer_id]
    assert to_b and all(c["relayed"] for c in to_b), to_b
    b_peers = {p["peer"]: p for p in command(b, "/peers", "peers")["peers"]}
    assert b_peers[rust.peer_id]["in_room"] is True
    only_over(relay, transport)  # the client's and B's connections to it


def test_missing_cargo_fails_in_one_line(tmp_path: Path) -> None:
    # A machine without Rust: `make interop-rust` says so in one line and fails, never skips.
    result = subprocess.run(
        ["make", "-B", "interop-rust", f"CARGO={tmp_path / 'no-cargo'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not line.startswith("make")]
    assert len(errors) == 1 and "no Rust toolchain" in errors[0], result.stderr
