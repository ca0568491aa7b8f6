"""Interop with go-libp2p: p2pchat peers and a go-libp2p peer of ours share a room.

The go peer (tests/interop/go: go-libp2p and go-libp2p-pubsub pinned by go.sum; TCP, Noise,
Yamux, GossipSub with StrictSign, p2pchat's payload and history protocol, circuit relay v2
server and client) is driven line by line over stdin/stdout JSON. Each test starts real
processes on 127.0.0.1: chat both ways, a go hub between two p2pchat peers and a p2pchat hub
between go and p2pchat, a history query answered to go, a p2pchat relay serving a go client,
a go relay serving two p2pchat peers, and a circuit without limits; and the committed Go code
of the wire formats is checked to be current. go-libp2p-pubsub runs no GossipSub on a limited
(relayed) connection: the relay tests show what that means (README, go-libp2p). DCUtR with the
go peer is tests/test_interop_go_dcutr.py. `make interop-go` (a prerequisite of `make test`)
builds the peer; without it these tests fail with one line, they never skip.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess, node_env, start_node
from tests.test_autorelay import (
    CHAT_FRIENDLY,
    chat_both_ways,
    command,
    connection_kind,
    logged,
)
from tests.test_chat import is_message, wait_members

GO_DIR = Path(__file__).parent / "interop" / "go"
GO_PEER = GO_DIR / "build" / "peer"
# Built by `make interop-go` at the version go.mod pins (Makefile: GO_PROTOC_GEN).
PROTOC_GEN_GO = Path.home() / ".cache" / "p2pchat" / "go" / "path" / "bin" / "protoc-gen-go"
WIRE = Path(__file__).parent.parent / "node" / "wire"
ROOM = "p2p-chat-default"
WAIT = 60.0


class GoPeer:
    """tests/interop/go's binary: its JSON lines are kept (a later `next` can match an earlier
    line), and its stderr too, for failures."""

    def __init__(self, *args: str, netns: str | None = None) -> None:
        if not GO_PEER.exists():
            pytest.fail(
                f"{GO_PEER} is missing: run `make interop-go` (needs Go; README, go-libp2p)"
            )
        self.proc = subprocess.Popen(
            [
                *(["ip", "netns", "exec", netns] if netns else []),
                str(GO_PEER),
                "-topic",
                ROOM,
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # go-libp2p's hole punching log, kept with stderr for failures.
            env={**os.environ, "GOLOG_LOG_LEVEL": "error,p2p-holepunch=debug"},
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.ready = self.next(lambda e: "ready" in e)["ready"]

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    @property
    def addr(self) -> str:
        return str(self.ready["addrs"][0])

    def next(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> dict[str, Any]:
        """The first output line (already seen or still to come) matching ``predicate``."""
        for event in self.seen:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(f"go peer exited: {''.join(self.stderr)}") from None
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"go peer: no matching output within {timeout}s; saw {self.seen[-10:]}"
        )

    def run(self, line: str, reply: str) -> Any:
        """Send one command; its reply (the value under ``reply``), or fail on its error."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        event = self.next(lambda e: reply in e or "error" in e)
        assert "error" not in event, event
        self.seen.remove(event)  # a later command with the same reply waits for its own
        return event[reply]

    def message(self, text: str, timeout: float = WAIT) -> dict[str, Any]:
        """The chat message ``text`` the go peer received."""
        return dict(
            self.next(lambda e: e.get("message", {}).get("text") == text, timeout)["message"]
        )

    def wait_topic_peer(self, peer_id: str) -> None:
        """Wait until GossipSub on the go peer knows ``peer_id`` is in the room: before that,
        a message it publishes is not sent to that peer, and nothing sends it again."""
        deadline = time.monotonic() + WAIT
        while peer_id not in self.run("topic-peers", "topic_peers"):
            assert time.monotonic() < deadline, f"{peer_id} never joined the go peer's room"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def go_peers() -> Iterator[list[GoPeer]]:
    started: list[GoPeer] = []
    yield started
    for peer in started:
        peer.stop()
        print(f"go peer {peer.ready.get('peer_id')} stderr:\n{''.join(peer.stderr)[-6000:]}")


def go_peer(go_peers: list[GoPeer], *args: str) -> GoPeer:
    peer = GoPeer(*args)
    go_peers.append(peer)
    return peer


def chat_peer(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    node = start_node(path, "--json", *args, env=node_env(**env) if env else None)
    nodes.append(node)
    return node


def sees_peer(node: NodeProcess, peer_id: str) -> None:
    node.next_event(lambda e: e["type"] == "peer" and e["peer"] == peer_id, timeout=WAIT)


@pytest.mark.interop("go", "tcp", "chat")
def test_chat_with_a_go_libp2p_peer_both_ways(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", go.addr)
    sees_peer(a, go.peer_id)
    wait_members(a, 1)

    a.say("hello go-libp2p")
    got = go.message("hello go-libp2p")
    assert (got["from"], got["room"]) == (a.peer_id, ROOM)

    go.wait_topic_peer(a.peer_id)
    go.run("say signed in go", "published")
    from_go = a.next_event(is_message("signed in go"), timeout=WAIT)
    assert (from_go["sender"], from_go["sender_name"]) == (go.peer_id, "go")
    for reason in ("bad_signature", "invalid", "malformed"):
        assert a.metric("p2pchat_messages_dropped_total", reason=reason) == 0


@pytest.mark.interop("go", "tcp", "hub")
def test_a_go_hub_between_two_p2pchat_peers(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    go = go_peer(go_peers)
    a, c = (chat_peer(tmp_path / name, nodes, "--bootstrap", go.addr) for name in ("a", "c"))
    for node in (a, c):
        sees_peer(node, go.peer_id)
        assert node.metric("p2pchat_connected_peers") == 1  # A and C only meet through go
        go.wait_topic_peer(node.peer_id)  # so that go forwards to both

    a.say("across go's mesh")
    assert c.next_event(is_message("across go's mesh"), timeout=WAIT)["sender"] == a.peer_id
    c.say("and back across it")
    assert a.next_event(is_message("and back across it"), timeout=WAIT)["sender"] == c.peer_id
    assert {go.message(t)["from"] for t in ("across go's mesh", "and back across it")} == {
        a.peer_id,
        c.peer_id,
    }
    assert c.peer_id not in {p["peer"] for p in command(a, "/peers", "peers")["peers"]}


@pytest.mark.interop("go", "tcp", "hub")
def test_a_p2pchat_hub_between_go_and_p2pchat(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    hub = chat_peer(tmp_path / "hub", nodes)
    go = go_peer(go_peers)
    go.run(f"dial {hub.addr()}", "dialed")
    p = chat_peer(tmp_path / "p", nodes, "--bootstrap", hub.addr())
    sees_peer(p, hub.peer_id)
    wait_members(p, 1)
    wait_members(hub, 2)

    go.wait_topic_peer(hub.peer_id)
    go.run("say through a p2pchat hub", "published")
    from_go = p.next_event(is_message("through a p2pchat hub"), timeout=WAIT)
    assert (from_go["sender"], from_go["sender_name"]) == (go.peer_id, "go")
    p.say("back through the hub")
    got = go.message("back through the hub")
    assert (got["from"], got["via"]) == (p.peer_id, hub.peer_id)
    assert go.peer_id not in {x["peer"] for x in command(p, "/peers", "peers")["peers"]}


@pytest.mark.interop("go", "tcp", "history")
def test_history_is_answered_to_a_go_peer(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    a = chat_peer(tmp_path / "a", nodes)
    go = go_peer(go_peers)
    go.run(f"dial {a.addr()}", "dialed")
    wait_members(a, 1)
    for n in range(3):
        a.say(f"stored by a {n}")
        go.message(f"stored by a {n}")  # sent, so stored
    history = go.run(f"history {a.peer_id} 2", "history")
    assert history["status"] == "OK"
    assert history["unverified"] == 0
    assert history["more"] is True  # a page of 2 of the 3, newest first, listed oldest first
    assert [(m["from"], m["text"]) for m in history["messages"]] == [
        (a.peer_id, "stored by a 1"),
        (a.peer_id, "stored by a 2"),
    ]
    assert go.run(f"history {a.peer_id} 501", "history")["status"] == "BAD_REQUEST"


@pytest.mark.interop("go", "tcp", "relay-ours")
def test_a_p2pchat_relay_serves_a_go_client(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    # go-libp2p-pubsub opens its pubsub stream only on a connection that is not limited (its
    # handlePendingPeers wants Connectedness Connected), and every circuit of a p2pchat relay is
    # limited (relay.circuit_duration, circuit_data): GossipSub never runs over the circuit
    # between go and B. Chat between them crosses the relay's own direct connections, as the
    # relay is also a peer in the room (README, go-libp2p).
    relay = start_node(
        tmp_path / "relay", "--role", "relay,peer", "--json", env=node_env(**CHAT_FRIENDLY)
    )
    nodes.append(relay)
    go = go_peer(go_peers)
    reserved = go.run(f"reserve {relay.addr()}", "reserved")
    assert relay.metric("p2pchat_relay_reservations") == 1
    assert reserved["circuit"].startswith(f"{relay.addr()}/p2p-circuit/p2p/{go.peer_id}")
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


@pytest.mark.interop("go", "tcp", "relay-theirs")
def test_a_go_relay_serves_two_p2pchat_peers(
    tmp_path: Path, nodes: list[NodeProcess], go_peers: list[GoPeer]
) -> None:
    # Not a room member itself: the chat can only cross the circuit.
    relay = go_peer(go_peers, "-relay", "-subscribe=false")
    a = chat_peer(
        tmp_path / "a",
        nodes,
        P2PCHAT_AUTORELAY__MODE="on",
        P2PCHAT_AUTORELAY__RELAYS=relay.addr,
        P2PCHAT_HOLEPUNCH__ENABLED="false",
    )
    addrs = logged(a, "relay reservation", relay=relay.peer_id)["addrs"]
    circuit = next(x for x in addrs if x.startswith("/ip4/127.0.0.1/tcp/"))
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{circuit}/p2p/{a.peer_id}")
    # go-libp2p's default relay limits (2 min, 128 KiB each way) are what the circuit gets.
    chat_both_ways(a, b, "through a go relay", "and back through it")
    assert connection_kind(b, a.peer_id) == "relayed"
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1


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
