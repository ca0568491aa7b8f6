"""Inbound Kad-DHT streams, bounded: what a DHT server reads from strangers before the library.

py-libp2p 0.8.1's ``KadDHT`` serves each inbound stream in a loop that reads frames of up to
4 MiB with no deadline, all peers together under one ``CapacityLimiter(12)``: twelve streams
that send nothing, or half a frame, hold every slot for as long as they stay open and the DHT
answers nobody else (the audit: a bootstrap node held by 12 idle Kad clients left a late joiner
without a mesh). It stores every PUT_VALUE record of up to 1 MiB, 50,000 of them (the audit:
2,200 records took a bootstrap node to 2.28 GB, for good). Nothing limits how fast one peer
asks.

:class:`InboundKad` is the node's handler for the protocol instead. Each stream is

- admitted: at most ``max_streams_per_peer`` open from one peer (``streams_per_peer``) and
  ``max_streams`` in all; when all are taken, the stream that has waited longest for its next
  request is reset to make room (``evicted``): an honest request arrives as soon as its stream
  is open, a held stream is the one that waits; with none waiting, ``streams_total``;
- read frame by frame, each whole within ``read_timeout`` of the wait for it starting
  (``idle`` when nothing of it came, ``partial_frame`` when part did; go-libp2p resets a
  stream idle for a minute), each at most ``max_message_bytes`` (``frame_size``; go-libp2p:
  4 MiB; a request of ours or of a go/js peer is a few KiB);
- metered: each request spends a token of its peer's bucket, ``requests_per_second`` with a
  ``request_burst`` (``rate``);
- answered within ``read_timeout`` too: a peer that does not read its answers (its window
  stays shut) is cut (``write_timeout``), and a stream waiting to write may be evicted;
- screened: a frame that is no Kad message is ``malformed``; PUT_VALUE is refused
  (``put_value``): p2pchat neither puts nor gets values (rendezvous uses provider records), so a
  server that stored other peers' values would only keep memory for strangers;

and its admitted requests are served by the library's own request handling
(``KadDHT._do_handle_stream``), given a stream that yields only those frames. Every refusal
resets the stream, is counted (:class:`KadObserver`) and logged, once a minute per reason at
most.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio
from google.protobuf.message import DecodeError
from libp2p.abc import INetStream
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from p2pchat.node.p2p.streams import (
    Stream,
    StreamEnded,
    StreamError,
    read_frame,
    reset_quietly,
)
from p2pchat.node.ratelimit import PeerRateLimit
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge, encode_uvarint

log = structlog.get_logger("p2pchat.dht")

LOG_EVERY = 60.0  # a refusal reason is logged at most once per this many seconds
RESET_TIMEOUT = 5.0  # seconds a reset of a refused stream may take


@dataclass(frozen=True)
class InboundLimits:
    """The bounds on inbound DHT streams (see the module's docstring)."""

    max_streams: int = 256
    max_streams_per_peer: int = 32
    read_timeout: float = 10.0
    max_message_bytes: int = 64 * 1024
    requests_per_second: float = 20.0
    request_burst: int = 200


class KadObserver(Protocol):
    """Told of every refusal of the DHT's bounds, by reason (a few fixed words)."""

    def kad_refused(self, reason: str) -> None: ...


@dataclass(eq=False)
class _Slot:
    """One admitted stream: whose, its cancel scope, and since when it waits for a frame
    (None while a request is being served)."""

    peer: str
    scope: trio.CancelScope
    waiting_since: float | None = None


class InboundKad:
    """The DHT server's stream handler: admits, reads and screens, then lets ``serve`` (the
    library's handling of one stream) answer what passed."""

    def __init__(
        self,
        serve: Callable[[Any], Awaitable[None]],
        limits: InboundLimits,
        observer: KadObserver,
    ) -> None:
        self._serve = serve
        self.limits = limits
        self._observer = observer
        self._slots: set[_Slot] = set()
        self._by_peer: dict[str, int] = {}
        self._rate = PeerRateLimit(limits.requests_per_second, limits.request_burst)
        self._log = RefusalLog(log, "dht request refused", LOG_EVERY, clock=trio.current_time)

    @property
    def open_streams(self) -> int:
        """Inbound DHT streams admitted and open now."""
        return len(self._slots)

    async def handle(self, stream: INetStream) -> None:
        """Serve one inbound stream within the bounds; a refused one is reset."""
        peer = str(stream.muxed_conn.peer_id)
        if self._by_peer.get(peer, 0) >= self.limits.max_streams_per_peer:
            await self._refuse(Stream(stream), peer, "streams_per_peer")
            return
        if len(self._slots) >= self.limits.max_streams and not self._evict_one():
            await self._refuse(Stream(stream), peer, "streams_total")
            return
        slot = _Slot(peer, trio.CancelScope())
        self._slots.add(slot)
        self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
        fed = _AdmittedFrames(stream, self, slot)
        try:
            with slot.scope:
                await self._serve(fed)
        finally:
            self._release(slot)
            if fed.must_reset or slot.scope.cancelled_caught:
                await _reset_quietly(fed.stream)

    def _release(self, slot: _Slot) -> None:
        if slot not in self._slots:
            return  # evicted: released then
        self._slots.discard(slot)
        left = self._by_peer[slot.peer] - 1
        if left:
            self._by_peer[slot.peer] = left
        else:
            del self._by_peer[slot.peer]

    def _evict_one(self) -> bool:
        """Make room by cancelling the stream that has waited longest for a frame."""
        waiting = [slot for slot in self._slots if slot.waiting_since is not None]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda slot: slot.waiting_since or 0.0)
        self._release(oldest)
        oldest.scope.cancel()
        self.count(oldest.peer, "evicted")
        return True

    async def _refuse(self, stream: Stream, peer: str, reason: str) -> None:
        self.count(peer, reason)
        await _reset_quietly(stream)

    def count(self, peer: str, reason: str) -> None:
        """Count and log (rate-limited) one refusal of ``peer``'s."""
        self._observer.kad_refused(reason)
        self._log.refused(reason, peer=peer)

    async def next_request(self, fed: _AdmittedFrames) -> bytes | None:
        """The next request frame of ``fed`` that passes every check; None when the stream
        ended, or was refused (``fed.must_reset`` then says so)."""
        slot = fed.slot
        slot.waiting_since = trio.current_time()
        payload: bytes | None = None
        reason: str | None = None
        try:
            with trio.move_on_after(self.limits.read_timeout) as deadline:
                payload = await read_frame(fed.stream, fed.decoder)
            if deadline.cancelled_caught:
                reason = "partial_frame" if fed.decoder.buffered else "idle"
        except FrameTooLarge:
            reason = "frame_size"
        except FrameError:
            reason = "malformed"
        except StreamEnded:
            return None  # closed (or reset) by the other end: nothing held
        except StreamError:
            return None
        finally:
            slot.waiting_since = None
        if payload is not None:
            reason = self._screen(slot.peer, payload)
        if reason is not None:
            fed.must_reset = True
            self.count(slot.peer, reason)
            return None
        return payload

    def _screen(self, peer: str, payload: bytes) -> str | None:
        if not self._rate.allow(peer, trio.current_time()):
            return "rate"
        message = Message()
        try:
            message.ParseFromString(payload)
        except DecodeError:
            return "malformed"
        if message.type == Message.MessageType.PUT_VALUE:
            return "put_value"
        return None


class _AdmittedFrames:
    """The stream as the library's handler sees it: reads yield only the frames
    :meth:`InboundKad.next_request` passed (a refused or ended stream reads as ended);
    writes, and everything else, go to the stream itself. Closing a refused stream is left
    to :meth:`InboundKad.handle`, which resets it."""

    def __init__(self, library_stream: INetStream, guard: InboundKad, slot: _Slot) -> None:
        self._library = library_stream
        self.stream = Stream(library_stream)
        self.decoder = FrameDecoder(guard.limits.max_message_bytes)
        self.slot = slot
        self.must_reset = False
        self._guard = guard
        self._buffer = b""
        self._ended = False

    async def read(self, n: int | None = None) -> bytes:
        if not self._buffer and not self._ended:
            payload = await self._guard.next_request(self)
            if payload is None:
                self._ended = True
            else:
                self._buffer = encode_uvarint(len(payload)) + payload
        size = len(self._buffer) if n is None or n < 0 else n
        taken, self._buffer = self._buffer[:size], self._buffer[size:]
        return taken

    async def write(self, data: bytes) -> None:
        """Write an answer within the read deadline: a peer that asks and never reads what it
        asked for (its window stays shut) would hold the stream, and its slot, for ever. While
        it waits, the stream may be evicted like one waiting for a request."""
        self.slot.waiting_since = trio.current_time()
        try:
            with trio.move_on_after(self._guard.limits.read_timeout) as deadline:
                await self._library.write(data)
        finally:
            self.slot.waiting_since = None
        if deadline.cancelled_caught:
            self.must_reset = True
            self._guard.count(self.slot.peer, "write_timeout")
            # The library's handler ends quietly on a broken stream; ours then resets it.
            raise trio.BrokenResourceError("the peer does not read its answers")

    async def close(self) -> None:
        if not self.must_reset:
            await self._library.close()

    async def reset(self) -> None:
        self.must_reset = True  # reset by InboundKad.handle, once

    def __getattr__(self, name: str) -> Any:
        return getattr(self._library, name)


async def _reset_quietly(stream: Stream) -> None:
    """Reset ``stream``, even from a cancelled task, within :data:`RESET_TIMEOUT`; a stream
    already gone is fine."""
    with trio.move_on_after(RESET_TIMEOUT) as scope:
        scope.shield = True
        await reset_quietly(stream)
