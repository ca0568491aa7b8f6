"""The Circuit Relay v2 hop server: reservations, and circuits relayed within their limits.

One request per hop stream, as the spec has it. RESERVE is answered from
:class:`~p2pchat.roles.relay.limits.RelayResources`; CONNECT opens a stop stream to the
destination, and once it accepts, copies bytes both ways until either side ends, a direction
exceeds ``circuit_data`` bytes or ``circuit_duration`` seconds pass; over a limit both streams
are reset, as go-libp2p does. A circuit between two peers the operator lists for chat gets
other terms (:mod:`~p2pchat.roles.relay.chat_policy`). A reservation is released when its
holder's last connection closes, so a peer that connects, reserves and leaves cannot hold a
slot for an hour.
"""

from __future__ import annotations

import time
from typing import Protocol

import multiaddr
import structlog
import trio
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost
from p2pchat.node.p2p.identity import peer_id_bytes, peer_id_text
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    close_quietly,
    read_frame_exactly,
    read_single_frame,
    reset_quietly,
    stream_origin,
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
from p2pchat.roles.relay.chat_policy import ChatPolicy, CircuitTerms
from p2pchat.roles.relay.limits import RelayResources

REQUEST_TIMEOUT = 10.0  # to read a request; and for the destination to answer a stop CONNECT
COPY_CHUNK = 16 * 1024


class HopObserver(Protocol):
    """What the hop server reports (the role's metrics implement it). Called inline."""

    def service_started(self, max_reservations: int) -> None:
        """The hop protocol is served, granting at most ``max_reservations``."""

    def reservation_granted(self, renewed: bool) -> None:
        """A reservation was opened, or renewed."""

    def reservation_refused(self, reason: str) -> None:
        """A reservation was refused (``reason``: the limits' decision)."""

    def reservations_closed(self, count: int) -> None:
        """``count`` reservations ended: expired (reported before each reservation request,
        0 included), or their holder's last connection closed."""

    def reservations_changed(self, held: int) -> None:
        """The relay holds ``held`` reservations now."""

    def request_malformed(self) -> None:
        """A hop request could not be read (malformed, oversized or late)."""

    def circuit_refused(self, reason: str) -> None:
        """A circuit was refused: the limits' reason, ``bad_peer_id`` or
        ``connection_failed`` (the destination could not be reached or refused)."""

    def circuit_opened(self) -> None:
        """A circuit was accepted by its destination and relays from now."""

    def circuit_closed(self, seconds: float) -> None:
        """A circuit told to :meth:`circuit_opened` ended after ``seconds``."""

    def circuit_reset(self, limit: str) -> None:
        """A circuit was reset for exceeding ``limit`` (``data`` or ``duration``)."""

    def bytes_relayed(self, count: int, entries: tuple[str, ...]) -> None:
        """``count`` bytes were relayed, in either direction, on a circuit whose ends matched
        these ``relay.chat_peers`` entries (``("other",)``: a circuit with the default
        limits)."""


class HopServer:
    """Serves the hop protocol on ``host``; call :meth:`install` once."""

    def __init__(
        self,
        host: P2PHost,
        resources: RelayResources,
        observer: HopObserver,
        log: structlog.stdlib.BoundLogger,
        policy: ChatPolicy | None = None,
    ) -> None:
        """``policy``: which circuits are chat-friendly (None: none; every circuit has the
        default limits)."""
        self._host = host
        self._resources = resources
        self._policy = policy or ChatPolicy((), 0, 0, resources.limits)
        self._observer = observer
        self._log = log
        self._refusals = RefusalLog(log, "relay request refused")
        limits = resources.limits
        self._limit = Limit(duration=limits.circuit_duration, data=limits.circuit_data)

    def install(self) -> None:
        """Serve ``/libp2p/circuit/relay/0.2.0/hop``."""
        self._host.set_stream_handler(HOP_PROTOCOL_ID, self._handle)
        self._host.watch_connections(self)
        self._observer.service_started(self._resources.limits.max_reservations)

    async def _handle(self, stream: Stream) -> None:
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                payload = await read_single_frame(stream, MAX_MESSAGE_BYTES)
            request = decode_hop(payload)
        except (FrameError, CircuitWireError, trio.TooSlowError) as error:
            status = error.status if isinstance(error, CircuitWireError) else None
            self._observer.request_malformed()
            # Closed, not reset, after the answer (as go-libp2p does): a reset may overtake
            # the answer, and the asker's muxer then drops it unread.
            await _finish(stream, HopStatus(status or Status.MALFORMED_MESSAGE))
            return
        if isinstance(request, Reserve):
            await self._reserve(stream)
        elif isinstance(request, Connect):
            await self._connect(stream, request)
        else:
            await _finish(stream, HopStatus(Status.UNEXPECTED_MESSAGE))

    # --- ConnectionWatcher: a reservation ends with its holder's last connection ---

    def connection_opened(self, info: ConnectionInfo) -> None:
        return None

    def connection_closed(self, info: ConnectionInfo) -> None:
        if not self._host.is_connected(info.peer_id) and self._resources.release(info.peer_id):
            self._observer.reservations_closed(1)
            self._observer.reservations_changed(self._resources.reservations)

    async def _reserve(self, stream: Stream) -> None:
        origin = stream_origin(stream)
        now = time.monotonic()
        self._observer.reservations_closed(self._resources.expire(now))
        decision = self._resources.reserve(origin.peer_id, origin.remote_ip, now)
        self._observer.reservations_changed(self._resources.reservations)
        if decision.status != Status.OK:
            self._observer.reservation_refused(decision.reason)
            self._refusals.refused(f"reservation {decision.reason}", peer=origin.peer_id)
            await _finish(stream, HopStatus(decision.status))
            return
        self._observer.reservation_granted(renewed=decision.reason == "renewed")
        reservation = Reservation(
            expire=int(time.time() + (decision.expire - now)),
            addrs=tuple(
                multiaddr.Multiaddr(addr).to_bytes() for addr in self._host.advertised_addrs()
            ),
        )
        await _finish(stream, HopStatus(Status.OK, reservation, self._limit))

    async def _connect(self, stream: Stream, request: Connect) -> None:
        origin = stream_origin(stream)
        try:
            target = peer_id_text(request.peer_id)
        except ValueError:
            self._observer.circuit_refused("bad_peer_id")
            await _finish(stream, HopStatus(Status.MALFORMED_MESSAGE))
            return
        decision = self._resources.open_circuit(
            origin.peer_id, origin.remote_ip, target, time.monotonic()
        )
        if decision.status != Status.OK:
            self._observer.circuit_refused(decision.reason)
            self._refusals.refused(f"circuit {decision.reason}", peer=origin.peer_id, target=target)
            await _finish(stream, HopStatus(decision.status))
            return
        terms = self._policy.terms(
            origin.peer_id, origin.remote_ip, target, self._resources.reserved_ip(target)
        )
        try:
            destination = await self._open_stop(origin.peer_id, target, terms)
            if destination is None:
                self._observer.circuit_refused("connection_failed")
                await _finish(stream, HopStatus(Status.CONNECTION_FAILED))
                return
            await write_quietly(stream, encode(HopStatus(Status.OK, limit=terms.limit)))
            self._observer.circuit_opened()
            began = time.monotonic()
            try:
                await self._relay(stream, destination, terms)
            finally:
                self._observer.circuit_closed(time.monotonic() - began)
        finally:
            self._resources.close_circuit(origin.peer_id, origin.remote_ip, target)

    async def _open_stop(self, source: str, target: str, terms: CircuitTerms) -> Stream | None:
        """A stop stream to ``target`` that accepted ``source``'s circuit, or None."""
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                destination = await self._host.new_stream(target, [STOP_PROTOCOL_ID])
                connect = StopConnect(peer_id_bytes(source), terms.limit)
                await destination.write(encode(connect))
                # The destination may start its side of the relayed connection right after
                # its OK, in the same read.
                answer = decode_stop(await read_frame_exactly(destination, MAX_MESSAGE_BYTES))
        except (StreamError, FrameError, CircuitWireError, trio.TooSlowError) as error:
            # not reachable, refused, ended, malformed or late: all mean "failed"
            self._log.debug("stop stream failed", target=target, error=repr(error))
            return None
        if answer != StopStatus(Status.OK):
            await reset_quietly(destination)
            return None
        return destination

    async def _relay(self, source: Stream, destination: Stream, terms: CircuitTerms) -> None:
        """Copy both ways within the circuit's limits; reset both if one is exceeded."""
        over: list[str] = []
        duration = float("inf") if terms.duration is None else terms.duration
        with trio.move_on_after(duration) as timer:
            async with trio.open_nursery() as nursery:
                for reader, writer in ((source, destination), (destination, source)):
                    nursery.start_soon(
                        self._copy, reader, writer, terms, over, nursery.cancel_scope
                    )
        if timer.cancelled_caught:
            over.append("duration")
        if over:
            self._observer.circuit_reset(over[0])
            for end in (source, destination):
                with trio.CancelScope(shield=True):
                    await reset_quietly(end)
        else:
            for end in (source, destination):
                await close_quietly(end)

    async def _copy(
        self,
        reader: Stream,
        writer: Stream,
        terms: CircuitTerms,
        over: list[str],
        circuit: trio.CancelScope,
    ) -> None:
        budget = float("inf") if terms.data is None else terms.data
        entries = terms.entries
        try:
            while True:
                # The end of either direction ends the circuit (both ends are then closed by
                # _relay): a read never returns b"", it raises StreamEnded.
                chunk = await reader.read(COPY_CHUNK)
                if len(chunk) > budget:
                    allowed = int(budget)
                    await writer.write(chunk[:allowed])
                    self._observer.bytes_relayed(allowed, entries)
                    over.append("data")
                    circuit.cancel()
                    return
                budget -= len(chunk)
                await writer.write(chunk)
                self._observer.bytes_relayed(len(chunk), entries)
        except StreamError:  # either end finished, reset or went away: the circuit is over
            circuit.cancel()


async def _finish(stream: Stream, answer: HopStatus) -> None:
    """Send the one answer a hop stream gets, and close it (quietly: the asker may be gone)."""
    await write_quietly(stream, encode(answer))
    await close_quietly(stream)
