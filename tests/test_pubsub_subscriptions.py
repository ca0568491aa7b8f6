"""Subscriptions reach every peer: one made while a peer's pubsub stream is being set up
(trap 31); our own messages reach a member outside the mesh; several roles in one topic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.pubsub import (
    NodeGossip,
    SubscriptionEvent,
    TopicSubscribed,
    _NoPubsubObserver,
)

from tests.test_host import loopback_addr, running_host, wait_until
from tests.test_host_perf_traps import NoDrops

WAIT = 30


@asynccontextmanager
async def two_pubsubs(
    tmp_path: Path,
) -> AsyncIterator[tuple[P2PHost, P2PHost, NodeGossip, NodeGossip]]:
    """Two hosts on 127.0.0.1 (not connected yet), each running its node's pubsub."""
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        a, b = NodeGossip(a_host), NodeGossip(b_host)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            yield a_host, b_host, a, b
            nursery.cancel_scope.cancel()


async def test_a_topic_joined_while_a_peers_stream_is_set_up_reaches_that_peer(
    tmp_path: Path,
) -> None:
    async with two_pubsubs(tmp_path) as (a_host, b_host, a, b), trio.open_nursery() as side:
        b_events: list[SubscriptionEvent] = []
        b.watch_subscriptions(b_events.append)
        rooms = a.handle(NoDrops())  # type: ignore[arg-type]
        build_hello = a._pubsub.get_hello_packet
        joined_in_window: list[bool] = []

        def hello_then_join() -> object:
            # The hello is built now; the join runs at the library's next await, the hello's
            # write, before B is listed among the peers A announces topics to.
            hello = build_hello()
            if not joined_in_window:
                joined_in_window.append(True)
                side.start_soon(rooms.join, "late-room", lambda data: None)
            return hello

        a._pubsub.get_hello_packet = hello_then_join
        await a_host.connect(loopback_addr(b_host))
        await wait_until(lambda: joined_in_window and "late-room" in a._pubsub.topic_ids, WAIT)
        await wait_until(lambda: a_host.peer_id in b.subscribers("late-room"), WAIT)
        assert TopicSubscribed(a_host.peer_id, "late-room") in b_events


async def test_our_own_messages_reach_a_room_member_outside_the_mesh(tmp_path: Path) -> None:
    # A peer that has just joined a room is not in the mesh until the next GRAFT; what is sent
    # to it as it joins (a queued message, our name) must still reach it: flood publishing,
    # go-libp2p's default, for our own messages only.
    async with two_pubsubs(tmp_path) as (a_host, b_host, a, b):
        await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
        received = await b.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
        await a_host.connect(loopback_addr(b_host))
        await wait_until(lambda: b_host.peer_id in a.subscribers("room"), WAIT)
        # No heartbeat may graft B back while A publishes (the one under way ends first).
        a._router.heartbeat_interval = 3600
        await trio.sleep(1.5)
        a._router.mesh.get("room", set()).clear()
        await a.publish("room", b"said as you joined")
        with trio.fail_after(WAIT):
            batch = await received.__anext__()
        assert [message.data for message in batch] == [b"said as you joined"]


async def test_a_subscription_that_came_before_our_stream_was_open_is_grafted_at_once(
    tmp_path: Path,
) -> None:
    # Trap 45: the library grafts a newly subscribed peer at once, but not one whose
    # subscription came while our own stream to it was being opened (QUIC under load); that
    # waited for a heartbeat, and a go peer publishes to its mesh only: what it said before
    # either side's heartbeat reached nobody (#20). No heartbeat runs here, and B never grafts
    # by itself (degree_low 0): only A's GRAFT can put them in each other's mesh.
    async with two_pubsubs(tmp_path) as (a_host, b_host, a, b):
        for gossip in (a, b):
            gossip._router.heartbeat_interval = 3600
        b._router.degree_low = 0
        await trio.sleep(1.5)  # the heartbeat under way ends; no other comes
        await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
        await b.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
        a_id, b_id = ID.from_base58(a_host.peer_id), ID.from_base58(b_host.peer_id)
        library_host = a._pubsub.host
        open_stream = library_host.new_stream

        async def after_their_subscription(peer_id: ID, protocols: list[str]) -> object:
            if peer_id == b_id and any("meshsub" in p for p in protocols):
                await wait_until(lambda: b_id in a._pubsub.peer_topics.get("room", ()), WAIT)
            return await open_stream(peer_id, protocols)

        library_host.new_stream = after_their_subscription
        await a_host.connect(loopback_addr(b_host))
        await wait_until(lambda: a_id in b._router.mesh.get("room", ()), WAIT)
        assert b_id in a._router.mesh["room"]


async def test_two_roles_share_a_topic_and_leaving_and_rejoining_leaves_no_dead_topic(
    tmp_path: Path,
) -> None:
    async with two_pubsubs(tmp_path) as (a_host, b_host, a, b):
        chat, archive = b.handle(NoDrops()), b.handle(NoDrops())  # type: ignore[arg-type]
        to_chat = await chat.join("room", lambda data: None)
        to_archive = await archive.join("room", lambda data: None)
        await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
        await a_host.connect(loopback_addr(b_host))
        await wait_until(lambda: b_host.peer_id in a.subscribers("room"), WAIT)
        await a.publish("room", b"to both roles")
        with trio.fail_after(WAIT):
            assert [m.data for m in await to_chat.__anext__()] == [b"to both roles"]
            assert [m.data for m in await to_archive.__anext__()] == [b"to both roles"]
        # Both roles leaving at once is serialized and leaves no topic behind; a join then
        # subscribes afresh and is fed.
        async with trio.open_nursery() as both:
            both.start_soon(chat.leave, "room")
            both.start_soon(archive.leave, "room")
        assert "room" not in b._topics
        to_chat = await chat.join("room", lambda data: None)
        await a.publish("room", b"after rejoining")
        with trio.fail_after(WAIT):
            assert [m.data for m in await to_chat.__anext__()] == [b"after rejoining"]
        # The library's subscription ending under the fan-out ends the role's iteration.
        await b._pubsub.unsubscribe("room")
        with trio.fail_after(WAIT):
            async for _ in to_chat:
                pass
        assert "room" not in b._topics


class _Defences(_NoPubsubObserver):
    """A PubsubObserver that keeps the control entries it is told were dropped."""

    def __init__(self) -> None:
        self.dropped: dict[str, int] = {}

    def control_dropped_by(self, limit: str, count: int = 1) -> None:
        self.dropped[limit] = self.dropped.get(limit, 0) + count


async def test_a_message_is_resent_to_one_peer_at_most_three_times_on_iwant(
    tmp_path: Path,
) -> None:
    # #18: go-libp2p's GossipRetransmission. Asking again and again for a message it has
    # would otherwise make us resend it every time (a bandwidth amplification).
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        defences = _Defences()
        a, b = NodeGossip(a_host, observer=defences), NodeGossip(b_host)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
            await b.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
            await a_host.connect(loopback_addr(b_host))
            await wait_until(lambda: b_host.peer_id in a.subscribers("room"), WAIT)
            await a.publish("room", b"wanted")
            message_id = next(iter(a._router.mcache.msgs))
            asker = ID.from_base58(b_host.peer_id)
            for _ in range(5):
                want = rpc_pb2.ControlIWant(messageIDs=[message_id])
                await a._router.handle_iwant(want, asker)
            assert defences.dropped.get("iwant_retransmissions") == 2
            nursery.cancel_scope.cancel()
