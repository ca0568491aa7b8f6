"""The swarm's dials, bounded (node/p2p/outbound.py): in-process hosts on 127.0.0.1, dialling
real hosts, silent listeners of the test and closed ports."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p.peer.id import ID
from p2pchat.node.p2p.dial_admission import (
    DIALS_IN_FLIGHT,
    OUTBOUND_PER_PEER,
    OUTBOUND_TOTAL,
    DialLimits,
)
from p2pchat.node.p2p.host import DialError, HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.hostile.outbound_attacks import Sinks
from tests.test_host import loopback_addr, running_host

LOOPBACK = ("/ip4/127.0.0.1/tcp/0",)


class Refusals:
    """An admission observer that keeps every reason."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def connection_refused(self, reason: str) -> None:
        self.reasons.append(reason)

    def transient_connections(self, count: int) -> None:
        return None


@asynccontextmanager
async def dialler(
    path: Path, limits: DialLimits, dial_timeout: float = 3.0
) -> AsyncIterator[tuple[P2PHost, Refusals]]:
    refusals = Refusals()
    host = P2PHost(
        load_or_create_identity(path),
        HostSettings(listen=LOOPBACK, dial_timeout=dial_timeout, dials=limits),
        QuietObserver(),
        refusals,
    )
    async with host.run():
        yield host, refusals


def peer_ids(path: Path, count: int) -> list[str]:
    return [load_or_create_identity(path / f"id{n}").peer_id_text for n in range(count)]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_dials_in_flight_are_bounded_and_refused_at_once(tmp_path: Path) -> None:
    sinks = Sinks()
    async with trio.open_nursery() as nursery:
        await nursery.start(sinks.serve, 6)
        async with dialler(tmp_path / "d", DialLimits(dials_in_flight=2)) as (host, refusals):
            errors: list[str] = []

            async def dial(addr: str, peer: str) -> None:
                with pytest.raises(DialError) as failed:
                    await host.connect(f"{addr}/p2p/{peer}")
                errors.append(str(failed.value))

            async with trio.open_nursery() as dialling:
                for addr, peer in zip(sinks.addrs, peer_ids(tmp_path, 6), strict=True):
                    dialling.start_soon(dial, addr, peer)
            assert len(errors) == 6
            # the caller is told which bound refused its dial
            assert sum("dials_in_flight limit reached" in error for error in errors) >= 4
            assert sinks.peak <= 2, sinks.peak
            assert refusals.reasons.count(DIALS_IN_FLIGHT) >= 4, refusals.reasons
            assert host.dials.dials.in_flight == 0  # every slot given back
        nursery.cancel_scope.cancel()


async def test_a_dial_holds_one_slot_across_its_retries(tmp_path: Path) -> None:
    # One slot in all: the library's retries of the first dial (a closed port: refused, retried
    # with backoff) run inside its slot; a second dial meanwhile is refused.
    async with dialler(tmp_path / "d", DialLimits(dials_in_flight=1), dial_timeout=10) as (
        host,
        refusals,
    ):
        first, second = peer_ids(tmp_path, 2)
        errors: list[str] = []

        async def dial(peer: str) -> None:
            try:
                await host.connect(f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{peer}")
            except DialError as error:
                errors.append(str(error))

        async with trio.open_nursery() as dialling:
            dialling.start_soon(dial, first)
            await trio.sleep(0.3)  # the first is between retries now
            dialling.start_soon(dial, second)
        assert refusals.reasons == [DIALS_IN_FLIGHT], refusals.reasons
        assert len(errors) == 2
        assert host.dials.dials.in_flight == 0


async def test_established_outbound_connections_are_bounded(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        targets = [
            (await stack.enter_async_context(running_host(tmp_path / f"t{n}")))[0] for n in range(3)
        ]
        host, refusals = await stack.enter_async_context(
            dialler(tmp_path / "d", DialLimits(max_outbound=2))
        )
        await host.connect(loopback_addr(targets[0]))
        await host.connect(loopback_addr(targets[1]))
        with pytest.raises(DialError, match="outbound_total"):
            await host.connect(loopback_addr(targets[2]))
        assert refusals.reasons == [OUTBOUND_TOTAL]
        # A connection that closes gives its slot back.
        await host.disconnect(targets[0].peer_id)
        with trio.fail_after(20):
            while host.is_connected(targets[0].peer_id):
                await trio.sleep(0.05)
        await host.connect(loopback_addr(targets[2]))


async def test_outbound_connections_to_one_peer_are_bounded(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        target, _ = await stack.enter_async_context(running_host(tmp_path / "t"))
        host, refusals = await stack.enter_async_context(
            dialler(tmp_path / "d", DialLimits(outbound_per_peer=1))
        )
        await host.connect(loopback_addr(target))
        # A second direct dial to the same peer (as DCUtR makes): over the per-peer bound.
        swarm = host.libp2p_host.get_network()
        addr = multiaddr.Multiaddr(loopback_addr(target).split("/p2p/")[0])
        with pytest.raises(Exception, match="outbound_per_peer"):
            await swarm._dial_addr_single_attempt(addr, ID.from_base58(target.peer_id))
        assert refusals.reasons == [OUTBOUND_PER_PEER]
