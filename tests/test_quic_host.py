"""QUIC through the host layer, in-process (#20): two hosts on 127.0.0.1 over real UDP.

What py-libp2p 0.8.1's QUIC transport must do for p2pchat, checked one by one: listen on
``/udp/<port>/quic-v1``, dial it, authenticate the peer (TLS with the libp2p certificate
extension, no Noise), carry identify and many concurrent streams, and be labelled ``quic`` in the
connection metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from p2pchat.node.p2p.host import HostSettings, IdentifyReceived, P2PHost, Stream
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.test_host import RecordingObserver

QUIC = ("/ip4/127.0.0.1/udp/0/quic-v1",)
ECHO = "/p2pchat/test-echo/1.0.0"


@asynccontextmanager
async def quic_host(
    data_dir: Path, listen: tuple[str, ...] = QUIC
) -> AsyncIterator[tuple[P2PHost, RecordingObserver]]:
    observer = RecordingObserver()
    host = P2PHost(load_or_create_identity(data_dir), HostSettings(listen=listen), observer)
    async with host.run():
        yield host, observer


def quic_addr(host: P2PHost) -> str:
    return next(a for a in host.advertised_addrs() if "/quic-v1/" in a)


async def wait_until(check: Callable[[], object], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def echo(stream: Stream) -> None:
    data = await stream.read(1024)
    await stream.write(data)
    await stream.close()


async def test_two_hosts_connect_identify_and_stream_over_quic(tmp_path: Path) -> None:
    async with (
        quic_host(tmp_path / "a") as (a, a_seen),
        quic_host(tmp_path / "b") as (b, b_seen),
    ):
        assert a.listen_addrs() and all("/udp/" in x for x in a.listen_addrs())
        a.set_stream_handler(ECHO, echo)
        received: list[IdentifyReceived] = []
        b.watch_identify(received.append)
        assert await b.connect(quic_addr(a)) == a.peer_id
        await wait_until(lambda: a_seen.opened and b_seen.opened)
        assert (b_seen.opened[0].transport, b_seen.opened[0].direction) == ("quic", "outbound")
        assert (a_seen.opened[0].transport, a_seen.opened[0].direction) == ("quic", "inbound")
        assert a_seen.opened[0].peer_id == b.peer_id  # the TLS handshake authenticated b
        await wait_until(lambda: any(e.peer_id == a.peer_id for e in received))
        assert ECHO in b.peer_protocols(a.peer_id)

        answers: list[bytes] = []

        async def ask(i: int) -> None:
            stream = await b.new_stream(a.peer_id, [ECHO])
            await stream.write(f"hello {i}".encode())
            answers.append(await stream.read(1024))
            await stream.close()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(ask, i)
        assert sorted(answers) == sorted(f"hello {i}".encode() for i in range(20))
