"""Hole punching over QUIC (DCUtR with ``/udp/N/quic-v1`` addresses): the host layer's hooks
on py-libp2p 0.8.1's QUIC transport.

A UDP hole punch (libp2p/specs relay/DCUtR.md, "QUIC"): on SYNC, the peer that dialled through
the relay dials the other's QUIC address (it becomes the QUIC client); the peer that received
the relayed connection instead sends UDP packets of random bytes to the dialler's address from
its QUIC listen port, every 10 to 200 ms, which opens its NAT for the dialler's packets. Both
must leave from their *listen* port: what a port-preserving NAT maps to the port the other side
was told (the listen port at the NAT's address, :func:`~p2pchat.node.p2p.direct.punch_addrs`).

The library dials QUIC from a new socket on a random port (its ``dial`` binds port 0; its
listener socket serves server connections only), so no punch could work. Two hooks fix that
without touching the transport's internals beyond one instance:

- :func:`install` gives the transport a ``dial_with_source`` (the swarm's single-attempt dial
  calls it when given a source, as it does for TCP): the same client connection as the
  library's ``dial``, on a socket bound to the listen address with ``SO_REUSEPORT`` (the
  listener sets it too) and *connected* to the peer, so the kernel hands that peer's packets
  to it, not to the listener (Linux prefers a connected socket of a reuseport group);
- :func:`send_punch_packets` sends the random packets from the listener's own socket.

Bounded: the packets go only to the addresses DCUtR already bounds (at most
:data:`~p2pchat.node.p2p.direct.MAX_DIAL_ADDRS`), :data:`PACKET_BYTES` each, for as long as the
caller's deadline (the punch's dial timeout) allows.
"""

from __future__ import annotations

import copy
import os
import random
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio
from aioquic.quic.connection import QuicConnection as NativeQUICConnection
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICDialError
from libp2p.transport.quic.transport import QUICTransport
from libp2p.transport.quic.utils import multiaddr_to_quic_version, quic_multiaddr_to_endpoint

PACKET_BYTES = 64  # random bytes per punch packet (go-libp2p sends 64 too)
PACKET_GAP = (0.010, 0.200)  # seconds between punch rounds (the spec: 10 to 200 ms)


def install(transport: QUICTransport) -> None:
    """Let ``transport`` dial from a given source (ip, port): the swarm's single-attempt dial
    then uses :func:`dial_from` for a QUIC address when a hole punch asks for a source."""

    async def dial_with_source(maddr: multiaddr.Multiaddr, source: tuple[str, int]) -> Any:
        return await dial_from(transport, maddr, source)

    transport.dial_with_source = dial_with_source


def _bound_socket(host: str, source: tuple[str, int]) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family=family, type=socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


async def dial_from(
    transport: QUICTransport, maddr: multiaddr.Multiaddr, source: tuple[str, int]
) -> QUICConnection:
    """A QUIC client connection to ``maddr`` (ending in ``/p2p/<id>``) from ``source``: the
    library's ``dial`` (same configuration, certificate and identity check) on a socket bound
    to ``source`` and connected to the peer. Raises QUICDialError as the library's dial does."""
    host, port = quic_multiaddr_to_endpoint(maddr)
    peer_text = maddr.get_peer_id()
    if peer_text is None:
        raise QUICDialError(f"no peer id in {maddr}")
    config = transport._quic_configs.get(TProtocol(f"{multiaddr_to_quic_version(maddr)}_client"))
    if config is None or transport._background_nursery is None:
        raise QUICDialError(f"cannot dial {maddr}: transport not ready")
    config = copy.copy(config)
    config.is_client = True
    sock = _bound_socket(host, source)
    try:
        await sock.bind(source)
        await sock.connect((host, port))
    except OSError as error:
        sock.close()
        raise QUICDialError(f"cannot dial {maddr} from {source}: {error}") from error
    connection = QUICConnection(
        quic_connection=NativeQUICConnection(configuration=config),
        remote_addr=(host, port),
        remote_peer_id=ID.from_base58(peer_text),
        local_peer_id=transport._peer_id,
        is_initiator=True,
        maddr=maddr,
        transport=transport,
        security_manager=transport._security_manager,
        listener_socket=sock,
    )
    connection._owns_socket = True  # closed with the connection

    async def initiate() -> None:
        # The library's _initiate_connection binds its socket to port 0 first: ours is bound.
        connection._quic.connect((host, port), now=time.time())
        await connection._transmit()

    connection._initiate_connection = initiate
    try:
        await connection.connect(transport._background_nursery)
    except BaseException as error:
        sock.close()  # connect() closed the connection; the socket too, unless it failed first
        if isinstance(error, Exception) and not isinstance(error, QUICDialError):
            raise QUICDialError(f"dial {maddr} from {source}: {error}") from error
        raise
    transport._connections[f"{host}:{port}"] = connection
    return connection


def listener_socket(transports: Sequence[Any], family: int) -> trio.socket.SocketType | None:
    """The socket of a QUIC listener of ``family`` among ``transports``, if one listens."""
    for transport in transports:
        if isinstance(transport, QUICTransport):
            for listener in transport._listeners:
                sock: trio.socket.SocketType | None = listener._socket
                if listener.is_listening() and sock is not None and sock.family == family:
                    return sock
    return None


async def send_punch_packets(
    transports: Sequence[Any],
    targets: Sequence[tuple[str, int]],
    done: Callable[[], bool],
) -> int:
    """Send a packet of random bytes to each of ``targets`` from this node's QUIC listen port,
    every 10 to 200 ms, until ``done()`` or the caller's deadline; how many were sent. Nothing
    is sent (0) if no QUIC listener can reach a target's address family."""
    sent = 0
    while not done():
        for host, port in targets:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = listener_socket(transports, family)
            if sock is None:
                continue
            try:
                await sock.sendto(os.urandom(PACKET_BYTES), (host, port))
            except OSError:  # unreachable now (no route): the next round may do better
                continue
            sent += 1
        if sent == 0:
            return 0
        await trio.sleep(random.uniform(*PACKET_GAP))
    return sent
