"""A relayed pubsub writer holding an RPC that does not fit its circuit (issue #21).

Unit level, like tests/test_host_perf_traps.py's queue tests: the writer's choice
(:meth:`~p2pchat.node.p2p.pubsub._ChatPubsub._next_rpc`) with fakes for the stream, its
connection and the swarm, and the real queue and circuit ledger. The whole path (relay, NATs,
renewal) is tests/test_relayed_nat_chat.py and ``python -m tests.bench.relayed_nat overburst``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import trio
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.p2p import pubsub as p2pchat_pubsub
from p2pchat.node.p2p.circuit_usage import CircuitLedger, CircuitUsage
from p2pchat.node.p2p.rpc_queue import CoalescingRpcQueue
from p2pchat.node.wire.circuit import Limit

LIMIT = 128 * 1024


def _rpc(payload: bytes) -> rpc_pb2.RPC:
    return rpc_pb2.RPC(publish=[rpc_pb2.Message(data=payload)])


class _Network:
    def __init__(self, conns: list[Any]) -> None:
        self.conns = conns

    def get_connections(self, peer: ID) -> list[Any]:
        return self.conns


class _Writer:
    """The parts of :class:`_ChatPubsub` that ``_next_rpc`` uses; ``move_to`` hands the queue
    over as the real one does and records onto which connection."""

    def __init__(self, ledger: CircuitLedger, network: _Network, queue: CoalescingRpcQueue):
        self.pubsub: Any = object.__new__(p2pchat_pubsub._ChatPubsub)
        self.pubsub._circuits = ledger
        self.pubsub._circuit_hold = 0.5
        self.pubsub.host = SimpleNamespace(get_network=lambda: network)
        self.pubsub.move_to = self.move_to
        self.queue = queue
        self.successor: CoalescingRpcQueue | None = None
        self.moved_onto: list[Any] = []

    async def move_to(self, peer_id: ID, *, conn: Any = None, renew: bool = False) -> bool:
        self.moved_onto.append(conn)
        self.successor = self.queue.hand_over()
        return True


def _circuit(ledger: CircuitLedger, sent: int) -> Any:
    """A relayed connection of ours (its muxed connection) that has sent ``sent`` bytes."""
    muxed = SimpleNamespace(is_closed=False)
    ledger.add(
        muxed, CircuitUsage("peer", "relay", True, Limit(duration=120, data=LIMIT), sent=sent)
    )
    return muxed


@pytest.mark.parametrize("how", ["closed under it", "wait ran out"])
async def test_a_held_rpc_moves_to_another_connection_when_the_renewal_did_not_move_it(
    how: str,
) -> None:
    # Seen in the overburst bench: a renewal ended limit/unheard (the other side's stream did
    # not reach the next circuit in time) and the old circuit closed under the held writes; the
    # writer then wrote them on the closed circuit: lost there, brought back by catch-up after
    # newer texts (out of order). The next circuit was open all along: the writer moves there.
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    ledger = CircuitLedger()
    old = _circuit(ledger, sent=LIMIT - 6000)  # room for 2 KiB less the margin
    nxt = SimpleNamespace(muxed_conn=_circuit(ledger, sent=0), is_closed=False)
    old_conn = SimpleNamespace(muxed_conn=old, is_closed=False)
    queue = CoalescingRpcQueue()
    queue.push(_rpc(b"x" * 4000))  # does not fit the old circuit
    queue.push(_rpc(b"after"))
    writer = _Writer(ledger, _Network([old_conn, nxt]), queue)
    stream = SimpleNamespace(muxed_conn=old)

    async with trio.open_nursery() as nursery:
        if how == "closed under it":

            async def close_soon() -> None:
                await trio.sleep(0.1)
                old.is_closed = old_conn.is_closed = True

            nursery.start_soon(close_soon)
        rpc = await writer.pubsub._next_rpc(peer, stream, queue)

    assert rpc is None  # not written on the old circuit: its successor writes it
    assert writer.moved_onto == [nxt]
    assert writer.successor is not None
    first = await writer.successor.pop(8000)
    assert first is not None and bytes(first.publish[0].data) == b"x" * 4000


async def test_a_held_rpc_is_written_anyway_when_there_is_nowhere_else() -> None:
    # The behaviour before the hold: the relay resets the circuit, catch-up fills the gap.
    peer = ID.from_pubkey(create_new_key_pair().public_key)
    ledger = CircuitLedger()
    old = _circuit(ledger, sent=LIMIT - 6000)
    queue = CoalescingRpcQueue()
    queue.push(_rpc(b"x" * 4000))
    writer = _Writer(ledger, _Network([SimpleNamespace(muxed_conn=old, is_closed=False)]), queue)
    rpc = await writer.pubsub._next_rpc(peer, SimpleNamespace(muxed_conn=old), queue)
    assert rpc is not None and bytes(rpc.publish[0].data) == b"x" * 4000
    assert writer.moved_onto == []
