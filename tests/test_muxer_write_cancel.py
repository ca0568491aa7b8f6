"""A stream write cancelled half-way must not break its whole connection, Yamux or Mplex (#21).

py-libp2p's Noise encrypts a message (its nonce is then used) before it awaits the socket: a
write cancelled at that await leaves the message unsent, or half sent, and the peer's next
decryption fails; its Yamux reading ends, and with it every stream of the connection. A relay
cancels one direction of a circuit's copy when the other ends (its data limit, a peer's close):
its write to the other peer was cancelled there, and that peer lost its whole connection to the
relay, its reservation with it (seen in ``python -m tests.bench.relayed_nat overburst``:
counted as ``yamux_protocol`` at the peer, 0.2 s before its relay connection closed).

Real hosts over TCP (Noise, Yamux) on loopback: many writes cancelled at every point of their
way, then the connection still carries a stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.lowlevel
from libp2p.network.connection.exceptions import RawConnError
from p2pchat.node.p2p import whole_writes, yamux_guard
from p2pchat.node.p2p.host import HostSettings, P2PHost
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.stream_limits import StreamLimits

from tests.test_host import LOOPBACK, RecordingObserver, loopback_addr, wait_until

SINK = "/test/sink/1.0.0"
ECHO = "/test/echo/1.0.0"


@asynccontextmanager
async def muxed_host(
    data_dir: Path, muxer: str
) -> AsyncIterator[tuple[P2PHost, RecordingObserver]]:
    """A host on loopback speaking only ``muxer``."""
    observer = RecordingObserver()
    settings = HostSettings(listen=LOOPBACK, muxers=(muxer,))
    host = P2PHost(load_or_create_identity(data_dir), settings, observer)
    async with host.run():
        yield host, observer


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_writes_cancelled_half_way_leave_the_connection_whole(
    tmp_path: Path, muxer: str
) -> None:
    async with (
        muxed_host(tmp_path / "server", muxer) as (server, seen),
        muxed_host(tmp_path / "client", muxer) as (client, _),
    ):
        received = 0

        async def sink(stream: Any) -> None:
            nonlocal received
            with contextlib.suppress(Exception):
                while data := await stream.read(65536):
                    received += len(data)

        async def echo(stream: Any) -> None:
            await stream.write(await stream.read(64))
            await stream.close()

        server.set_stream_handler(SINK, sink)
        server.set_stream_handler(ECHO, echo)
        await client.connect(loopback_addr(server))
        stream = await client.new_stream(server.peer_id, [SINK])
        for n in range(200):
            # Cancelled after 0..19 trips through the run loop: somewhere on its way down,
            # sooner or later between Noise's encryption and the socket.
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def write(scope: trio.CancelScope = scope, size: int = 1000 + n) -> None:
                    with scope, contextlib.suppress(Exception):
                        await stream.write(b"x" * size)

                nursery.start_soon(write)
                for _ in range(n % 20):
                    await trio.lowlevel.checkpoint()
                scope.cancel()
            if not server.is_connected(client.peer_id):
                break
        assert f"{muxer}_protocol" not in seen.limits
        assert server.is_connected(client.peer_id)
        probe = await client.new_stream(server.peer_id, [ECHO])
        await probe.write(b"still whole")
        with trio.fail_after(30):
            assert await probe.read(64) == b"still whole"
        await wait_until(lambda: received > 0)


class _StuckConn:
    """A secured connection whose peer reads nothing: a write never ends."""

    def __init__(self) -> None:
        self.closed = False

    async def write(self, data: bytes) -> None:
        await trio.sleep_forever()

    async def close(self) -> None:
        self.closed = True


async def test_a_shielded_write_is_bounded_in_time_and_then_closes_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shield keeps a write whole, not forever: a caller cancelled meanwhile still waits,
    # until WRITE_SECONDS, and then the connection is closed.
    assert 0 < whole_writes.WRITE_SECONDS <= 60
    monkeypatch.setattr(whole_writes, "WRITE_SECONDS", 0.3)
    conn = _StuckConn()
    guard = yamux_guard.YamuxFrameGuard(
        SimpleNamespace(secured_conn=conn),  # type: ignore[arg-type]
        StreamLimits(),
        lambda limit: None,
        lambda reason, size: None,
    )
    started = trio.current_time()
    with trio.move_on_after(0.05), pytest.raises(RawConnError):
        await guard.write(b"frame")
    assert trio.current_time() - started >= 0.3
    assert conn.closed
