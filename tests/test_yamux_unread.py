"""Unread bytes of Yamux streams nobody will read are dropped (node/p2p/yamux_unread.py), and
only those: a stream whose handler returned but left its side open (handed on, as the stop
protocol hands its stream to a relayed connection) keeps every byte for whoever reads it."""

from __future__ import annotations

from pathlib import Path

import trio
from p2pchat.node.p2p.streams import Stream

from tests.test_host import loopback_addr, running_host, wait_until

CLOSED = "/test/answer-and-close/1.0.0"
HANDED_ON = "/test/hand-on/1.0.0"
PAYLOAD = b"x" * 100_000  # within the 256 KiB window: the peer sends it all at once


async def test_a_handler_that_closes_drops_what_it_left_unread_one_that_hands_on_keeps_it(
    tmp_path: Path,
) -> None:
    handed_on: list[Stream] = []
    async with (
        running_host(tmp_path / "server", ("/ip4/127.0.0.1/tcp/0",)) as (server, observer),
        running_host(tmp_path / "client", ("/ip4/127.0.0.1/tcp/0",)) as (client, _),
    ):

        async def answer_and_close(stream: Stream) -> None:
            await stream.read(10)  # the start of the request; the rest is never read
            await stream.write(b"answer")
            await stream.close()

        async def hand_on(stream: Stream) -> None:
            handed_on.append(stream)  # read later by someone else
            await trio.sleep(0.5)  # the bytes have arrived when the handler returns

        server.set_stream_handler(CLOSED, answer_and_close)
        server.set_stream_handler(HANDED_ON, hand_on)
        await client.connect(loopback_addr(server))

        stream = await client.new_stream(server.peer_id, [CLOSED])
        await stream.write(PAYLOAD)
        await stream.close()
        with trio.fail_after(10):
            assert await stream.read(64) == b"answer"
        # What the handler left unread is gone once it returned (the library: 60-90 s).
        await wait_until(lambda: observer.dropped_unread >= len(PAYLOAD) - 10 - 4096)

        dropped = observer.dropped_unread
        stream = await client.new_stream(server.peer_id, [HANDED_ON])
        await stream.write(PAYLOAD)  # (the stream stays open: a relayed connection's would)
        await wait_until(lambda: bool(handed_on))
        await trio.sleep(1.0)  # the handler has returned; the bytes wait for their reader
        received = b""
        with trio.fail_after(10):
            while len(received) < len(PAYLOAD):
                received += await handed_on[0].read(65536)
        assert received == PAYLOAD
        assert observer.dropped_unread == dropped
