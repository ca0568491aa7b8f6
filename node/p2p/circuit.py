"""The peer side of Circuit Relay v2: reserve a slot on a relay, open a circuit through one, and
accept the circuits a relay brings.

Trap 5 of shared/notes/py-libp2p-0.8.1.md: the library's relay client is not wired into the
swarm. Here the hop and stop exchanges run on our own codec
(:mod:`p2pchat.node.wire.circuit`), and :func:`dial_through` / :func:`upgrade_inbound` turn
the relayed stream into an ordinary libp2p connection (Noise and a muxer on top, added to the
swarm), so GossipSub, identify and every other protocol work over it unchanged.

Every exchange is bounded: one message of at most ``MAX_MESSAGE_BYTES``, within
``RESPONSE_TIMEOUT`` seconds. Failures of any kind come out as :class:`CircuitError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import multiaddr
import structlog
import trio
from libp2p.network.connection.raw_connection import ConnectionType, RawConnection
from libp2p.peer.id import ID
from p2pchat.node.ids import addr_peer
from p2pchat.node.p2p.circuit_usage import CircuitUsage, CountedStream, connections_to
from p2pchat.node.p2p.dial_admission import RELAYED_DEADLINE, RELAYED_FAILED, Slot
from p2pchat.node.p2p.identity import peer_id_bytes, peer_id_text
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    close_quietly,
    read_frame_exactly,
    read_single_frame,
    write_quietly,
)
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire.circuit import (
    HOP_PROTOCOL_ID,
    MAX_MESSAGE_BYTES,
    STOP_PROTOCOL_ID,
    CircuitWireError,
    Connect,
    HopStatus,
    Limit,
    Reservation,
    Reserve,
    Status,
    StopConnect,
    StopStatus,
    decode_hop,
    decode_stop,
    encode,
)
from p2pchat.node.wire.framing import FrameError

if TYPE_CHECKING:  # the host dials circuit addresses with this module
    from p2pchat.node.p2p.host import P2PHost

RESPONSE_TIMEOUT = 10.0
MAX_CIRCUIT_RELAYS = 4  # relays a next circuit to one peer is tried through, at most
CLOSE_SECONDS = 2.0
LOG_EVERY = 10.0

log = structlog.get_logger("p2pchat.host.circuit")


class CircuitError(Exception):
    """A reservation or circuit that did not come about; ``status`` is the relay's (or the
    destination's) answer when there was one."""

    def __init__(self, detail: str, status: Status | None = None) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class Granted:
    """A reservation the relay granted, and the limit its circuits will have."""

    reservation: Reservation
    limit: Limit | None


def split_circuit_addr(addr: str) -> tuple[str, str, str] | None:
    """``(relay address with /p2p/relay, relay, target)`` of a circuit address; None if ``addr``
    is not one (no ``/p2p-circuit``, or not ending in ``/p2p/<target>``)."""
    head, marker, tail = addr.partition("/p2p-circuit")
    if not marker or not tail.startswith("/p2p/") or "/p2p/" not in head:
        return None
    relay = addr_peer(head)
    target = tail.removeprefix("/p2p/")
    if not relay or not target or "/" in target or "/" in relay:
        return None
    return head, relay, target


async def _hop_request(
    host: P2PHost, relay: str, message: Reserve | Connect, what: str
) -> tuple[Stream, HopStatus]:
    """Send ``message`` to the connected ``relay`` on a new hop stream: the stream and the
    relay's OK. On any failure the stream is closed and :class:`CircuitError` raised (``what``
    names the request in its message)."""
    stream: Stream | None = None
    failure: CircuitError | None
    try:
        with trio.fail_after(RESPONSE_TIMEOUT):
            stream = await host.new_stream(relay, [HOP_PROTOCOL_ID])
            await stream.write(encode(message))
            # After a CONNECT's OK the stream is the relayed connection: its first bytes may
            # come with the answer.
            answer = decode_hop(await read_frame_exactly(stream, MAX_MESSAGE_BYTES))
    except (CircuitWireError, FrameError) as error:
        failure = CircuitError(f"bad answer from relay {relay}: {error}")
    except trio.TooSlowError:
        failure = CircuitError(f"relay {relay} did not answer {what} in time")
    except StreamError as error:  # refused, reset or ended before the answer
        failure = CircuitError(f"{what} via {relay}: {error}")
    else:
        failure = None
    if failure is not None:
        if stream is not None:
            await close_quietly(stream)
        raise failure
    assert stream is not None  # for mypy: the answer came over it
    if not isinstance(answer, HopStatus):
        await close_quietly(stream)
        raise CircuitError(f"the relay answered with {type(answer).__name__}, not STATUS")
    if answer.status != Status.OK:
        await close_quietly(stream)
        raise CircuitError(f"the relay answered {answer.status.name}", answer.status)
    return stream, answer


async def request_reservation(host: P2PHost, relay: str) -> Granted:
    """Reserve (or renew) a slot on the connected ``relay``.

    Raises:
        CircuitError: refused (``status`` says why), or no well-formed answer in time.
    """
    stream, answer = await _hop_request(host, relay, Reserve(), "the reservation")
    await close_quietly(stream)
    if answer.reservation is None:
        raise CircuitError(f"relay {relay} said OK but granted no reservation")
    return Granted(answer.reservation, answer.limit)


async def request_circuit(host: P2PHost, relay: str, target: str) -> tuple[Stream, Limit | None]:
    """A raw stream to ``target`` through the connected ``relay``, and the circuit's limit.

    Raises:
        CircuitError: refused (``status`` says why), or no well-formed answer in time.
    """
    try:
        connect = Connect(peer_id_bytes(target))
    except Exception:  # the base58 and multihash decoders raise several types
        raise CircuitError(f"{target!r} is not a PeerId") from None
    stream, answer = await _hop_request(host, relay, connect, f"the circuit to {target}")
    return stream, answer.limit


class CircuitRefused(CircuitError):
    """A circuit refused by a limit of this node (``reason``: a relayed admission reason)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"refused: {reason} limit reached", Status.RESOURCE_LIMIT_EXCEEDED)
        self.reason = reason


async def accept_circuit(
    stream: Stream, admit: Callable[[str], str | None] | None = None
) -> tuple[str, Limit | None]:
    """Answer a relay's stop CONNECT on ``stream``: the source PeerId and the circuit's limit.

    ``admit`` is asked about the source before OK is sent: a reason (a limit) refuses the
    circuit with RESOURCE_LIMIT_EXCEEDED. A malformed request is answered MALFORMED_MESSAGE
    (as the spec says) before raising.

    Raises:
        CircuitRefused: ``admit`` refused the source.
        CircuitError: no well-formed CONNECT in time.
    """
    try:
        with trio.fail_after(RESPONSE_TIMEOUT):
            request = decode_stop(await read_single_frame(stream, MAX_MESSAGE_BYTES))
            if not isinstance(request, StopConnect):
                raise CircuitWireError(Status.UNEXPECTED_MESSAGE, "expected CONNECT")
            source = peer_id_text(request.peer_id)
            refused = admit(source) if admit is not None else None
            if refused is not None:
                await write_quietly(stream, encode(StopStatus(Status.RESOURCE_LIMIT_EXCEEDED)))
                raise CircuitRefused(refused)
            await stream.write(encode(StopStatus(Status.OK)))
    except (CircuitWireError, FrameError, ValueError) as error:
        status = error.status if isinstance(error, CircuitWireError) else Status.MALFORMED_MESSAGE
        await write_quietly(stream, encode(StopStatus(status)))
        raise CircuitError(f"bad stop request: {error}", status) from None
    except trio.TooSlowError:
        raise CircuitError("no stop request in time") from None
    except StreamError as error:  # the relay went away mid-exchange
        raise CircuitError(f"stop exchange failed: {error}") from None
    return source, request.limit


# --- relayed streams as libp2p connections ------------------------------------------------------


def _circuit_conn_addr(relay_stream: Stream, relay: str, peer: str) -> multiaddr.Multiaddr:
    """The remote address of a relayed connection to ``peer``: the relay's transport address,
    then ``/p2p/<relay>/p2p-circuit/p2p/<peer>`` (js-libp2p's form; go-libp2p's also starts
    with the relay's transport address).

    py-libp2p's identify reports this address to ``peer`` as its observed address, and
    js-libp2p 3 fails the whole identify exchange on an observed address that does not start
    with an IP or DNS name (``addObservedAddr`` throws): with the bare
    ``/p2p/<relay>/p2p-circuit/...`` a js peer never learnt our protocols over a relay, so it
    never started DCUtR. The bare form is left only when the relay connection cannot tell its
    transport address."""
    suffix = f"/p2p/{relay}/p2p-circuit/p2p/{peer}"
    try:
        below = [str(a) for a in relay_stream.library_stream.muxed_conn.get_transport_addresses()]
    except Exception:  # best effort: a connection that cannot tell (a muxer without the
        below = []  # method, an address the multiaddr library will not build): the bare form
    transport = [a.split("/p2p/", 1)[0] for a in below if "/p2p-circuit" not in a]
    return multiaddr.Multiaddr((transport[0] if transport and transport[0] else "") + suffix)


async def dial_through(host: P2PHost, relay: str, target: str) -> Any:
    """Connect to ``target`` through the connected ``relay``: a circuit, secured and muxed like
    any connection and added to the swarm (even if ``target`` is connected already: a next
    circuit, :mod:`~p2pchat.node.circuit_renewal`). The swarm's new connection (None if the
    swarm did not keep it); its usage is in ``host.circuits``.

    Raises:
        CircuitError: the circuit or its upgrade failed.
    """
    stream, limit = await request_circuit(host, relay, target)
    addr = _circuit_conn_addr(stream, relay, target)
    usage = CircuitUsage(target, relay, outbound=True, limit=limit)
    # The library's stream beneath ours carries the connection: the swarm reads and writes
    # it itself, and its errors are the library's to handle. Counted on the way.
    raw = RawConnection(
        CountedStream(stream.library_stream, usage),
        initiator=True,
        connection_type=ConnectionType.RELAYED,
        addresses=[addr],
    )
    network = host.libp2p_host.get_network()
    upgraded = await _secured(
        stream,
        lambda: network.upgrade_outbound_raw_conn(raw, ID.from_base58(target)),
        f"the circuit to {target}",
    )
    muxed = getattr(upgraded, "muxed_conn", upgraded)  # the swarm's connection, its muxer
    host.circuits.add(muxed, usage)
    return _swarm_conn(host, muxed)


def relayed_circuits(host: P2PHost, peer: str) -> list[tuple[Any, CircuitUsage]]:
    """The open relayed connections to ``peer`` this host counts, with their usage, oldest
    first."""
    found = []
    for conn in connections_to(host.libp2p_host.get_network(), peer):
        usage = host.circuits.usage_of(conn)
        if usage is not None:
            found.append((conn, usage))
    return sorted(found, key=lambda pair: pair[1].opened)


def circuit_relays(host: P2PHost, peer: str) -> list[tuple[str, str]]:
    """``(relay address with /p2p/relay, relay)`` of every relay ``peer`` says (identify) it
    can be reached through: where a next circuit to it can go. At most
    :data:`MAX_CIRCUIT_RELAYS`."""
    try:
        addrs = host.libp2p_host.get_peerstore().addrs(ID.from_base58(peer))
    except Exception:  # unknown peer, or not a PeerId: no relay known
        return []
    relays: list[tuple[str, str]] = []
    for addr in map(str, addrs):
        full = addr if addr.endswith(f"/p2p/{peer}") else f"{addr}/p2p/{peer}"
        split = split_circuit_addr(full)
        if split is not None and split[2] == peer and split[1] not in {r for _, r in relays}:
            relays.append((split[0], split[1]))
    return relays[:MAX_CIRCUIT_RELAYS]


async def close_connection(conn: Any) -> None:
    """Close ``conn`` (quietly: it may be gone already)."""
    await _close_conn(conn)


async def upgrade_inbound(
    host: P2PHost, stream: Stream, source: str, limit: Limit | None = None
) -> object:
    """Make an accepted circuit from ``source`` (``limit``: the relay's, from its CONNECT) a
    libp2p connection of ``host``; the library's muxed connection. Unbounded in time: the
    caller bounds it (:func:`serve_circuits`: the inbound transient deadline).

    Raises:
        CircuitError: the security or muxer handshake failed.
    """
    relay = stream.remote_peer
    addr = _circuit_conn_addr(stream, relay, source)
    usage = CircuitUsage(source, relay, outbound=False, limit=limit)
    raw = RawConnection(
        CountedStream(stream.library_stream, usage),
        initiator=False,
        connection_type=ConnectionType.RELAYED,
        addresses=[addr],
    )
    network = host.libp2p_host.get_network()
    muxed = await _upgraded(
        stream, lambda: network.upgrade_inbound_raw_conn(raw, addr), f"the circuit from {source}"
    )
    host.circuits.add(muxed, usage)
    return muxed


async def _secured(stream: Stream, upgrade: Callable[[], Awaitable[object]], what: str) -> object:
    """:func:`_upgraded` within RESPONSE_TIMEOUT."""
    try:
        with trio.fail_after(RESPONSE_TIMEOUT):
            return await _upgraded(stream, upgrade, what)
    except trio.TooSlowError:
        await close_quietly(stream)
        raise CircuitError(f"securing {what} timed out") from None


async def _upgraded(stream: Stream, upgrade: Callable[[], Awaitable[object]], what: str) -> object:
    """Run the swarm's upgrade (Noise, muxer; the connection joins the swarm) of a relayed
    stream: its result; on failure close the stream and raise CircuitError."""
    try:
        return await upgrade()
    except Exception as error:  # security (wrong peer) or muxer negotiation failed: the
        # library's whole upgrade runs on the remote's bytes and raises more than its own
        # error types (decoders, crypto); the host layer maps them all here, once
        await close_quietly(stream)
        raise CircuitError(f"securing {what}: {error}") from None


def serve_circuits(host: P2PHost) -> None:
    """Accept circuits relays bring to ``host`` (the stop protocol), as libp2p connections,
    each holding a slot of ``host.relayed`` (:class:`~p2pchat.node.p2p.dial_admission.Relayed`:
    in all, per relay, per source PeerId) from its CONNECT until the connection closes; the
    CONNECT, the upgrade and identify within the inbound ``transient_deadline``. Every refusal
    is counted by reason (``host.admission_observer``) and logged at WARNING at most once per
    :data:`LOG_EVERY` seconds per reason."""
    refusals = RefusalLog(log, "relayed connection refused", LOG_EVERY, level="warning")

    def refused(reason: str, relay: str, detail: str) -> None:
        host.admission_observer.connection_refused(reason)
        if not refusals.refused(reason, relay=relay, detail=detail):
            log.debug("relayed connection refused", reason=reason, relay=relay, detail=detail)

    async def handle(stream: Stream) -> None:
        relay = stream.remote_peer
        slot: Slot | None = None

        def admit(source: str) -> str | None:
            nonlocal slot
            decision = host.relayed.admit(relay, source)
            if isinstance(decision, str):
                return decision
            slot = decision
            return None

        conn: Any = None
        try:
            with trio.move_on_after(host.admission.limits.transient_deadline) as deadline:
                try:
                    source, limit = await accept_circuit(stream, admit)
                    muxed: Any = await upgrade_inbound(host, stream, source, limit)
                except CircuitRefused as refusal:
                    refused(refusal.reason, relay, str(refusal))
                    return
                except CircuitError as error:
                    refused(RELAYED_FAILED, relay, str(error))
                    return
                conn = _swarm_conn(host, muxed)
                if str(muxed.peer_id) != source or conn is None:
                    # Noise named another peer than the relay's CONNECT (or the swarm dropped
                    # it): the slot was taken in the claimed name, so the connection goes.
                    refused(RELAYED_FAILED, relay, "not the peer the relay named")
                    await _close_conn(muxed)
                    return
                if not await _identified_or_closed(host, conn, source):
                    return
            if deadline.cancelled_caught:
                refused(RELAYED_DEADLINE, relay, "not secured, muxed and identified in time")
                return
            await conn.event_closed.wait()
        finally:
            if slot is not None:
                host.relayed.release(slot)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                if conn is not None:
                    await _close_conn(conn)
                await close_quietly(stream)

    host.set_stream_handler(STOP_PROTOCOL_ID, handle)


def _swarm_conn(host: P2PHost, muxed: object) -> Any:
    """The swarm's connection over ``muxed`` (None if it is not, or no longer, registered)."""
    for conn in host.libp2p_host.get_network().get_connections():
        if conn.muxed_conn is muxed:
            return conn
    return None


async def _identified_or_closed(host: P2PHost, conn: Any, peer: str) -> bool:
    """Until ``peer`` is identified (True) or ``conn`` closes first (False)."""
    identified = False

    async def wait_identified(cancel: trio.CancelScope) -> None:
        nonlocal identified
        await host.wait_identified(peer)
        identified = True
        cancel.cancel()

    async def wait_closed(cancel: trio.CancelScope) -> None:
        await conn.event_closed.wait()
        cancel.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_identified, nursery.cancel_scope)
        nursery.start_soon(wait_closed, nursery.cancel_scope)
    return identified


async def _close_conn(conn: Any) -> None:
    with contextlib.suppress(Exception):  # already gone, reset: closed either way
        await conn.close()
