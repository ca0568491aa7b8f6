"""Circuits a relay brings, admitted (node/p2p/circuit.py serve_circuits): an in-process
"relay" of the test speaks the stop protocol to a victim host directly, naming any source it
likes, as a hostile relay would; everything on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from libp2p.network.connection.raw_connection import ConnectionType, RawConnection
from libp2p.peer.id import ID
from p2pchat.node.p2p.circuit import serve_circuits
from p2pchat.node.p2p.dial_admission import RELAYED_FAILED, RELAYED_PER_RELAY, DialLimits
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver, Stream
from p2pchat.node.p2p.identity import load_or_create_identity, peer_id_bytes
from p2pchat.node.p2p.streams import read_frame_exactly
from p2pchat.node.wire.circuit import (
    MAX_MESSAGE_BYTES,
    STOP_PROTOCOL_ID,
    Status,
    StopConnect,
    StopStatus,
    decode_stop,
    encode,
)

from tests.test_host import loopback_addr, running_host, wait_until
from tests.test_outbound import Refusals


@asynccontextmanager
async def victim(path: Path, limits: DialLimits) -> AsyncIterator[tuple[P2PHost, Refusals]]:
    refusals = Refusals()
    host = P2PHost(
        load_or_create_identity(path),
        HostSettings(listen=("/ip4/127.0.0.1/tcp/0",), dials=limits),
        QuietObserver(),
        refusals,
    )
    async with host.run():
        serve_circuits(host)
        yield host, refusals


async def stop_connect(relay: P2PHost, target: str, source: str) -> tuple[Stream, Status]:
    """``relay`` brings a circuit "from ``source``" to ``target``: the stream and the answer."""
    stream = await relay.new_stream(target, [STOP_PROTOCOL_ID])
    await stream.write(encode(StopConnect(peer_id_bytes(source))))
    answer = decode_stop(await read_frame_exactly(stream, MAX_MESSAGE_BYTES))
    assert isinstance(answer, StopStatus)
    return stream, answer.status


def sources(path: Path, count: int) -> list[str]:
    return [load_or_create_identity(path / f"src{n}").peer_id_text for n in range(count)]


async def test_one_relay_brings_at_most_relayed_per_relay(tmp_path: Path) -> None:
    async with (
        victim(tmp_path / "v", DialLimits(relayed_per_relay=2)) as (target, refusals),
        running_host(tmp_path / "relay") as (relay, _),
    ):
        await relay.connect(loopback_addr(target))
        first, second, third = sources(tmp_path, 3)
        held = [await stop_connect(relay, target.peer_id, source) for source in (first, second)]
        assert [status for _, status in held] == [Status.OK, Status.OK]
        _, status = await stop_connect(relay, target.peer_id, third)
        assert status == Status.RESOURCE_LIMIT_EXCEEDED
        assert refusals.reasons == [RELAYED_PER_RELAY]
        assert target.relayed.total == 2
        # A circuit that ends gives its slot back.
        await held[0][0].close()
        await wait_until(lambda: target.relayed.total == 1)
        _, status = await stop_connect(relay, target.peer_id, third)
        assert status == Status.OK


async def test_a_noise_identity_other_than_the_named_source_is_cut(tmp_path: Path) -> None:
    async with (
        victim(tmp_path / "v", DialLimits()) as (target, refusals),
        running_host(tmp_path / "relay") as (relay, _),
    ):
        await relay.connect(loopback_addr(target))
        (claimed,) = sources(tmp_path, 1)
        stream, status = await stop_connect(relay, target.peer_id, claimed)
        assert status == Status.OK
        # The "relay" secures the circuit as itself, not as the source it named.
        raw = RawConnection(
            stream.library_stream, initiator=True, connection_type=ConnectionType.RELAYED
        )
        network = relay.libp2p_host.get_network()
        # The victim may cut it before the upgrade completes on this side.
        with trio.move_on_after(10), contextlib.suppress(Exception):
            await network.upgrade_outbound_raw_conn(raw, ID.from_base58(target.peer_id))
        await wait_until(lambda: RELAYED_FAILED in refusals.reasons)
        await wait_until(lambda: target.relayed.total == 0)
