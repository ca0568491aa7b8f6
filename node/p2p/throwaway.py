"""Connections from a throwaway identity: one request to a peer that must not learn who asks.

A sealed-mailbox deposit or fetch (issue #19) told the archiver the PeerId of the connection
it came on: the sender's own at a deposit, the recipient's at a fetch (which links a mailbox to
its recipient). :meth:`Throwaway.connection` opens instead a connection from a host of its own
with a fresh Ed25519 identity (:func:`~p2pchat.node.p2p.identity.ephemeral_identity`), no
listeners and the library's agent version (``py-libp2p/<version>``, as every throwaway and
``p2pchat history`` send: nothing names the node), dialled to the peer's known addresses, and
closes it (and forgets the identity) when the caller leaves. The identity hides the PeerId, not
the IP address: the peer still sees where the connection comes from, and when.

Bounded: at most ``parallel`` throwaway hosts live at once (a caller waits for a slot; a host
holds it until its connection is closed); each dial within ``dial_timeout``, each close within
:data:`CLOSE_SECONDS`; the host, its connection and its key are gone when the block ends,
whatever happened in it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import structlog
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError
from p2pchat.node.p2p.host import DialError, HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity

DIAL_TIMEOUT = 10.0  # the host's default dial timeout
CLOSE_SECONDS = 5.0  # closing the connection when done

log = structlog.get_logger("p2pchat.host.throwaway")


class Throwaway:
    """Opens throwaway connections, at most ``parallel`` at once; :meth:`run` it (the hosts
    live, and close, in its tasks), then ask :meth:`connection`."""

    def __init__(self, parallel: int, dial_timeout: float = DIAL_TIMEOUT) -> None:
        self._slots = trio.Semaphore(parallel)
        self._settings = HostSettings(listen=(), dial_timeout=dial_timeout)
        self._nursery: trio.Nursery | None = None
        self._running = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the throwaway hosts' tasks until cancelled (then every one is closed)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running.set()
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def connection(self, peer_id: str, addrs: Sequence[str]) -> AsyncIterator[P2PHost]:
        """A host of a fresh identity connected to ``peer_id`` at ``addrs`` (multiaddrs with
        or without the ``/p2p/<peer_id>`` suffix; a circuit address is dialled through its
        relay, from the same throwaway identity), for the block. When it ends the connection
        is closed in the background (the library's close sleeps 0.2 s after the socket is
        closed): the slot is held until it is.

        Raises:
            DialError: no address given, or none reached ``peer_id`` in time.
        """
        full = [_with_peer(addr, peer_id) for addr in addrs]
        if not full:
            raise DialError(f"no address known for {peer_id}")
        await self._running.wait()
        assert self._nursery is not None
        opened: P2PHost | DialError
        opened, done = await self._nursery.start(self._live, peer_id, full)
        try:
            if isinstance(opened, DialError):
                raise opened
            yield opened
        finally:
            done.set()

    async def _live(
        self,
        peer_id: str,
        full: list[str],
        *,
        task_status: trio.TaskStatus[tuple[P2PHost | DialError, trio.Event]],
    ) -> None:
        """One throwaway host: started with it connected (or the dial's error), closed when
        ``done`` is set."""
        done = trio.Event()
        direct = [addr for addr in full if "/p2p-circuit" not in addr]
        started = False
        try:
            async with self._slots:
                host = P2PHost(ephemeral_identity(), self._settings, QuietObserver())
                async with host.run():
                    try:
                        if direct:  # raced together (QUIC and TCP: the host's dial race)
                            await host.connect(direct[0], also=direct[1:])
                        else:  # relayed only: through the first relay named
                            await host.connect(full[0])
                    except DialError as error:
                        started = True
                        task_status.started((error, done))  # raised by the caller: run()'s
                        return  # nursery would wrap it
                    started = True
                    task_status.started((host, done))
                    await done.wait()
                    # Closed explicitly: leaving run() alone left the peer's side open until
                    # its handshake deadline (its inbound slot held, 15 s).
                    with trio.move_on_after(CLOSE_SECONDS):
                        await host.disconnect(peer_id)
        except Exception as error:  # the library's host setup and teardown raise many types
            # (and run()'s nursery groups them): a throwaway host must never take its caller,
            # nor run()'s other hosts, down with it
            if not started:
                task_status.started((DialError(f"throwaway connection: {error!r}"), done))
            else:
                log.debug("throwaway connection closed uncleanly", error=repr(error))


def _with_peer(addr: str, peer_id: str) -> str:
    suffix = f"/p2p/{peer_id}"
    return addr if addr.endswith(suffix) else addr + suffix


def known_addrs(host: P2PHost, peer_id: str) -> list[str]:
    """Where a throwaway connection dials ``peer_id``: first the addresses ``host``'s own
    outbound direct connections to it use now (known to work; the swarm dials only the first
    address of each transport, trap 28), then those its peerstore holds (identify's listen
    addresses, the DHT's, configuration's), without the ``/p2p/`` suffix."""
    try:
        peer = ID.from_base58(peer_id)
        stored = [str(addr) for addr in host.libp2p_host.get_peerstore().addrs(peer)]
        conns = host.libp2p_host.get_network().get_connections(peer)
    except (PeerStoreError, ValueError):
        return []
    found: list[str] = []
    for conn in conns:
        if "outbound" not in str(getattr(conn, "direction", "")).lower():
            continue  # an inbound connection's remote port is not one it listens on
        try:
            found += [str(addr) for addr in conn.get_transport_addresses()]
        except Exception:  # the library's connection types raise their own when closing
            continue
    suffix = f"/p2p/{peer_id}"
    found += [addr.removesuffix(suffix) for addr in stored]
    return list(dict.fromkeys(found))
