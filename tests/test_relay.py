"""The relay role against real clients: a ``p2pchat --role relay`` process, and in-process hosts
speaking the hop and stop protocols over TCP on 127.0.0.1.

Each limit of issue #4 is exceeded once here: per IP, in total, circuits per peer, data and
duration per circuit; py-libp2p's own relay defines the per-IP limits but never applies them
(trap 6), and its defaults are 1 h and 1 GiB per circuit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from p2pchat.node.p2p.circuit import (
    CircuitError,
    accept_circuit,
    request_circuit,
    request_reservation,
)
from p2pchat.node.p2p.host import P2PHost, Stream
from p2pchat.node.p2p.streams import read_single_frame
from p2pchat.node.wire.circuit import (
    HOP_PROTOCOL_ID,
    MAX_MESSAGE_BYTES,
    STOP_PROTOCOL_ID,
    HopStatus,
    Limit,
    Status,
    StopStatus,
    decode_hop,
    decode_stop,
    encode,
)
from p2pchat.node.wire.framing import encode_uvarint, frame

from tests.bench.relay import reserve_all
from tests.conftest import NodeProcess, node_env, start_node
from tests.test_host import running_host, wait_until

RESERVATION_REJECTIONS = "libp2p_relaysvc_reservation_rejections_total"
CONNECTION_REJECTIONS = "libp2p_relaysvc_connection_rejections_total"
RESETS = "p2pchat_relay_circuit_resets_total"


def relay_node(tmp_path: Path, nodes: list[NodeProcess], **limits: str) -> NodeProcess:
    """A relay process with ``limits`` set through the environment (``max_circuits="1"``),
    and room for 400 connections."""
    env = node_env(
        P2PCHAT_NODE__MAX_CONNECTIONS="400",
        **{f"P2PCHAT_RELAY__{key.upper()}": value for key, value in limits.items()},
    )
    node = start_node(tmp_path / "relay", "--role", "relay", env=env)
    nodes.append(node)
    return node


@asynccontextmanager
async def clients(tmp_path: Path, relay: NodeProcess, count: int) -> AsyncIterator[list[P2PHost]]:
    """``count`` in-process hosts, each connected to ``relay``."""
    async with AsyncExitStack() as stack:
        hosts = []
        for n in range(count):
            host, _ = await stack.enter_async_context(running_host(tmp_path / f"client{n}"))
            await host.connect(relay.addr())
            hosts.append(host)
        yield hosts


async def reserve_status(host: P2PHost, relay: NodeProcess) -> Status:
    try:
        granted = await request_reservation(host, relay.peer_id)
    except CircuitError as error:
        assert error.status is not None, error
        return error.status
    assert granted.reservation.expire > 0
    return Status.OK


def accept_into(host: P2PHost, accepted: trio.MemorySendChannel[Stream]) -> None:
    """Serve the stop protocol on ``host`` by accepting raw circuits into ``accepted``."""

    async def handle(stream: Stream) -> None:
        await accept_circuit(stream)
        await accepted.send(stream)
        await trio.sleep_forever()  # the test owns the stream now

    host.set_stream_handler(STOP_PROTOCOL_ID, handle)


async def read_all(stream: Stream) -> bytes:
    """Everything ``stream`` delivers until it ends or is reset."""
    received = b""
    with contextlib.suppress(Exception):
        while chunk := await stream.read(65536):
            received += chunk
    return received


async def reserved_circuit(
    relay: NodeProcess, source: P2PHost, destination: P2PHost
) -> tuple[Stream, Limit | None, Stream]:
    """``destination`` reserves and accepts; ``source`` opens a circuit to it: (the source's
    stream, the circuit's limit, the destination's stream)."""
    send, accepted = trio.open_memory_channel[Stream](1)
    accept_into(destination, send)
    assert await reserve_status(destination, relay) == Status.OK
    stream, limit = await request_circuit(source, relay.peer_id, destination.peer_id)
    return stream, limit, await accepted.receive()


# --- reservations -------------------------------------------------------------------------------


async def test_reservations_are_limited_per_ip_renewed_and_released(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes, max_reservations_per_ip="2")
    async with clients(tmp_path, relay, 3) as (first, second, third):
        assert await reserve_status(first, relay) == Status.OK
        assert await reserve_status(second, relay) == Status.OK
        # All three come from 127.0.0.1: the third is one too many for that IP.
        assert await reserve_status(third, relay) == Status.RESERVATION_REFUSED
        assert relay.metric(RESERVATION_REJECTIONS, reason="ip_limit") == 1
        # A renewal is not a new reservation.
        assert await reserve_status(first, relay) == Status.OK
        assert relay.metric("libp2p_relaysvc_reservations_total", type="renewed") == 1
        # A peer that leaves gives its slot back at once, not after the hour's TTL.
        await first.disconnect(relay.peer_id)
        await wait_until(lambda: not first.is_connected(relay.peer_id))
        await trio.sleep(0.2)  # the relay learns of the disconnection
        assert await reserve_status(third, relay) == Status.OK
        assert relay.metric("p2pchat_relay_reservations") == 2


async def test_reservations_are_limited_in_total(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    relay = relay_node(tmp_path, nodes, max_reservations="2")
    async with clients(tmp_path, relay, 3) as (first, second, third):
        assert await reserve_status(first, relay) == Status.OK
        assert await reserve_status(second, relay) == Status.OK
        assert await reserve_status(third, relay) == Status.RESERVATION_REFUSED
        assert relay.metric(RESERVATION_REJECTIONS, reason="total_limit") == 1
        # The limit is exported beside the count (the near-limit alert divides by it).
        assert relay.metric("p2pchat_relay_reservations") == 2
        assert relay.metric("p2pchat_relay_max_reservations") == 2


async def test_the_allow_list_keeps_other_peers_out(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes, allow="10.11.12.0/24")
    async with clients(tmp_path, relay, 1) as (outsider,):
        assert await reserve_status(outsider, relay) == Status.PERMISSION_DENIED
        with pytest.raises(CircuitError) as refused:
            await request_circuit(outsider, relay.peer_id, relay.peer_id)
        assert refused.value.status == Status.PERMISSION_DENIED


# --- circuits -----------------------------------------------------------------------------------


async def test_a_circuit_needs_a_reservation_and_circuits_per_peer_are_limited(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes, max_circuits="1")
    async with clients(tmp_path, relay, 2) as (source, destination):
        send, accepted = trio.open_memory_channel[Stream](4)
        accept_into(destination, send)
        with pytest.raises(CircuitError) as refused:
            await request_circuit(source, relay.peer_id, destination.peer_id)
        assert refused.value.status == Status.NO_RESERVATION

        assert await reserve_status(destination, relay) == Status.OK
        stream, limit = await request_circuit(source, relay.peer_id, destination.peer_id)
        assert limit == Limit(duration=120, data=128 * 1024)  # go-libp2p's defaults
        far_end = await accepted.receive()
        await stream.write(b"ping")
        assert await far_end.read(4) == b"ping"
        await far_end.write(b"pong")
        assert await stream.read(4) == b"pong"

        with pytest.raises(CircuitError) as refused:
            await request_circuit(source, relay.peer_id, destination.peer_id)
        assert refused.value.status == Status.RESOURCE_LIMIT_EXCEEDED
        assert relay.metric(CONNECTION_REJECTIONS, reason="circuit_limit") == 1

        await stream.close()
        await far_end.close()
        await wait_until(lambda: relay.metric("libp2p_relaysvc_connections_total", type="closed"))
        again, _ = await request_circuit(source, relay.peer_id, destination.peer_id)
        await again.close()


async def test_a_circuit_is_reset_past_its_data_limit(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes, circuit_data="4096")
    async with clients(tmp_path, relay, 2) as (source, destination):
        stream, limit, far_end = await reserved_circuit(relay, source, destination)
        assert limit is not None and limit.data == 4096
        await stream.write(b"x" * 5000)
        with trio.fail_after(20):
            received = await read_all(far_end)
        assert received == b"x" * 4096  # the budget, and not a byte more
        await wait_until(lambda: relay.metric(RESETS, limit="data") == 1)


async def test_a_circuit_is_reset_past_its_duration(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes, circuit_duration="2")
    async with clients(tmp_path, relay, 2) as (source, destination):
        stream, limit, far_end = await reserved_circuit(relay, source, destination)
        assert limit is not None and limit.duration == 2
        await stream.write(b"still here")
        with trio.fail_after(30):
            received = await read_all(far_end)
        assert received == b"still here"
        await wait_until(lambda: relay.metric(RESETS, limit="duration") == 1)
        assert relay.metric("libp2p_relaysvc_connection_duration_seconds_count") == 1


async def test_a_circuit_to_an_unreachable_peer_fails_cleanly(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes)
    async with clients(tmp_path, relay, 2) as (source, destination):
        # Reserved, but refuses the stop protocol: the relay reports CONNECTION_FAILED.
        assert await reserve_status(destination, relay) == Status.OK
        with pytest.raises(CircuitError) as refused:
            await request_circuit(source, relay.peer_id, destination.peer_id)
        assert refused.value.status == Status.CONNECTION_FAILED
        assert relay.metric(CONNECTION_REJECTIONS, reason="connection_failed") == 1


# --- bad input ----------------------------------------------------------------------------------


async def _raw_hop_exchange(host: P2PHost, relay: NodeProcess, data: bytes) -> HopStatus:
    stream = await host.new_stream(relay.peer_id, [HOP_PROTOCOL_ID])
    await stream.write(data)
    with trio.fail_after(20):
        answer = decode_hop(await read_single_frame(stream, MAX_MESSAGE_BYTES))
    assert isinstance(answer, HopStatus)
    return answer


async def test_malformed_and_oversized_hop_messages_are_answered_not_fatal(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    relay = relay_node(tmp_path, nodes)
    async with clients(tmp_path, relay, 1) as (client,):
        garbage = await _raw_hop_exchange(client, relay, frame(b"\xff\xff\xff not protobuf"))
        assert garbage.status == Status.MALFORMED_MESSAGE
        bomb = await _raw_hop_exchange(client, relay, encode_uvarint(1 << 30) + b"\x00" * 64)
        assert bomb.status == Status.MALFORMED_MESSAGE
        unexpected = await _raw_hop_exchange(client, relay, encode(HopStatus(Status.OK)))
        assert unexpected.status == Status.UNEXPECTED_MESSAGE
        bad_target = await _raw_hop_exchange(client, relay, frame(b"\x08\x01\x12\x03\x0a\x01\x00"))
        assert bad_target.status == Status.MALFORMED_MESSAGE
        # And the relay serves on.
        assert await reserve_status(client, relay) == Status.OK
    assert relay.proc.poll() is None
    assert relay.metric("p2pchat_stream_handler_failures_total", protocol=HOP_PROTOCOL_ID) == 0


async def test_a_malformed_stop_request_is_answered_malformed(tmp_path: Path) -> None:
    async with running_host(tmp_path / "a") as (a, _), running_host(tmp_path / "b") as (b, _):
        failures: list[CircuitError] = []

        async def handle(stream: Stream) -> None:
            try:
                await accept_circuit(stream)
            except CircuitError as error:
                failures.append(error)

        b.set_stream_handler(STOP_PROTOCOL_ID, handle)
        await a.connect(next(iter(b.advertised_addrs())))
        stream = await a.new_stream(b.peer_id, [STOP_PROTOCOL_ID])
        await stream.write(frame(b"\x08\x00"))  # CONNECT without a peer
        with trio.fail_after(20):
            payload = await read_single_frame(stream, MAX_MESSAGE_BYTES)
        assert decode_stop(payload) == StopStatus(Status.MALFORMED_MESSAGE)
        await wait_until(lambda: failures)
        assert failures[0].status == Status.MALFORMED_MESSAGE


async def test_a_relay_holds_more_reservations_than_the_librarys_inbound_ceiling(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """Trap 24: py-libp2p's own resource manager admits 256 inbound connections whatever
    node.max_connections says; the host's follows the setting."""
    count = 270
    relay = relay_node(
        tmp_path,
        nodes,
        max_reservations=str(count),
        max_reservations_per_ip=str(count),
    )
    granted, _ = await reserve_all(tmp_path, relay, count)
    assert granted == count
    assert relay.proc.poll() is None
