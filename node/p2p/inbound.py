"""The swarm's inbound connections, admitted, deadlined and byte-bounded (trap 31).

py-libp2p 0.8.1's swarm gives each accepted connection to ``Swarm._handle_inbound_connection``,
which holds one of ``max_connections - min_connections`` slots from accept until the *swarm*
stops (its handler then waits for the swarm to finish, whatever became of the connection):
250 connections opened by anyone, held or not, lock everyone else out for the life of the
node. Its upgrade deadline (10 s) covers security and muxer but not identify, and nothing
bounds the bytes a handshake may take. (The audit: 250-400 connections from one address kept
an honest late joiner out for the whole attack.)

:func:`install` replaces that handler on one swarm (an instance attribute: the class and other
hosts are untouched). Each accepted connection

1. asks :class:`~p2pchat.node.p2p.admission.Admission` for a slot (per address group, in total,
   transient); a refused one is closed at once, a culled one (its slot given to a newcomer) is
   cancelled;
2. gets :attr:`~p2pchat.node.p2p.admission.AdmissionLimits.transient_deadline` seconds to
   complete the security handshake, the muxer negotiation, its registration in the swarm and
   identify (the PeerId, checked against ``per_peer`` once the handshake names it); until the
   muxer is agreed, the bytes read from it count against ``handshake_max_bytes`` (junk,
   slowloris dribbles, half Noise handshakes and endless multistream proposals end there);
3. once identified, holds its established slot until the connection closes, not longer.

Every refusal is told to the :class:`~p2pchat.node.p2p.admission.AdmissionObserver` (metrics)
and logged, at WARNING at most once per :data:`LOG_EVERY` seconds per reason.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
import trio
from libp2p.abc import IMuxedConn, INetConn
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.network.swarm import Swarm
from libp2p.transport.exceptions import MuxerUpgradeFailure, SecurityUpgradeFailure
from p2pchat.node.p2p.admission import (
    CULLED,
    DEADLINE,
    HANDSHAKE_BYTES,
    HANDSHAKE_FAILED,
    TOTAL_FULL,
    Admission,
    AdmissionObserver,
    Ticket,
)
from p2pchat.node.refusals import RefusalLog

log = structlog.get_logger("p2pchat.host.inbound")

CLOSE_SECONDS = 2.0
# The library's wait for the 3 bytes that tell TCP from WebSocket on a shared port
# (libp2p.transport.cmux._IDENTIFY_TIMEOUT, 5 s), less a margin for the clock.
CLASSIFY_SECONDS = 4.9
# The library classifies a connection on a shared port by the bytes of ONE receive_some(3),
# however few it returns: a client whose first write is shorter than 3 bytes (js-libp2p sends
# multistream-select's length byte alone at times) was taken for an unknown protocol and cut
# (2 of 6 js-libp2p dials on loopback). The first 3 bytes are peeked for first, without
# taking them from the socket, at growing intervals (a short write's rest follows at once; a
# client that stalls costs a few dozen peeks until CLASSIFY_SECONDS).
PREFIX_BYTES = 3
PEEK_POLLS = (0.002, 0.01, 0.05, 0.25)  # seconds between two peeks, the last repeated
LOG_EVERY = 10.0


def refusal_log(
    logger: structlog.stdlib.BoundLogger = log, clock: Callable[[], float] = time.monotonic
) -> RefusalLog:
    """Where refused connections are logged: at WARNING at most once per :data:`LOG_EVERY`
    seconds per reason (the caller logs the others at DEBUG)."""
    return RefusalLog(logger, "inbound connection refused", LOG_EVERY, clock=clock, level="warning")


IdentifiedWait = Callable[[str], Awaitable[None]]
"""Returns once the peer (PeerId text) is identified: at once if identify already told us its
protocols (a returning peer is not identified again), else at the next identify from it."""


class HandshakeTooLarge(Exception):
    """The remote sent more than ``handshake_max_bytes`` before the muxer was agreed."""


class _ByteBudget:
    """Counts the bytes one read method of a stream returns until :meth:`stop`; past
    ``limit``, the read that crossed it raises :class:`HandshakeTooLarge` (and every later
    one). ``method``: ``read`` (a libp2p stream) or ``receive_some`` (the TCP socket stream,
    under everything the library stacks on it: the WebSocket handshake and framing too)."""

    def __init__(self, stream: Any, limit: int, method: str = "read") -> None:
        self.exceeded = False
        # Called once when the limit is crossed (the library may swallow the error and leave
        # the connection open: a failed WebSocket handshake on a shared port does).
        self.on_exceeded: Callable[[], None] | None = None
        self._stream = stream
        self._method = method
        self._left = limit
        self._installed = False
        library_read = getattr(stream, method)

        async def read(n: int | None = None) -> bytes:
            if self.exceeded:
                raise HandshakeTooLarge
            data: bytes = await library_read(n)
            self._left -= len(data)
            if self._left < 0:
                self.exceeded = True
                if self.on_exceeded is not None:
                    self.on_exceeded()
                raise HandshakeTooLarge
            return data

        try:
            setattr(stream, method, read)  # this stream object only; the class is untouched
            self._installed = True
        except AttributeError:  # a stream type without a __dict__: deadline only
            pass

    def stop(self) -> None:
        """Stop counting: the stream reads as the library's again."""
        if self._installed:
            self._installed = False
            with contextlib.suppress(AttributeError):
                delattr(self._stream, self._method)


class InboundGate:
    """The replaced ``Swarm._handle_inbound_connection`` of one swarm (see the module doc)."""

    def __init__(
        self,
        swarm: Swarm,
        admission: Admission,
        observer: AdmissionObserver,
        identified: IdentifiedWait,
    ) -> None:
        self._swarm = swarm
        self._admission = admission
        self._observer = observer
        self._identified = identified
        self._log = refusal_log()
        # Connections admitted by classify() and not yet given to handle(), by socket stream.
        self._pending: dict[trio.SocketStream, Ticket] = {}
        self._handled: set[Ticket] = set()
        self._budgets: dict[Ticket, _ByteBudget] = {}  # the socket-level ones of classify()

    def _refused(self, reason: str, group: str) -> None:
        self._observer.connection_refused(reason)
        self._observer.transient_connections(self._admission.transient)
        if not self._log.refused(reason, group=group):
            log.debug("inbound connection refused", reason=reason, group=group)

    def _admit(self, ip: str | None, closer: Any) -> Ticket | None:
        """A slot for a connection from ``ip``, or None (refused and counted)."""
        decision = self._admission.admit(ip, trio.current_time())
        for victim in decision.culled:
            self._refused(CULLED, victim.group)
            if victim.cull is not None:
                victim.cull()
        if decision.ticket is None:
            self._refused(str(decision.reason), self._admission.limits.group_of(ip))
            return None
        self._observer.transient_connections(self._admission.transient)
        return decision.ticket

    async def classify(
        self,
        classify_and_route: Callable[[trio.SocketStream], Awaitable[None]],
        stream: trio.SocketStream,
    ) -> None:
        """The replaced ``PortDemultiplexer._classify_and_route`` (a TCP and a WebSocket
        listener sharing a port): the library first waits up to 5 s for 3 bytes that tell
        TCP from WebSocket, and the WebSocket handshake follows, all before :meth:`handle`;
        so the connection is admitted here, at accept, and its deadline runs from here."""
        ticket = self._admit(_socket_peer_ip(stream), stream)
        if ticket is None:
            await _close_quietly(stream)
            return
        self._pending[stream] = ticket
        # Counted at the socket: the bytes a WebSocket client sends before its muxer is
        # agreed (HTTP upgrade, frames; trio-websocket buffers a whole message, up to 32 MiB,
        # before anyone reads it) are bounded too.
        budget = _ByteBudget(stream, self._admission.limits.handshake_max_bytes, "receive_some")
        self._budgets[ticket] = budget
        try:
            async with trio.open_nursery() as nursery:
                ticket.cull = nursery.cancel_scope.cancel
                budget.on_exceeded = nursery.cancel_scope.cancel
                nursery.start_soon(self._expire, ticket, nursery.cancel_scope)
                with trio.move_on_after(CLASSIFY_SECONDS):
                    await _prefix_arrived(stream)
                await classify_and_route(stream)
                nursery.cancel_scope.cancel()
            if ticket not in self._handled and not ticket.released:
                # The library gave up on it before handle(): no 3 bytes in its 5 s, bytes of
                # no protocol it serves, a WebSocket handshake that failed or was too large.
                waited = trio.current_time() - ticket.opened_at
                if budget.exceeded:
                    reason = HANDSHAKE_BYTES
                elif waited >= CLASSIFY_SECONDS:
                    reason = DEADLINE
                else:
                    reason = HANDSHAKE_FAILED
                self._refused(reason, ticket.group)
        finally:
            budget.stop()
            self._budgets.pop(ticket, None)
            self._pending.pop(stream, None)
            self._handled.discard(ticket)
            self._admission.release(ticket)
            self._observer.transient_connections(self._admission.transient)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                await _close_quietly(stream)

    async def _expire(self, ticket: Ticket, scope: trio.CancelScope) -> None:
        # A connection that never reached handle() (no classification bytes, a WebSocket
        # handshake that never ends) is cut here; once in handle(), its own deadline counts.
        await trio.sleep_until(ticket.opened_at + self._admission.limits.transient_deadline)
        if ticket not in self._handled and not ticket.released:
            self._admission.release(ticket)  # counted once: here, not again as it closes
            self._refused(DEADLINE, ticket.group)
            scope.cancel()

    async def handle(self, read_write_closer: Any, maddr: Any) -> None:
        """Admit, upgrade and keep one accepted connection (the swarm's listener calls it)."""
        socket_stream = _socket_stream(read_write_closer)
        ticket = self._pending.get(socket_stream) if socket_stream is not None else None
        if ticket is None:
            # The socket's own peer address first (the same source for every transport: the
            # library's get_remote_address() knows IPv6 only through the remote_address patch,
            # and only on TCP streams); the library's answer when there is no socket below.
            ip = _socket_peer_ip(socket_stream) if socket_stream is not None else None
            ticket = self._admit(ip or _remote_ip(read_write_closer), read_write_closer)
        elif ticket.released:  # culled while classified
            ticket = None
        if ticket is None:
            await _close_quietly(read_write_closer)
            return
        self._handled.add(ticket)
        try:
            with trio.CancelScope() as scope:
                outer = ticket.cull

                def cull() -> None:
                    scope.cancel()
                    if outer is not None:
                        outer()

                ticket.cull = cull
                await self._serve(read_write_closer, ticket, ticket.group)
        finally:
            self._handled.discard(ticket)
            self._admission.release(ticket)
            self._observer.transient_connections(self._admission.transient)

    async def _serve(self, read_write_closer: Any, ticket: Ticket, group: str) -> None:
        conn: INetConn | None = None
        budget = self._budgets.get(ticket) or _ByteBudget(
            read_write_closer, self._admission.limits.handshake_max_bytes
        )
        reason: str | None = None
        try:
            expiry = ticket.opened_at + self._admission.limits.transient_deadline
            with trio.move_on_at(expiry) as deadline:
                try:
                    conn = await self._upgrade(read_write_closer, ticket, budget)
                except _Refused as refused:
                    reason = refused.reason
                except (SecurityUpgradeFailure, MuxerUpgradeFailure, HandshakeTooLarge):
                    reason = HANDSHAKE_BYTES if budget.exceeded else HANDSHAKE_FAILED
                except Exception as error:  # the library raises many types (swarm,
                    # transport, Noise, multiselect) for a connection that went wrong
                    if budget.exceeded:
                        reason = HANDSHAKE_BYTES
                    elif "Maximum connections" in str(error):
                        # the swarm's own total (inbound and outbound), checked at
                        # registration; it says so in a message only (a SwarmException)
                        reason = TOTAL_FULL
                    else:
                        reason = HANDSHAKE_FAILED
                    log.debug("inbound upgrade failed", error=repr(error))
                if conn is not None and await self._identified_or_closed(conn):
                    self._admission.established(ticket)
                    self._observer.transient_connections(self._admission.transient)
            if deadline.cancelled_caught:
                reason = DEADLINE
            if reason is not None:
                self._refused(reason, group)
                return
            if conn is not None:
                await _closed(conn)
        finally:
            budget.stop()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_SECONDS):
                if conn is not None:
                    await conn.close()
                await _close_quietly(read_write_closer)

    async def _identified_or_closed(self, conn: INetConn) -> bool:
        """Until the peer is identified (True) or the connection closes first (False)."""
        identified = False

        async def wait_identified(cancel: trio.CancelScope) -> None:
            nonlocal identified
            await self._identified(str(conn.muxed_conn.peer_id))
            identified = True
            cancel.cancel()

        async def wait_closed(cancel: trio.CancelScope) -> None:
            await _closed(conn)
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_identified, nursery.cancel_scope)
            nursery.start_soon(wait_closed, nursery.cancel_scope)
        return identified

    async def _upgrade(
        self, read_write_closer: Any, ticket: Ticket, budget: _ByteBudget
    ) -> INetConn | None:
        """Secure, name, mux and register the connection; None if the swarm refused it."""
        swarm = self._swarm
        if isinstance(read_write_closer, IMuxedConn):  # QUIC-like: secured and muxed already
            named = self._admission.named(ticket, str(read_write_closer.peer_id))
            if named is not None:
                raise _Refused(named)
            budget.stop()
            return await swarm.add_conn(read_write_closer, direction="inbound")
        raw_conn = RawConnection(read_write_closer, False)
        secured = await swarm.upgrader.upgrade_security(raw_conn, False)
        peer_id = secured.get_remote_peer()
        named = self._admission.named(ticket, str(peer_id))
        if named is not None:
            await secured.close()
            raise _Refused(named)
        muxed = await swarm.upgrader.upgrade_connection(secured, peer_id)
        budget.stop()
        return await swarm.add_conn(muxed, direction="inbound")


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _socket_peer_ip(stream: trio.SocketStream) -> str | None:
    try:
        return str(stream.socket.getpeername()[0])
    except (OSError, IndexError, TypeError):
        return None


def _socket_stream(closer: Any) -> trio.SocketStream | None:
    """The TCP socket stream under a library stream (TrioTCPStream -> PeekableStream ->
    SocketStream; P2PWebSocketConnection -> trio-websocket -> PeekableStream -> ...)."""
    for _ in range(6):
        if isinstance(closer, trio.SocketStream):
            return closer
        for name in ("stream", "_stream", "_ws"):
            inner = getattr(closer, name, None)
            if inner is not None:
                closer = inner
                break
        else:
            return None
    return None


def _remote_ip(read_write_closer: Any) -> str | None:
    try:
        remote = read_write_closer.get_remote_address()
    except Exception:  # any transport's error: an unknown address counts in one group
        return None
    if not remote:
        return None
    return str(remote[0])


async def _closed(conn: INetConn) -> None:
    """Until the swarm connection closes (every SwarmConn has ``event_closed``)."""
    event: trio.Event = conn.event_closed
    await event.wait()


async def _close_quietly(closer: Any) -> None:
    with contextlib.suppress(Exception):  # already gone, reset, broken: closed either way
        await closer.close()


def install(
    swarm: Swarm, admission: Admission, observer: AdmissionObserver, identified: IdentifiedWait
) -> InboundGate:
    """Replace ``swarm``'s inbound handler by an :class:`InboundGate` (before it listens)."""
    gate = InboundGate(swarm, admission, observer, identified)
    swarm._handle_inbound_connection = gate.handle
    for demux in getattr(swarm.transport_manager, "_port_demuxers", {}).values():
        demux._classify_and_route = partial(gate.classify, demux._classify_and_route)
    return gate


async def _prefix_arrived(stream: trio.SocketStream) -> None:
    """Return once :data:`PREFIX_BYTES` bytes have arrived on ``stream`` (peeked, left in the
    socket), or it ended or failed: the library's classification then reads them all at once.
    Unbounded in time: the caller bounds it."""
    for n in itertools.count():
        try:
            data = await stream.socket.recv(PREFIX_BYTES, socket.MSG_PEEK)
        except OSError:
            return
        if not data or len(data) >= PREFIX_BYTES:
            return
        await trio.sleep(PEEK_POLLS[min(n, len(PEEK_POLLS) - 1)])
