"""The DHT and room rendezvous: the host layer's fixes in process, then real processes that
know only a bootstrap node finding each other and chatting."""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p.dht import Dht, content_key
from p2pchat.node.rendezvous import room_key

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.test_chat import WAIT, chat_peer, is_message, wait_members
from tests.test_host import loopback_addr, running_host, wait_until


def test_room_keys_are_sha256_multihashes_that_hide_the_name() -> None:
    key = room_key("p2p-chat-default")
    assert key[:2] == b"\x12\x20" and len(key) == 34
    assert b"p2p-chat-default" not in key
    assert key != room_key("p2p-chat-other")
    assert key == content_key("room", "p2p-chat-default")


async def test_connected_servers_fill_the_table_and_members_find_each_other(
    tmp_path: Path,
) -> None:
    # The library fills no routing table from connections, puts every peer that queries a
    # server into the server's table (clients included), and answers a lookup from its local
    # store as soon as it holds anything for the key (its own record, once it provides): two
    # members that both announce a room would never find each other.
    async with (
        running_host(tmp_path / "boot") as (boot_host, _),
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        boot = Dht(boot_host, server=True)
        a, b = Dht(a_host, server=False), Dht(b_host, server=False)
        async with trio.open_nursery() as nursery:
            for dht in (boot, a, b):
                await nursery.start(dht.run)
            await a_host.connect(loopback_addr(boot_host))
            await b_host.connect(loopback_addr(boot_host))
            await wait_until(lambda: a.routing_table_size() == 1 and b.routing_table_size() == 1)
            assert boot.routing_table_size() == 0  # clients are never added
            key = room_key("lobby")
            assert await a.provide(key)
            assert await b.provide(key)
            found_by_a = await a.find_providers(key)
            found_by_b = await b.find_providers(key)
            assert [peer for peer, _ in found_by_a] == [b_host.peer_id]
            assert [peer for peer, _ in found_by_b] == [a_host.peer_id]
            assert loopback_addr(b_host) in found_by_a[0][1]
            # Asked again, each still answers from the network, not from what it cached.
            assert [peer for peer, _ in await a.find_providers(key)] == [b_host.peer_id]
            assert await a.find_providers(room_key("elsewhere")) == []
            # The clients' queries did not put them into the server's table.
            assert boot.routing_table_size() == 0
            nursery.cancel_scope.cancel()


async def test_lookups_dial_no_peer_outside_the_routing_table(tmp_path: Path) -> None:
    # With a thin routing table the library starts every lookup from every connected peer and
    # every peer in the peerstore: a room lookup would dial peers nobody asked for.
    async with (
        running_host(tmp_path / "boot") as (boot_host, _),
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "bystander") as (bystander_host, bystander),
    ):
        boot, a = Dht(boot_host, server=True), Dht(a_host, server=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(boot.run)
            await nursery.start(a.run)
            await a_host.connect(loopback_addr(bystander_host))  # now in A's peerstore
            await a_host.disconnect(bystander_host.peer_id)
            await a_host.connect(loopback_addr(boot_host))
            await wait_until(lambda: a.routing_table_size() == 1)
            await wait_until(lambda: len(bystander.closed) == 1)
            assert await a.provide(room_key("lobby"))
            assert await a.find_providers(room_key("lobby")) == []
            assert len(bystander.opened) == 1  # only the connection A made on purpose
            nursery.cancel_scope.cancel()


def bootstrap_node(path: Path, nodes: list[NodeProcess]) -> NodeProcess:
    node = start_node(path, "--role", "bootstrap")
    nodes.append(node)
    return node


def test_two_peers_that_know_only_a_bootstrap_node_meet_and_chat(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    boot = bootstrap_node(tmp_path / "boot", nodes)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", boot.addr())
    b = chat_peer(tmp_path / "b", nodes, "--bootstrap", boot.addr())
    wait_members(a, 1)
    wait_members(b, 1)
    a.say("found you through the DHT")
    assert (
        b.next_event(is_message("found you through the DHT"), timeout=WAIT)["sender"] == a.peer_id
    )
    # The bootstrap node serves the DHT but is no room member: only the other peer is.
    assert a.metric("p2pchat_room_peers") == 1 and b.metric("p2pchat_room_peers") == 1
    assert boot.metric("p2pchat_messages_received_total") == 0
    assert a.metric("p2pchat_dht_routing_table_peers") == 1  # the bootstrap node
    assert boot.metric("p2pchat_dht_routing_table_peers") == 0  # peers are DHT clients
    found = a.metric("p2pchat_rendezvous_lookups_total", outcome="found")
    found += b.metric("p2pchat_rendezvous_lookups_total", outcome="found")
    assert found >= 1
    assert a.metric("p2pchat_rendezvous_provides_total", outcome="accepted") >= 1
    # Whoever found the other in the DHT says so, and not that it was on the local network.
    notices = [e["text"] for node in (a, b) for e in node.drain_events() if e["type"] == "notice"]
    in_dht = {f"discovered {p.peer_id[:6]}…{p.peer_id[-4:]} in the DHT" for p in (a, b)}
    assert in_dht & set(notices), notices
    assert not [text for text in notices if "local network" in text]


def test_a_later_member_is_found_and_without_the_dht_nobody_meets(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    boot = bootstrap_node(tmp_path / "boot", nodes)
    a = chat_peer(tmp_path / "a", nodes, "--bootstrap", boot.addr())
    wait_metric(a, "p2pchat_rendezvous_provides_total", 1, outcome="accepted")
    # The control: a peer with the DHT off knows the same bootstrap node and nobody else.
    blind = start_node(
        tmp_path / "blind",
        "--json",
        "--bootstrap",
        boot.addr(),
        env=node_env(P2PCHAT_DHT__ENABLED="false"),
    )
    nodes.append(blind)
    late = chat_peer(tmp_path / "late", nodes, "--bootstrap", boot.addr())
    wait_members(late, 1)
    late.say("sorry I'm late")
    assert a.next_event(is_message("sorry I'm late"), timeout=WAIT)["sender"] == late.peer_id
    assert blind.metric("p2pchat_room_peers") == 0
    assert blind.metric("p2pchat_connected_peers") == 1  # the bootstrap node only
