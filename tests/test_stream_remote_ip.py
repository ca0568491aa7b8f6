"""A stream's remote IP, IPv4 and IPv6, over TCP and WebSocket (py-libp2p answers None for every
IPv6 connection and every WebSocket one)."""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p.host import Stream
from p2pchat.node.p2p.streams import stream_origin

from tests.hostile.services_attacks import require_ipv6_loopback
from tests.test_host import running_host

PROTOCOL = "/p2pchat-test/origin/1"


async def test_a_peer_connected_over_ipv6_is_seen_at_its_address(tmp_path: Path) -> None:
    require_ipv6_loopback()
    seen: list[str | None] = []
    listen = ("/ip4/127.0.0.1/tcp/0", "/ip6/::1/tcp/0")
    async with (
        running_host(tmp_path / "server", listen=listen) as (server, _),
        running_host(tmp_path / "v6", listen=("/ip6/::1/tcp/0",)) as (v6, _),
        running_host(tmp_path / "v4", listen=("/ip4/127.0.0.1/tcp/0",)) as (v4, _),
    ):

        async def handle(stream: Stream) -> None:
            seen.append(stream_origin(stream).remote_ip)
            await stream.close()

        server.set_stream_handler(PROTOCOL, handle)
        for client, family in ((v6, "/ip6/"), (v4, "/ip4/")):
            addr = next(a for a in server.advertised_addrs() if a.startswith(family))
            await client.connect(addr)
            with trio.fail_after(20):
                stream = await client.new_stream(server.peer_id, [PROTOCOL])
                while len(seen) < (1 if family == "/ip6/" else 2):
                    await trio.sleep(0.02)
            await stream.close()
    assert seen == ["::1", "127.0.0.1"]


async def test_a_peer_connected_over_websocket_is_seen_at_its_address(tmp_path: Path) -> None:
    # Both directions: the stream the server accepts and the one the client opened.
    seen: list[str | None] = []
    listen = ("/ip4/127.0.0.1/tcp/0/ws",)
    async with (
        running_host(tmp_path / "server", listen=listen) as (server, _),
        running_host(tmp_path / "client", listen=listen) as (client, _),
    ):

        async def handle(stream: Stream) -> None:
            seen.append(stream_origin(stream).remote_ip)
            await stream.close()

        server.set_stream_handler(PROTOCOL, handle)
        addr = next(a for a in server.advertised_addrs() if "/ws" in a)
        await client.connect(addr)
        with trio.fail_after(20):
            stream = await client.new_stream(server.peer_id, [PROTOCOL])
            while not seen:
                await trio.sleep(0.02)
        seen.append(stream_origin(stream).remote_ip)
        await stream.close()
    assert seen == ["127.0.0.1", "127.0.0.1"]
