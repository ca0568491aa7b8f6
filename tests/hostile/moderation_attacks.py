"""A rogue sender for the moderation tests: an in-process py-libp2p pubsub that signs validly
and ignores moderation (as software other than p2pchat may), on 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub
from p2pchat.node.p2p.identity import Identity, load_or_create_identity

from tests.conftest import NodeProcess
from tests.hostile.pubsub_attacker import payload, signed, unchecked_pubsub

WAIT = 60.0


class Rogue:
    """A sender that signs validly and ignores moderation (no checks of its own)."""

    def __init__(self, identity: Identity, pubsub: Pubsub, room: str) -> None:
        self.identity, self.pubsub, self.room = identity, pubsub, room
        self._seqno = 0

    async def publish(self, data: bytes) -> None:
        self._seqno += 1
        message = signed(self.identity, data, self._seqno, room=self.room)
        await self.pubsub.push_msg(self.pubsub.my_id, message)

    async def say(self, text: str) -> None:
        await self.publish(payload(text, room=self.room))


@asynccontextmanager
async def rogue(path: Path, room: str, *peers: NodeProcess) -> AsyncIterator[Rogue]:
    """A rogue sender subscribed to ``room``, connected to each of ``peers`` and seen by them
    in the room (its identity is kept in ``path``)."""
    identity = load_or_create_identity(path)
    async with unchecked_pubsub(identity) as (host, pubsub):
        await pubsub.subscribe(room)
        for peer in peers:
            await host.connect(peer.addr())
        wanted = {ID.from_base58(peer.peer_id) for peer in peers}
        with trio.fail_after(WAIT):
            while not wanted <= pubsub.peer_topics.get(room, set()):
                await trio.sleep(0.1)
        yield Rogue(identity, pubsub, room)
