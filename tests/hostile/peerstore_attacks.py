"""Peerstore attackers: in-process py-libp2p hosts connected to a victim on 127.0.0.1 that make it
record PeerIds they invent.

- *Kad liars* serve the Kad-DHT: the victim's room lookups ask them (identify says they serve
  it), and every answer names ``CLOSER`` invented PeerIds, each with two addresses (a few with
  ``FAT_ADDRS``);
- a *fat identify*: a host that identifies with ``FAT_LISTEN_ADDRS`` listen addresses (and so a
  signed peer record of over 8 KiB) and ``FAT_PROTOCOLS`` protocols, some with long names.

Every address is a TCP port of 127.0.0.1 that the attack holds bound and never listens on
(:func:`dead_ports`): the victim's lookups dial some of the invented peers, and a dial must be
refused at once, never reach another process (a random port hit the honest peers' own).

:func:`start` runs them in a thread of their own (its own trio loop) until stopped; stopping
closes every host, so the victim's fds can come back.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trio
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from multiaddr import Multiaddr
from p2pchat.node.p2p.dht import PROTOCOL_ID
from p2pchat.node.p2p.host import HostSettings, P2PHost, StreamHandler
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.streams import Stream, StreamError, read_frame
from p2pchat.node.wire.framing import FrameDecoder, FrameError, frame

from tests.hostile.kad_attacks import Attacker, Tally
from tests.test_host import RecordingObserver

CLOSER = 1500  # invented PeerIds per answer (about 100 KiB: under the 256 KiB a lookup reads)
FAT = 10  # of which this many carry FAT_ADDRS addresses
FAT_ADDRS = 100
FAT_LISTEN_ADDRS = 800
DEAD_PORTS = 128
# Suffixes that make more distinct addresses of one dead port (the fat identify's).
_SUFFIXES = ("", "/ws", "/wss", "/tls/ws", "/tls", "/http", "/https")
FAT_PROTOCOLS = 400
MAX_SECONDS = 120.0  # an attack nobody stops ends after this long


def invented_id() -> bytes:
    """A PeerId nobody holds: a sha2-256 multihash of random bytes."""
    return b"\x12\x20" + os.urandom(32)


def dead_ports(count: int) -> list[socket.socket]:
    """``count`` TCP sockets bound to 127.0.0.1 that never listen: a connection to one of
    their ports is refused. The caller closes them."""
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
    return held


def loopback_addr(port: int) -> bytes:
    """``/ip4/127.0.0.1/tcp/<port>`` as bytes."""
    return b"\x04\x7f\x00\x00\x01\x06" + port.to_bytes(2, "big")


def lying_answer(request: Message, ports: list[int]) -> bytes:
    """The request's type and key, with ``CLOSER`` invented closer peers at ``ports``."""
    answer = Message(type=request.type, key=request.key)
    for n in range(CLOSER):
        peer = answer.closerPeers.add()
        peer.id = invented_id()
        count = FAT_ADDRS if n < FAT else 2
        peer.addrs.extend(loopback_addr(port) for port in random.sample(ports, count))
    return answer.SerializeToString()


@dataclass
class LieTally(Tally):
    """:class:`Tally`, and how many of the answers sent were to FIND_NODE (the victim keeps
    the closer peers of those in its peerstore; of GET_PROVIDERS answers, only the IDs)."""

    find_node: int = 0


def serve_lies(tally: LieTally, ports: list[int]) -> StreamHandler:
    """A Kad handler answering every request with :func:`lying_answer`."""

    async def handler(stream: Stream) -> None:
        decoder = FrameDecoder(1024 * 1024)
        try:
            while True:
                request = Message()
                request.ParseFromString(await read_frame(stream, decoder))
                await stream.write(frame(lying_answer(request, ports)))
                tally.sent += 1
                tally.find_node += request.type == Message.MessageType.FIND_NODE
        except (StreamError, FrameError):
            return
        finally:
            with contextlib.suppress(StreamError):
                await stream.reset()

    return handler


def fatten(host: P2PHost, ports: list[int]) -> None:
    """Make ``host`` identify with ``FAT_LISTEN_ADDRS`` addresses (at ``ports``) and
    ``FAT_PROTOCOLS`` protocols (every tenth with a 400-character name)."""
    variants = (f"/ip4/127.0.0.1/tcp/{port}{suffix}" for suffix in _SUFFIXES for port in ports)
    addrs = [Multiaddr(text) for text in itertools.islice(variants, FAT_LISTEN_ADDRS)]
    assert len(addrs) == FAT_LISTEN_ADDRS
    host.libp2p_host.get_addrs = lambda: list(addrs)

    async def nothing(stream: Stream) -> None:
        with contextlib.suppress(StreamError):
            await stream.reset()

    for n in range(FAT_PROTOCOLS):
        name = f"/junk/{n}/" + ("x" * 400 if n % 10 == 0 else "1.0.0")
        host.set_stream_handler(name, nothing)


async def _attack(
    workdir: Path,
    victim_addr: str,
    liars: int,
    tally: LieTally,
    stop: threading.Event,
    started: threading.Event,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        held = dead_ports(DEAD_PORTS)
        for sock in held:
            stack.callback(sock.close)
        ports = [sock.getsockname()[1] for sock in held]
        hosts = []
        for n in range(liars + 1):
            identity = load_or_create_identity(workdir / f"attacker-{n}")
            # A liar listens (a DHT server the victim can add to its routing table has an
            # address); the fat one claims its addresses.
            listen = ("/ip4/127.0.0.1/tcp/0",) if n < liars else ()
            host = P2PHost(identity, HostSettings(listen=listen), RecordingObserver())
            if n < liars:
                host.set_stream_handler(PROTOCOL_ID, serve_lies(tally, ports))
            else:
                fatten(host, ports)
            await stack.enter_async_context(host.run(listen=n < liars))
            await host.connect(victim_addr)
            hosts.append(host)
        started.set()
        deadline = trio.current_time() + MAX_SECONDS
        while not stop.is_set() and trio.current_time() < deadline:
            await trio.sleep(0.1)
        victim = victim_addr.rsplit("/p2p/", 1)[1]
        for host in hosts:
            with contextlib.suppress(Exception):
                await host.disconnect(victim)


def start(workdir: Path, victim_addr: str, liars: int) -> Attacker:
    """Start ``liars`` Kad liars and one fat identify against ``victim_addr`` in a thread of
    their own; returns once all are connected (``tally.sent``: lying answers sent)."""
    tally = LieTally()
    stop, started = threading.Event(), threading.Event()

    def main() -> None:
        try:
            trio.run(_attack, workdir, victim_addr, liars, tally, stop, started)
        except BaseException as error:  # reported by Attacker.stop
            tally.errors.append(repr(error))
            started.set()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert started.wait(60), "the attackers never connected"
    return Attacker(thread, tally, stop, time.monotonic())
