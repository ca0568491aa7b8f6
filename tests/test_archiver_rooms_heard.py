"""The archiver's queue of rooms heard of stays bounded, and a room refused at max_rooms is
passed on once, however often peers subscribe to it (a subscription costs nothing)."""

from __future__ import annotations

import trio
from p2pchat.node.p2p.pubsub import TopicSubscribed
from p2pchat.roles.archiver.role import MAX_ROOMS_HEARD, _RoomsHeardOf

from tests.peer_ids import fresh_peer_ids

FLOOD = 10_000


async def test_a_flood_of_room_names_is_bounded_and_each_refused_room_passed_on_once() -> None:
    archived = {"lobby", "ops"}
    heard = _RoomsHeardOf(archived, max_rooms=2)  # full
    peers = list(fresh_peer_ids(FLOOD))
    for n, peer in enumerate(peers):
        heard.event(TopicSubscribed(peer, f"junk-{n}"))
    heard.event(TopicSubscribed(peers[0], "not a room name!"))
    rooms = await heard.take()
    assert len(rooms) == MAX_ROOMS_HEARD and "not a room name!" not in rooms
    for peer in peers[:100]:  # the same rooms again, from other peers
        heard.event(TopicSubscribed(peer, "junk-0"))
    with trio.move_on_after(0.1):
        again = await heard.take()
        raise AssertionError(f"refused rooms passed on again: {again}")
    heard.event(TopicSubscribed(peers[1], "lobby"))  # archived already: nothing to do
    with trio.move_on_after(0.1):
        raise AssertionError(f"an archived room passed on: {await heard.take()}")
