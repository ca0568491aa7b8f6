"""QUIC streams that behave as the libp2p stream contract says (py-libp2p 0.8.1 traps, #20).

**STOP_SENDING ends our sending, not our reading** (trap 37). A QUIC peer that will read
nothing more on a stream tells us with STOP_SENDING (RFC 9000 §3.5): our *sending* half is over,
its own is not. go-libp2p does it on every stream whose handler stops reading: its identify
handler writes the answer and closes its read side at once. py-libp2p 0.8.1's
``QUICStream.handle_stop_sending`` marks a stream *we* opened closed as a whole, so a read made
after the STOP_SENDING arrived and before the answer did fails ("Stream ... is closed"): our
identify of a go peer failed whenever its answer was a few milliseconds behind the frame (a
loaded machine), the peer stayed unidentified, and the node's identify deadline closed the
connection (``tests/test_interop_quic_chat.py``: 1 of 6 runs at load 12).
:func:`stop_sending_ends_our_sending` closes only the write half (aioquic answers with RESET_STREAM,
as the RFC asks); the read half stays open until the peer's FIN or reset.

**A stream is opened within the peer's stream credit** (trap 39). A QUIC peer grants how many
streams we may open (MAX_STREAMS; aioquic grants 128 at first, then one more per stream that
ends). py-libp2p 0.8.1 allocates stream ids past that credit; aioquic queues such a stream as
blocked but, if it is reset before it could open (a refusal, a negotiation timeout), sends a
RESET_STREAM for it anyway, and the peer closes the whole connection (STREAM_LIMIT_ERROR,
RFC 9000 §4.6): 400 streams opened at once to a p2pchat node ended the connection.
:func:`opening_within_credit` makes ``QUICConnection.open_stream`` wait until the peer's credit
covers the next stream id, as quic-go's ``OpenStreamSync`` does, within the library's own
``STREAM_OPEN_TIMEOUT`` (then it fails as the library's own timeout does). It looks at the
credit every :data:`CREDIT_POLL` seconds while waiting, which only a peer holding all the
streams it granted makes us do; no stream past the credit exists, so no reset can break the rule.

**A reset ends both halves of a stream** (trap 40). A libp2p reset ends a stream as a whole
(go-libp2p's ``Reset`` cancels both its reading and its writing). py-libp2p 0.8.1 sends only
RESET_STREAM (its sending half) and takes the peer's RESET_STREAM for the end of the whole
stream without ending its own sending half: between two py-libp2p peers, a stream reset by one
side is never finished on the other, QUIC never returns its credit, and after 128 such resets
(a refused stream, a timeout) no stream can be opened on the connection again.
:func:`resetting_both_halves` also asks the peer to stop sending (STOP_SENDING, which the peer's
QUIC answers with its RESET_STREAM); :func:`ending_our_half_at_their_reset` answers the peer's
RESET_STREAM with ours. Either alone returns the credit; both, whatever the peer's library.

**A stream whose reader fell behind is reset, not cut** (trap 42). aioquic raises a stream's
flow-control window as data arrives, not as it is read, so a peer may send a stream more than
py-libp2p 0.8.1's receive buffer holds (``MAX_STREAM_RECEIVE_BUFFER``, 2 MiB); the library
then drops the bytes past it and the stream goes on without them: a reader gets a stream with
a hole in it. :func:`resetting_an_overflowing_stream` resets the stream instead (both halves)
and counts it as ``quic_stream_buffer`` (what go-mplex does for a reader that fell behind, and
``mplex_stream_buffer`` here): the reader learns the stream failed, nothing is taken for whole.

**A stream's last bytes are read before its end** (trap 46). py-libp2p 0.8.1's
``QUICStream.read`` looks at its buffer, then waits for the stream's state lock, then raises
end-of-stream if the peer's FIN has come, without looking at the buffer again: bytes and FIN
that arrive while the read waits for the lock are never read. A peer that answers one request
and closes (go-libp2p's relay answering a reservation: STOP_SENDING, then the answer and FIN in
one packet) lost its answer that way about once in four first reservations over QUIC on a
loaded machine, go's log showing the answer written and our stream holding its 222 bytes as the
read ended. :func:`reading_what_arrived` returns those bytes; the end comes at the next read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from libp2p.transport.quic.connection import QUICConnection
from libp2p.transport.quic.exceptions import QUICStreamClosedError, QUICStreamTimeoutError
from libp2p.transport.quic.stream import QUICStream, StreamState
from libp2p.transport.quic.stream import _QUICStreamEOF as QUICStreamEOF

CREDIT_POLL = 0.02
"""Seconds between two looks at the peer's stream credit while an open waits for it."""

HandleStopSending = Callable[[QUICStream, int], Awaitable[None]]


def stop_sending_ends_our_sending(original: HandleStopSending) -> HandleStopSending:
    """``QUICStream.handle_stop_sending`` that closes the write half only."""

    async def handle_stop_sending(self: QUICStream, error_code: int) -> None:
        self._write_closed = True
        self._backpressure_event.set()  # a writer blocked on credit learns it is over
        async with self._state_lock:
            if self._state not in (StreamState.CLOSED, StreamState.RESET):
                read_closed = self._read_closed
                self._state = StreamState.CLOSED if read_closed else StreamState.WRITE_CLOSED
        # RFC 9000 §3.5 asks for a RESET_STREAM in answer: aioquic has queued it already.
        try:
            await self._connection._transmit()
        except Exception:  # the connection is closing; the reader learns it
            return

    return handle_stop_sending


OpenStream = Callable[..., Awaitable[QUICStream]]


def has_credit(connection: QUICConnection) -> bool:
    """Whether the peer's stream credit covers the next stream id ``connection`` would open
    (bidirectional ids go up by 4; the peer grants a count of them)."""
    return bool(connection._next_stream_id // 4 < connection._quic._remote_max_streams_bidi)


def opening_within_credit(original: OpenStream) -> OpenStream:
    """``QUICConnection.open_stream`` that waits for the peer's credit before it takes an id."""

    async def open_stream(
        self: QUICConnection,
        timeout: float | None = None,  # noqa: ASYNC109 - the library's signature
    ) -> QUICStream:
        if timeout is None:
            timeout = self.STREAM_OPEN_TIMEOUT
        lock = getattr(self, "_p2pchat_open_lock", None)
        if lock is None:
            lock = self._p2pchat_open_lock = trio.Lock()
        with trio.move_on_after(timeout) as scope:
            # One opener at a time from the credit check to the id taken: two that both saw
            # credit for one id would take two.
            async with lock:
                # aioquic tells of no raised credit: look again now and then.
                while not has_credit(self):  # noqa: ASYNC110
                    await trio.sleep(CREDIT_POLL)
                return await original(self, max(scope.deadline - trio.current_time(), 0.001))
        raise QUICStreamTimeoutError(
            f"Stream creation timed out after {timeout}s: the peer granted no stream credit"
        )

    return open_stream


Reset = Callable[..., Awaitable[None]]


def _stop_receiving(stream: QUICStream, error_code: int) -> None:
    """Ask the peer to stop sending on ``stream`` unless its sending half is already over."""
    quic = stream._connection._quic
    known = quic._streams.get(stream._stream_id)
    if known is None or known.receiver.is_finished:
        return
    try:
        quic.stop_stream(stream._stream_id, error_code)
    except ValueError:  # a stream aioquic no longer knows: nothing to stop
        return


def resetting_both_halves(original: Reset) -> Reset:
    """``QUICStream.reset`` that also sends STOP_SENDING (the library: RESET_STREAM only)."""

    async def reset(self: QUICStream, error_code: int = 0) -> None:
        first = self._state is not StreamState.RESET
        await original(self, error_code)
        if first:
            _stop_receiving(self, error_code)
            try:
                await self._connection._transmit()
            except Exception:  # the connection is closing: the stream with it
                return

    return reset


def ending_our_half_at_their_reset(original: Reset) -> Reset:
    """``QUICStream.handle_reset`` that answers the peer's RESET_STREAM with ours."""

    async def handle_reset(self: QUICStream, error_code: int) -> None:
        await original(self, error_code)
        try:
            # No effect once our half is over (FIN acknowledged, or reset already).
            self._connection._quic.reset_stream(self._stream_id, error_code)
            await self._connection._transmit()
        except Exception:  # a stream or connection already gone: nothing to end
            return

    return handle_reset


Receive = Callable[[QUICStream, bytes, bool], Awaitable[None]]

STREAM_BUFFER_RESET = 0x1  # the application error code of that reset (any code is allowed)


def resetting_an_overflowing_stream(original: Receive) -> Receive:
    """``QUICStream.handle_data_received`` that resets a stream its data would overflow."""

    async def handle_data_received(self: QUICStream, data: bytes, end_stream: bool) -> None:
        if (
            data
            and self._state is not StreamState.RESET
            and len(self._receive_buffer) + len(data) > self.MAX_RECEIVE_BUFFER_SIZE
        ):
            report = getattr(self._connection._transport._config, "stream_limit_exceeded", None)
            if report is not None:
                report("quic_stream_buffer")
            await self.reset(STREAM_BUFFER_RESET)
            return
        await original(self, data, end_stream)

    return handle_data_received


Read = Callable[[QUICStream, "int | None"], Awaitable[bytes]]


def reading_what_arrived(original: Read) -> Read:
    """``QUICStream.read`` that returns bytes buffered before the stream's end (FIN, or our
    close) rather than report the end while they wait; a reset stream still fails."""

    async def read(self: QUICStream, n: int | None = None) -> bytes:
        try:
            return await original(self, n)
        except (QUICStreamEOF, QUICStreamClosedError):
            if self._state is not StreamState.RESET:
                async with self._receive_buffer_lock:
                    if self._receive_buffer:
                        data: bytes = self._extract_data_from_buffer(-1 if n is None else n)
                        return data
            raise

    return read
