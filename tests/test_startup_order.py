"""A starting node serves its first connection fully, and pubsub reaches peers that connected
before it started.

Seen in CI: an archiver restarted after ``kill -9`` stored nothing for a minute. Its peer had
redialled it while it was starting, between the listener opening and the archiver role
starting: that peer's identify answer lacked the roles' protocols (catch-up, AutoRelay and
hole punching decide by them) and the archiver's pubsub, created later, never learned of the
connection, so it never sent its subscriptions and was never sent a message.
"""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p import pubsub as p2pchat_pubsub
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.wire.store_query import PROTOCOL_ID as STORE_PROTOCOL_ID

from tests.conftest import NodeProcess, node_env, start_node
from tests.history_fixtures import ROOM
from tests.test_autorelay import dead_port
from tests.test_host import loopback_addr, running_host, wait_until
from tests.test_host_perf_traps import NoDrops


async def test_the_first_connection_to_a_starting_archiver_finds_its_protocols_and_rooms(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    archiver_id = load_or_create_identity(tmp_path / "archiver").peer_id_text
    port = dead_port()
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{archiver_id}"
    async with running_host(tmp_path / "client") as (client, _):
        node_gossip = p2pchat_pubsub.NodeGossip(client)
        gossip = node_gossip.handle(NoDrops())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(node_gossip.run)
            await gossip.join(ROOM, lambda data: None)
            archiver = start_node(
                tmp_path / "archiver",
                "--role",
                "archiver",
                "--listen",
                f"/ip4/127.0.0.1/tcp/{port}",
                env=node_env(),
                wait_ready=False,
            )
            nodes.append(archiver)
            # Dial as soon as anything listens: the first connection the node accepts.
            with trio.fail_after(60):
                while True:
                    try:
                        await client.connect(address)
                        break
                    except Exception:
                        assert archiver.proc.poll() is None, "".join(archiver.raw_stderr)
                        await trio.sleep(0.002)
            await wait_until(lambda: client.peer_protocols(archiver_id))
            assert STORE_PROTOCOL_ID in client.peer_protocols(archiver_id)
            await wait_until(lambda: archiver_id in gossip.subscribers(ROOM))
            nursery.cancel_scope.cancel()


async def test_pubsub_reaches_peers_connected_before_it_started(tmp_path: Path) -> None:
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        await a_host.connect(loopback_addr(b_host))
        a_node, b_node = p2pchat_pubsub.NodeGossip(a_host), p2pchat_pubsub.NodeGossip(b_host)
        a = a_node.handle(NoDrops())  # type: ignore[arg-type]
        b = b_node.handle(NoDrops())  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(a_node.run)
            await nursery.start(b_node.run)
            await a.join("room", lambda data: None)
            received = await b.join("room", lambda data: None)
            await wait_until(lambda: a.subscribers("room") and b.subscribers("room"))
            assert a.has_subscribers("room") and not a.has_subscribers("elsewhere")
            await a.publish("room", b"hello")
            with trio.fail_after(20):
                batch = await received.__anext__()
            assert [message.data for message in batch] == [b"hello"]
            nursery.cancel_scope.cancel()


def test_a_peer_answers_commands_only_once_it_listens(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    # A script that asks right away must not be told an empty address list.
    peer = start_node(tmp_path / "peer", "--json", env=node_env(), wait_ready=False)
    nodes.append(peer)
    peer.say("/info")
    info = peer.next_event(lambda event: event.get("command") == "info")
    assert info["data"]["listen"] and info["data"]["advertised"]
