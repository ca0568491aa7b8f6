"""TCP connections read in chunks (a py-libp2p trap not in the notes).

Noise reads each message as two exact reads of the TCP stream (its 2-byte length, then its
body), and py-libp2p's TCP stream passes each read to the socket as asked: two ``recv`` calls
per message, each behind a trio lock (two trips through trio's run loop per read), and a third
``recv`` that finds nothing.

:func:`reading_in_chunks` wraps ``TrioTCPStream.read`` (installed by
:mod:`~p2pchat.node.p2p.patches`): a read the stream's buffer can answer is
answered from it, without a system call or a lock; otherwise one library read asks the socket
for up to :data:`READ_CHUNK` bytes (at least what was asked) and keeps what is left over, in
order, for the next reads. Nothing else reads the socket behind the stream, so callers see the
same bytes; end of stream and errors are the library's own. A read answered from the buffer is
still a checkpoint, as every library read is: without one, a muxer's reader ran through a
whole buffered burst before the tasks behind it ran, and a 2,000-message burst reached its far
end 15-20% later. Re-check on every library upgrade (``tests/test_host_perf_traps.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
from libp2p.io.trio import TrioTCPStream

READ_CHUNK = 64 * 1024


def reading_in_chunks(
    library_read: Callable[..., Awaitable[bytes]],
) -> Callable[..., Awaitable[bytes]]:
    """``TrioTCPStream.read`` served from a per-stream buffer that ``library_read`` fills
    :data:`READ_CHUNK` bytes at a time."""

    async def read(self: TrioTCPStream, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all that is buffered or arrives in one receive, if None or
        negative: libp2p readers use -1 for "what there is")."""
        if n == 0:
            return b""
        if n is not None and n < 0:
            n = None
        buffer: bytearray | None = getattr(self, "_p2pchat_unread", None)
        if buffer:
            if n is None or n >= len(buffer):
                data = bytes(buffer)
                buffer.clear()
            else:
                data = bytes(buffer[:n])
                del buffer[:n]
            await trio.lowlevel.checkpoint()
            return data
        chunk: bytes = await library_read(self, max(n or 0, READ_CHUNK))
        if n is None or len(chunk) <= n:
            return chunk
        if buffer is None:
            buffer = bytearray()
            self._p2pchat_unread = buffer
        buffer += memoryview(chunk)[n:]
        return chunk[:n]

    return read
