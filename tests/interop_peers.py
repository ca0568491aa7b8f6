"""The other libp2p implementations' test peers, as the interop tests drive them.

Each is a program of ours (tests/interop/go, tests/interop/rust, tests/interop/js) driven by
JSON lines: commands go to its stdin, one per line; it writes one JSON object per line to
stdout, first ``{"ready": {"peer_id", "addrs"}}``, then events and command replies.
:class:`LineDrivenPeer` is that process: it starts it, waits for ``ready``, sends a line,
returns the next matching event (every line is kept, so a later wait can match an earlier
line), and stops it; its stderr is kept for failures and printed when a test's fixture tears
it down (:func:`stopped_at_teardown`). The subclasses know how to start one implementation and
keep the names and methods their tests have always used.
"""

from __future__ import annotations

import fcntl
import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeProcess, node_env, start_node

ROOT = Path(__file__).resolve().parent.parent
ROOM = "p2p-chat-default"
WAIT = 60.0

Event = dict[str, Any]


class LineDrivenPeer:
    """A test peer process driven by JSON lines on stdin/stdout (the module docstring)."""

    name = "peer"  # how failures name it: "go peer exited: ..."

    def __init__(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.proc = subprocess.Popen(
            [*(["ip", "netns", "exec", netns] if netns else []), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env={**os.environ, **env} if env else None,
        )
        self.lines: queue.Queue[Event] = queue.Queue()
        self.seen: list[Event] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.ready: Event = {}  # until it said so: teardown reads it even after a failed start
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
        """Its first listen address (with /p2p/)."""
        return str(self.ready["addrs"][0])

    def next(self, predicate: Callable[[Event], bool], timeout: float = WAIT) -> Event:
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
                    raise AssertionError(
                        f"{self.name} exited: {''.join(self.stderr)[-3000:]}"
                    ) from None
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"{self.name}: no matching output within {timeout}s; saw {self.seen[-10:]}"
        )

    def send(self, line: str) -> None:
        """Write one command line to its stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def run(self, line: str, reply: str) -> Any:
        """Send one command; its reply (the value under ``reply``), or fail on its error."""
        self.send(line)
        event = self.next(lambda e: reply in e or "error" in e)
        assert "error" not in event, event
        self.seen.remove(event)  # a later command with the same reply waits for its own
        return event[reply]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def teardown(self) -> None:
        """Stop it and print the end of its stderr (pytest shows it when the test failed)."""
        self.stop()
        print(f"{self.name} {self.ready.get('peer_id')} stderr:\n{''.join(self.stderr)[-6000:]}")


def stopped_at_teardown() -> Iterator[list[Any]]:
    """A fixture's body: the list the test appends its peers to; each is stopped, and its
    stderr printed, when the test ends, whatever happened."""
    started: list[LineDrivenPeer] = []
    yield started
    for peer in started:
        peer.teardown()


class PubsubCommandPeer(LineDrivenPeer):
    """The go and rust peers' command protocol (tests/interop/go/main.go): ``say``,
    ``publish``, ``dial``, ``reserve``, ``history``, ``peers``, ``topic-peers``; received chat
    messages as ``{"message": {"from", "via", "room", "text", ...}}``."""

    def message(self, text: str, timeout: float = WAIT) -> Event:
        """The chat message ``text`` this peer received."""
        return dict(
            self.next(lambda e: e.get("message", {}).get("text") == text, timeout)["message"]
        )

    def wait_topic_peer(self, peer_id: str) -> None:
        """Wait until GossipSub on this peer knows ``peer_id`` is in the room: before that, a
        message it publishes is not sent to that peer, and nothing sends it again."""
        deadline = time.monotonic() + WAIT
        while peer_id not in self.run("topic-peers", "topic_peers"):
            assert time.monotonic() < deadline, f"{peer_id} never joined the {self.name}'s room"
            time.sleep(0.2)


GO_DIR = ROOT / "tests" / "interop" / "go"
GO_PEER = GO_DIR / "build" / "peer"


class GoPeer(PubsubCommandPeer):
    """tests/interop/go's binary (go-libp2p), built by `make interop-go`."""

    name = "go peer"

    def __init__(self, *args: str, netns: str | None = None) -> None:
        if not GO_PEER.exists():
            pytest.fail(
                f"{GO_PEER} is missing: run `make interop-go` (needs Go; README, go-libp2p)"
            )
        # go-libp2p's hole punching log, kept with stderr for failures.
        env = {"GOLOG_LOG_LEVEL": "error,p2p-holepunch=debug"}
        super().__init__([str(GO_PEER), "-topic", ROOM, *args], netns=netns, env=env)


RUST_PEER = ROOT / "tests" / "interop" / "rust" / "build" / "peer"
RUST_BUILD_LOCK = Path.home() / ".cache" / "p2pchat" / "rust" / "build.lock"
RUST_BUILD_TIMEOUT = 1200.0  # a cold build: about 5 min on 2 cores, more beside the suite
_rust_built = False


def ensure_rust_built() -> None:
    """Build the rust peer (`make interop-rust`) unless it is current, once per test process,
    one process at a time. It is built here, not before the suite, so that a fresh machine's
    cold build (minutes) runs beside the other tests instead of before them all."""
    global _rust_built
    if _rust_built:
        return
    RUST_BUILD_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with RUST_BUILD_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["make", "-s", "interop-rust"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=RUST_BUILD_TIMEOUT,
        )
    if result.returncode != 0 or not RUST_PEER.exists():
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        pytest.fail("`make interop-rust` failed: " + " | ".join(tail))
    _rust_built = True


class RustPeer(PubsubCommandPeer):
    """tests/interop/rust's binary (rust-libp2p), built by the first test that starts one."""

    name = "rust peer"

    def __init__(self, *args: str, netns: str | None = None) -> None:
        ensure_rust_built()
        super().__init__([str(RUST_PEER), "-topic", ROOM, *args], netns=netns)


JS_DIR = ROOT / "tests" / "interop" / "js"


# js-libp2p dials WebSocket with the global WebSocket, which Node 22 has and Node 20 (this
# machine kind's) has behind this flag; without it, every /ws dial of a js peer failed.
NODE = ("node", "--experimental-websocket")


class JsPeer(LineDrivenPeer):
    """tests/interop/js/peer.mjs (js-libp2p, GossipSub): ``publish <hex>``, ``dial <ma>``,
    ``connections``; received messages as ``{"message": {"from", "topic", "data_hex"}}``. Its
    packages come from package-lock.json (`make unit` installs them)."""

    name = "js peer"

    def __init__(self, *args: str) -> None:
        super().__init__([*NODE, str(JS_DIR / "peer.mjs"), ROOM, *args], cwd=JS_DIR)

    def publish(self, data: bytes) -> None:
        self.send(f"publish {data.hex()}")


class JsPunchPeer(LineDrivenPeer):
    """tests/interop/js/punch.mjs (js-libp2p with circuit relay and DCUtR) in a network
    namespace (None: on this host's loopback), with its DCUtR log on stderr for failures."""

    name = "js peer"

    def __init__(self, netns: str | None, *args: str) -> None:
        super().__init__(
            [*NODE, str(JS_DIR / "punch.mjs"), "--topic", ROOM, *args],
            netns=netns,
            cwd=JS_DIR,
            env={"DEBUG": "libp2p:dcutr*"},
        )

    def connections(self) -> list[Event]:
        """The js peer's open connections, as it lists them now."""
        before = len(self.seen)
        self.send("connections")
        self.next(lambda e: "connections" in e and self.seen.index(e) >= before)
        return list(next(e for e in self.seen[before:] if "connections" in e)["connections"])


IMPLEMENTATIONS: dict[str, type[PubsubCommandPeer]] = {"go": GoPeer, "rust": RustPeer}


@pytest.fixture
def go_peers() -> Iterator[list[GoPeer]]:
    yield from stopped_at_teardown()


@pytest.fixture
def rust_peers() -> Iterator[list[RustPeer]]:
    yield from stopped_at_teardown()


@pytest.fixture
def line_peers() -> Iterator[list[LineDrivenPeer]]:
    """Peers of any implementation, for tests parametrized by it."""
    yield from stopped_at_teardown()


def start_peer(started: list[Any], impl: str, *args: str) -> PubsubCommandPeer:
    """A go or rust peer (``impl``) with ``args``, stopped when the test ends."""
    peer = IMPLEMENTATIONS[impl](*args)
    started.append(peer)
    return peer


WS = "/ip4/127.0.0.1/tcp/0/ws"
QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
WS_ARGS = {"go": ("-ws",), "rust": ()}  # the rust peer always has WebSocket beside TCP
# The transports each implementation's peer is tested over (chat over QUIC has its own tests,
# tests/test_interop_quic_chat.py).
TRANSPORTS = {"go": ("tcp", "ws", "quic"), "rust": ("tcp", "ws", "quic")}
# Transport labels in libp2p_swarm_connections_opened_total.
LABEL = {"tcp": "tcp", "ws": "websocket", "quic": "quic"}


def listening_on(impl: str, transport: str) -> tuple[str, ...]:
    """The arguments that make the ``impl`` peer listen on ``transport`` only."""
    if transport == "ws":
        return (*WS_ARGS[impl], "-listen", WS)
    return ("-listen", QUIC) if transport == "quic" else ()


def p2pchat_listening_on(transport: str) -> tuple[str, ...]:
    """The arguments that make a p2pchat peer listen where ``transport`` can reach it: its
    default listen set has TCP and WebSocket; for QUIC, QUIC only."""
    return ("--listen", QUIC) if transport == "quic" else ()


def only_over(node: NodeProcess, transport: str) -> None:
    """Every direct connection ``node`` opened or accepted went over ``transport``."""
    opened = "libp2p_swarm_connections_opened_total"
    assert node.metric(opened, transport=LABEL[transport]) >= 1
    for other in LABEL.keys() - {transport}:
        assert node.metric(opened, transport=LABEL[other]) == 0, other


def chat_peer(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    """A p2pchat peer driven by --json, ``env`` (P2PCHAT_* settings) in its environment."""
    node = start_node(path, "--json", *args, env=node_env(**env) if env else None)
    nodes.append(node)
    return node


def sees_peer(node: NodeProcess, peer_id: str) -> None:
    node.next_event(lambda e: e["type"] == "peer" and e["peer"] == peer_id, timeout=WAIT)
