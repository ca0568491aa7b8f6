"""A peer's outbound pubsub queue that merges what waits in it (installed by
:mod:`~p2pchat.node.p2p.patches`: the library builds its queues by a module-level name).

py-libp2p's queue holds 32 RPCs and drops the rest (trap 3), and every RPC is its own stream
write: one Yamux frame, one Noise encryption, one ``send`` each. This one holds
:data:`QUEUE_SIZE` and merges the RPCs waiting behind the first into one write of up to
:data:`COALESCE_BYTES`, as go-libp2p's ``appendOrMergeRPC`` does.
"""

from __future__ import annotations

from collections import deque

from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.rpc_queue import RpcQueue

# Sized for bursts: 4 KiB messages x 8,192 = 32 MiB worst case per queue, bounded.
QUEUE_SIZE = 8192
# Merged RPCs stay far below the receiver's 1 MiB limit and keep one write short.
COALESCE_BYTES = 64 * 1024


class CoalescingRpcQueue(RpcQueue):  # type: ignore[misc]
    """A peer's outbound queue whose :meth:`pop` merges every RPC already waiting behind the
    first one (up to :data:`COALESCE_BYTES`) into it.

    Under load this turns N stream writes into one; when idle it costs nothing, so latency is
    unchanged. Merging is protobuf ``MergeFrom``: repeated fields (messages, subscriptions,
    control entries) are concatenated in queue order, which is what a receiver would have
    processed anyway. Relies on the base class keeping its two tiers (priority, then the rest)
    in ``_queue`` (checked by tests/test_host_perf_traps.py on every library upgrade).
    """

    def __init__(self) -> None:
        super().__init__(max_size=QUEUE_SIZE)
        self._held: rpc_pb2.RPC | None = None  # popped, but did not fit the last merge
        # popped, but given back unwritten (:meth:`put_front`): first out, before ``_held``
        self._front: deque[rpc_pb2.RPC] = deque()

    def put_front(self, rpc: rpc_pb2.RPC) -> None:
        """Give back ``rpc``, just popped and not written: the next :meth:`pop` (or this
        queue's successor, after :meth:`hand_over`) returns it first. Bounded by the caller:
        one RPC at a time, the one its writer holds."""
        self._front.append(rpc)

    def hand_over(self) -> CoalescingRpcQueue:
        """A new queue holding everything still waiting here, in order and in its tier
        (control messages stay ahead of data); this one is closed, so its consumer ends once
        its current write (if any) is done."""
        successor = CoalescingRpcQueue()
        successor._held, self._held = self._held, None
        successor._front, self._front = self._front, deque()
        waiting = self._queue
        successor._queue._priority.extend(waiting._priority)
        successor._queue._non_priority.extend(waiting._non_priority)
        waiting._priority.clear()
        waiting._non_priority.clear()
        self.close()
        return successor

    def __len__(self) -> int:
        return int(super().__len__()) + (self._held is not None) + len(self._front)

    def split_rpc(self, rpc: rpc_pb2.RPC) -> list[rpc_pb2.RPC]:
        # The library walks every item of every RPC to size it, even one far below the limit.
        if rpc.ByteSize() <= self.max_message_size:
            return [rpc]
        return list(super().split_rpc(rpc))

    async def pop(self, max_bytes: int = COALESCE_BYTES) -> rpc_pb2.RPC | None:
        """The next RPC, merged with those waiting behind it up to ``max_bytes`` (the first
        one whatever its size); None once the queue is closed and empty."""
        if self._front:
            return self._front.popleft()  # already merged as far as it would go
        if self._held is not None:
            first, self._held = self._held, None
        else:
            first = await super().pop()
            if first is None:
                return None
        size = first.ByteSize()
        while size < max_bytes:
            following = self._queue.pop()
            if following is None:
                break
            following_size = following.ByteSize()
            if size + following_size > max_bytes:
                self._held = following
                break
            first.MergeFrom(following)
            size += following_size
        return first
