"""The host layer neutralises py-libp2p's traps (shared/notes/py-libp2p-0.8.1.md).

In-process hosts talk over real TCP on 127.0.0.1; the plaintext and secio dialers attack a real
``p2pchat`` process. Several tests first show the trap on a bare py-libp2p component, so they
fail if the library changes under us, then show the host layer's fix.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.custom_types import TProtocol
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport
from libp2p.security.secio import transport as secio
from p2pchat.node.errors import StartupError
from p2pchat.node.p2p.addresses import expand_unspecified
from p2pchat.node.p2p.host import (
    ConnectionInfo,
    DialError,
    HostSettings,
    IdentifyReceived,
    P2PHost,
)
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.conftest import NodeProcess, start_node

LOOPBACK = ("/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/tcp/0/ws")


class RecordingObserver:
    """A HostObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.opened: list[ConnectionInfo] = []
        self.closed: list[ConnectionInfo] = []
        self.failures: list[tuple[str, BaseException]] = []
        self.limits: list[str] = []
        self.dropped_unread = 0

    def connection_opened(self, info: ConnectionInfo) -> None:
        self.opened.append(info)

    def connection_closed(self, info: ConnectionInfo) -> None:
        self.closed.append(info)

    def handler_failed(self, protocol: str, error: BaseException) -> None:
        self.failures.append((protocol, error))

    def stream_limit_exceeded(self, limit: str) -> None:
        self.limits.append(limit)

    def peerstore_refused(self, reason: str) -> None:
        self.limits.append(f"peerstore:{reason}")

    def peerstore_peers(self, count: int) -> None:
        return None

    def unread_dropped(self, reason: str, size: int) -> None:
        self.dropped_unread += size


@asynccontextmanager
async def running_host(
    data_dir: Path, listen: tuple[str, ...] = LOOPBACK
) -> AsyncIterator[tuple[P2PHost, RecordingObserver]]:
    observer = RecordingObserver()
    host = P2PHost(load_or_create_identity(data_dir), HostSettings(listen=listen), observer)
    async with host.run():
        yield host, observer


def loopback_addr(host: P2PHost, ws: bool = False) -> str:
    return next(a for a in host.advertised_addrs() if ("/ws/" in a) == ws)


async def wait_until(check: Callable[[], object], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def test_a_raising_handler_is_contained_logged_and_counted(tmp_path: Path) -> None:
    async with (
        running_host(tmp_path / "server") as (server, observer),
        running_host(tmp_path / "client") as (client, _),
    ):

        async def crash(stream: object) -> None:
            raise RuntimeError("boom")

        async def echo(stream: object) -> None:
            data = await stream.read(64)  # type: ignore[attr-defined]
            await stream.write(data)  # type: ignore[attr-defined]
            await stream.close()  # type: ignore[attr-defined]

        server.set_stream_handler("/test/crash/1.0.0", crash)
        server.set_stream_handler("/test/echo/1.0.0", echo)
        await client.connect(loopback_addr(server))
        for _ in range(3):
            # The reset may reach the client while it still negotiates: either outcome is fine.
            with contextlib.suppress(Exception):
                await client.new_stream(server.peer_id, ["/test/crash/1.0.0"])
        await wait_until(lambda: len(observer.failures) == 3)
        assert observer.failures[0][0] == "/test/crash/1.0.0"
        assert isinstance(observer.failures[0][1], RuntimeError)

        # The host survived: same connection, new stream, new protocol.
        stream = await client.new_stream(server.peer_id, ["/test/echo/1.0.0"])
        await stream.write(b"still here")
        with trio.fail_after(10):
            assert await stream.read(64) == b"still here"
        assert server.is_connected(client.peer_id)


async def test_library_handlers_are_guarded_too(tmp_path: Path) -> None:
    async with running_host(tmp_path) as (host, _):
        handlers = host.libp2p_host.get_mux().handlers
        assert "/ipfs/id/1.0.0" in handlers
        assert all(getattr(h, "__p2pchat_guarded__", False) for h in handlers.values() if h)
        # ... and those the library registers later (pubsub, kad) through the same table
        host.libp2p_host.set_stream_handler(TProtocol("/later/1.0.0"), _never_called)
        assert getattr(handlers[TProtocol("/later/1.0.0")], "__p2pchat_guarded__", False)


async def _never_called(stream: object) -> None:
    raise AssertionError("not reached")


async def test_connections_are_observed_with_go_libp2p_labels(tmp_path: Path) -> None:
    async with (
        running_host(tmp_path / "a") as (a, a_seen),
        running_host(tmp_path / "b") as (b, b_seen),
    ):
        await b.connect(loopback_addr(a, ws=True))
        await wait_until(lambda: a_seen.opened and b_seen.opened)
        assert b_seen.opened[0] == ConnectionInfo(
            peer_id=a.peer_id,
            direction="outbound",
            transport="websocket",
            security="/noise",
            muxer="/yamux/1.0.0",
        )
        assert a_seen.opened[0].direction == "inbound"
        assert a.connected_peers() == [b.peer_id]
        await b.disconnect(a.peer_id)
        await wait_until(lambda: a_seen.closed and b_seen.closed)


async def test_identify_received_is_an_event_with_the_peers_protocols(tmp_path: Path) -> None:
    async with (
        running_host(tmp_path / "a") as (a, _),
        running_host(tmp_path / "b") as (b, _),
    ):

        async def serve(stream: object) -> None:
            return None

        a.set_stream_handler("/p2pchat/test-identify/1.0.0", serve)  # type: ignore[arg-type]
        received: list[IdentifyReceived] = []
        b.watch_identify(received.append)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(b.identify_received)  # woken by the next identify
                await b.connect(loopback_addr(a))
        from_a = [event for event in received if event.peer_id == a.peer_id]
        assert from_a and "/p2pchat/test-identify/1.0.0" in from_a[-1].protocols
        assert ConnectionInfo(a.peer_id, "outbound", "p2p-circuit", "", "").relayed
        assert not ConnectionInfo(a.peer_id, "outbound", "tcp", "", "").relayed


async def test_mplex_is_negotiated_when_it_is_the_only_muxer(tmp_path: Path) -> None:
    observer = RecordingObserver()
    settings = HostSettings(listen=LOOPBACK[:1], muxers=("mplex",))
    mplex_only = P2PHost(load_or_create_identity(tmp_path / "m"), settings, observer)
    async with mplex_only.run(), running_host(tmp_path / "y") as (both, _):
        await mplex_only.connect(loopback_addr(both))
        await wait_until(lambda: observer.opened)
        assert observer.opened[0].muxer == "/mplex/6.7.0"


async def test_dial_does_not_wait_for_the_happy_eyeballs_delay(tmp_path: Path) -> None:
    # Unfixed, every dial sleeps 250 ms after connecting. The fastest of five dials is a robust
    # floor even on a loaded machine: it cannot go below 250 ms unless the wait is gone.
    async with running_host(tmp_path / "a") as (a, _), running_host(tmp_path / "b") as (b, _):
        durations = []
        for _ in range(5):
            began = time.perf_counter()
            await b.connect(loopback_addr(a))
            durations.append(time.perf_counter() - began)
            await b.disconnect(a.peer_id)
            await wait_until(lambda: not a.is_connected(b.peer_id))
        assert min(durations) < 0.25, durations


async def test_peerstore_peers_are_not_auto_dialled(tmp_path: Path) -> None:
    async with running_host(tmp_path / "a") as (a, _), running_host(tmp_path / "b") as (b, _):
        swarm = a.libp2p_host.get_network()
        info = info_from_p2p_addr(multiaddr.Multiaddr(loopback_addr(b)))
        a.libp2p_host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)

        await swarm.auto_connector.start()
        await swarm.auto_connector.maybe_connect()
        await trio.sleep(0.5)
        assert not a.is_connected(b.peer_id)

        # The trap is real: the library's own connector dials the peerstore peer.
        library_connector = AutoConnector(swarm=swarm, auto_connect_interval=3600)
        await library_connector.start()
        await library_connector.maybe_connect()
        await wait_until(lambda: a.is_connected(b.peer_id))
        await library_connector.stop()


async def test_a_listen_address_that_cannot_be_bound_is_a_startup_error(tmp_path: Path) -> None:
    async with running_host(tmp_path / "a", listen=LOOPBACK[:1]) as (a, _):
        taken = a.listen_addrs()[0]
        host = P2PHost(
            load_or_create_identity(tmp_path / "b"),
            HostSettings(listen=(taken,)),
            RecordingObserver(),
        )
        port = taken.rsplit("/", 1)[1]
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1 port {port}: "):
            async with host.run():
                pass


async def test_dial_errors_are_dial_errors(tmp_path: Path) -> None:
    async with running_host(tmp_path / "a") as (a, _):
        with pytest.raises(DialError, match="invalid peer address"):
            await a.connect("/ip4/127.0.0.1/tcp/1")
        with pytest.raises(DialError, match="is this node itself"):
            await a.connect(loopback_addr(a))
        async with running_host(tmp_path / "b") as (b, _):
            gone = loopback_addr(b)
        with pytest.raises(DialError, match="dial "):
            await a.connect(gone)


@pytest.mark.parametrize("scheme", ["plaintext", "secio"])
async def test_insecure_dialers_are_refused_by_a_real_node(
    tmp_path: Path, nodes: list[NodeProcess], scheme: str
) -> None:
    node = start_node(tmp_path / "node")
    nodes.append(node)
    identity = load_or_create_identity(tmp_path / "attacker")
    security = (
        {TProtocol(PLAINTEXT_PROTOCOL_ID): InsecureTransport(identity.key_pair)}
        if scheme == "plaintext"
        else {TProtocol(secio.ID): secio.Transport(identity.key_pair)}
    )
    attacker = new_host(key_pair=identity.key_pair, sec_opt=security)
    target = info_from_p2p_addr(multiaddr.Multiaddr(node.addr("tcp")))
    async with attacker.run([multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
        with pytest.raises(Exception), trio.fail_after(30):  # noqa: B017 - any failure will do
            await attacker.connect(target)
        assert not attacker.get_network().get_connections(target.peer_id)
    assert node.metric("p2pchat_connected_peers") == 0
    assert node.metric("libp2p_swarm_connections_opened_total", dir="inbound") == 0
    assert node.http_get("/readyz")[0] == 200

    # Control: the same kind of dialer with Noise gets in, so the refusal above is about security.
    async with running_host(tmp_path / "honest") as (honest, _):
        await honest.connect(node.addr("tcp"))
        assert honest.is_connected(node.peer_id)


async def test_announce_addresses_replace_the_listen_addresses(tmp_path: Path) -> None:
    announce = ("/ip4/203.0.113.7/tcp/4001", "/dns4/relay.example.org/tcp/4001/ws")
    identity = load_or_create_identity(tmp_path)
    host = P2PHost(
        identity, HostSettings(listen=LOOPBACK[:1], announce=announce), RecordingObserver()
    )
    async with host.run():
        assert host.advertised_addrs() == [f"{a}/p2p/{host.peer_id}" for a in announce]
        assert host.listen_addrs()[0].startswith("/ip4/127.0.0.1/tcp/")


def test_unspecified_listen_addresses_are_advertised_per_interface() -> None:
    listen = [
        multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001"),
        multiaddr.Multiaddr("/ip4/0.0.0.0/tcp/4001/ws"),
        multiaddr.Multiaddr("/ip6/::/tcp/4001"),
        multiaddr.Multiaddr("/ip4/192.0.2.1/tcp/5"),
    ]
    ips = {"ip4": ["127.0.0.1", "192.0.2.1"], "ip6": ["::1"]}
    assert [str(a) for a in expand_unspecified(listen, ips)] == [
        "/ip4/127.0.0.1/tcp/4001",
        "/ip4/192.0.2.1/tcp/4001",
        "/ip4/127.0.0.1/tcp/4001/ws",
        "/ip4/192.0.2.1/tcp/4001/ws",
        "/ip6/::1/tcp/4001",
        "/ip4/192.0.2.1/tcp/5",
    ]


def test_the_connection_limit_is_the_pruning_point_too(tmp_path: Path) -> None:
    """Trap 22: the library prunes connections above its high watermark (300) whatever
    max_connections says, and refuses a max_connections below it (and a low watermark below
    its min_connections, 50)."""
    with pytest.raises(ValueError, match="high_watermark"):
        ConnectionConfig(max_connections=50)
    with pytest.raises(ValueError, match="min_connections"):
        ConnectionConfig(max_connections=10, high_watermark=10, low_watermark=10)
    for limit in (10, 50, 1000):
        host = P2PHost(
            load_or_create_identity(tmp_path / str(limit)),
            HostSettings(listen=LOOPBACK, max_connections=limit),
            RecordingObserver(),
        )
        config = host.libp2p_host.get_network().connection_config
        assert (config.max_connections, config.high_watermark) == (limit, limit)


async def test_a_restarted_peer_is_dialled_at_the_address_given_not_at_a_stale_one(
    tmp_path: Path,
) -> None:
    # py-libp2p dials one address per transport, the first it knows for the peer: once an
    # address of the previous run (a random port, learned by identify or from the DHT) came
    # first, it hid the fixed one given to connect, and every re-dial of a bootstrap peer went
    # to the dead port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listen = ("/ip4/127.0.0.1/tcp/0", f"/ip4/127.0.0.1/tcp/{port}")
    async with running_host(tmp_path / "client") as (client, _):
        async with running_host(tmp_path / "server", listen) as (server, _):
            fixed = next(a for a in server.advertised_addrs() if f"/tcp/{port}/" in a)
            server_id = ID.from_base58(server.peer_id)
            await client.connect(fixed)
            peerstore = client.libp2p_host.get_peerstore()
            await wait_until(lambda: len(peerstore.addrs(server_id)) >= 2)  # identify told both
            stale = [a for a in peerstore.addrs(server_id) if f"/tcp/{port}" not in str(a)]
        await wait_until(lambda: not client.is_connected(str(server_id)))
        peerstore.clear_addrs(server_id)
        peerstore.add_addrs(server_id, stale, 3600)  # as a DHT answer from before the restart
        async with running_host(tmp_path / "server", listen) as (server, _):
            with trio.fail_after(20):
                assert await client.connect(fixed) == server.peer_id


async def test_the_given_address_is_put_first_without_losing_the_peers_signed_record(
    tmp_path: Path,
) -> None:
    async with (
        running_host(tmp_path / "client") as (client, _),
        running_host(tmp_path / "server") as (server, _),
    ):
        server_id = ID.from_base58(server.peer_id)
        await client.connect(loopback_addr(server))
        peerstore = client.libp2p_host.get_peerstore()
        await wait_until(lambda: peerstore.get_peer_record(server_id) is not None)
        await client.disconnect(server.peer_id)
        await wait_until(lambda: not client.is_connected(server.peer_id))
        record = peerstore.get_peer_record(server_id)
        last = peerstore.addrs(server_id)[-1]
        client._put_first(server_id, [last])
        assert peerstore.addrs(server_id)[0] == last
        assert peerstore.get_peer_record(server_id) is record  # clear_addrs() dropped it
