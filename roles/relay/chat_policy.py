"""Chat-friendly circuits: which relayed connections a relay lets run past go-libp2p's limits.

go-libp2p's defaults (2 minutes, 128 KiB per direction) are meant for hole-punching
coordination; a conversation that stays relayed (symmetric NAT) needs more. An operator lists
the peers it serves chat to (``relay.chat_peers``: PeerIds and networks): a circuit whose two
ends are both listed gets ``relay.chat_circuit_duration`` and ``relay.chat_circuit_data``
instead, where 0 is no limit. When both are 0 the relay leaves the Limit out of its answers to
the two ends, as the Circuit Relay v2 spec allows ("if the limit is not set, the relay does
not impose a limit"): go-libp2p and js-libp2p then treat the connection as not limited, and
GossipSub uses it (go-libp2p-pubsub opens no stream over a limited connection).

Both ends, not one: a listed peer could otherwise be used by any stranger to take unlimited
bandwidth from the relay. Sans-IO: the hop server asks, with the ends' addresses passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2pchat.node.wire.circuit import Limit
from p2pchat.roles.relay.limits import AllowList, RelayLimits

OTHER = "other"  # the metric label of bytes relayed on circuits that are not chat-friendly


@dataclass(frozen=True)
class CircuitTerms:
    """What one circuit may carry: ``limit`` as sent to both ends (None: no limit, left out
    of the answers), the enforced seconds and bytes per direction (None: unbounded), and the
    ``relay.chat_peers`` entries its two ends matched (the labels its bytes count under)."""

    limit: Limit | None
    duration: int | None
    data: int | None
    entries: tuple[str, ...]


class ChatPolicy:
    """Decides each circuit's terms (see the module's note). An empty list lists no one."""

    def __init__(
        self, entries: Iterable[str], chat_duration: int, chat_data: int, limits: RelayLimits
    ) -> None:
        self._entries = list(entries)
        self._matchers = [(entry, AllowList.parse([entry])) for entry in self._entries]
        self._chat = _terms(chat_duration or None, chat_data or None)
        self._default = _terms(limits.circuit_duration, limits.circuit_data)

    @property
    def entries(self) -> list[str]:
        """The configured entries (each a metric label of :meth:`terms`' bytes)."""
        return list(self._entries)

    def entry_of(self, peer: str, ip: str | None) -> str | None:
        """The first listed entry ``peer`` (seen at ``ip``) matches, or None."""
        for entry, matcher in self._matchers:
            if matcher.admits(peer, ip):
                return entry
        return None

    def terms(
        self, source: str, source_ip: str | None, target: str, target_ip: str | None
    ) -> CircuitTerms:
        """The terms of a circuit from ``source`` to ``target``."""
        from_entry = self.entry_of(source, source_ip)
        to_entry = self.entry_of(target, target_ip)
        if from_entry is None or to_entry is None:
            return self._default
        chat = self._chat
        entries = (from_entry,) if from_entry == to_entry else (from_entry, to_entry)
        return CircuitTerms(chat.limit, chat.duration, chat.data, entries)


def _terms(duration: int | None, data: int | None) -> CircuitTerms:
    limit = None if duration is None and data is None else Limit(duration=duration, data=data)
    return CircuitTerms(limit, duration, data, (OTHER,))
