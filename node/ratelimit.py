"""A token bucket per peer, sans-IO (the caller passes the clock), with bounded memory."""

from __future__ import annotations

from collections import OrderedDict


class PeerRateLimit:
    """Each peer may make ``burst`` requests at once and ``rate`` per second sustained.

    At most ``max_peers`` buckets are kept; the least recently seen peer's bucket goes first
    (it would have refilled to full by the time it matters, unless that peer is the flood,
    which is then always the most recent).
    """

    def __init__(self, rate: float, burst: int, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate must be > 0, burst and max_peers >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._max_peers = max_peers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def allow(self, peer: str, now: float) -> bool:
        """Take one token from ``peer``'s bucket; False (nothing taken) if it is empty."""
        tokens, at = self._buckets.pop(peer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[peer] = (tokens, now)
        if len(self._buckets) > self._max_peers:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
