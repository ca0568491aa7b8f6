"""Attackers of the services denied cheaply (#18): many PeerIds on 127.0.0.1, each an
in-process py-libp2p host, against a real ``p2pchat`` victim; the honest peer comes from
``::1``, another address group, as an honest host on another network would.

Everything stays on the loopback interfaces and is bounded in count and time.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.p2p.host import P2PHost, Stream
from p2pchat.node.wire.framing import frame

from tests.conftest import NodeProcess
from tests.test_host import running_host

# The victim listens on both loopbacks: attackers come from 127.0.0.1, the honest peer from ::1.
VICTIM_LISTEN = "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/tcp/0/ws,/ip6/::1/tcp/0"
HONEST_LISTEN = ("/ip6/::1/tcp/0",)
MESHSUB = "/meshsub/1.1.0"


def require_ipv6_loopback() -> None:
    """Skip (saying why) where ``::1`` cannot be bound: the honest peer needs it."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback for the honest peer: {error}")


def ipv6_addr(node: NodeProcess) -> str:
    """The victim's ``/ip6/::1/tcp/...`` address ending in /p2p/<id>."""
    for addr in node.ready["advertised"]:
        if addr.startswith("/ip6/::1/") and "/ws/" not in addr:
            return str(addr)
    raise AssertionError(f"no ::1 address in {node.ready['advertised']}")


@asynccontextmanager
async def peers(
    tmp_path: Path, name: str, count: int, victim: NodeProcess
) -> AsyncIterator[list[P2PHost]]:
    """``count`` in-process hosts (distinct PeerIds, all from 127.0.0.1), each connected to
    ``victim``; all closed on leaving."""
    async with AsyncExitStack() as stack:
        hosts = []
        for n in range(count):
            host, _ = await stack.enter_async_context(
                running_host(tmp_path / f"{name}{n}", listen=("/ip4/127.0.0.1/tcp/0",))
            )
            await host.connect(victim.addr())
            hosts.append(host)
        try:
            yield hosts
        finally:
            with trio.CancelScope(shield=True):
                for host in hosts:  # leaving run() alone left the victim's sockets open
                    await host.disconnect(victim.peer_id)


@asynccontextmanager
async def honest_host(tmp_path: Path, victim: NodeProcess) -> AsyncIterator[P2PHost]:
    """An honest host on ``::1``, connected to ``victim`` over IPv6."""
    async with running_host(tmp_path / "honest", listen=HONEST_LISTEN) as (host, _):
        await host.connect(ipv6_addr(victim))
        try:
            yield host
        finally:
            with trio.CancelScope(shield=True):
                await host.disconnect(victim.peer_id)


async def announce_rooms(host: P2PHost, victim: NodeProcess, rooms: list[str]) -> Stream:
    """Tell ``victim``'s pubsub that ``host`` subscribed to ``rooms``: one GossipSub RPC of
    subscriptions on a ``/meshsub/1.1.0`` stream, and nothing more (the stream is returned
    open: closing it would read as leaving)."""
    rpc = rpc_pb2.RPC(
        subscriptions=[rpc_pb2.RPC.SubOpts(subscribe=True, topicid=room) for room in rooms]
    )
    stream = await host.new_stream(victim.peer_id, [MESHSUB])
    await stream.write(frame(rpc.SerializeToString()))
    return stream
