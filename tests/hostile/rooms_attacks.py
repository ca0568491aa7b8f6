"""Attackers of a room (#18): in-process py-libp2p peers on 127.0.0.1 that write raw GossipSub
RPCs to a victim on a pubsub stream of their own (nothing of theirs checks or queues them).

Each attacker is a host with a GossipSub whose own checks are off; it joins the victim's room
like any peer and then opens one more pubsub stream to the victim, on which only the attack is
written (a stream written from two tasks interleaves large RPCs: trap 30).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import trio
from libp2p.abc import INetStream
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.utils import encode_varint_prefixed
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.identity import Identity, load_or_create_identity

from tests.hostile.pubsub_attacker import ROOM, payload, signed, unchecked_pubsub

WAIT = 60.0


@dataclass
class Attacker:
    """One attacking peer, in the victim's room, with a stream of its own to the victim."""

    identity: Identity
    pubsub: Pubsub
    stream: INetStream
    sent_rpcs: int = 0

    async def send(self, rpc: rpc_pb2.RPC) -> bool:
        """Write one RPC; False once the victim has closed or reset the stream."""
        try:
            await self.stream.write(encode_varint_prefixed(rpc.SerializeToString()))
        except Exception:  # reset, closed: the victim cut us off
            return False
        self.sent_rpcs += 1
        return True


@asynccontextmanager
async def attackers(
    tmp_path: Path, victim_addr: str, victim_id: str, count: int = 1, join_room: bool = True
) -> AsyncIterator[list[Attacker]]:
    """``count`` attackers connected to the victim (and, with ``join_room``, in its room,
    known to the victim as members), each with its own attack stream."""
    async with AsyncExitStack() as stack:
        crew: list[Attacker] = []
        hosts: list[P2PHost] = []
        for n in range(count):
            identity = load_or_create_identity(tmp_path / f"attacker-{n}")
            host, pubsub = await stack.enter_async_context(unchecked_pubsub(identity))
            if join_room:
                await pubsub.subscribe(ROOM)
            await host.connect(victim_addr)
            peer = ID.from_base58(victim_id)
            with trio.fail_after(WAIT):
                while peer not in pubsub.peers:
                    await trio.sleep(0.1)
            stream = await host.libp2p_host.new_stream(peer, [PROTOCOL_ID_V11])
            crew.append(Attacker(identity, pubsub, stream))
            hosts.append(host)
        yield crew
        for attacker, host in zip(crew, hosts, strict=True):
            with suppress(Exception):  # the victim may have reset it first
                await attacker.stream.reset()
            with suppress(Exception):  # leaving host.run() leaves connections open
                await host.libp2p_host.disconnect(ID.from_base58(victim_id))


def sybils(tmp_path: Path, count: int) -> list[Identity]:
    """``count`` fresh signing identities (PeerIds cost nothing to make)."""
    return [load_or_create_identity(tmp_path / f"sybil-{n}") for n in range(count)]


def flood_rpcs(
    signers: list[Identity], per_signer: int, per_rpc: int = 50
) -> Iterator[rpc_pb2.RPC]:
    """RPCs of validly signed chat messages, the signers taking turns, ``per_signer`` each."""
    batch: list[rpc_pb2.Message] = []
    for seqno in range(1, per_signer + 1):
        for signer in signers:
            batch.append(signed(signer, payload(f"flood {seqno}"), seqno))
            if len(batch) == per_rpc:
                yield rpc_pb2.RPC(publish=batch)
                batch = []
    if batch:
        yield rpc_pb2.RPC(publish=batch)


async def flood_for(attacker: Attacker, rpcs: list[rpc_pb2.RPC], seconds: float) -> int:
    """Write ``rpcs`` in turn, evenly over ``seconds``; how many were written."""
    started = time.monotonic()
    gap = seconds / max(1, len(rpcs))
    written = 0
    for index, rpc in enumerate(rpcs):
        if not await attacker.send(rpc):
            break
        written += 1
        wait = started + (index + 1) * gap - time.monotonic()
        await trio.sleep(max(0.0, wait))
    return written


def control(
    *,
    graft: list[str] = (),  # type: ignore[assignment]
    prune: list[str] = (),  # type: ignore[assignment]
    ihave: dict[str, list[bytes]] | None = None,
    iwant: list[bytes] = (),  # type: ignore[assignment]
) -> rpc_pb2.RPC:
    """An RPC of control messages only."""
    message = rpc_pb2.ControlMessage(
        graft=[rpc_pb2.ControlGraft(topicID=topic) for topic in graft],
        prune=[rpc_pb2.ControlPrune(topicID=topic) for topic in prune],
        ihave=[
            rpc_pb2.ControlIHave(topicID=topic, messageIDs=ids)
            for topic, ids in (ihave or {}).items()
        ],
        iwant=[rpc_pb2.ControlIWant(messageIDs=list(iwant))] if iwant else [],
    )
    return rpc_pb2.RPC(control=message)


def subscriptions(topics: list[str], subscribe: bool = True) -> rpc_pb2.RPC:
    """An RPC of subscription changes only."""
    return rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=subscribe, topicid=t) for t in topics]
    )
