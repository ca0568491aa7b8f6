"""Hole punching (DCUtR, libp2p/specs relay/DCUtR.md): a relayed connection becomes a direct
one where the NATs allow it, and chat moves to it.

The peer that *received* a relayed connection (it holds a relay reservation because others
cannot dial it) is the initiator. Once identify has brought the other side's addresses and
protocols, it

1. dials the public (or loopback) addresses the peer advertises, in case one is reachable (a
   "direct dial"; its private LAN addresses are skipped, as go-libp2p does);
2. otherwise opens a ``/libp2p/dcutr`` stream over the relayed connection and, up to
   :data:`MAX_ATTEMPTS` times on that stream, sends CONNECT with its own addresses and times
   the peer's CONNECT answer as the round trip, sends SYNC, waits half the round trip and dials
   the peer's addresses from its listen port, while the peer, on SYNC, dials ours at once: a
   TCP simultaneous open through both NATs (see :mod:`p2pchat.node.p2p.direct`). QUIC
   addresses (``/udp/N/quic-v1``) are punched in the same round: the peer dials them from its
   QUIC listen port while we send it random UDP packets from ours
   (:mod:`p2pchat.node.p2p.quic_punch`). A peer that
   ends the stream after a failed round (go-libp2p and js-libp2p serve one round per stream)
   gets the next round on a new stream.

Two peers that both hold reservations may dial each other through relays at the same moment (room
rendezvous finds each to the other): each then received a relayed connection and would
initiate, and two punches at once through the same ports defeat each other. Then the peer with
the smaller PeerId initiates and the other one only answers (go-libp2p leaves it to chance).

On success new streams take the direct connection at once (the swarm prefers direct ones) and
the relayed connection is retired by the ``after_direct`` task given (the node gives
:class:`~p2pchat.node.relay_handover.RelayHandover`, which keeps it while the peer's pubsub
stream lives on it); without one it is closed :data:`GRACE` seconds later. On failure
everything stays on the relay. Outcomes are counted per side (initiator, receiver) in
``libp2p_holepunch_outcomes_total``, as go-libp2p does.

The receiver serves DCUtR only over relayed connections, one exchange per peer at a time, at
most :data:`MAX_ATTEMPTS` rounds. Malformed, oversized, unexpected or late messages end the
exchange and are counted; they never reach the node.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import multiaddr
import structlog
import trio
from p2pchat.node.p2p.direct import (
    close_relayed,
    dial_direct,
    has_direct_connection,
    has_outbound_relayed,
    own_punch_addrs,
    peer_quic_addrs,
    peer_tcp_addrs,
    punch_targets,
    with_listen_ports,
    worth_a_direct_dial,
)
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost
from p2pchat.node.p2p.streams import (
    Stream,
    StreamEnded,
    StreamError,
    close_quietly,
    read_single_frame,
    reset_quietly,
)
from p2pchat.node.punch_backoff import PunchBackoff
from p2pchat.node.wire.dcutr import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_ID,
    Connect,
    DcutrWireError,
    Sync,
    decode,
    encode,
)
from p2pchat.node.wire.framing import FrameError

MAX_ATTEMPTS = 3  # the spec: the initiator retries twice
IDENTIFY_WAIT = 10.0  # seconds to wait for identify before giving up on a relayed connection
MESSAGE_TIMEOUT = 10.0  # per message over the relay
ROUND_TIMEOUT = 30.0  # receiver: from one round's start to its SYNC (the peer dials in between)
GRACE = 2.0  # seconds the relayed connection stays open after a direct one is up
QUEUE = 64  # relayed connections waiting for a hole punch; more are left on the relay


_R = TypeVar("_R", Connect, Sync)


class _ProtocolError(Exception):
    """The other side broke the exchange (the message says how)."""


def _addr_bytes(addrs: Sequence[str]) -> tuple[bytes, ...]:
    return tuple(multiaddr.Multiaddr(addr).to_bytes() for addr in addrs)


def _addr_texts(raw: Sequence[bytes]) -> list[str]:
    texts = []
    for item in raw:
        try:
            texts.append(str(multiaddr.Multiaddr(item)))
        except Exception:  # not a multiaddr: skip that one (a peer's garbage costs it only that)
            continue
    return punch_targets(texts)


async def _receive(stream: Stream, expected: type[_R]) -> _R:
    """The next message, which must be an ``expected``; StreamEnded (a reset included)
    passes through."""
    try:
        record = decode(await read_single_frame(stream, MAX_MESSAGE_BYTES))
    except StreamEnded:
        raise
    except (DcutrWireError, FrameError) as error:
        raise _ProtocolError(str(error)) from None
    if not isinstance(record, expected):
        raise _ProtocolError(f"expected {expected.__name__}, got {type(record).__name__}")
    return record


class HolePunchObserver(Protocol):
    """What hole punching reports (the metrics implement it). Called inline: must not block."""

    def direct_dial_finished(self, succeeded: bool) -> None:
        """A direct dial tried before hole punching (the peer advertised an address) ended."""

    def punch_finished(self, side: str, attempts: int, outcome: str) -> None:
        """A hole punch ended. ``side``: ``initiator`` or ``receiver``; ``attempts``: at most
        :data:`MAX_ATTEMPTS`; ``outcome``: ``success``, ``failed`` or ``no_suitable_address``."""

    def exchange_dropped(self, side: str) -> None:
        """A DCUtR exchange was dropped: a malformed, oversized or unexpected message, a
        timeout, or a DCUtR stream over a connection that is not relayed."""


class QuietHolePunchObserver:
    """A hole punching observer that records nothing, for tests."""

    def direct_dial_finished(self, succeeded: bool) -> None:
        return None

    def punch_finished(self, side: str, attempts: int, outcome: str) -> None:
        return None

    def exchange_dropped(self, side: str) -> None:
        return None


class HolePunch:
    """Upgrades this node's relayed connections to direct ones, and helps peers do the same."""

    def __init__(
        self,
        host: P2PHost,
        observer: HolePunchObserver,
        log: structlog.stdlib.BoundLogger,
        after_direct: Callable[[str], Awaitable[None]] | None = None,
        backoff: PunchBackoff | None = None,
    ) -> None:
        """``after_direct(peer)`` runs as a task once a direct connection to ``peer`` replaced
        a relayed one, to retire the relayed one (default: closed after :data:`GRACE`).
        ``backoff``: which peers not to punch towards for now, after failed punches (None:
        punch on every inbound relayed connection)."""
        self._backoff = backoff
        self._host = host
        self._after_direct = after_direct if after_direct is not None else self._close_relayed_later
        self._observer = observer
        self._log = log
        self._initiating: set[str] = set()  # peers we may punch towards (checks, dials, rounds)
        self._punching: set[str] = set()  # peers we run a DCUtR exchange with, as initiator
        self._serving: set[str] = set()  # peers whose DCUtR exchange we serve now
        self._send, self._receive = trio.open_memory_channel[str](QUEUE)
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve DCUtR and punch for every inbound relayed connection, until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._host.set_stream_handler(PROTOCOL_ID, self._serve)
            self._host.watch_connections(self)
            task_status.started()
            async for peer in self._receive:
                if peer not in self._initiating:
                    nursery.start_soon(self._initiate, peer)

    # --- ConnectionWatcher ---

    def connection_opened(self, info: ConnectionInfo) -> None:
        if info.transport == "p2p-circuit" and info.direction == "inbound":
            try:
                self._send.send_nowait(info.peer_id)
            except trio.WouldBlock:
                self._log.warning("hole punch queue full; peer stays relayed", peer=info.peer_id)

    def connection_closed(self, info: ConnectionInfo) -> None:
        return None

    # --- initiator: the side that received the relayed connection ---

    async def _initiate(self, peer: str) -> None:
        if self._backoff is not None and not self._backoff.allowed(peer, trio.current_time()):
            # Its punches failed again and again (a symmetric NAT): not on every new circuit.
            self._log.debug("hole punch not tried (failed recently)", peer=peer)
            return
        self._initiating.add(peer)
        try:
            if not await self._speaks_dcutr(peer) or has_direct_connection(self._host, peer):
                return
            if self._leaves_punch_to(peer):
                return
            if await self._direct_dial(peer):
                if self._backoff is not None:
                    self._backoff.succeeded(peer)
                self._migrate(peer)
                return
            if self._leaves_punch_to(peer):  # the peer's relayed connection came meanwhile
                return
            await self._punch(peer)
        finally:
            self._initiating.discard(peer)

    def _leaves_punch_to(self, peer: str) -> bool:
        """Whether ``peer`` initiates, not us, although we received a relayed connection from
        it: we already answer its exchange, or we also dialled it through a relay and its
        PeerId is the smaller one."""
        if peer in self._serving:
            self._log.info("hole punch left to the peer (it initiated first)", peer=peer)
            return True
        if peer < self._host.peer_id and has_outbound_relayed(self._host, peer):
            self._log.info("hole punch left to the peer (both dialled through relays)", peer=peer)
            return True
        return False

    async def _speaks_dcutr(self, peer: str) -> bool:
        """Whether ``peer`` serves DCUtR, by its first identify or by an identify push within
        IDENTIFY_WAIT: go-libp2p adds DCUtR only once it knows a public address of its own,
        which a fresh go peer may learn (from the relay) after its relayed connection opened."""
        with trio.move_on_after(IDENTIFY_WAIT):
            while self._host.is_connected(peer):
                if PROTOCOL_ID in self._host.peer_protocols(peer):
                    return True
                await self._host.identify_received()
        return False

    async def _direct_dial(self, peer: str) -> bool:
        addrs = worth_a_direct_dial(peer_tcp_addrs(self._host, peer))
        if not addrs:
            return False
        reached = await dial_direct(self._host, peer, addrs, punch=False)
        self._observer.direct_dial_finished(reached)
        if reached:
            self._log.info("direct connection without hole punch", peer=peer)
        return reached

    async def _open_stream(self, peer: str) -> Stream | None:
        try:
            with trio.fail_after(MESSAGE_TIMEOUT):
                return await self._host.new_stream(peer, [PROTOCOL_ID])
        except StreamError as error:  # the relayed connection went away, or the peer refused
            self._log.info("hole punch stream failed", peer=peer, error=str(error))
            return None
        except trio.TooSlowError:
            self._log.info("hole punch stream failed", peer=peer, error="timed out")
            return None

    async def _connect_round(self, stream: Stream, ours: list[str]) -> tuple[float, Connect]:
        """Send our CONNECT, receive the peer's: (the round trip in seconds, its CONNECT)."""
        with trio.fail_after(MESSAGE_TIMEOUT):
            started = trio.current_time()
            await stream.write(encode(Connect(_addr_bytes(ours))))
            answer = await _receive(stream, Connect)
            return trio.current_time() - started, answer

    async def _punch(self, peer: str) -> None:
        self._punching.add(peer)
        try:
            await self._punch_rounds(peer)
        finally:
            self._punching.discard(peer)

    async def _punch_rounds(self, peer: str) -> None:
        ours = own_punch_addrs(self._host)
        if not ours:
            self._finished("initiator", peer, 1, "no_suitable_address")
            return
        stream = await self._open_stream(peer)
        if stream is None:
            return
        attempt = 0
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    rtt, answer = await self._connect_round(stream, ours)
                except StreamError:  # the stream ended, or was reset or closed
                    if attempt == 1:
                        raise
                    # go-libp2p and js-libp2p serve one round per stream and end it after a
                    # failed one (they open a new stream per attempt; the spec reuses the
                    # stream): the next round goes on a new stream.
                    await close_quietly(stream)
                    if (fresh := await self._open_stream(peer)) is None:
                        return
                    stream = fresh
                    rtt, answer = await self._connect_round(stream, ours)
                theirs = with_listen_ports(
                    _addr_texts(answer.addrs), peer_quic_addrs(self._host, peer)
                )
                self._log.debug("hole punch round", peer=peer, ours=ours, theirs=theirs, rtt=rtt)
                if not theirs:
                    self._finished("initiator", peer, attempt, "no_suitable_address")
                    return
                with trio.fail_after(MESSAGE_TIMEOUT):
                    await stream.write(encode(Sync()))
                # The peer dials when SYNC arrives, half a round trip from now: so do we.
                await trio.sleep(rtt / 2)
                if await dial_direct(self._host, peer, theirs, punch=True, initiator=False):
                    self._finished("initiator", peer, attempt, "success", rtt=rtt)
                    return
            self._finished("initiator", peer, MAX_ATTEMPTS, "failed")
        except StreamEnded as error:  # ended, reset or closed: the peer dropped the exchange
            if attempt == 1 and peer < self._host.peer_id:
                # It initiated too, and has the smaller PeerId: it refused ours (see _serve).
                self._log.info("hole punch left to the peer (both initiated)", peer=peer)
            else:
                self._protocol_error("initiator", peer, error)
            await reset_quietly(stream)
        except (_ProtocolError, trio.TooSlowError) as error:
            self._protocol_error("initiator", peer, error)
            await reset_quietly(stream)
        except StreamError as error:  # any other failure of the stream: the exchange is over
            self._log.info("hole punch ended", peer=peer, attempt=attempt, error=str(error))
        finally:
            await close_quietly(stream)

    # --- receiver: the side that dialled through the relay ---

    async def _serve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if not stream.relayed:
            # Nothing to upgrade, and a peer must not make us dial arbitrary addresses.
            self._protocol_error("receiver", peer, _ProtocolError("not over a relayed connection"))
            await reset_quietly(stream)
            return
        if peer in self._serving:
            await reset_quietly(stream)
            return
        if peer in self._punching and self._host.peer_id < peer:
            # Both received a relayed connection and initiated: ours goes on (the smaller
            # PeerId initiates), the peer answers it. (Before our exchange opens, the peer's
            # is served, and ours is not started: see _leaves_punch_to.)
            await reset_quietly(stream)
            return
        self._serving.add(peer)
        attempt = 0
        try:
            ours = own_punch_addrs(self._host)
            for attempt in range(1, MAX_ATTEMPTS + 1):
                with trio.fail_after(ROUND_TIMEOUT):
                    request = await _receive(stream, Connect)
                    await stream.write(encode(Connect(_addr_bytes(ours))))
                    await _receive(stream, Sync)
                theirs = with_listen_ports(
                    _addr_texts(request.addrs), peer_quic_addrs(self._host, peer)
                )
                self._log.debug("hole punch round", peer=peer, ours=ours, theirs=theirs)
                if not theirs or not ours:
                    self._finished("receiver", peer, attempt, "no_suitable_address")
                    return
                if await dial_direct(self._host, peer, theirs, punch=True, initiator=True):
                    self._finished("receiver", peer, attempt, "success")
                    return
            self._finished("receiver", peer, MAX_ATTEMPTS, "failed")
        except StreamEnded:  # the initiator gave up (or succeeded by its own dial), or reset
            if attempt > 1:
                outcome = "success" if has_direct_connection(self._host, peer) else "failed"
                self._finished("receiver", peer, attempt - 1, outcome)
        except (_ProtocolError, trio.TooSlowError) as error:
            # Over once dropped: the peer's next exchange may arrive while the reset is sent,
            # and must be served, not refused as a second one at the same time.
            self._serving.discard(peer)
            self._protocol_error("receiver", peer, error)
            await reset_quietly(stream)
        except StreamError as error:  # the stream or its connection died
            self._log.info("hole punch ended", peer=peer, attempt=attempt, error=str(error))
        finally:
            self._serving.discard(peer)
            await close_quietly(stream)

    # --- both sides ---

    def _finished(self, side: str, peer: str, attempts: int, outcome: str, **extra: float) -> None:
        self._observer.punch_finished(side, attempts, outcome)
        if self._backoff is not None and side == "initiator":
            if outcome == "success":
                self._backoff.succeeded(peer)
            else:
                self._backoff.failed(peer, trio.current_time())
        if outcome == "success":
            self._log.info("hole punch succeeded", peer=peer, side=side, attempts=attempts, **extra)
            self._migrate(peer)
        else:
            self._log.info(
                "hole punch failed; staying relayed",
                peer=peer,
                side=side,
                attempts=attempts,
                outcome=outcome,
            )

    def _protocol_error(self, side: str, peer: str, error: BaseException) -> None:
        self._observer.exchange_dropped(side)
        what = "timed out" if isinstance(error, trio.TooSlowError) else str(error)
        self._log.warning("hole punch exchange dropped", peer=peer, side=side, error=what)

    def _migrate(self, peer: str) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._after_direct, peer)

    async def _close_relayed_later(self, peer: str) -> None:
        await trio.sleep(GRACE)
        closed = await close_relayed(self._host, peer)
        if closed:
            self._log.info("relayed connection closed; chat is direct", peer=peer, closed=closed)
