"""A rogue sender for the moderation tests: an in-process py-libp2p pubsub that signs validly
and ignores moderation (as software other than p2pchat may), on 127.0.0.1 only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.tools.anyio_service import background_trio_service
from p2pchat.node.history import now_ms
from p2pchat.node.p2p.host import HostSettings, P2PHost
from p2pchat.node.p2p.identity import Identity, load_or_create_identity
from p2pchat.node.wire.chat import ChatText, encode, new_message_id

from tests.conftest import NodeProcess
from tests.test_host import RecordingObserver

WAIT = 60.0


class Rogue:
    """A sender that signs validly and ignores moderation (no checks of its own)."""

    def __init__(self, identity: Identity, pubsub: Pubsub, room: str) -> None:
        self.identity, self.pubsub, self.room = identity, pubsub, room
        self._seqno = 0

    async def publish(self, data: bytes) -> None:
        self._seqno += 1
        message = rpc_pb2.Message(
            data=data,
            topicIDs=[self.room],
            from_id=self.identity.peer_id.to_bytes(),
            seqno=self._seqno.to_bytes(8, "big"),
        )
        key = self.identity.key_pair
        message.signature = key.private_key.sign(
            PUBSUB_SIGNING_PREFIX.encode() + message.SerializeToString()
        )
        message.key = key.public_key.serialize()
        await self.pubsub.push_msg(self.pubsub.my_id, message)

    async def say(self, text: str) -> None:
        await self.publish(
            encode(
                ChatText(
                    id=new_message_id(),
                    room=self.room,
                    sender_name="Mallory",
                    text=text,
                    sent_at_ms=now_ms(),
                )
            )
        )


@asynccontextmanager
async def rogue(path: Path, room: str, *peers: NodeProcess) -> AsyncIterator[Rogue]:
    """A rogue sender subscribed to ``room``, connected to each of ``peers`` and seen by them
    in the room (its identity is kept in ``path``)."""
    identity = load_or_create_identity(path)
    host = P2PHost(identity, HostSettings(listen=("/ip4/127.0.0.1/tcp/0",)), RecordingObserver())
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    pubsub = Pubsub(host.libp2p_host, router, strict_signing=False)
    async with host.run(), background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        await pubsub.subscribe(room)
        for peer in peers:
            await host.connect(peer.addr())
        wanted = {ID.from_base58(peer.peer_id) for peer in peers}
        with trio.fail_after(WAIT):
            while not wanted <= pubsub.peer_topics.get(room, set()):
                await trio.sleep(0.1)
        yield Rogue(identity, pubsub, room)
