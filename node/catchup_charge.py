"""Catch-up charged per sender (#18): what a catch-up may store of each sender, sans-IO.

Live messages pass the per-sender budget in the pubsub validator
(:mod:`p2pchat.node.p2p.sender_budget`); messages pulled from history sources after being away
did not, so a source serving one big sender, or many sybil senders (PeerIds cost nothing),
filled a returning peer's history and its cap pushed the honest messages out, oldest first.
A catch-up page legitimately holds a backlog, so nothing here looks at arrival times. Instead
the messages of one catch-up that are new to the room are charged against the room's history:

- **sender share**: a sender may bring at most its share of the room
  (``chat.history_sender_share`` of ``chat.history_max_messages``) per catch-up, its newest;
  one big sender brings one share, not the room. What it holds is not subtracted: a chatty
  honest sender over its share must still bring its newest (the fair trim that follows
  charges its own oldest, :meth:`~p2pchat.node.history.History.apply_retention`).
- **newcomers**: senders holding nothing in the room
  (:meth:`~p2pchat.node.history.History.held_by`) are strangers to this peer; together
  they may bring ``history.catchup_newcomer_share`` of the cap per catch-up. Not the free
  part of a room that holds some: strangers filling it would have the room's next live
  messages push the oldest, honest ones out. That budget is shared out level by level
  (water-filling: each newcomer its newest, one level at a time), so a thousand sybils and a
  few honest newcomers get the same few messages each, and what the strangers of one
  catch-up add to a room is bounded by that share.

Into a room that holds nothing yet (a first join: no history to protect) neither share
applies: everyone is a newcomer, and the newcomers share the whole cap.

A newcomer stays one for the catch-ups that follow while the caller remembers it
(:class:`~p2pchat.node.catchup.CatchUp` does, for the newest ``MAX_STRANGERS``): otherwise a
sybil admitted once, holding one message, would bring a whole share at the next catch-up;
until it is heard live (:meth:`~p2pchat.node.catchup.CatchUp.heard_live`). What the newcomers
bring is also charged to the sources that returned them
(:mod:`p2pchat.node.catchup_sources`): every reconnect of a source starts a catch-up.

Everything refused is counted by reason (:data:`SENDER_SHARE`, :data:`NEWCOMERS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from p2pchat.node.history import StoredMessage

SENDER_SHARE = "sender_share"  # a sender over its share of the room's history
NEWCOMERS = "newcomers"  # the newcomers of one catch-up over their budget
REASONS = (SENDER_SHARE, NEWCOMERS)


@dataclass(frozen=True, slots=True)
class ChargeSettings:
    """The room's cap and the shares of it (``chat.history_max_messages``,
    ``chat.history_sender_share``, ``history.catchup_newcomer_share``)."""

    max_messages: int
    sender_share: float
    newcomer_share: float

    def __post_init__(self) -> None:
        if self.max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        if not (0 < self.sender_share <= 1 and 0 < self.newcomer_share <= 1):
            raise ValueError("shares must be in (0, 1]")


@dataclass(slots=True)
class Charged:
    """What one catch-up may store (history order), and how many were refused by reason."""

    admitted: list[StoredMessage]
    refused: dict[str, int] = field(default_factory=dict)
    newcomers: set[str] = field(default_factory=set)  # admitted senders charged as newcomers


def charge(
    messages: list[StoredMessage],
    held: Callable[[str], int],
    room_count: int,
    settings: ChargeSettings,
) -> Charged:
    """Charge ``messages`` (one room's, in history order, none of them stored yet) to their
    senders; ``held(sender)`` is what a sender holds in the room now, ``room_count`` what the
    room holds. Reads ``held`` once per distinct sender."""
    first_join = room_count == 0  # no history to protect: the cap alone, shared out fairly
    cap = settings.max_messages
    share = cap if first_join else max(1, int(cap * settings.sender_share))
    by_sender: dict[str, list[StoredMessage]] = {}
    for message in messages:
        by_sender.setdefault(message.sender, []).append(message)
    refused = dict.fromkeys(REASONS, 0)
    newcomers: dict[str, int] = {}
    for sender, own in by_sender.items():
        if len(own) > share:
            refused[SENDER_SHARE] += len(own) - share
            del own[: len(own) - share]  # its newest are kept
        if held(sender) == 0:
            newcomers[sender] = len(own)
    budget = cap if first_join else int(cap * settings.newcomer_share)
    for sender, keep in _fill(newcomers, budget).items():
        own = by_sender[sender]
        refused[NEWCOMERS] += len(own) - keep
        del own[: len(own) - keep]
    admitted = [message for own in by_sender.values() for message in own]
    admitted.sort(key=lambda m: (m.sent_at_ms, m.message_id))
    return Charged(
        admitted,
        {reason: n for reason, n in refused.items() if n},
        {sender for sender in newcomers if by_sender[sender]},
    )


def _fill(wants: dict[str, int], budget: int) -> dict[str, int]:
    """How many each of ``wants`` gets of ``budget``: all if it suffices; else the highest
    level L with sum(min(n, L)) <= budget for everyone, and what is left one more each to the
    first of those wanting more (in ``wants``' order)."""
    if sum(wants.values()) <= budget:
        return dict(wants)
    budget = max(0, budget)

    def given(level: int) -> int:
        return sum(min(n, level) for n in wants.values())

    low, high = 0, max(wants.values(), default=0)
    while low < high:  # the highest level that stays within the budget
        middle = (low + high + 1) // 2
        if given(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    gets = {sender: min(n, low) for sender, n in wants.items()}
    left = budget - given(low)
    for sender, n in wants.items():
        if left <= 0:
            break
        if n > low:
            gets[sender] += 1
            left -= 1
    return gets
