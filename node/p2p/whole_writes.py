"""A muxer frame written whole, or its connection closed (a trap not in the notes, #21).

py-libp2p 0.8.1's Noise encrypts a message, using up its nonce, before it awaits the socket; a
write cancelled there leaves the message unsent or half sent, and the peer's next decryption
fails: its muxer's reading ends, and with it the whole connection. A relay cancels one
direction of a circuit's copy when the other ends, and the peer it was writing to lost its
connection to the relay, its reservation with it. So a frame's write is shielded from its
caller's cancellation, for at most :data:`WRITE_SECONDS`; past that, what was sent is a broken
message, and the connection is closed. Used by the Yamux and Mplex guards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio
from libp2p.network.connection.exceptions import RawConnError

# Seconds a frame's write to the secured connection may take once begun, cancelled or not; then
# the connection is closed. A peer that does not read for this long is gone for chat anyway.
WRITE_SECONDS = 30.0


async def write_whole(
    write: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]], muxer: str
) -> None:
    """Run ``write`` to its end even if the caller is cancelled meanwhile, for at most
    :data:`WRITE_SECONDS`.

    Raises:
        RawConnError: the write did not finish in time (``close`` was called).
    """
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + WRITE_SECONDS
        await write()
    if scope.cancelled_caught:
        # (broken already, it may raise: closed either way)
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
            await close()
        raise RawConnError(f"{muxer} write not done in {WRITE_SECONDS:.0f} s: closed")
