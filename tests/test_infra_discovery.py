"""Infrastructure finds itself: archivers announce themselves in the DHT, and a chat peer that
knows only a bootstrap node finds one there and catches up from it, with no other chat peer
online."""

from __future__ import annotations

import contextlib
import json
import queue
import time
from pathlib import Path
from typing import Any

import structlog
from p2pchat.node.p2p.host import DialError
from p2pchat.node.rendezvous import (
    MAX_ARCHIVER_ADDRS,
    MAX_ARCHIVER_DIALS,
    MAX_REMEMBERED_ARCHIVERS,
    ArchiverFinder,
)

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.peer_ids import fresh_peer_ids
from tests.test_archive import AWAY, caught_up, history_texts
from tests.test_autorelay import logged
from tests.test_chat import WAIT, chat_peer

ROOM = "p2p-chat-default"
FLOOD = 10_000


def _node(path: Path, nodes: list[NodeProcess], *args: str, **env: str) -> NodeProcess:
    node = start_node(path, *args, env=node_env(**env))
    nodes.append(node)
    return node


def _wait_announced(node: NodeProcess) -> None:
    """Until a DHT server accepted ``node``'s announcement."""
    deadline = time.monotonic() + WAIT
    while node.metric("p2pchat_rendezvous_provides_total", outcome="accepted") < 1:
        assert time.monotonic() < deadline, "the announcement was never accepted"
        time.sleep(0.2)


def _log(node: NodeProcess) -> list[dict[str, Any]]:
    """Every JSON log line ``node`` wrote so far."""
    while True:
        try:
            line = node.lines.get_nowait()
        except queue.Empty:
            return node.log
        with contextlib.suppress(json.JSONDecodeError):
            node.log.append(json.loads(line))


def _until_archived(sender: NodeProcess, archiver: NodeProcess) -> None:
    """Until ``sender``'s messages reach ``archiver``: it says "anyone?" until one is stored
    (the archiver is no room member to wait for, and a message sent before the sender knows
    the archiver's subscription reaches nobody)."""
    deadline = time.monotonic() + WAIT
    said = 0
    while archiver.metric("p2pchat_archive_inserted_total") < 1:
        assert time.monotonic() < deadline, "no message ever reached the archiver"
        said += 1
        sender.say(f"anyone? {said}")
        time.sleep(0.5)


def _settled(node: NodeProcess, metric: str, quiet: float = 1.5) -> int:
    """``metric`` of ``node`` once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + WAIT
    value = node.metric(metric)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = node.metric(metric)
        if now == value:
            return int(value)
        value = now
    raise AssertionError(f"{metric} never settled (is {value})")


def test_a_peer_that_knows_only_a_bootstrap_catches_up_from_an_archiver_found_in_the_dht(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    bootstrap = _node(tmp_path / "bootstrap", nodes, "--role", "bootstrap")
    archiver = _node(
        tmp_path / "archiver", nodes, "--role", "archiver", "--bootstrap", bootstrap.addr()
    )
    _wait_announced(archiver)

    # A knows only the bootstrap: it finds the archiver in the DHT, and they meet in the room.
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", bootstrap.addr())
    logged(a, "archiver found in the DHT", archiver=archiver.peer_id)
    _until_archived(a, archiver)
    # Counted before the texts are said (a CI run read it after, when one had already landed,
    # and waited for a twelfth that never came), once a late "anyone?" has had time to land.
    archived = _settled(archiver, "p2pchat_archive_messages")
    texts = [f"to nobody online {n}" for n in range(1, 11)]
    for text in texts:
        a.say(text)
    wait_metric(archiver, "p2pchat_archive_messages", archived + len(texts))
    assert a.stop() == 0
    time.sleep(AWAY)  # past GossipSub's message cache, which would hand them out live
    held = int(archiver.metric("p2pchat_archive_messages"))  # the "anyone?" ones too

    # Negative control: B not looking for archivers knows the bootstrap alone and gets nothing.
    blind = _node(
        tmp_path / "blind",
        nodes,
        "--json",
        "--bootstrap",
        bootstrap.addr(),
        P2PCHAT_HISTORY__DISCOVER_ARCHIVERS="false",
    )
    blind.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    logged(blind, "peer identified", remote=bootstrap.peer_id, roles=["bootstrap"])
    time.sleep(AWAY)  # longer than the lookup, dial and catch-up below take
    assert history_texts(blind, held) == []
    assert not any(e["type"] == "caught_up" for e in blind.drain_events())
    assert not [
        entry
        for entry in _log(archiver)
        if entry.get("event") == "peer connected" and entry.get("remote") == blind.peer_id
    ]
    assert blind.stop() == 0

    # B, knowing only the bootstrap, finds the archiver in the DHT and catches up every message.
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", bootstrap.addr())
    event = caught_up(b)
    assert event["room"] == ROOM and event["count"] == held
    assert event["sources"] == [archiver.peer_id]
    shown = history_texts(b, held)  # in order, once each
    assert len(shown) == held and shown[-len(texts) :] == texts
    logged(b, "archiver found in the DHT", archiver=archiver.peer_id)
    logged(b, "peer identified", remote=archiver.peer_id, roles=["archiver"])


class _UnreachableHost:
    """A host that reaches nobody (and says so at once)."""

    def __init__(self) -> None:
        self.dialled: list[str] = []

    def is_connected(self, peer: str) -> bool:
        return False

    async def connect(self, addr: str) -> str:
        self.dialled.append(addr)
        raise DialError(f"{addr}: unreachable")


class _FloodingRendezvous:
    """A DHT whose archiver key names ``FLOOD`` fresh archivers, each at ten addresses, one of
    them a circuit (an announcement costs its author nothing but a fresh key)."""

    def __init__(self) -> None:
        self.archivers = [
            (
                peer,
                [f"/ip4/127.0.0.1/tcp/9/p2p/r/p2p-circuit/p2p/{peer}"]
                + [f"/ip4/127.0.0.{n}/tcp/9/p2p/{peer}" for n in range(1, 10)],
            )
            for peer in fresh_peer_ids(FLOOD)
        ]

    async def find(self, what: str, key: bytes) -> list[tuple[str, list[str]]]:
        return self.archivers


async def test_a_flood_of_announced_archivers_costs_bounded_dials_and_memory() -> None:
    host = _UnreachableHost()
    finder = ArchiverFinder(
        host,  # type: ignore[arg-type]
        _FloodingRendezvous(),  # type: ignore[arg-type]
        wanted=3,
        lookup_interval_max=60.0,
        log=structlog.get_logger(),
    )
    lookups = FLOOD // MAX_ARCHIVER_DIALS
    for lookup in range(lookups):
        await finder._look_up()
        # Each lookup dials a few archivers at a few direct addresses, never a circuit.
        assert len(host.dialled) == (lookup + 1) * MAX_ARCHIVER_DIALS * MAX_ARCHIVER_ADDRS
    assert not any("/p2p-circuit" in addr for addr in host.dialled)
    assert len(finder._failed_at) == MAX_REMEMBERED_ARCHIVERS
    assert len(finder._found) == 0 and finder.connected() == []
