"""The attacker of the muxer tests: a plain py-libp2p host (Noise and one muxer, none of
p2pchat's guards: those are installed per P2PHost) connected to the victim, whose muxed
connection the attacks drive at the frame level.

Yamux frames are written with the connection's own frame writer (``_write_frame``: one lock,
whole frames), so they interleave correctly with what the attacker's library sends itself
(identify, pings, ACKs). Mplex frames likewise go through the connection's ``write_to_stream``.
Everything goes to 127.0.0.1 only: the victim's own address.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from p2pchat.node.wire.framing import encode_uvarint

from tests.hostile.connections_attacks import MULTISTREAM, delimited

YAMUX = struct.Struct("!BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


def yamux_frame(kind: int, flags: int, stream_id: int, length: int, body: bytes = b"") -> bytes:
    """One Yamux frame: the 12-byte header, then ``body`` (DATA only)."""
    return YAMUX.pack(0, kind, flags, stream_id, length) + body


def mplex_frame(channel: int, flag: int, body: bytes) -> bytes:
    """One Mplex frame: varint header (channel << 3 | flag), varint length, body."""
    return encode_uvarint(channel << 3 | flag) + encode_uvarint(len(body)) + body


MPLEX_NEW_STREAM, MPLEX_MESSAGE_INITIATOR, MPLEX_RESET_INITIATOR = 0, 2, 6


@asynccontextmanager
async def muxed_connection(
    victim_addr: str, muxer: str = "yamux", key_pair: KeyPair | None = None
) -> AsyncIterator[Any]:
    """A connection to the victim over Noise and ``muxer`` ("yamux" or "mplex"): its muxed
    connection (the library's Yamux or Mplex object), for frames written by hand. As the peer
    of ``key_pair`` (several connections of one peer), or of a new key each time."""
    key_pair = key_pair or create_new_key_pair()
    noise = NoiseTransport(key_pair, noise_privkey=create_x25519_key_pair().private_key)
    muxers: dict[TProtocol, Any] = (
        {TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        if muxer == "yamux"
        else {TProtocol(MPLEX_PROTOCOL_ID): Mplex}
    )
    host = new_host(
        key_pair=key_pair, sec_opt={TProtocol(NOISE_PROTOCOL_ID): noise}, muxer_opt=muxers
    )
    info = info_from_p2p_addr(multiaddr.Multiaddr(victim_addr))
    async with host.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with trio.fail_after(30):
            await host.connect(info)
        muxed = host.get_network().get_connections(info.peer_id)[0].muxed_conn
        if isinstance(muxed, Mplex):
            # The library's Mplex writes are not serialized, and two writers at once garble
            # the Noise session: the attacker's frames must arrive as it sent them.
            write, lock = muxed.write_to_stream, trio.Lock()

            async def write_to_stream(data: bytes) -> None:
                async with lock:
                    await write(data)

            muxed.write_to_stream = write_to_stream
        yield muxed


async def send_raw(muxed: Any, data: bytes) -> bool:
    """Write ``data`` (whole frames) on the attacker's connection; False once it is closed."""
    try:
        if isinstance(muxed, Yamux):
            await muxed._write_frame(data)
        else:
            await muxed.write_to_stream(data)
    except Exception:  # the victim closed the connection: what several attacks wait for
        return False
    return True


def closed(muxed: Any) -> bool:
    """Whether the victim has closed the attacker's connection."""
    return bool(muxed.event_shutting_down.is_set() or muxed.is_closed)


# --- the attacks: each runs for about ``seconds`` and returns its figures -----------------------


async def window_overrun(victim_addr: str, seconds: float) -> dict[str, Any]:
    """Open a stream for identify (the victim answers and never reads it again), then send
    64 KiB DATA frames on it without waiting for a single window update; again on a new
    connection each time the victim closes one, for ``seconds``."""
    sent = connections = closed_by_victim = 0
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr) as muxed:
                stream_id = 1_000_001
                await send_raw(muxed, yamux_frame(WINDOW_UPDATE, SYN, stream_id, 0))
                hello = delimited(MULTISTREAM) + delimited(b"/ipfs/id/1.0.0\n")
                await send_raw(muxed, yamux_frame(DATA, 0, stream_id, len(hello), hello))
                await trio.sleep(0.2)
                burst = yamux_frame(DATA, 0, stream_id, 65536, b"x" * 65536) * 16
                while not closed(muxed) and await send_raw(muxed, burst):
                    sent += len(burst)
                await _until_closed(muxed)
                closed_by_victim += closed(muxed)
    return {
        "sent_mib_per_connection": round(sent / 2**20 / connections, 1),
        "connections": connections,
        "closed_by_victim": closed_by_victim,
    }


async def _until_closed(muxed: Any, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not closed(muxed):
            await trio.sleep(0.05)


async def yamux_open_and_reset(victim_addr: str, seconds: float) -> dict[str, Any]:
    """Streams opened (SYN) in batches of 1000 and reset a moment later, connection after
    connection, for ``seconds`` (the audit's 200,000 open-and-reset streams, scaled)."""
    opened = connections = 0
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr) as muxed:
                stream_id = 1_000_001
                while True:
                    ids = range(stream_id, stream_id + 2000, 2)
                    stream_id += 2000
                    syns = b"".join(yamux_frame(WINDOW_UPDATE, SYN, i, 0) for i in ids)
                    resets = b"".join(yamux_frame(WINDOW_UPDATE, RST, i, 0) for i in ids)
                    # (writes to a connection the victim closed vanish without an error)
                    if closed(muxed) or not await send_raw(muxed, syns):
                        break
                    await trio.sleep(0.05)
                    if closed(muxed) or not await send_raw(muxed, resets):
                        break
                    opened += len(ids)
    return {"streams_opened": opened, "connections": connections}


async def mplex_stream_flood(victim_addr: str, seconds: float) -> dict[str, Any]:
    """New Mplex streams, 1000 a batch, never used nor closed, connection after connection
    (the audit's 50,000 Mplex streams, scaled to ``seconds``)."""
    opened = connections = 0
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr, "mplex") as muxed:
                channel = 100_000
                while True:
                    batch = b"".join(
                        mplex_frame(channel + i, MPLEX_NEW_STREAM, b"") for i in range(1000)
                    )
                    channel += 1000
                    if not await send_raw(muxed, batch):
                        break
                    opened += 1000
                    await trio.sleep(0.01)
                    if closed(muxed):
                        break
    return {"streams_opened": opened, "connections": connections}


async def ping_flood(victim_addr: str, seconds: float) -> dict[str, Any]:
    """Yamux pings, 5000 a write, as fast as the connection takes them; again on a new
    connection each time the victim closes one, for ``seconds``."""
    pings = connections = closed_by_victim = 0
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr) as muxed:
                while not closed(muxed):
                    batch = b"".join(yamux_frame(PING, SYN, 0, i) for i in range(5000))
                    if not await send_raw(muxed, batch):
                        break
                    pings += 5000
                await _until_closed(muxed)
                closed_by_victim += closed(muxed)
    return {"pings_sent": pings, "connections": connections, "closed_by_victim": closed_by_victim}


async def endless_negotiations(victim_addr: str, seconds: float) -> dict[str, Any]:
    """Three never-ending multistream-select negotiations, each on streams that respect the
    window (the victim reads what it is sent): a protocol id announced at 1 GiB and sent for
    ``seconds``; proposals of unknown protocols and "ls", one after the other, for
    ``seconds``; and 32 streams that say nothing after the header (held until the victim
    gives up on them, or ``seconds`` + 15)."""
    outcome: dict[str, Any] = {}
    async with muxed_connection(victim_addr) as muxed:

        async def huge_protocol_id() -> None:
            stream = await muxed.open_stream()
            sent = 0
            try:
                await stream.write(delimited(MULTISTREAM) + encode_uvarint(1 << 30))
                with trio.move_on_after(seconds):
                    while True:
                        await stream.write(b"/" * 65536)
                        sent += 65536
            except Exception:
                pass  # reset by the victim: what the bound does
            outcome["huge_id_sent_mib"] = round(sent / 2**20, 1)

        async def endless_proposals() -> None:
            stream = await muxed.open_stream()
            proposals = 0
            try:
                await stream.write(delimited(MULTISTREAM))
                with trio.move_on_after(seconds):
                    while True:
                        await stream.write(delimited(b"/nothing/%d\n" % proposals))
                        await stream.write(delimited(b"ls\n"))
                        proposals += 2
                        await trio.sleep(0.001)
            except Exception:
                pass
            outcome["proposals_sent"] = proposals

        async def silent(index: int, ended: list[int]) -> None:
            stream = await muxed.open_stream()
            await stream.write(delimited(MULTISTREAM))
            with trio.move_on_after(seconds + 15) as waiting:
                await _read_to_the_end(stream)
            if not waiting.cancelled_caught:
                ended.append(index)

        ended: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(huge_protocol_id)
            nursery.start_soon(endless_proposals)
            for index in range(32):
                nursery.start_soon(silent, index, ended)
        outcome["silent_streams_ended_by_victim"] = len(ended)
    return outcome


async def length_bombs(victim_addr: str, protocols: list[str], seconds: float) -> dict[str, Any]:
    """On each of ``protocols`` (negotiated properly), a varint longer than 10 bytes, and a
    length of 2**40; then on a bare stream, the same two in place of a protocol id, and a
    message that is not multistream-select; a round of these every 0.2 s for ``seconds``.
    Returns how many of these streams the victim ended (reset or closed) within 30 s, and which
    it did not."""
    bombs = [b"\xff" * 11, encode_uvarint(1 << 40) + b"x" * 1024]
    ended = total = 0
    not_ended: set[str] = set()
    async with muxed_connection(victim_addr) as muxed:

        async def one(prefix: bytes, bomb: bytes) -> None:
            nonlocal ended, total
            total += 1
            stream = await muxed.open_stream()
            with trio.move_on_after(30) as waiting:
                with contextlib.suppress(Exception):  # reset by the victim already
                    await stream.write(prefix + bomb)
                await _read_to_the_end(stream)
            if not waiting.cancelled_caught:
                ended += 1
            else:
                not_ended.add(repr(prefix[-24:] + bomb[:12]))

        rounds = [
            (delimited(MULTISTREAM) + delimited(protocol.encode() + b"\n"), bomb)
            for protocol in protocols
            for bomb in bombs
        ]
        # Not multistream-select: a message without its newline.
        rounds += [(delimited(MULTISTREAM), bomb) for bomb in [*bombs, b"\x03abc"]]
        async with trio.open_nursery() as nursery:
            end = trio.current_time() + seconds
            while trio.current_time() < end:
                for prefix, bomb in rounds:
                    nursery.start_soon(one, prefix, bomb)
                await trio.sleep(0.2)
    return {"bomb_streams": total, "ended_by_victim": ended, "not_ended": sorted(not_ended)}


async def _read_to_the_end(stream: Any) -> None:
    """Read ``stream`` until the victim ends it (closes or resets it)."""
    try:
        while await stream.read(4096):
            pass
    except Exception:
        return  # reset, or closed: ended either way


async def mplex_unread_stream(victim_addr: str, seconds: float) -> dict[str, Any]:
    """An Mplex stream for identify (the victim answers and never reads it again), then 64 KiB
    messages on it as fast as the connection takes them: Mplex has no window, so only the
    victim's per-stream buffer bound stops it. A new stream each time the victim resets one,
    for ``seconds``."""
    sent = streams = 0
    async with muxed_connection(victim_addr, "mplex") as muxed:
        channel = 100_000
        with trio.move_on_after(seconds):
            while not closed(muxed):
                channel += 1
                streams += 1
                hello = delimited(MULTISTREAM) + delimited(b"/ipfs/id/1.0.0\n")
                opening = mplex_frame(channel, MPLEX_NEW_STREAM, b"") + mplex_frame(
                    channel, MPLEX_MESSAGE_INITIATOR, hello
                )
                if not await send_raw(muxed, opening):
                    break
                message = mplex_frame(channel, MPLEX_MESSAGE_INITIATOR, b"x" * 65536)
                # Until the victim resets it (it answers RST, which the attacker's muxer reads),
                # 6 s at most: the victim's reader bound is 5 s.
                with trio.move_on_after(6):
                    for _ in range(2000):
                        if not await send_raw(muxed, message):
                            break
                        sent += len(message)
    return {"sent_mib": round(sent / 2**20, 1), "streams": streams}


async def garbled_noise(victim_addr: str, muxer: str, seconds: float) -> dict[str, Any]:
    """After the handshake, a Noise message that fails authentication (random bytes), on a new
    connection each time the victim closes one, for ``seconds``."""
    connections = closed_by_victim = 0
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr, muxer) as muxed:
                packets = muxed.secured_conn.conn.read_writer  # under the Noise encryption
                with contextlib.suppress(Exception):
                    await packets.write_msg(os.urandom(64))
                await _until_closed(muxed)
                closed_by_victim += closed(muxed)
    return {"connections": connections, "closed_by_victim": closed_by_victim}


async def held_streams(victim_addr: str, protocol: str, count: int, hold: float) -> dict[str, Any]:
    """``count`` streams negotiated for ``protocol`` at once, each then silent and held for up
    to ``hold`` seconds: how many the victim ended (reset or closed), within 5 s and after 9 s."""
    ended_after: list[float] = []
    async with muxed_connection(victim_addr) as muxed:
        start = trio.current_time()

        async def one() -> None:
            stream = await muxed.open_stream()
            await stream.write(delimited(MULTISTREAM) + delimited(protocol.encode() + b"\n"))
            with trio.move_on_after(hold) as holding:
                await _read_to_the_end(stream)
            if not holding.cancelled_caught:
                ended_after.append(round(trio.current_time() - start, 1))

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
    return {
        "held": count,
        "ended": len(ended_after),
        "ended_within_5s": sum(seconds < 5 for seconds in ended_after),
        "ended_after_9s": sum(seconds >= 9 for seconds in ended_after),
    }


async def go_away_and_go_on(victim_addr: str, seconds: float) -> dict[str, Any]:
    """GO_AWAY, then 1000 new streams and 640 KiB of data as if nothing had been said, on a new
    connection each time the victim closes one, for ``seconds``."""
    connections = closed_by_victim = 0
    after = b"".join(yamux_frame(WINDOW_UPDATE, SYN, 1_000_001 + 2 * i, 0) for i in range(1000))
    after += yamux_frame(DATA, 0, 1_000_001, 65536, b"x" * 65536) * 10
    with trio.move_on_after(seconds):
        while True:
            connections += 1
            async with muxed_connection(victim_addr) as muxed:
                await send_raw(muxed, yamux_frame(GO_AWAY, 0, 0, 0) + after)
                await _until_closed(muxed)
                closed_by_victim += closed(muxed)
    return {"connections": connections, "closed_by_victim": closed_by_victim}


async def send_and_reset(
    victim_addr: str,
    seconds: float,
    peers: int,
    connections_per_peer: int,
    protocol: bytes = b"/p2pchat/no-such-protocol/1.0.0",
    ending: str = "reset",
    prefix: bytes = b"",
) -> dict[str, Any]:
    """Streams that each carry a full initial window (256 KiB: a multistream header, a protocol
    the victim does not speak, then zeros) the victim never reads, and are then reset: every
    other one by the attacker, the rest left for the victim to reset (the zeros are not
    multistream-select). Or on ``protocol``, after ``prefix`` (a length bomb), and closed
    (``ending="fin"``). ``peers`` PeerIds, each on ``connections_per_peer`` connections at
    once, each at 48 streams a second (under the victim's open rate: only the unread bytes
    matter here), a new connection each time the victim closes one, for ``seconds``."""
    window = 256 * 1024
    head = delimited(MULTISTREAM) + delimited(protocol + b"\n") + prefix
    body = head + bytes(window - len(head))
    opened = connections = closed_by_victim = 0

    async def one_connection(key_pair: KeyPair, end: float) -> None:
        # (not cancelled from outside: each connection leaves as a peer does, closed)
        nonlocal opened, connections, closed_by_victim
        while trio.current_time() < end:
            connections += 1
            async with muxed_connection(victim_addr, key_pair=key_pair) as muxed:
                stream_id = 1_000_001
                while not closed(muxed) and trio.current_time() < end:
                    fin = FIN if ending == "fin" else 0
                    frames = yamux_frame(DATA, SYN | fin, stream_id, window, body)
                    if ending == "reset" and opened % 2 == 0:
                        frames += yamux_frame(WINDOW_UPDATE, RST, stream_id, 0)
                    if not await send_raw(muxed, frames):
                        break
                    opened += 1
                    stream_id += 2
                    await trio.sleep(1 / 48)
                closed_by_victim += closed(muxed)
                # (the library's host leaves its connections' sockets to the garbage collector)
                with contextlib.suppress(Exception):
                    await muxed.close()

    end = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for _ in range(peers):
            key_pair = create_new_key_pair()
            for _ in range(connections_per_peer):
                nursery.start_soon(one_connection, key_pair, end)
    return {
        "streams_opened": opened,
        "sent_mib": round(opened * window / 2**20, 1),
        "connections": connections,
        "closed_by_victim": closed_by_victim,
    }
