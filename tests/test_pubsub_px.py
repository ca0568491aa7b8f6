"""Peer exchange cannot aim a chat peer at anyone (issue #18, "PX reflection").

A GossipSub PRUNE may name peers to connect to instead (PX). py-libp2p 0.8.1 dialled up to 16
of them per PRUNE, with a signed record or none, four attempts each, from anybody: 16 records
naming a third party's port became 64 TCP connections to it. Here an attacker (an in-process
py-libp2p pubsub) connected to a real ``p2pchat`` process sends such PRUNEs; the third party is
a plain TCP listener on 127.0.0.1 that counts the connections it accepts.
"""

from __future__ import annotations

import json
import queue
import time
from pathlib import Path

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.envelope import seal_record
from libp2p.peer.id import ID
from libp2p.peer.peer_record import PeerRecord
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from multiaddr import Multiaddr
from p2pchat.node.metrics import NodeMetrics
from p2pchat.node.p2p.pubsub import PX_PER_PRUNE, PX_PER_SENDER

from tests.conftest import START_TIMEOUT, NodeProcess
from tests.test_chat_attacks import ROOM, attacker

REFUSED = "peer exchange record refused"


class ThirdParty:
    """A TCP listener on 127.0.0.1 that counts (and closes) the connections it accepts."""

    def __init__(self, listener: trio.SocketListener) -> None:
        self.listener = listener
        self.accepted = 0
        self.port: int = listener.socket.getsockname()[1]

    async def serve(self) -> None:
        while True:
            stream = await self.listener.accept()
            self.accepted += 1
            await stream.aclose()

    async def reached(self, count: int) -> None:
        """Wait until ``count`` connections were accepted (a PRUNE's refusals are logged as its
        records are read, before its dials start: on a loaded machine they come later)."""
        with trio.fail_after(START_TIMEOUT * 2):
            while self.accepted < count:
                await trio.sleep(0.05)

    async def settled_count(self) -> int:
        """The connections accepted before now: one more connection of our own is accepted
        after every connection already in the kernel's accept queue (first in, first out)."""
        before = self.accepted
        async with await trio.open_tcp_stream("127.0.0.1", self.port):
            with trio.fail_after(START_TIMEOUT):
                while self.accepted <= before:
                    await trio.sleep(0.01)
        # ours is the last one counted; everything the victim opened came before it
        self.accepted -= 1
        return self.accepted


def signed_record(port: int, ip: str = "127.0.0.1", signer: bool = True) -> rpc_pb2.PeerInfo:
    """A PX record for a fresh peer at ``ip``:``port``, signed by that peer's key (or, with
    ``signer`` False, by another key: a forged record)."""
    keys = create_new_key_pair()
    peer = ID.from_pubkey(keys.public_key)
    record = PeerRecord(peer, [Multiaddr(f"/ip4/{ip}/tcp/{port}")])
    signing = keys if signer else create_new_key_pair()
    envelope = seal_record(record, signing.private_key)
    return rpc_pb2.PeerInfo(peerID=peer.to_bytes(), signedPeerRecord=envelope.marshal_envelope())


def unsigned_record() -> rpc_pb2.PeerInfo:
    return rpc_pb2.PeerInfo(peerID=ID.from_pubkey(create_new_key_pair().public_key).to_bytes())


async def send_prune(pubsub: Pubsub, victim: NodeProcess, records: list[rpc_pb2.PeerInfo]) -> None:
    await send_prune_for(pubsub, victim, ROOM, records)


async def send_prune_for(
    pubsub: Pubsub, victim: NodeProcess, topic: str, records: list[rpc_pb2.PeerInfo]
) -> None:
    stream = pubsub.peers[ID.from_base58(victim.peer_id)]
    prune = rpc_pb2.ControlPrune(topicID=topic, peers=records, backoff=1)
    await pubsub.write_msg(stream, rpc_pb2.RPC(control=rpc_pb2.ControlMessage(prune=[prune])))


def refused_reasons(victim: NodeProcess) -> set[str]:
    """Read the victim's log so far: the reasons of the refusals it logged."""
    while True:
        try:
            line = victim.lines.get_nowait()
        except queue.Empty:
            break
        try:
            victim.log.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return {str(entry.get("reason")) for entry in victim.log if entry.get("event") == REFUSED}


async def wait_refused(victim: NodeProcess, reason: str) -> None:
    """Wait until the victim logged a refusal for ``reason``. PRUNEs from one peer are handled
    in order, each after the dials of the one before: once the refusal of a PRUNE is logged,
    every PRUNE sent before it was handled."""
    deadline = time.monotonic() + START_TIMEOUT * 2
    while reason not in refused_reasons(victim):
        assert time.monotonic() < deadline, (
            f"no {reason!r} refusal; saw {refused_reasons(victim)}:\n"
            + "".join(victim.raw_stderr[-40:])
        )
        assert victim.proc.poll() is None, "the victim exited"
        await trio.sleep(0.1)


async def test_peer_exchange_dials_a_few_signed_records_and_refuses_the_rest(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    third_party = ThirdParty(listener)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(third_party.serve)
        async with attacker(tmp_path, nodes) as (victim, pubsub, _, _):
            # Each step waits for a refusal reason not logged before (the log of a reason is
            # rate-limited): then the PRUNE, and every one sent before it, was handled.
            # A record signed by another key than its peer's: never dialled.
            await send_prune(pubsub, victim, [signed_record(third_party.port, signer=False)])
            await wait_refused(victim, "bad_record")
            assert await third_party.settled_count() == 0

            # 16 valid signed records naming the third party: a few dialled, once each.
            signed = [signed_record(third_party.port) for _ in range(16)]
            await send_prune(pubsub, victim, signed)
            await wait_refused(victim, "per_prune")
            await third_party.reached(PX_PER_SENDER)
            assert await third_party.settled_count() == PX_PER_SENDER

            # The same peers again, unsigned (the library dialled what its peerstore held):
            # never dialled.
            unsigned = [rpc_pb2.PeerInfo(peerID=record.peerID) for record in signed]
            await send_prune(pubsub, victim, unsigned[:PX_PER_PRUNE])
            await wait_refused(victim, "unsigned")

            # A flood of PRUNEs from the same sender: no more dials within the minute.
            for _ in range(30):
                await send_prune(
                    pubsub, victim, [signed_record(third_party.port) for _ in range(2)]
                )
            await wait_refused(victim, "sender_rate")

            # A private-network address named by a sender on our loopback: never dialled.
            await send_prune(pubsub, victim, [signed_record(third_party.port, ip="10.9.8.7")])
            await wait_refused(victim, "address")
            # A PRUNE for a room the victim is not in, sent last: once it is refused, the
            # flood before it has been handled.
            await send_prune_for(pubsub, victim, "elsewhere", [unsigned_record()])
            await wait_refused(victim, "not_joined")
            assert await third_party.settled_count() == PX_PER_SENDER
            assert victim.proc.poll() is None
            # Every refusal is counted by reason where operators look.
            for reason in ("bad_record", "per_prune", "unsigned", "sender_rate", "address"):
                assert victim.metric("p2pchat_pubsub_px_refused_total", reason=reason) >= 1
            assert victim.metric("p2pchat_pubsub_px_refused_total", reason="sender_rate") >= 29
        nursery.cancel_scope.cancel()


def test_refused_records_are_counted_by_reason() -> None:
    metrics = NodeMetrics(["peer"])
    metrics.swarm.px_refused("unsigned")
    metrics.swarm.px_refused("unsigned")
    metrics.swarm.px_refused("address")
    value = metrics.registry.get_sample_value
    assert value("p2pchat_pubsub_px_refused_total", {"reason": "unsigned"}) == 2
    assert value("p2pchat_pubsub_px_refused_total", {"reason": "address"}) == 1
