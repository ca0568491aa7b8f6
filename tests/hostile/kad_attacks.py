"""A Kad-DHT attacker: in-process py-libp2p hosts (one connection, one PeerId each) that speak
raw Kad protobuf frames on ``/ipfs/kad/1.0.0`` streams to a victim on 127.0.0.1.

:func:`start` runs one attack in a thread of its own (its own trio loop), so the test's thread
can meanwhile start honest peers and read the victim's metrics. The attack runs until stopped
(:meth:`Attacker.stop`) and then leaves: every host is closed, so the victim's fds can come
back.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from p2pchat.node.p2p.dht import PROTOCOL_ID
from p2pchat.node.p2p.host import HostSettings, P2PHost
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.streams import StreamError, read_frame
from p2pchat.node.wire.framing import FrameDecoder, FrameError, encode_uvarint, frame

from tests.test_host import RecordingObserver

ANSWER_TIMEOUT = 5.0


@dataclass
class Tally:
    """What the attacker did and what the victim made of it."""

    sent: int = 0  # requests (or held streams) sent
    answered: int = 0  # answers read
    cut: int = 0  # streams the victim reset, refused or ended on us
    seconds: float = 0.0  # how long the attack ran
    errors: list[str] = field(default_factory=list)


Attack = Callable[[P2PHost, str, float, Tally, int], Awaitable[None]]
"""One attacker host's work: (host, victim PeerId, deadline (trio clock), tally, its index)."""


def random_key() -> bytes:
    """A fresh sha2-256 multihash, like a room's key."""
    return b"\x12\x20" + os.urandom(32)


def put_value(size: int) -> bytes:
    key = os.urandom(8).hex().encode()  # no namespace: the library checks none
    message = Message(type=Message.MessageType.PUT_VALUE, key=key)
    message.record.key = key
    message.record.value = os.urandom(size)
    return message.SerializeToString()


def add_provider(host: P2PHost, key: bytes, addrs: int) -> bytes:
    message = Message(type=Message.MessageType.ADD_PROVIDER, key=key)
    provider = message.providerPeers.add()
    provider.id = host.libp2p_host.get_id().to_bytes()
    provider.addrs.extend(
        bytes.fromhex("04") + bytes([127, 0, 0, 1]) + bytes.fromhex("06") + port.to_bytes(2, "big")
        for port in range(4000, 4000 + addrs)
    )
    return message.SerializeToString()


def find_node(target: bytes) -> bytes:
    return Message(type=Message.MessageType.FIND_NODE, key=target).SerializeToString()


def get_providers(key: bytes) -> bytes:
    return Message(type=Message.MessageType.GET_PROVIDERS, key=key).SerializeToString()


async def ask(host: P2PHost, victim: str, request: bytes, tally: Tally) -> bool:
    """One request on a stream of its own; whether it was answered."""
    tally.sent += 1
    try:
        stream = await host.new_stream(victim, [PROTOCOL_ID])
    except StreamError:
        tally.cut += 1
        return False
    try:
        await stream.write(frame(request))
        with trio.fail_after(ANSWER_TIMEOUT):
            await read_frame(stream, FrameDecoder(8 * 1024 * 1024))
        tally.answered += 1
        return True
    except (StreamError, FrameError, trio.TooSlowError):
        tally.cut += 1
        return False
    finally:
        with contextlib.suppress(StreamError):
            await stream.reset()


async def length_bomb(host: P2PHost, victim: str, tally: Tally) -> None:
    """A frame that announces 1 MiB and brings 64 bytes of it."""
    tally.sent += 1
    try:
        stream = await host.new_stream(victim, [PROTOCOL_ID])
    except StreamError:
        tally.cut += 1
        return
    try:
        await stream.write(encode_uvarint(1024 * 1024) + b"\x0a" * 64)
        with trio.fail_after(ANSWER_TIMEOUT):
            await stream.read(1)
        tally.answered += 1  # nothing is ever answered to this
    except (StreamError, trio.TooSlowError):
        tally.cut += 1
    finally:
        with contextlib.suppress(StreamError):
            await stream.reset()


async def put_value_flood(
    host: P2PHost, victim: str, deadline: float, tally: Tally, index: int
) -> None:
    """PUT_VALUE records of 15 KiB as fast as they go (the library stores records up to 1 MiB,
    50,000 of them), and frames announcing 1 MiB (:func:`length_bomb`)."""
    while trio.current_time() < deadline:
        if tally.sent % 4 == 3:
            await length_bomb(host, victim, tally)
        else:
            await ask(host, victim, put_value(15 * 1024), tally)


def add_provider_flood(addrs: int, shared_key: bytes) -> Attack:
    """ADD_PROVIDER for fresh keys (and the room's ``shared_key`` first), each record with
    ``addrs`` addresses."""

    async def flood(host: P2PHost, victim: str, deadline: float, tally: Tally, index: int) -> None:
        await ask(host, victim, add_provider(host, shared_key, addrs), tally)
        while trio.current_time() < deadline:
            await ask(host, victim, add_provider(host, random_key(), addrs), tally)

    return flood


def hold_streams(per_host: int) -> Attack:
    """Hold ``per_host`` streams open, half of them idle and half with a partial frame (a
    length prefix of 1000 bytes and 10 of them); a stream the victim cuts is opened again."""

    async def hold_one(host: P2PHost, victim: str, deadline: float, tally: Tally, n: int) -> None:
        while trio.current_time() < deadline:
            tally.sent += 1
            try:
                stream = await host.new_stream(victim, [PROTOCOL_ID])
                if n % 2:
                    await stream.write(encode_uvarint(1000) + b"x" * 10)
                with trio.move_on_at(deadline):
                    await stream.read(1)  # only ends when the victim cuts the stream
                await stream.reset()
            except StreamError:
                pass
            tally.cut += 1
            await trio.sleep(0.05)

    async def hold(host: P2PHost, victim: str, deadline: float, tally: Tally, index: int) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(per_host):
                nursery.start_soon(hold_one, host, victim, deadline, tally, n)

    return hold


def request_flood(streams: int) -> Attack:
    """FIND_NODE and GET_PROVIDERS requests pipelined on ``streams`` streams as fast as the
    victim answers; a cut stream is opened again."""

    async def pump(host: P2PHost, victim: str, deadline: float, tally: Tally) -> None:
        while trio.current_time() < deadline:
            try:
                stream = await host.new_stream(victim, [PROTOCOL_ID])
            except StreamError:
                tally.cut += 1
                await trio.sleep(0.05)
                continue
            decoder = FrameDecoder(8 * 1024 * 1024)
            try:
                while trio.current_time() < deadline:
                    tally.sent += 1
                    request = (
                        find_node(os.urandom(34)) if tally.sent % 2 else get_providers(random_key())
                    )
                    await stream.write(frame(request))
                    with trio.fail_after(ANSWER_TIMEOUT):
                        await read_frame(stream, decoder)
                    tally.answered += 1
            except (StreamError, FrameError, trio.TooSlowError):
                tally.cut += 1
            with contextlib.suppress(StreamError):
                await stream.reset()

    async def flood(host: P2PHost, victim: str, deadline: float, tally: Tally, index: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(streams):
                nursery.start_soon(pump, host, victim, deadline, tally)

    return flood


MAX_SECONDS = 120.0  # an attack nobody stops ends after this long


async def _attack(
    workdir: Path,
    victim_addr: str,
    peers: int,
    attack: Attack,
    tally: Tally,
    stop: threading.Event,
    started: threading.Event,
) -> None:
    victim = victim_addr.rsplit("/p2p/", 1)[1]
    async with contextlib.AsyncExitStack() as stack:
        hosts = []
        for n in range(peers):
            identity = load_or_create_identity(workdir / f"attacker-{n}")
            host = P2PHost(identity, HostSettings(listen=()), RecordingObserver())
            await stack.enter_async_context(host.run(listen=False))
            await host.connect(victim_addr)
            hosts.append(host)
        deadline = trio.current_time() + MAX_SECONDS
        started.set()
        async with trio.open_nursery() as nursery:
            for index, host in enumerate(hosts):
                nursery.start_soon(attack, host, victim, deadline, tally, index)
            while not stop.is_set() and trio.current_time() < deadline:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
        for host in hosts:
            with contextlib.suppress(Exception):
                await host.disconnect(victim)


@dataclass
class Attacker:
    """An attack running in a thread of its own until :meth:`stop`."""

    thread: threading.Thread
    tally: Tally
    stop_event: threading.Event
    started_at: float

    @property
    def running(self) -> bool:
        return self.thread.is_alive() and not self.stop_event.is_set()

    def stop(self, after: float = 0.0, timeout: float = 60.0) -> None:
        """Stop the attack once it has run ``after`` seconds, and wait for it to end.

        Raises:
            AssertionError: the attack did not end in ``timeout`` seconds, or failed.
        """
        time.sleep(max(0.0, self.started_at + after - time.monotonic()))
        self.stop_event.set()
        self.tally.seconds = time.monotonic() - self.started_at
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the attacker never finished"
        assert not self.tally.errors, self.tally.errors


def start(workdir: Path, victim_addr: str, peers: int, attack: Attack) -> Attacker:
    """Start ``attack`` from ``peers`` PeerIds (one connection each) against ``victim_addr``,
    in a thread of its own; returns once every attacker is connected and the attack began."""
    tally = Tally()
    stop, started = threading.Event(), threading.Event()

    def main() -> None:
        try:
            trio.run(_attack, workdir, victim_addr, peers, attack, tally, stop, started)
        except BaseException as error:  # reported by Attacker.stop
            tally.errors.append(repr(error))
            started.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(60), "the attackers never connected"
    return Attacker(thread, tally, stop, time.monotonic())


def together(*attacks: Attack) -> Attack:
    """Every one of ``attacks`` at once from each attacker host."""

    async def run(host: P2PHost, victim: str, deadline: float, tally: Tally, index: int) -> None:
        async with trio.open_nursery() as nursery:
            for attack in attacks:
                nursery.start_soon(attack, host, victim, deadline, tally, index)

    return run


def split(*attacks: Attack) -> Attack:
    """One of ``attacks`` from each attacker host, in turn by its index: host ``i`` runs
    ``attacks[i % len(attacks)]``, so no attack competes with another for one PeerId's slots."""

    async def run(host: P2PHost, victim: str, deadline: float, tally: Tally, index: int) -> None:
        await attacks[index % len(attacks)](host, victim, deadline, tally, index)

    return run
