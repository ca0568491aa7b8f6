"""The pubsub attacker's parts shared by the attack tests: an in-process py-libp2p host on
127.0.0.1 whose GossipSub checks nothing of its own (no strict signing, no spam or eclipse
protection), so it can put anything on the wire, and validly signed messages of any sender
whose keys it holds."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX
from libp2p.tools.anyio_service import background_trio_service
from p2pchat.node.p2p.host import HostSettings, P2PHost
from p2pchat.node.p2p.identity import Identity
from p2pchat.node.wire.chat import ChatText, encode, new_message_id

from tests.test_host import RecordingObserver

ROOM = "p2p-chat-default"


@asynccontextmanager
async def unchecked_pubsub(identity: Identity) -> AsyncIterator[tuple[P2PHost, Pubsub]]:
    """A running host of ``identity`` listening on 127.0.0.1 and its pubsub, ready, in no
    room yet."""
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
        yield host, pubsub


def payload(
    text: str = "hello", room: str = ROOM, ahead_ms: int = 0, id: bytes | None = None
) -> bytes:
    """An encoded chat text from "Mallory" in ``room``, sent now (or ``ahead_ms`` ahead)."""
    return encode(
        ChatText(
            id=id or new_message_id(),
            room=room,
            sender_name="Mallory",
            text=text,
            sent_at_ms=int(time.time() * 1000) + ahead_ms,
        )
    )


def signed(
    identity: Identity, data: bytes, seqno: int, claimed: ID | None = None, room: str = ROOM
) -> rpc_pb2.Message:
    """A message of ``data`` in ``room`` signed by ``identity``, claiming to be from
    ``claimed`` (default: ``identity``; another claim is a forgery)."""
    message = rpc_pb2.Message(
        data=data,
        topicIDs=[room],
        from_id=(claimed or identity.peer_id).to_bytes(),
        seqno=seqno.to_bytes(8, "big"),
    )
    private_key = identity.key_pair.private_key
    message.signature = private_key.sign(
        PUBSUB_SIGNING_PREFIX.encode() + message.SerializeToString()
    )
    message.key = identity.key_pair.public_key.serialize()
    return message
