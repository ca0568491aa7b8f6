"""Not punching again towards a peer whose hole punches keep failing (issue #21).

A peer behind a symmetric NAT cannot be hole-punched, and a relayed conversation with it opens a
new circuit every couple of minutes (the relay's limits; :mod:`~p2pchat.node.circuit_renewal`).
Each new circuit is a new inbound relayed connection, and :mod:`~p2pchat.node.holepunch` tried
again on every one: a direct dial and up to three DCUtR rounds, every one of them failing, and
their messages relayed over the very circuit whose data budget the chat needs.

So after ``give_up_after`` punches towards a peer failed in a row, none is tried for
``retry_after`` seconds; then one again (a failure backs off again at once; a success forgets
the peer). Bounded: at most :data:`MAX_PEERS` peers are remembered, the least recently failed
forgotten first (such a peer only gets one more try).
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.node.bounded import BoundedDict

MAX_PEERS = 1024  # peers whose failed punches are remembered


@dataclass
class _Failures:
    count: int
    last: float  # when the last one ended


class PunchBackoff:
    """Which peers a hole punch is worth trying towards now, by their recent failures.

    Raises:
        ValueError: ``give_up_after`` is less than 1 or ``retry_after`` is negative.
    """

    def __init__(self, give_up_after: int, retry_after: float, max_peers: int = MAX_PEERS):
        if give_up_after < 1 or retry_after < 0:
            raise ValueError("give_up_after must be at least 1 and retry_after at least 0")
        self._give_up_after = give_up_after
        self._retry_after = retry_after
        self._failures: BoundedDict[str, _Failures] = BoundedDict(max_peers)

    def allowed(self, peer: str, now: float) -> bool:
        """Whether to try a punch towards ``peer`` at ``now``: fewer than ``give_up_after``
        failed in a row, or ``retry_after`` seconds have passed since the last one."""
        failures = self._failures.get(peer)
        return (
            failures is None
            or failures.count < self._give_up_after
            or now - failures.last >= self._retry_after
        )

    def failed(self, peer: str, now: float) -> None:
        """A punch towards ``peer`` ended without a direct connection at ``now``."""
        failures = self._failures.get(peer)
        self._failures[peer] = _Failures(1 if failures is None else failures.count + 1, now)

    def succeeded(self, peer: str) -> None:
        """A direct connection to ``peer`` came up: its failures are forgotten."""
        self._failures.pop(peer, None)

    def __len__(self) -> int:
        return len(self._failures)
