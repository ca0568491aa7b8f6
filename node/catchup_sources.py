"""What one history source may bring into a room from newcomers by catch-up, sans-IO (#18).

:mod:`p2pchat.node.catchup_charge` bounds what the strangers of ONE catch-up add to a room
(``history.catchup_newcomer_share`` of the cap). A catch-up starts on every connection of a
source, so a hostile source that disconnects and reconnects brought another share each time;
the room went over its cap and the fair trim then cut the senders over their share first,
which in a small room are the chatty honest ones. So each source also has an allowance of
newcomers' messages per room, refilled over a window: ``history.catchup_source_share`` of
``chat.history_max_messages`` per ``history.catchup_source_window_seconds`` (a token bucket,
:mod:`p2pchat.node.ratelimit`), kept per source PeerId AND per source address group
(:func:`p2pchat.node.netprefix.address_group`: PeerIds cost nothing, addresses do). A
message is charged to one source that returned it (the first, in the catch-up's order, whose
PeerId and group both have a token left); a newcomer's message no source returning it can pay
for is refused (:data:`SOURCE`).

Only newcomers' messages are charged: a known sender's messages are bounded by its share, and
the trim charges its own oldest when it holds more. A first join (a room holding nothing) is
not charged: there is no history to protect, and an honest archiver must be able to bring a
whole room.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from p2pchat.node.history import StoredMessage
from p2pchat.node.ratelimit import TokenBuckets

SOURCE = "source"  # a source (PeerId or address group) over its allowance of newcomers
MAX_KEYS = 4096  # (room, source) and (room, group) buckets kept; a forgotten one starts full


class SourceAllowance:
    """Newcomers' messages per source and per address group, per room (see the module's
    note): ``per_window`` messages at once, refilled over ``window`` seconds."""

    def __init__(self, per_window: int, window: float, max_keys: int = MAX_KEYS) -> None:
        if per_window < 1 or window <= 0:
            raise ValueError("per_window must be >= 1 and window > 0")
        self._buckets = TokenBuckets(per_window / window, per_window, max_keys)

    def admit(
        self,
        room: str,
        newcomers: Sequence[StoredMessage],
        sources_of: Mapping[bytes, Sequence[str]],
        group_of: Mapping[str, str],
        now: float,
    ) -> tuple[set[bytes], int]:
        """Which of ``newcomers`` (one catch-up's newcomers' messages for ``room``) the
        sources that returned them (``sources_of[message_id]``, in the catch-up's order) may
        bring, newest first; each admitted one is charged to the PeerId and address group
        (``group_of[source]``) of one source. Returns the admitted ids and how many were
        refused."""
        admitted: set[bytes] = set()
        refused = 0
        for message in sorted(newcomers, key=lambda m: (m.sent_at_ms, m.message_id), reverse=True):
            if self._pay(room, sources_of.get(message.message_id, ()), group_of, now):
                admitted.add(message.message_id)
            else:
                refused += 1
        return admitted, refused

    def _pay(
        self, room: str, sources: Iterable[str], group_of: Mapping[str, str], now: float
    ) -> bool:
        for source in sources:
            peer = self._buckets.bucket((room, "peer", source), now)
            group = self._buckets.bucket((room, "group", group_of.get(source, source)), now)
            if peer.level(now) >= 1.0 and group.level(now) >= 1.0:
                peer.charge(1.0, now)
                group.charge(1.0, now)
                return True
        return False
