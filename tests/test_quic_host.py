"""QUIC through the host layer, in-process (#20): two hosts on 127.0.0.1 over real UDP.

What py-libp2p 0.8.1's QUIC transport must do for p2pchat, checked one by one: listen on
``/udp/<port>/quic-v1``, dial it, authenticate the peer (TLS with the libp2p certificate
extension, no Noise), carry identify and many concurrent streams, and be labelled ``quic`` in the
connection metrics.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from libp2p.transport.quic.listener import QUICListener
from libp2p.transport.quic.stream import QUICStream
from libp2p.transport.quic.transport import QUICTransport
from p2pchat.node.p2p.admission import PER_IP, TRANSIENT_FULL, AdmissionLimits
from p2pchat.node.p2p.host import HostSettings, IdentifyReceived, P2PHost, Stream
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.quic import handshake_refusal
from p2pchat.node.p2p.stream_limits import StreamLimits
from p2pchat.node.p2p.streams import StreamEnded

from tests.test_host import RecordingObserver

QUIC = ("/ip4/127.0.0.1/udp/0/quic-v1",)
ECHO = "/p2pchat/test-echo/1.0.0"


class Refusals:
    """An admission observer that keeps the refusal reasons."""

    def __init__(self) -> None:
        self.reasons: list[str] = []

    def connection_refused(self, reason: str) -> None:
        self.reasons.append(reason)

    def transient_connections(self, count: int) -> None:
        return None


@asynccontextmanager
async def quic_host(
    data_dir: Path,
    listen: tuple[str, ...] = QUIC,
    connections: AdmissionLimits | None = None,
    refusals: Refusals | None = None,
    streams: StreamLimits | None = None,
) -> AsyncIterator[tuple[P2PHost, RecordingObserver]]:
    observer = RecordingObserver()
    settings = HostSettings(
        listen=listen,
        connections=connections or AdmissionLimits(),
        streams=streams or StreamLimits(),
    )
    host = P2PHost(load_or_create_identity(data_dir), settings, observer, refusals)
    async with host.run():
        yield host, observer


def quic_addr(host: P2PHost) -> str:
    return next(a for a in host.advertised_addrs() if "/quic-v1/" in a)


async def wait_until(check: Callable[[], object], timeout: float = 30) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


async def echo(stream: Stream) -> None:
    data = await stream.read(1024)
    await stream.write(data)
    await stream.close()


async def test_two_hosts_connect_identify_and_stream_over_quic(tmp_path: Path) -> None:
    async with (
        quic_host(tmp_path / "a") as (a, a_seen),
        quic_host(tmp_path / "b") as (b, b_seen),
    ):
        assert a.listen_addrs() and all("/udp/" in x for x in a.listen_addrs())
        a.set_stream_handler(ECHO, echo)
        received: list[IdentifyReceived] = []
        b.watch_identify(received.append)
        assert await b.connect(quic_addr(a)) == a.peer_id
        await wait_until(lambda: a_seen.opened and b_seen.opened)
        assert (b_seen.opened[0].transport, b_seen.opened[0].direction) == ("quic", "outbound")
        assert (a_seen.opened[0].transport, a_seen.opened[0].direction) == ("quic", "inbound")
        assert a_seen.opened[0].peer_id == b.peer_id  # the TLS handshake authenticated b
        await wait_until(lambda: any(e.peer_id == a.peer_id for e in received))
        assert ECHO in b.peer_protocols(a.peer_id)

        answers: list[bytes] = []

        async def ask(i: int) -> None:
            stream = await b.new_stream(a.peer_id, [ECHO])
            await stream.write(f"hello {i}".encode())
            answers.append(await stream.read(1024))
            await stream.close()

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(20):
                    nursery.start_soon(ask, i)
        assert sorted(answers) == sorted(f"hello {i}".encode() for i in range(20))


# --- trap 36: handshakes within the admission limits --------------------------------------------


def quic_port(host: P2PHost) -> int:
    return int(quic_addr(host).split("/")[4])


def pending_handshakes(host: P2PHost) -> int:
    listeners = host.libp2p_host.get_network().listeners.values()
    listener = next(x for x in listeners if isinstance(x, QUICListener))
    return len(listener._registry._pending)


async def send_initials(source_ip: str, port: int, count: int) -> None:
    """``count`` QUIC Initial packets (each a new connection: a ClientHello with a fresh
    connection id) from one UDP socket, as a flood would; none is ever continued."""
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((source_ip, 0))
        for _ in range(count):
            client = QuicConnection(
                configuration=QuicConfiguration(is_client=True, alpn_protocols=["libp2p"])
            )
            client.connect(("127.0.0.1", port), now=time.time())
            for data, _ in client.datagrams_to_send(now=time.time()):
                await sock.sendto(data, ("127.0.0.1", port))
            await trio.sleep(0.02)  # let the listener take each one in


def test_the_handshake_policy() -> None:
    limits = AdmissionLimits(per_ip=2, transient=4, per_ip_exempt=("127.0.0.1/32",))
    assert handshake_refusal([], "10.0.0.1", limits) is None
    assert handshake_refusal(["10.0.0.1"], "10.0.0.1", limits) is None
    assert handshake_refusal(["10.0.0.1", "10.0.0.1"], "10.0.0.1", limits) == PER_IP
    assert handshake_refusal(["10.0.0.1", "10.0.0.1"], "10.0.0.2", limits) is None
    assert handshake_refusal(["127.0.0.1"] * 3, "127.0.0.1", limits) is None  # exempt
    assert handshake_refusal(["10.0.0.9", None, "10.0.0.8", None], "10.0.0.1", limits) == (
        TRANSIENT_FULL
    )


async def test_handshakes_from_one_address_are_bounded_per_address(tmp_path: Path) -> None:
    # The library would keep all 12 (up to 256); per_ip (2) binds, and a peer from another
    # address still connects.
    refusals = Refusals()
    limits = AdmissionLimits(per_ip=2, per_ip_exempt=("127.0.0.1/32",))
    async with (
        quic_host(tmp_path / "a", connections=limits, refusals=refusals) as (a, _),
        quic_host(tmp_path / "b") as (b, _),
    ):
        await send_initials("127.0.0.2", quic_port(a), 12)
        await wait_until(lambda: len(refusals.reasons) >= 10)
        assert pending_handshakes(a) <= 2
        assert set(refusals.reasons) == {PER_IP}
        with trio.fail_after(30):
            assert await b.connect(quic_addr(a)) == a.peer_id


async def test_handshakes_in_all_are_bounded_by_the_transient_limit(tmp_path: Path) -> None:
    refusals = Refusals()
    limits = AdmissionLimits(transient=3)  # loopback is exempt from per_ip by default
    async with quic_host(tmp_path / "a", connections=limits, refusals=refusals) as (a, _):
        await send_initials("127.0.0.1", quic_port(a), 10)
        await wait_until(lambda: len(refusals.reasons) >= 7)
        assert pending_handshakes(a) <= 3
        assert set(refusals.reasons) == {TRANSIENT_FULL}


def test_quic_takes_the_nodes_stream_limits(tmp_path: Path) -> None:
    # The library's own: 1000 inbound streams per connection, 30 s per negotiation.
    streams = StreamLimits(streams_per_connection=7, negotiation_timeout=3.0)
    for listen in (QUIC, ("/ip4/127.0.0.1/tcp/0",)):  # listening on QUIC, or dialling only
        settings = HostSettings(listen=listen, streams=streams)
        host = P2PHost(
            load_or_create_identity(tmp_path / listen[0][5:9]), settings, RecordingObserver()
        )
        transports = host.libp2p_host.get_network().transport_manager.get_transports()
        quic = [t for t in transports if isinstance(t, QUICTransport)]
        assert len(quic) == 1
        assert quic[0]._config.MAX_INCOMING_STREAMS == 7
        assert quic[0]._config.NEGOTIATE_TIMEOUT == 3.0


async def test_quic_streams_are_under_the_per_protocol_stream_limit(tmp_path: Path) -> None:
    # QUIC streams bypass the Yamux and mplex guards; the host's own negotiation still counts
    # them: 80 streams held open on one protocol -> 64 (streams_per_protocol_per_peer) served,
    # the rest reset and counted, and the connection stays.
    hold = "/p2pchat/test-hold/1.0.0"
    served = 0

    async def handler(stream: Stream) -> None:
        nonlocal served
        served += 1
        await trio.sleep_forever()

    async with quic_host(tmp_path / "a") as (a, a_seen), quic_host(tmp_path / "b") as (b, _):
        a.set_stream_handler(hold, handler)
        await b.connect(quic_addr(a))
        streams: list[Stream] = []

        async def open_one() -> None:
            try:
                stream = await b.new_stream(a.peer_id, [hold])
                await stream.write(b"x")
                streams.append(stream)
            except Exception:  # refused: reset by the limit (the test counts the others)
                return

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(80):
                    nursery.start_soon(open_one)
            await wait_until(lambda: served + a_seen.limits.count("streams_per_protocol") >= 80)
        assert served == 64
        assert a_seen.limits.count("streams_per_protocol") == 16
        assert b.is_connected(a.peer_id)


# --- trap 37: STOP_SENDING ends our sending only ------------------------------------------------


async def test_stop_sending_leaves_our_read_half_open(tmp_path: Path) -> None:
    # As go-libp2p's identify answers: the handler stops reading (STOP_SENDING) at once and its
    # answer follows. The library closed the opener's stream as a whole at the STOP_SENDING, so
    # a read made before the answer arrived failed.
    answer = "/p2pchat/test-answer/1.0.0"

    async def handler(stream: Stream) -> None:
        # The answering side is played in aioquic itself, as a go or rust peer's QUIC does:
        # our RESET_STREAM (the answer to its STOP_SENDING) ends its reading, not its answer.
        # py-libp2p's stream would take it for a reset of both halves, so it is set aside.
        quic = stream.library_stream.muxed_stream
        connection, stream_id = quic._connection, quic._stream_id
        connection._streams.pop(stream_id)
        connection._stream_cache.pop(stream_id, None)
        connection._quic.stop_stream(stream_id, 0)
        await connection._transmit()
        await trio.sleep(1)
        connection._quic.send_stream_data(stream_id, b"the answer", end_stream=True)
        await connection._transmit()

    async with quic_host(tmp_path / "a") as (a, _), quic_host(tmp_path / "b") as (b, _):
        a.set_stream_handler(answer, handler)
        await b.connect(quic_addr(a))
        stream = await b.new_stream(a.peer_id, [answer])
        opened = stream.library_stream.muxed_stream
        await wait_until(lambda: opened._write_closed)  # the STOP_SENDING has arrived
        with trio.fail_after(30):
            assert await stream.read(100) == b"the answer"
        assert b.is_connected(a.peer_id)


# --- trap 46: the bytes that come with a stream's end ---------------------------------------


async def test_bytes_that_come_with_the_end_are_read(tmp_path: Path) -> None:
    # An answer and its FIN arrive while a read waits for the stream's state lock (held here,
    # as the library's other tasks hold it on a loaded machine): the library's read had looked
    # at its empty buffer before, and reports the end with the answer unread. Ours reads it.
    answer = "/p2pchat/test-answer/1.0.0"
    go_on = trio.Event()

    async def handler(stream: Stream) -> None:
        await go_on.wait()
        await stream.write(b"the answer")
        await stream.close()

    library_read = inspect.getclosurevars(QUICStream.read).nonlocals["original"]
    ours = QUICStream.read
    async with quic_host(tmp_path / "a") as (a, _), quic_host(tmp_path / "b") as (b, _):
        a.set_stream_handler(answer, handler)
        await b.connect(quic_addr(a))
        results = []
        for read in (library_read, ours):
            go_on = trio.Event()
            QUICStream.read = read  # type: ignore[method-assign]
            try:
                results.append(await _read_as_the_end_arrives(b, a.peer_id, answer, go_on))
            finally:
                QUICStream.read = ours  # type: ignore[method-assign]
    assert results == ["ended", b"the answer"]


async def _read_as_the_end_arrives(
    b: P2PHost, a: str, protocol: str, go_on: trio.Event
) -> bytes | str:
    stream = await b.new_stream(a, [protocol])
    opened = stream.library_stream.muxed_stream
    got: list[bytes | str] = []

    async def reader() -> None:
        try:
            got.append(await stream.read(100))
        except StreamEnded:
            got.append("ended")

    async with trio.open_nursery() as nursery, opened._state_lock:
        nursery.start_soon(reader)
        await wait_until(lambda: opened._state_lock.statistics().tasks_waiting == 1)
        go_on.set()  # the answer and the FIN come now, the read waiting for the lock
        await wait_until(lambda: opened._read_closed and opened._receive_buffer)
    with trio.fail_after(30):
        while not got:
            await trio.sleep(0.01)
    return got[0]


# --- traps 39 and 40: streams within the peer's stream credit, which resets give back --------


async def test_a_stream_past_the_peers_credit_waits_for_it(tmp_path: Path) -> None:
    # a grants 128 streams at first (aioquic) and serves every one, holding it. The library
    # opened the 129th and 130th anyway (aioquic queued them), reset them when their
    # negotiation timed out, and a closed the connection at the RESET_STREAMs past its credit
    # (STREAM_LIMIT_ERROR). Now they wait for credit and fail alone; a stream that ends gives
    # its credit back, and the next one opens.
    hold = "/p2pchat/test-hold/1.0.0"
    streams = StreamLimits(streams_per_protocol_per_peer=256, negotiation_timeout=3.0)
    served = 0

    async def handler(stream: Stream) -> None:
        nonlocal served
        served += 1
        await trio.sleep_forever()

    async with (
        quic_host(tmp_path / "a", streams=streams) as (a, a_seen),
        quic_host(tmp_path / "b", streams=streams) as (b, _),
    ):
        a.set_stream_handler(hold, handler)
        await b.connect(quic_addr(a))
        held: list[Stream] = []
        failed: list[BaseException] = []

        async def open_one() -> None:
            try:
                stream = await b.new_stream(a.peer_id, [hold])
                await stream.write(b"x")
                held.append(stream)
            except Exception as error:  # past the credit: no stream
                failed.append(error)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for _ in range(130):
                    nursery.start_soon(open_one)
            await wait_until(lambda: served == 128)
            assert (len(held), len(failed)) == (128, 2)
            await trio.sleep(1)  # a's answer to a RESET_STREAM past its credit would be here
            assert not a_seen.closed and b.is_connected(a.peer_id)

            await held.pop().reset()  # its credit comes back (trap 40)
            await open_one()
            await wait_until(lambda: served == 129)
        assert not a_seen.closed


async def test_streams_reset_by_the_peer_give_their_credit_back(tmp_path: Path) -> None:
    # 200 streams on one protocol: 64 held (streams_per_protocol_per_peer), the rest reset by
    # a. The library ended only a's sending half of each, so a never gave their credit back:
    # after 128 streams nothing more opened on the connection. Now every one is answered.
    hold = "/p2pchat/test-hold/1.0.0"
    served = 0
    failed = 0

    async def handler(stream: Stream) -> None:
        nonlocal served
        served += 1
        await trio.sleep_forever()

    async with quic_host(tmp_path / "a") as (a, a_seen), quic_host(tmp_path / "b") as (b, _):
        a.set_stream_handler(hold, handler)
        await b.connect(quic_addr(a))

        async def open_one() -> None:
            nonlocal failed
            try:
                stream = await b.new_stream(a.peer_id, [hold])
                await stream.write(b"x")
                await stream.read(1)  # a held one never answers; a refused one is reset
            except Exception:  # refused: reset by the limit (counted below)
                failed += 1

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(open_one)
                await wait_until(lambda: failed == 200 - 64, timeout=110)
                nursery.cancel_scope.cancel()
        assert served == 64
        assert a_seen.limits.count("streams_per_protocol") == 200 - 64
        assert not a_seen.closed and b.is_connected(a.peer_id)


# --- trap 42: a stream whose reader fell behind is reset, not cut ------------------------------


async def test_a_stream_whose_reader_fell_behind_is_reset_not_cut(tmp_path: Path) -> None:
    # The handler reads nothing while 3 MiB arrive: past the library's 2 MiB receive buffer it
    # dropped the rest and the stream went on (a reader then read a stream with a hole in it).
    # Reset and counted; then the reader learns the stream failed; the connection stays.
    slow = "/p2pchat/test-slow/1.0.0"
    outcome: list[str] = []
    reading = trio.Event()

    async def handler(stream: Stream) -> None:
        await reading.wait()
        got = 0
        try:
            while chunk := await stream.read(65536):
                got += len(chunk)
        except Exception:
            outcome.append("failed")
            return
        outcome.append(f"ended after {got} bytes")

    async with quic_host(tmp_path / "a") as (a, a_seen), quic_host(tmp_path / "b") as (b, _):
        a.set_stream_handler(slow, handler)
        await b.connect(quic_addr(a))
        stream = await b.new_stream(a.peer_id, [slow])
        with trio.move_on_after(60):
            try:
                for _ in range(48):
                    await stream.write(b"x" * 65536)
                await stream.close()
            except Exception:  # reset by a: what the sender should learn
                pass
        await wait_until(lambda: "quic_stream_buffer" in a_seen.limits, timeout=60)
        reading.set()
        await wait_until(lambda: outcome, timeout=30)
        assert outcome == ["failed"]
        assert a_seen.limits.count("quic_stream_buffer") == 1
        assert b.is_connected(a.peer_id)
