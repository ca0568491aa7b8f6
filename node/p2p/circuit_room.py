"""Room left on a relayed circuit for pubsub writes (issue #21, must-have 1).

A relay resets a circuit once it has carried its data limit in either direction (go-libp2p's
default: 128 KiB), and whatever is on its way then is lost: GossipSub wrote it, the relay
dropped it, and only catch-up brings it back, seconds later and after newer messages (out of
the sender's order). A burst bigger than what is left of the circuit did exactly that in the
NAT lab (tests/test_relayed_nat_chat.py): 30-odd of a 50-message burst shown 3.3 s late, after
the texts that followed them.

So a peer's pubsub writer (:meth:`~p2pchat.node.p2p.pubsub._ChatPubsub.handle_sending_messages`)
on a relayed connection merges queued RPCs only up to the :func:`room_left` on the circuit
(keeping :data:`MARGIN` for what else crosses it: Noise and Yamux framing, window updates,
pings), and an RPC that does not fit goes back to the front of its queue while the writer
waits (:func:`wait_for_room`) for the queue to move onto the next circuit: the circuit being
nearly spent, :mod:`p2pchat.node.circuit_renewal` on the side that dialled it opens the next
one (at ``autorelay.renew_circuits_at`` of the limit), both sides move their pubsub streams
there, and the successor writer sends the RPC on it. At most ``hold`` seconds; then it is
written anyway (the relay resets the circuit and catch-up fills the gap: the behaviour
before). Bounded: one RPC held per peer (its writer's), for at most ``hold`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable

import trio
from libp2p.abc import INetStream
from p2pchat.node.p2p.circuit_usage import CircuitLedger

# Bytes kept free of pubsub writes on a circuit: the framing of the writes themselves (Noise
# 18 B and Yamux 12 B per frame), Yamux window updates for what we receive, pings, identify.
MARGIN = 4096
LOOK_EVERY = 0.05  # seconds between two looks while waiting
# Seconds a writer waits for the next circuit at most: a renewal's dial (a stream to the relay,
# HOP, Noise, Yamux: ~0.4 s in the NAT lab) and the other side's move (0.2-1.4 s), with room
# for a loaded machine.
HOLD = 8.0


def room_left(ledger: CircuitLedger, stream: INetStream) -> int | None:
    """Bytes that may still be written on ``stream``'s circuit before its data limit, less
    :data:`MARGIN` (at least 0); None if it has no such limit (not one of our relayed
    connections, or its relay named none)."""
    usage = ledger.usage_of_muxed(stream.muxed_conn)
    if usage is None or usage.limit is None or not usage.limit.data:
        return None
    return max(0, usage.limit.data - MARGIN - usage.sent)


def fits(ledger: CircuitLedger, stream: INetStream, size: int) -> bool:
    """Whether an RPC of ``size`` bytes may be written on ``stream`` without passing its
    circuit's limit (True too for one that would not fit even an empty circuit: the relay
    decides)."""
    usage = ledger.usage_of_muxed(stream.muxed_conn)
    left = room_left(ledger, stream)
    if usage is None or left is None or usage.limit is None or not usage.limit.data:
        return True
    return size + MARGIN >= usage.limit.data or size <= left


async def wait_for_room(
    ledger: CircuitLedger,
    stream: INetStream,
    size: int,
    moved: Callable[[], bool],
    hold: float,
) -> bool:
    """Wait until ``moved()`` (the writer's queue was handed over to a stream on the next
    circuit, or closed: True is returned), or ``size`` bytes fit, or the connection closed, or
    ``hold`` seconds passed (False: write on this stream)."""
    with trio.move_on_after(hold):
        while True:
            if moved():
                return True
            if fits(ledger, stream, size) or getattr(stream.muxed_conn, "is_closed", False):
                return False
            await trio.sleep(LOOK_EVERY)
    return moved()
