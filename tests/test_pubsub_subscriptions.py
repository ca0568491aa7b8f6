"""Subscriptions reach every peer: one made while a peer's pubsub stream is being set up
(trap 31), and subscription events for peers joining and leaving."""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p.pubsub import NodeGossip, SubscriptionEvent, TopicSubscribed

from tests.test_host import loopback_addr, running_host
from tests.test_host_perf_traps import NoDrops


async def wait_until(condition: object, timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not condition():  # type: ignore[operator]
            await trio.sleep(0.05)


async def test_a_topic_joined_while_a_peers_stream_is_set_up_reaches_that_peer(
    tmp_path: Path,
) -> None:
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        a, b = NodeGossip(a_host), NodeGossip(b_host)
        b_events: list[SubscriptionEvent] = []
        b.watch_subscriptions(b_events.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            rooms = a.handle(NoDrops())  # type: ignore[arg-type]
            build_hello = a._pubsub.get_hello_packet
            joined_in_window: list[bool] = []

            def hello_then_join() -> object:
                # The hello is built now; the join runs at the library's next await, the
                # hello's write, before B is listed among the peers A announces topics to.
                hello = build_hello()
                if not joined_in_window:
                    joined_in_window.append(True)
                    nursery.start_soon(rooms.join, "late-room", lambda data: None)
                return hello

            a._pubsub.get_hello_packet = hello_then_join
            await a_host.connect(loopback_addr(b_host))
            await wait_until(lambda: joined_in_window and "late-room" in a._pubsub.topic_ids)
            await wait_until(lambda: a_host.peer_id in b.subscribers("late-room"))
            assert TopicSubscribed(a_host.peer_id, "late-room") in b_events
            nursery.cancel_scope.cancel()


async def test_our_own_messages_reach_a_room_member_outside_the_mesh(tmp_path: Path) -> None:
    # A peer that has just joined a room is not in the mesh until the next GRAFT; what is sent
    # to it as it joins (a queued message, our name) must still reach it: flood publishing,
    # go-libp2p's default, for our own messages only.
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        a, b = NodeGossip(a_host), NodeGossip(b_host)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
            received = await b.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
            await a_host.connect(loopback_addr(b_host))
            await wait_until(lambda: b_host.peer_id in a.subscribers("room"))
            # No heartbeat may graft B back while A publishes (the one under way ends first).
            a._router.heartbeat_interval = 3600
            await trio.sleep(1.5)
            a._router.mesh.get("room", set()).clear()
            await a.publish("room", b"said as you joined")
            with trio.fail_after(30):
                batch = await received.__anext__()
            assert [message.data for message in batch] == [b"said as you joined"]
            nursery.cancel_scope.cancel()


async def test_two_roles_share_a_topic_and_leaving_and_rejoining_leaves_no_dead_topic(
    tmp_path: Path,
) -> None:
    async with (
        running_host(tmp_path / "a") as (a_host, _),
        running_host(tmp_path / "b") as (b_host, _),
    ):
        a, b = NodeGossip(a_host), NodeGossip(b_host)
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            await nursery.start(b.run)
            chat, archive = b.handle(NoDrops()), b.handle(NoDrops())  # type: ignore[arg-type]
            to_chat = await chat.join("room", lambda data: None)
            to_archive = await archive.join("room", lambda data: None)
            await a.handle(NoDrops()).join("room", lambda data: None)  # type: ignore[arg-type]
            await a_host.connect(loopback_addr(b_host))
            await wait_until(lambda: b_host.peer_id in a.subscribers("room"))
            await a.publish("room", b"to both roles")
            with trio.fail_after(30):
                assert [m.data for m in await to_chat.__anext__()] == [b"to both roles"]
                assert [m.data for m in await to_archive.__anext__()] == [b"to both roles"]
            # One role leaving keeps the topic for the other; leave and join at once are
            # serialized, and the topic ends up joined and fed.
            async with trio.open_nursery() as both:
                both.start_soon(chat.leave, "room")
                both.start_soon(archive.leave, "room")
            assert "room" not in b._topics
            to_chat = await chat.join("room", lambda data: None)
            await a.publish("room", b"after rejoining")
            with trio.fail_after(30):
                assert [m.data for m in await to_chat.__anext__()] == [b"after rejoining"]
            # The library's subscription ending under the fan-out ends the role's iteration.
            await b._pubsub.unsubscribe("room")
            with trio.fail_after(30):
                async for _ in to_chat:
                    pass
            assert "room" not in b._topics
            nursery.cancel_scope.cancel()
