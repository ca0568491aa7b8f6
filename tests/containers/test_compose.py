"""The default topology (compose.yml) in real containers.

Builds the image (once per session, ``make image``), starts bootstrap, relay, archiver and three
chat peers (``docker compose up --scale peer=3``) under a project name of its own, and checks
what an operator would: every service healthy, the peers meshed through the bootstrap node, a
message from one peer at every other peer and in the archive (read back with
``p2pchat history``, so verified), and a peer's console reachable with ``docker compose attach``.
Everything the project created is removed at the end (``down -v --remove-orphans``), whatever
happened. Traffic goes only to the project's own containers.

A container engine is required: ``ops/containers/image.sh`` runs ``ops/containers/engine.sh``;
without an engine the test fails, never skips.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import select
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import metric_value

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yml"
PEERS = 3
ROOM = "p2p-chat-default"
UP_TIMEOUT = 240  # seconds for `up --wait`: three dependency levels of health checks
MESH_TIMEOUT = 120.0
DELIVERY_TIMEOUT = 60.0
# Ports the services listen on inside their containers (compose.yml, the role presets).
PEER_PORT, ARCHIVER_PORT = 4001, 4021

FETCH_METRICS = (
    "import urllib.request, sys; "
    "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9464/metrics', timeout=5)"
    ".read().decode())"
)


class Compose:
    """`docker compose` on compose.yml under one project name."""

    def __init__(self, project: str, image: str) -> None:
        self.project = project
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("COMPOSE_")
        }
        self.env["P2PCHAT_IMAGE"] = image

    def command(self, *args: str) -> list[str]:
        return ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]

    def run(self, *args: str, timeout: float = 120) -> str:
        """Run a compose command; its stdout, or a failed assertion with its output."""
        result = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        assert result.returncode == 0, (
            f"docker compose {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        )
        return result.stdout

    def exec(self, service: str, index: int, *command: str, timeout: float = 60) -> str:
        return self.run("exec", "-T", "--index", str(index), service, *command, timeout=timeout)

    def containers(self) -> list[dict[str, Any]]:
        """The services' containers (not those of `compose run`)."""
        text = self.run("ps", "--all", "--format", "json").strip()
        if text.startswith("["):  # older Compose: one JSON array
            listed = list(json.loads(text))
        else:
            listed = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [c for c in listed if "com.docker.compose.oneoff=True" not in c.get("Labels", "")]

    def logs(self) -> str:
        result = subprocess.run(
            self.command("logs", "--no-color", "--timestamps", "--tail", "150"),
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=False,
        )
        return result.stdout + result.stderr

    def docker_ids(self, kind: str) -> list[str]:
        """IDs of the project's containers, volumes or networks still present."""
        listing = {
            "container": ["docker", "ps", "-aq"],
            "volume": ["docker", "volume", "ls", "-q"],
            "network": ["docker", "network", "ls", "-q"],
        }[kind]
        result = subprocess.run(
            [*listing, "--filter", f"label=com.docker.compose.project={self.project}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout.split()

    def down(self) -> None:
        """Remove everything of the project; what `down` leaves is removed by id."""
        subprocess.run(
            self.command("down", "--volumes", "--remove-orphans", "--timeout", "10"),
            capture_output=True,
            env=self.env,
            timeout=180,
            check=False,
        )
        for kind, remove in (
            ("container", ["docker", "rm", "-fv"]),
            ("volume", ["docker", "volume", "rm", "-f"]),
            ("network", ["docker", "network", "rm"]),
        ):
            ids = self.docker_ids(kind)
            if ids:
                subprocess.run([*remove, *ids], capture_output=True, timeout=120, check=False)


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Call ``probe`` until it returns something truthy; fail with ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s; last: {last!r}")
        time.sleep(interval)


class JsonPeer:
    """A chat peer of the `peer` service run for the test (`docker compose run -T peer --json`):
    lines to its stdin, JSON events from its stdout."""

    def __init__(self, compose: Compose) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        self.proc = subprocess.Popen(
            compose.command(
                "run",
                "--rm",
                "-T",
                "--no-deps",
                "--name",
                f"{compose.project}-json-peer",
                "peer",
                "--json",
            ),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=compose.env,
        )
        threading.Thread(target=self._read_events, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_events(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.stderr.append(f"(stdout) {line}")

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line)

    def next_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"no matching event within {timeout:.0f} s (exit: {self.proc.poll()}); events: "
            f"{self.seen[-15:]}; stderr: {''.join(self.stderr[-15:])}"
        )

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """End of input: the peer quits and its container is removed (`run --rm`)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)


def type_into_console(compose: Compose, index: int, text: str) -> str:
    """Attach to peer ``index``'s console as a person would (`docker compose attach`, on a
    terminal), type ``text`` and Enter, and detach with Ctrl-P Ctrl-Q. Returns what the
    terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        compose.command("attach", "--index", str(index), "peer"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=compose.env,
        start_new_session=True,
    )
    os.close(slave)
    shown = bytearray()

    def read_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    shown.extend(os.read(master, 65536))
                except OSError:  # the attach client is gone
                    return

    try:
        read_for(3.0)
        os.write(master, text.encode() + b"\r")
        read_for(3.0)
        os.write(master, b"\x10\x11")  # Ctrl-P Ctrl-Q: detach, the peer keeps running
        read_for(2.0)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        os.close(master)
    return shown.decode(errors="replace")


def metric(compose: Compose, service: str, index: int, name: str) -> float:
    """One sample of a node's /metrics, fetched inside its container."""
    return metric_value(compose.exec(service, index, "python3", "-c", FETCH_METRICS), name)


def history(compose: Compose, service: str, index: int, peer_id: str, port: int) -> list[Any]:
    """The room's messages a node holds, asked of it with `p2pchat history` (every message's
    signature verified) from inside its own container."""
    out = compose.exec(
        service,
        index,
        "p2pchat",
        "history",
        f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}",
        "--room",
        ROOM,
        "--since",
        "1h",
        "--json",
        timeout=90,
    )
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def topology(p2pchat_image: str) -> Iterator[Compose]:
    """compose.yml up with three peers, all healthy; everything removed afterwards."""
    compose = Compose(f"p2pchat-test-{uuid.uuid4().hex[:10]}", p2pchat_image)
    try:
        try:
            compose.run(
                "up",
                "--detach",
                "--scale",
                f"peer={PEERS}",
                "--wait",
                "--wait-timeout",
                str(UP_TIMEOUT),
                timeout=UP_TIMEOUT + 60,
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\nlogs:\n{compose.logs()[-8000:]}") from None
        yield compose
    finally:
        # Shown only when the test failed (pytest captures it otherwise).
        print(f"--- logs of {compose.project} ---\n{compose.logs()[-20000:]}")
        compose.down()
        left = {kind: compose.docker_ids(kind) for kind in ("container", "volume", "network")}
        assert not any(left.values()), f"left behind by {compose.project}: {left}"


def test_default_topology_meshes_and_delivers(topology: Compose) -> None:
    compose = topology

    # Every service is up and healthy: one bootstrap, relay and archiver, three peers.
    containers = compose.containers()
    services = sorted(c["Service"] for c in containers)
    assert services == ["archiver", "bootstrap", *["peer"] * PEERS, "relay"], containers
    for container in containers:
        assert (container["State"], container["Health"]) == ("running", "healthy"), container

    peer_ids = {i: compose.exec("peer", i, "p2pchat", "id").strip() for i in range(1, PEERS + 1)}
    archiver_id = compose.exec("archiver", 1, "p2pchat", "id").strip()
    bootstrap_id = compose.exec("bootstrap", 1, "p2pchat", "id").strip()
    assert len({*peer_ids.values(), archiver_id, bootstrap_id}) == PEERS + 2

    # The peers found each other (they were given only the bootstrap node and the archiver):
    # each sees the other peers in the room as members, and the archiver as infrastructure.
    for index in peer_ids:
        wait_until(
            f"peer {index} in the room with the {PEERS - 1} other peers and the archiver",
            lambda index=index: (
                metric(compose, "peer", index, "p2pchat_room_peers") >= PEERS - 1
                and metric(compose, "peer", index, "p2pchat_room_infrastructure_peers") >= 1
            ),
            MESH_TIMEOUT,
        )

    # A fourth peer of the same service, driven through --json, joins and speaks.
    sender = JsonPeer(compose)
    try:
        ready = sender.next_event(lambda e: e.get("command") == "ready", timeout=90)
        sender_id = ready["data"]["peer_id"]
        # Members only: the archiver is infrastructure in the room, not a member who joins.
        expected = set(peer_ids.values())
        joined: set[str] = set()
        while not expected <= joined:
            event = sender.next_event(
                lambda e: e["type"] == "peer" and e["change"] == "joined", timeout=MESH_TIMEOUT
            )
            joined.add(event["peer"])

        text = f"hello from the json peer {uuid.uuid4().hex[:8]}"
        sender.say(text)
        sender.next_event(lambda e: e["type"] == "message" and e["text"] == text, timeout=30)

        # Delivered live to every peer (counted as received) and archived (synced to disk)...
        for index in peer_ids:
            wait_until(
                f"peer {index} received the message",
                lambda index=index: (
                    metric(compose, "peer", index, "p2pchat_messages_received_total") >= 1
                ),
                DELIVERY_TIMEOUT,
            )
        wait_until(
            "the archiver archived the message",
            lambda: metric(compose, "archiver", 1, "p2pchat_archive_inserted_total") >= 1,
            DELIVERY_TIMEOUT,
        )

        # ... and each of them holds it, signed by the sender, as `p2pchat history` shows.
        sources = [("archiver", 1, archiver_id, ARCHIVER_PORT)] + [
            ("peer", index, peer_id, PEER_PORT) for index, peer_id in peer_ids.items()
        ]
        with ThreadPoolExecutor(len(sources)) as pool:
            held = dict(
                zip(
                    [f"{service}-{index}" for service, index, _, _ in sources],
                    pool.map(lambda source: history(compose, *source), sources),
                    strict=True,
                )
            )
        for name, messages in held.items():
            assert any(m["text"] == text and m["sender"] == sender_id for m in messages), (
                f"{name} does not hold the message: {messages}"
            )

        # A person at peer 1's console (docker compose attach) is heard by the others.
        typed = f"hello from the console of peer 1 {uuid.uuid4().hex[:8]}"
        screen = type_into_console(compose, 1, typed)
        event = sender.next_event(
            lambda e: e["type"] == "message" and e["text"] == typed, timeout=DELIVERY_TIMEOUT
        )
        assert event["sender"] == peer_ids[1], (event, screen[-2000:])
        for index in range(2, PEERS + 1):
            wait_until(
                f"peer {index} received the console's message",
                lambda index=index: (
                    metric(compose, "peer", index, "p2pchat_messages_received_total") >= 2
                ),
                DELIVERY_TIMEOUT,
            )
        wait_until(
            "the archiver archived the console's message",
            lambda: metric(compose, "archiver", 1, "p2pchat_archive_inserted_total") >= 2,
            DELIVERY_TIMEOUT,
        )
        # Nobody was attached to the other consoles' TTYs: no warning about unanswered cursor
        # position requests was written into them.
        assert "cursor position requests" not in compose.logs()
        # Detaching left the peer running.
        states = {c["Name"]: c["State"] for c in compose.containers() if c["Service"] == "peer"}
        assert sorted(states.values()) == ["running"] * PEERS, states
    finally:
        sender.close()
