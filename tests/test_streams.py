"""The project's streams: framed reads (what each reader takes, and what it leaves for the
next), and the host layer's mapping of py-libp2p's streams and their errors.

A relay's STATUS OK is followed at once by the relayed connection's first bytes, which may sit
in the same Yamux frame batch (seen as flaky circuit setups once TCP reads came in chunks): the
reader of the STATUS must not take them.

The mapping is shown on real hosts over TCP on 127.0.0.1 (and a relay process for a relayed
stream): protocol code sees only :class:`Stream` and the project's errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from p2pchat.node.p2p.circuit import request_reservation, serve_circuits
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.streams import (
    Stream,
    StreamClosed,
    StreamEnded,
    StreamError,
    StreamIdle,
    StreamRefused,
    StreamReset,
    close_quietly,
    read_frame,
    read_frame_exactly,
    read_frame_within,
    read_single_frame,
    reset_quietly,
    stream_origin,
    write_quietly,
)
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge, frame

from tests.conftest import NodeProcess
from tests.test_host import loopback_addr, running_host
from tests.test_relay import relay_node

PROTOCOL = "/p2pchat-test/streams/1.0.0"


class _BufferedStream:
    """A stream holding ``data``; a read returns 1 to ``n`` bytes of it, as :class:`Stream`'s
    do, and raises StreamEnded once it is empty."""

    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)

    async def read(self, n: int) -> bytes:
        if not self.data:
            raise StreamEnded("the end")
        taken = bytes(self.data[:n])
        del self.data[:n]
        return taken


async def test_an_exact_read_leaves_the_bytes_after_the_frame_in_the_stream() -> None:
    status = frame(b"\x08\x01" + b"s" * 300)  # a two-byte length prefix
    stream = _BufferedStream(status + b"/multistream/1.0.0\n")
    assert await read_frame_exactly(stream, 4096) == b"\x08\x01" + b"s" * 300  # type: ignore[arg-type]
    assert bytes(stream.data) == b"/multistream/1.0.0\n"


async def test_an_exact_read_refuses_oversized_and_cut_frames() -> None:
    with pytest.raises(FrameTooLarge):
        await read_frame_exactly(_BufferedStream(frame(b"x" * 5000)), 4096)  # type: ignore[arg-type]
    with pytest.raises(StreamEnded):
        await read_frame_exactly(_BufferedStream(frame(b"cut")[:-1]), 4096)  # type: ignore[arg-type]


async def test_a_single_frame_read_refuses_what_follows_and_a_frame_read_keeps_it() -> None:
    two = frame(b"first") + frame(b"second")
    with pytest.raises(FrameError):
        await read_single_frame(_BufferedStream(two), 4096)  # type: ignore[arg-type]
    stream, decoder = _BufferedStream(two), FrameDecoder(4096)
    assert await read_frame(stream, decoder) == b"first"  # type: ignore[arg-type]
    assert await read_frame(stream, decoder) == b"second"  # type: ignore[arg-type]


class _HeldStream(_BufferedStream):
    """A stream whose peer sent ``data`` and then holds it open, sending nothing more."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.was_reset = False

    async def read(self, n: int) -> bytes:
        if not self.data:
            await trio.sleep_forever()
        return await super().read(n)

    async def reset(self) -> None:
        self.was_reset = True


async def test_a_frame_read_with_a_deadline_resets_a_stream_that_holds_half_a_frame() -> None:
    whole = _HeldStream(frame(b"hello"))
    assert await read_frame_within(whole, FrameDecoder(64), 5.0) == b"hello"  # type: ignore[arg-type]
    half = _HeldStream(frame(b"hello")[:3])
    with trio.fail_after(5), pytest.raises(StreamIdle):
        await read_frame_within(half, FrameDecoder(64), 0.05)  # type: ignore[arg-type]
    assert half.was_reset


def test_bytes_wanted_counts_down_to_the_end_of_the_frame() -> None:
    decoder = FrameDecoder(4096)
    assert decoder.bytes_wanted == 1  # nothing yet: the length comes first
    assert decoder.next_frame(b"\x85") is None
    assert decoder.bytes_wanted == 1  # the length continues
    assert decoder.next_frame(b"\x01") is None  # 133 bytes announced
    assert decoder.bytes_wanted == 133
    assert decoder.next_frame(b"x" * 100) is None
    assert decoder.bytes_wanted == 33
    assert decoder.next_frame(b"x" * 33) == b"x" * 133
    assert decoder.bytes_wanted == 1


# --- the host layer's streams -------------------------------------------------------------------


@asynccontextmanager
async def _pair(tmp_path: Path) -> AsyncIterator[tuple[P2PHost, P2PHost, Stream, Stream]]:
    """Two connected hosts and one stream between them: (client, server, the client's end,
    the server's end as its handler got it). The handler holds its end until the test ends."""
    async with (
        running_host(tmp_path / "server") as (server, _),
        running_host(tmp_path / "client") as (client, _),
    ):
        send, accepted = trio.open_memory_channel[Stream](1)
        done = trio.Event()

        async def handler(stream: Stream) -> None:
            await send.send(stream)
            await done.wait()

        server.set_stream_handler(PROTOCOL, handler)
        await client.connect(loopback_addr(server))
        with trio.fail_after(30):
            ours = await client.new_stream(server.peer_id, [PROTOCOL])
            await ours.write(b"hello")  # the server's handler runs once the stream is used
            theirs = await accepted.receive()
        try:
            yield client, server, ours, theirs
        finally:
            done.set()


async def test_a_handler_gets_a_project_stream_that_knows_its_remote_end(tmp_path: Path) -> None:
    async with _pair(tmp_path) as (client, server, ours, theirs):
        assert isinstance(theirs, Stream) and isinstance(ours, Stream)
        assert theirs.remote_peer == client.peer_id
        assert ours.remote_peer == server.peer_id
        assert not theirs.relayed and not ours.relayed
        assert theirs.remote_ip == "127.0.0.1"
        assert stream_origin(theirs).peer_id == client.peer_id
        assert theirs.protocol == PROTOCOL == ours.protocol
        with trio.fail_after(30):
            assert await theirs.read(64) == b"hello"
            await theirs.write(b"back")
            assert await ours.read(64) == b"back"


async def test_a_closed_stream_ends_for_the_reader_and_refuses_writes(tmp_path: Path) -> None:
    async with _pair(tmp_path) as (_, _, ours, theirs):
        await ours.close()
        with trio.fail_after(30):
            assert await theirs.read(64) == b"hello"  # what was written before the close
            with pytest.raises(StreamEnded) as ended:
                await theirs.read(64)
        assert type(ended.value) is StreamEnded  # an end, not a reset
        with pytest.raises(StreamEnded):
            await read_frame(theirs, FrameDecoder(64))
        with pytest.raises(StreamClosed):
            await ours.write(b"more")
        # Half-closed: the other direction still works.
        with trio.fail_after(30):
            await theirs.write(b"still")
            assert await ours.read(64) == b"still"


async def test_a_reset_stream_raises_stream_reset_on_both_ends(tmp_path: Path) -> None:
    async with _pair(tmp_path) as (_, _, ours, theirs):
        with trio.fail_after(30):
            assert await theirs.read(64) == b"hello"
            await theirs.reset()
            with pytest.raises(StreamReset):
                await ours.read(64)
        with pytest.raises(StreamReset):
            await ours.write(b"more")
        with pytest.raises(StreamReset):  # and on the end that reset it
            await theirs.read(64)
        with pytest.raises(StreamReset):
            await theirs.write(b"more")
        # The quiet helpers stay quiet on it; a reset is a StreamEnded for frame readers.
        await write_quietly(ours, b"x")
        await close_quietly(ours)
        await reset_quietly(ours)
        with pytest.raises(StreamEnded):
            await read_single_frame(ours, 64)


async def test_a_stream_nobody_serves_is_refused_with_the_projects_error(tmp_path: Path) -> None:
    async with (
        running_host(tmp_path / "server") as (server, _),
        running_host(tmp_path / "client") as (client, _),
        running_host(tmp_path / "stranger") as (stranger, _),
    ):
        await client.connect(loopback_addr(server))
        with trio.fail_after(30):
            with pytest.raises(StreamRefused) as refused:
                await client.new_stream(server.peer_id, ["/nobody/speaks/1.0.0", "/nor/this"])
            assert "/nobody/speaks/1.0.0" in str(refused.value)
            # A peer neither connected nor known (no address to dial).
            with pytest.raises(StreamRefused):
                await client.new_stream(stranger.peer_id, [PROTOCOL])
            with pytest.raises(StreamRefused):
                await client.new_stream("not-a-peer-id!", [PROTOCOL])
        # The host serves on: same connection, a protocol the server speaks.
        server.set_stream_handler(PROTOCOL, _close_at_once)
        with trio.fail_after(30):
            stream = await client.new_stream(server.peer_id, [PROTOCOL])
        assert isinstance(stream, Stream) and issubclass(StreamRefused, StreamError)
        await close_quietly(stream)


async def _close_at_once(stream: Stream) -> None:
    await stream.close()


async def test_a_stream_over_a_relay_circuit_is_marked_relayed_without_an_ip(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes)
    async with (
        running_host(tmp_path / "destination") as (destination, _),
        running_host(tmp_path / "source") as (source, _),
    ):
        send, accepted = trio.open_memory_channel[Stream](1)
        done = trio.Event()

        async def handler(stream: Stream) -> None:
            await send.send(stream)
            await done.wait()

        serve_circuits(destination)
        destination.set_stream_handler(PROTOCOL, handler)
        with trio.fail_after(60):
            await destination.connect(relay.addr())
            await request_reservation(destination, relay.peer_id)
            await source.connect(f"{relay.addr()}/p2p-circuit/p2p/{destination.peer_id}")
            ours = await source.new_stream(destination.peer_id, [PROTOCOL])
            await ours.write(b"via the relay")
            theirs = await accepted.receive()
            assert await theirs.read(64) == b"via the relay"
        try:
            assert ours.relayed and theirs.relayed
            assert theirs.remote_peer == source.peer_id
            assert ours.remote_peer == destination.peer_id
            # Beneath a circuit is the relay's address, not the peer's: no IP is claimed.
            assert theirs.remote_ip is None and stream_origin(theirs).remote_ip is None
        finally:
            done.set()
