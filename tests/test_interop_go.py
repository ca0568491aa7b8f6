"""Interop with go-libp2p: what only the go peer shows.

The go peer (tests/interop/go: go-libp2p and go-libp2p-pubsub pinned by go.sum; TCP, Noise,
Yamux, GossipSub with StrictSign, p2pchat's payload and history protocol, circuit relay v2
server and client) is driven line by line over stdin/stdout JSON (tests/interop_peers.py).
The scenarios go and rust pass alike (chat both ways, hubs both ways, history, their relay) are
tests/test_interop_go_rust.py, run for each. Here, with real processes on 127.0.0.1: a p2pchat
relay serving a go client and a circuit without limits (go-libp2p-pubsub runs no GossipSub on a
limited, relayed, connection: README, go-libp2p), and the committed Go code of the wire formats
checked to be current. DCUtR with the go peer is tests/test_interop_go_dcutr.py, QUIC
tests/test_interop_quic_chat.py. `make interop-go` (a prerequisite of `make test`) builds the
peer; without it these tests fail with one line, they never skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, node_env, start_node
from tests.interop_peers import (
    GO_DIR,
    GO_PEER,
    ROOM,
    TRANSPORTS,
    WAIT,
    WS_ARGS,
    GoPeer,
    chat_peer,
    go_peers,
    only_over,
    p2pchat_listening_on,
    sees_peer,
)
from tests.test_autorelay import CHAT_FRIENDLY, command, connection_kind
from tests.test_chat import is_message, wait_members

# Imported by the other go test files (names kept from before tests/interop_peers.py).
__all__ = ["GO_PEER", "ROOM", "WAIT", "GoPeer", "chat_peer", "go_peer", "go_peers", "sees_peer"]

# Built by `make interop-go` at the version go.mod pins (Makefile: GO_PROTOC_GEN).
PROTOC_GEN_GO = Path.home() / ".cache" / "p2pchat" / "go" / "path" / "bin" / "protoc-gen-go"
WIRE = Path(__file__).parent.parent / "node" / "wire"


def go_peer(go_peers: list[GoPeer], *args: str) -> GoPeer:
    peer = GoPeer(*args)
    go_peers.append(peer)
    return peer


@pytest.mark.parametrize(
    "transport",
    [pytest.param(t, marks=pytest.mark.interop("go", t, "relay-ours")) for t in TRANSPORTS["go"]],
)
def test_a_p2pchat_relay_serves_a_go_client(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer], transport: str
) -> None:
    # go-libp2p-pubsub opens its pubsub stream only on a connection that is not limited (its
    # handlePendingPeers wants Connectedness Connected), and every circuit of a p2pchat relay is
    # limited (relay.circuit_duration, circuit_data): GossipSub never runs over the circuit
    # between go and B. Chat between them crosses the relay's own direct connections, as the
    # relay is also a peer in the room (README, go-libp2p).
    relay = start_node(
        tmp_path / "relay",
        "--role",
        "relay,peer",
        "--json",
        *p2pchat_listening_on(transport),
        env=node_env(**CHAT_FRIENDLY),
    )
    nodes.append(relay)
    go = go_peer(go_peers, *(WS_ARGS["go"] if transport == "ws" else ()))
    reserved = go.run(f"reserve {relay.addr(transport)}", "reserved")
    assert relay.metric("p2pchat_relay_reservations") == 1
    assert reserved["circuit"].startswith(f"{relay.addr(transport)}/p2p-circuit/p2p/{go.peer_id}")
    # B knows nothing but go's address through the relay.
    b = chat_peer(
        tmp_path / "b",
        nodes,
        "--bootstrap",
        reserved["circuit"],
        P2PCHAT_HOLEPUNCH__ENABLED="false",
        **CHAT_FRIENDLY,
    )
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == go.peer_id, timeout=WAIT)
    assert connection_kind(b, go.peer_id) == "relayed"
    assert relay.metric("libp2p_relaysvc_connections_total", type="opened") >= 1
    wait_members(b, 1)
    wait_members(relay, 2)  # B and go

    b.say("to go, by way of the relay")
    got = go.message("to go, by way of the relay")
    assert (got["from"], got["via"]) == (b.peer_id, relay.peer_id)
    go.wait_topic_peer(relay.peer_id)
    go.run("say from go, by way of the relay", "published")
    from_go = b.next_event(is_message("from go, by way of the relay"), timeout=WAIT)
    assert from_go["sender"] == go.peer_id

    # What go-libp2p makes of the circuit: a limited connection, and B no GossipSub peer.
    conns = go.run("peers", "peers")
    assert {(c["peer"], c["limited"]) for c in conns} >= {(b.peer_id, True), (relay.peer_id, False)}
    assert go.run("topic-peers", "topic_peers") == [relay.peer_id]
    b_peers = {p["peer"]: p for p in command(b, "/peers", "peers")["peers"]}
    assert b_peers[go.peer_id]["in_room"] is False
    only_over(relay, transport)  # the client's and B's connections to it


def test_the_go_code_of_the_wire_formats_is_current(tmp_path: Path) -> None:
    # The go peer's pb/ is generated from node/wire's .proto files and committed: a field added
    # there and not regenerated (`make go-proto`) would be invisible to the go peer.
    if not PROTOC_GEN_GO.exists():
        pytest.fail(f"{PROTOC_GEN_GO} is missing: run `make interop-go` (needs Go)")
    go_package = "p2pchat/interop/go/pb"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{WIRE}",
            f"--plugin=protoc-gen-go={PROTOC_GEN_GO}",
            f"--go_out={tmp_path}",
            "--go_opt=paths=source_relative",
            f"--go_opt=Mchat.proto={go_package}",
            f"--go_opt=Mstore_query.proto={go_package}",
            str(WIRE / "chat.proto"),
            str(WIRE / "store_query.proto"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    for name in ("chat.pb.go", "store_query.pb.go"):
        fresh = (tmp_path / name).read_text()
        assert fresh == (GO_DIR / "pb" / name).read_text(), f"{name} is stale: `make go-proto`"


def test_over_a_circuit_without_limits_go_and_p2pchat_chat(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    # The other side of the limited-connection rule: a relay that sends no limit (go-libp2p's
    # WithInfiniteLimits; no p2pchat relay does, README go-libp2p) gives a circuit that
    # go-libp2p counts as a full connection, and its GossipSub runs over it.
    relay = go_peer(go_peers, "-relay", "-unlimited", "-subscribe=false")
    go = go_peer(go_peers)
    circuit = go.run(f"reserve {relay.addr}", "reserved")["circuit"]
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", circuit, P2PCHAT_HOLEPUNCH__ENABLED="false")
    b.next_event(lambda e: e["type"] == "connection" and e["peer"] == go.peer_id, timeout=WAIT)
    assert connection_kind(b, go.peer_id) == "relayed"
    to_b = [c for c in go.run("peers", "peers") if c["peer"] == b.peer_id]
    assert to_b and all(c["relayed"] and not c["limited"] for c in to_b), to_b
    wait_members(b, 1)
    go.wait_topic_peer(b.peer_id)
    b.say("over a circuit without limits")
    assert go.message("over a circuit without limits")["from"] == b.peer_id
    go.run("say back over it", "published")
    assert b.next_event(is_message("back over it"), timeout=WAIT)["sender"] == go.peer_id
    assert connection_kind(b, go.peer_id) == "relayed"
