"""Retention of the local history: each room keeps at most ``history_max_messages`` messages,
none older than ``history_max_age_days``.

Two passes: :meth:`Retention.trim_if_over` as messages arrive (a busy room would otherwise
overrun the cap for up to an hour), and :meth:`Retention.run`, every :data:`INTERVAL` seconds,
for age (and for rooms that received nothing lately).

It runs on the event loop, not in a thread: :class:`~p2pchat.node.history.History` is not
thread-safe (a room's message count is read, then rewritten, by both retention and
``add_many``), so a pass in a worker thread racing a live write would corrupt the counts.
Instead a pass deletes at most :data:`STEP` messages per write batch and yields to the loop
between batches, so a long pass (a peer back after months away, a lowered cap) never stalls
live chat for longer than one batch.
"""

from __future__ import annotations

import trio
import trio.lowlevel
from p2pchat.node.history import History, now_ms

INTERVAL = 3600.0
STEP = 1000  # messages deleted per write batch, between two yields to the event loop


class Retention:
    """Applies ``max_messages`` and ``max_age_days`` to every room of ``history``."""

    def __init__(
        self,
        history: History,
        max_messages: int,
        max_age_days: float,
        sender_share: float | None = None,
    ) -> None:
        """``sender_share``: messages over the cap are charged to the senders holding more
        than this share of it first (:meth:`~p2pchat.node.history.History.apply_retention`)."""
        self._history = history
        self._max_messages = max_messages
        self._max_age_ms = int(max_age_days * 86_400_000)
        self._sender_share = sender_share

    def trim_if_over(self, room: str) -> int:
        """Trim ``room`` to the cap once it is 1% over (so that a full room costs one delete
        batch per 1% of new messages, not one each); returns how many were deleted."""
        cap = self._max_messages
        if self._history.count(room) > cap + max(1, cap // 100):
            return self._history.apply_retention(
                room,
                max_count=cap,
                max_age_ms=None,
                now_ms=now_ms(),
                sender_share=self._sender_share,
            )
        return 0

    async def run(self) -> None:
        """A pass now, then one every :data:`INTERVAL` seconds, until cancelled."""
        while True:
            await self.apply()
            await trio.sleep(INTERVAL)

    async def apply(self) -> int:
        """One pass over every room, at most :data:`STEP` deletions between checkpoints;
        returns how many messages were deleted."""
        deleted = 0
        for room in self._history.rooms():
            deleted += await self._apply_to(room)
        return deleted

    async def _apply_to(self, room: str) -> int:
        deleted = 0
        while True:
            await trio.lowlevel.checkpoint()
            count = self._history.count(room)
            if count > self._max_messages:
                # Over the cap: the oldest go first, STEP at a time.
                step = min(STEP, count - self._max_messages)
            else:
                # Within the cap: what is too old. If STEP messages are, they are the room's
                # STEP oldest (history is ordered by send time): delete exactly those.
                cutoff = now_ms() - self._max_age_ms
                step = len(self._history.range(room, 0, cutoff, limit=STEP)) if cutoff > 0 else 0
                if step < STEP:
                    # The last few: one bounded batch by age, and the room is done.
                    return deleted + self._history.apply_retention(
                        room, max_count=None, max_age_ms=self._max_age_ms, now_ms=now_ms()
                    )
            deleted += self._history.apply_retention(
                room,
                max_count=count - step,
                max_age_ms=None,
                now_ms=now_ms(),
                sender_share=self._sender_share if count > self._max_messages else None,
            )
