"""Interop with rust-libp2p: p2pchat peers and a rust-libp2p peer of ours share a room.

The rust peer (tests/interop/rust: rust-libp2p pinned by Cargo.lock; TCP, Noise, Yamux,
GossipSub with strict signing, identify, p2pchat's payload and history protocol with prost
code generated from node/wire's .proto files, circuit relay v2 server and client, DCUtR) speaks
the go peer's command protocol, JSON lines over stdin/stdout. Each test starts real processes
on 127.0.0.1: chat both ways, a rust hub between two p2pchat peers and a p2pchat hub between
rust and p2pchat, a history query answered to rust, a p2pchat relay serving a rust client, and
a rust relay serving two p2pchat peers. Unlike go-libp2p-pubsub, rust-libp2p's GossipSub runs
over a limited (relayed) connection: the relay test shows it (README, rust-libp2p).
The first test to start the rust peer builds it (`make interop-rust`, under a lock: a fresh
machine's cold build runs beside the rest of the suite); a failed build fails these tests with
its last lines, never skips them.
"""

from __future__ import annotations

import fcntl
import json
import queue
import subprocess
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

ROOT = Path(__file__).parent.parent
RUST_PEER = ROOT / "tests" / "interop" / "rust" / "build" / "peer"
ROOM = "p2p-chat-default"
WAIT = 60.0


BUILD_LOCK = Path.home() / ".cache" / "p2pchat" / "rust" / "build.lock"
BUILD_TIMEOUT = 1200.0  # a cold build: about 5 min on 2 cores, more beside the suite
_built = False


def ensure_built() -> None:
    """Build the rust peer (`make interop-rust`) unless it is current, once per test process,
    one process at a time. It is built here, not before the suite, so that a fresh machine's
    cold build (minutes) runs beside the other tests instead of before them all."""
    global _built
    if _built:
        return
    BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["make", "-s", "interop-rust"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
        )
    if result.returncode != 0 or not RUST_PEER.exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        pytest.fail("`make interop-rust` failed: " + " | ".join(tail))
    _built = True


class RustPeer:
    """tests/interop/rust's binary: its JSON lines are kept (a later `next` can match an
    earlier line), and its stderr too, for failures."""

    def __init__(self, *args: str, netns: str | None = None) -> None:
        ensure_built()
        self.proc = subprocess.Popen(
            [
                *(["ip", "netns", "exec", netns] if netns else []),
                str(RUST_PEER),
                "-topic",
                ROOM,
                *args,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
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
                    raise AssertionError(f"rust peer exited: {''.join(self.stderr)}") from None
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"rust peer: no matching output within {timeout}s; saw {self.seen[-10:]}"
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
        """The chat message ``text`` the rust peer received."""
        return dict(
            self.next(lambda e: e.get("message", {}).get("text") == text, timeout)["message"]
        )

    def wait_topic_peer(self, peer_id: str) -> None:
        """Wait until GossipSub on the rust peer knows ``peer_id`` is in the room: before
        that, a message it publishes is not sent to that peer."""
        deadline = time.monotonic() + WAIT
        while peer_id not in self.run("topic-peers", "topic_peers"):
            assert time.monotonic() < deadline, f"{peer_id} never joined the rust peer's room"
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def rust_peers() -> Iterator[list[RustPeer]]:
    started: list[RustPeer] = []
    yield started
    for peer in started:
        peer.stop()
        print(f"rust peer {peer.ready.get('peer_id')} stderr:\n{''.join(peer.stderr)[-6000:]}")


def rust_peer(rust_peers: list[RustPeer], *args: str) -> RustPeer:
    peer = RustPeer(*args)
    rust_peers.append(peer)
    return peer


def chat_peer(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    node = start_node(path, "--json", *args, env=node_env(**env) if env else None)
    nodes.append(node)
    return node


def sees_peer(node: NodeProcess, peer_id: str) -> None:
    node.next_event(lambda e: e["type"] == "peer" and e["peer"] == peer_id, timeout=WAIT)


@pytest.mark.interop("rust", "tcp", "chat")
def test_chat_with_a_rust_libp2p_peer_both_ways(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    rust = rust_peer(rust_peers)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", rust.addr)
    sees_peer(a, rust.peer_id)
    wait_members(a, 1)

    a.say("hello rust-libp2p")
    got = rust.message("hello rust-libp2p")
    assert (got["from"], got["room"]) == (a.peer_id, ROOM)

    rust.wait_topic_peer(a.peer_id)
    rust.run("say signed in rust", "published")
    from_rust = a.next_event(is_message("signed in rust"), timeout=WAIT)
    assert (from_rust["sender"], from_rust["sender_name"]) == (rust.peer_id, "rust")
    for reason in ("bad_signature", "invalid", "malformed"):
        assert a.metric("p2pchat_messages_dropped_total", reason=reason) == 0


@pytest.mark.interop("rust", "tcp", "hub")
def test_a_rust_hub_between_two_p2pchat_peers(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    rust = rust_peer(rust_peers)
    a, c = (chat_peer(tmp_path / name, nodes, "--bootstrap", rust.addr) for name in ("a", "c"))
    for node in (a, c):
        sees_peer(node, rust.peer_id)
        assert node.metric("p2pchat_connected_peers") == 1  # A and C only meet through rust
        rust.wait_topic_peer(node.peer_id)  # so that rust forwards to both

    a.say("across rust's mesh")
    assert c.next_event(is_message("across rust's mesh"), timeout=WAIT)["sender"] == a.peer_id
    c.say("and back across it")
    assert a.next_event(is_message("and back across it"), timeout=WAIT)["sender"] == c.peer_id
    assert {rust.message(t)["from"] for t in ("across rust's mesh", "and back across it")} == {
        a.peer_id,
        c.peer_id,
    }
    assert c.peer_id not in {p["peer"] for p in command(a, "/peers", "peers")["peers"]}


@pytest.mark.interop("rust", "tcp", "hub")
def test_a_p2pchat_hub_between_rust_and_p2pchat(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    hub = chat_peer(tmp_path / "hub", nodes)
    rust = rust_peer(rust_peers)
    rust.run(f"dial {hub.addr()}", "dialed")
    p = chat_peer(tmp_path / "p", nodes, "--bootstrap", hub.addr())
    sees_peer(p, hub.peer_id)
    wait_members(p, 1)
    wait_members(hub, 2)

    rust.wait_topic_peer(hub.peer_id)
    rust.run("say through a p2pchat hub", "published")
    from_rust = p.next_event(is_message("through a p2pchat hub"), timeout=WAIT)
    assert (from_rust["sender"], from_rust["sender_name"]) == (rust.peer_id, "rust")
    p.say("back through the hub")
    got = rust.message("back through the hub")
    assert (got["from"], got["via"]) == (p.peer_id, hub.peer_id)
    assert rust.peer_id not in {x["peer"] for x in command(p, "/peers", "peers")["peers"]}


@pytest.mark.interop("rust", "tcp", "history")
def test_history_is_answered_to_a_rust_peer(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    a = chat_peer(tmp_path / "a", nodes)
    rust = rust_peer(rust_peers)
    rust.run(f"dial {a.addr()}", "dialed")
    wait_members(a, 1)
    for n in range(3):
        a.say(f"stored by a {n}")
        rust.message(f"stored by a {n}")  # sent, so stored
    history = rust.run(f"history {a.peer_id} 2", "history")
    assert history["status"] == "OK"
    assert history["unverified"] == 0  # rust checked every envelope's signature itself
    assert history["more"] is True  # a page of 2 of the 3, newest first, listed oldest first
    assert [(m["from"], m["text"]) for m in history["messages"]] == [
        (a.peer_id, "stored by a 1"),
        (a.peer_id, "stored by a 2"),
    ]
    assert rust.run(f"history {a.peer_id} 501", "history")["status"] == "BAD_REQUEST"


@pytest.mark.interop("rust", "tcp", "relay-ours")
def test_a_p2pchat_relay_serves_a_rust_client(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    # The relay is no member of the room: the chat can only cross the circuit. Every circuit
    # of a p2pchat relay is limited (relay.circuit_duration, circuit_data), and rust-libp2p's
    # GossipSub, unlike go-libp2p-pubsub's, runs over a limited connection all the same.
    relay = start_node(tmp_path / "relay", "--role", "relay", env=node_env(**CHAT_FRIENDLY))
    nodes.append(relay)
    rust = rust_peer(rust_peers)
    reserved = rust.run(f"reserve {relay.addr()}", "reserved")
    assert relay.metric("p2pchat_relay_reservations") == 1
    assert reserved["circuit"] == f"{relay.addr()}/p2p-circuit/p2p/{rust.peer_id}"
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


@pytest.mark.interop("rust", "tcp", "relay-theirs")
def test_a_rust_relay_serves_two_p2pchat_peers(
    tmp_path: Path, nodes: list[NodeProcess], rust_peers: list[RustPeer]
) -> None:
    # Not a room member itself: the chat can only cross the circuit.
    relay = rust_peer(rust_peers, "-relay", "-subscribe=false")
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
    # rust-libp2p's default relay limits (2 min, 128 KiB per circuit) are what it gets.
    chat_both_ways(a, b, "through a rust relay", "and back through it")
    assert connection_kind(b, a.peer_id) == "relayed"
    assert b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit") == 1


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
