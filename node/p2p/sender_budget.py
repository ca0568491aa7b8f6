"""A message budget per sender per room: token buckets (:mod:`p2pchat.node.ratelimit`), sans-IO
(the caller passes the clock).

A validly signing sender could publish as fast as its CPU allows, and every peer of the room
verified, stored and forwarded every message (the #18 audit: RSS 113 -> 167 MB in a 40 s flood,
honest history pushed out). The pubsub layer asks :meth:`RoomBudget.admit` for every message
of a room before its payload is decoded; a message over budget is dropped, counted, not
forwarded and not stored.

Two budgets, because a PeerId costs nothing to make:

- each sender this node has heard in the room has its own bucket: ``burst`` messages at once,
  ``rate`` per second sustained;
- a sender not heard before (or forgotten) is admitted only through a *new sender* bucket
  (``new_rate`` per second, ``new_burst`` at once) of the peer that forwarded its first
  message to us, one per forwarding peer and room; its own bucket then starts full (a
  newcomer's first pasted block passes: starting it with 2 s of the rate dropped an honest
  newcomer's first 30 lines). A stream of fresh keys gets ``new_rate`` new senders per second
  through the connection it comes on, however many keys it makes, and spends only that
  connection's budget: an honest newcomer reaching us through another peer is not starved
  (with one bucket per room it was: the sybils had spent it).

Memory is bounded: at most ``max_senders`` sender buckets and ``max_senders`` forwarder buckets
per room; past it the least recently heard goes (a forgotten sender comes back as a new one; a
flooder is the most recently heard, so it is not the one forgotten).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

from p2pchat.node.ratelimit import TokenBuckets

FLOOD = "flood"  # a known sender over its own budget
FLOOD_NEW = "flood_new_senders"  # the room's new-sender budget is spent


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    """The budget of every room (the ``pubsub`` config section's ``sender_*`` keys)."""

    rate: float = 5.0
    burst: int = 50
    new_rate: float = 2.0
    new_burst: int = 20
    max_senders: int = 1000

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.new_rate <= 0:
            raise ValueError("rates must be > 0")
        if self.burst < 1 or self.new_burst < 1 or self.max_senders < 1:
            raise ValueError("bursts and max_senders must be >= 1")


class RoomBudget:
    """The budgets of one room (see the module's note)."""

    def __init__(self, settings: BudgetSettings) -> None:
        self._senders = TokenBuckets(settings.rate, settings.burst, settings.max_senders)
        self._new = TokenBuckets(settings.new_rate, settings.new_burst, settings.max_senders)

    def admit(self, sender: str, now: float, via: Hashable = None) -> str | None:
        """Spend one message of ``sender``'s budget (a new sender's first through the new-sender
        budget of ``via``, the peer that forwarded it): None if it is admitted, else the drop
        reason (:data:`FLOOD` or :data:`FLOOD_NEW`); nothing is spent on a refusal."""
        if sender not in self._senders and not self._new.allow(via, now):
            return FLOOD_NEW
        return None if self._senders.allow(sender, now) else FLOOD

    def __len__(self) -> int:
        """Senders with a bucket now (at most ``max_senders``)."""
        return len(self._senders)
