"""Trap 30: RPCs written to one pubsub stream by several tasks at once arrive whole.

GossipSub writes to a peer's stream from its send queue and from tasks of its own (recent and
pending messages for a peer that has just subscribed); Yamux writes an RPC larger than a frame
or than the send window in several frames and lets other writers in between. Unserialized, the
peer read the RPCs' bytes interleaved, failed to parse them and reset the stream.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.p2p.signatures import signed_bytes

from tests.test_host_perf_traps import NoDrops, _room


def signed_by(pubsub: Any, data: bytes, seqno: int) -> rpc_pb2.Message:
    message = rpc_pb2.Message(
        data=data, topicIDs=["room"], from_id=pubsub.my_id.to_bytes(), seqno=seqno.to_bytes(8)
    )
    message.signature = pubsub.sign_key.sign(signed_bytes(message))
    message.key = pubsub.host.get_public_key().serialize()
    return message


async def test_rpcs_written_to_one_stream_at_the_same_time_arrive_whole(tmp_path: Path) -> None:
    async with _room(tmp_path, NoDrops(), NoDrops()) as room:
        pubsub = room.a._pubsub
        (stream,) = pubsub.peers.values()
        # Each over a Yamux window (256 KiB): written in several frames, waiting for credit.
        payloads = [bytes([65 + n]) * 300_000 for n in range(3)]
        async with trio.open_nursery() as nursery:
            for n, data in enumerate(payloads):
                rpc = rpc_pb2.RPC(publish=[signed_by(pubsub, data, 1_000 + n)])
                nursery.start_soon(pubsub.write_msg, stream, rpc)
        got = await room.collect(lambda got: len(got) >= len(payloads))
    assert sorted(got) == payloads
