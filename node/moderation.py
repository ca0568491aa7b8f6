"""The moderation in force in owned rooms: sans-IO state, kept in the node's store.

An owned room (``<name>~<owner PeerId>``, :mod:`p2pchat.node.wire.room_names`) has decisions of
its owner (:class:`~p2pchat.node.wire.chat.Moderation`: mute until a time, remove, restore),
each signed by the owner (the GossipSub envelope, StrictSign) and checked against the room name
by every receiver before this state sees it. For each (room, target) the decision with the
newest ``(sent_at_ms, id)`` is in force, whatever order decisions arrive in (live, from history,
again): every peer that has seen the same decisions agrees, and a replayed old decision changes
nothing.

:meth:`RoomModeration.check` is the sender check of a room: ``muted`` or ``removed`` for a sender
whose messages are refused now, else None. Chat peers and archivers both apply it where pubsub
validates messages (not shown, not stored, not forwarded) and to what catch-up fetches.

Bounds (``chat.max_decisions_per_room``, ``chat.max_decisions``): at most ``per_room`` targets
per room and ``total`` decisions in all rooms. A decision about a new target in a full room first
evicts that room's decisions no longer in force (restores, ended mutes); if none, or if all rooms
together are full, it is not applied (``full``). Only an owner can fill its own rooms; a stranger
can make rooms of its own, which the ``total`` bounds (a decision replacing another about the
same target never needs a place).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.chat import Moderation, WireError, decode, encode

NAMESPACE = "mods"  # of the node's store: <room> NUL <target> -> the decision's payload
MAX_TARGETS = 256  # decisions kept per room (one per target): chat.max_decisions_per_room
MAX_DECISIONS = 65_536  # in all rooms together: chat.max_decisions
_MAX_TEXT = 4096  # decode bound of a stored payload (a decision holds no text)

Verdict = Literal["muted", "removed"]
Applied = Literal["applied", "stale", "full"]


def in_force(decision: Moderation, now_ms: int) -> Verdict | None:
    """What ``decision`` does to its target's messages at ``now_ms``."""
    if decision.action == "remove":
        return "removed"
    if decision.action == "mute" and now_ms < decision.until_ms:
        return "muted"
    return None


class RoomModeration:
    """The newest decision per (room, target) (see the module's note); ``keys`` keeps them
    across restarts (the :data:`NAMESPACE` namespace of the node's store)."""

    def __init__(
        self, keys: KeyValue, per_room: int = MAX_TARGETS, total: int = MAX_DECISIONS
    ) -> None:
        self._keys = keys
        self._per_room = per_room
        self._total = total
        self._count = 0
        self._rooms: dict[str, dict[str, Moderation]] = {}
        for key, value in keys.items():
            try:
                decision = decode(value, max_text_bytes=_MAX_TEXT)
            except WireError:
                continue  # written by a newer node, or damaged: not ours to judge
            if isinstance(decision, Moderation) and key == _key(decision):
                self._keep(decision)

    def check(self, room: str, sender: str, now_ms: int) -> Verdict | None:
        """Why ``sender``'s messages in ``room`` are refused at ``now_ms``, else None."""
        decisions = self._rooms.get(room)
        if decisions is None:
            return None
        decision = decisions.get(sender)
        return in_force(decision, now_ms) if decision is not None else None

    def apply(self, decision: Moderation, now_ms: int) -> Applied:
        """Take a decision already checked as the room owner's: ``applied`` (now in force for
        its target), ``stale`` (an equal or newer one is), ``full`` (no place: refused)."""
        decisions = self._rooms.get(decision.room, {})
        current = decisions.get(decision.target)
        if current is not None and current.order >= decision.order:
            return "stale"
        if current is None and (len(decisions) >= self._per_room or self._count >= self._total):
            for ended in [d for d in decisions.values() if in_force(d, now_ms) is None]:
                del decisions[ended.target]
                self._keys.delete(_key(ended))
                self._count -= 1
            if len(decisions) >= self._per_room or self._count >= self._total:
                return "full"
        if not self._keep(decision):
            return "full"
        self._keys.put(_key(decision), encode(decision))
        return "applied"

    def _keep(self, decision: Moderation) -> bool:
        decisions = self._rooms.setdefault(decision.room, {})
        if decision.target in decisions:
            decisions[decision.target] = decision
            return True
        if len(decisions) >= self._per_room or self._count >= self._total:
            if not decisions:
                del self._rooms[decision.room]
            return False
        decisions[decision.target] = decision
        self._count += 1
        return True

    def latest(self, room: str, target: str) -> int:
        """When the decision in force about ``target`` in ``room`` was made (0: none)."""
        decision = self._rooms.get(room, {}).get(target)
        return decision.sent_at_ms if decision is not None else 0

    def decisions(self, room: str) -> list[Moderation]:
        """The newest decision about each target of ``room``, oldest first."""
        return sorted(self._rooms.get(room, {}).values(), key=lambda d: d.order)

    def in_force(self, room: str, now_ms: int) -> Iterator[tuple[Moderation, Verdict]]:
        """The decisions of ``room`` refusing someone's messages at ``now_ms``."""
        for decision in self.decisions(room):
            verdict = in_force(decision, now_ms)
            if verdict is not None:
                yield decision, verdict


def refusal_log(log: Any, clock: Callable[[], float] = time.monotonic) -> RefusalLog:
    """The log of moderation refusals (``muted``, ``removed``, ``not_owner``): a muted flood
    must not become a log flood (every refusal is counted in the drop metrics anyway); call
    ``refused(reason, room=..., sender=...)``."""
    return RefusalLog(log, "moderation refused a message", clock=clock)


def _key(decision: Moderation) -> bytes:
    return decision.room.encode() + b"\x00" + decision.target.encode()
