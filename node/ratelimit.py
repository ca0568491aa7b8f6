"""Token buckets, sans-IO (the caller passes the clock): one bucket, and one per key with
bounded memory. Every rate limit of the node is one of these (stream opens and pings, DHT
requests, history queries and bytes, a room's senders)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class TokenBucket:
    """``burst`` tokens at once and ``rate`` per second sustained, starting full.

    The level may go below zero (:meth:`charge`): that debt is repaid by waiting."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def level(self, now: float) -> float:
        """The tokens in the bucket at ``now`` (refilled since the last call, up to ``burst``;
        a clock that goes back refills nothing)."""
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = now
        return self._tokens

    def take(self, now: float) -> bool:
        """Take one token; False (nothing taken) if there is none."""
        if self.level(now) < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def charge(self, cost: float, now: float) -> None:
        """Take ``cost`` tokens, leaving the bucket in debt if it holds fewer."""
        self._tokens = self.level(now) - cost


class TokenBuckets:
    """A :class:`TokenBucket` per key (``rate``, ``burst``), each starting full.

    At most ``max_keys`` buckets are kept; the least recently used key's bucket goes first (it
    would have refilled to full by the time it matters, unless that key is the flood, which is
    then always the most recent)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def bucket(self, key: Hashable, now: float) -> TokenBucket:
        """``key``'s bucket (a full one for a key not held), now the most recently used."""
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self._rate, self._burst, now)
        self._buckets[key] = bucket
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return bucket

    def allow(self, key: Hashable, now: float) -> bool:
        """Take one token from ``key``'s bucket; False (nothing taken) if it is empty."""
        return self.bucket(key, now).take(now)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)


class PeerRateLimit(TokenBuckets):
    """Each peer may make ``burst`` requests at once and ``rate`` per second sustained
    (:meth:`allow`), with at most ``max_peers`` buckets kept."""

    def __init__(self, rate: float, burst: int, max_peers: int = 10_000) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("rate must be > 0, burst and max_peers >= 1")
        super().__init__(rate, burst, max_peers)


class DebtBudget(TokenBuckets):
    """A budget in units (bytes) per key: ``rate`` units per second refill it up to ``burst``.

    The cost of a request is often known only once it is answered (a page's size), so a
    request is admitted while the key's balance is positive and its real cost is charged
    afterwards (:meth:`charge`), which may leave the balance negative: that debt is repaid by
    waiting. Over any window of ``t`` seconds a key is served at most ``burst + rate * t`` plus
    one request's cost. At most ``max_keys`` balances are kept (least recently used first out).
    """

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000) -> None:
        if rate <= 0 or burst <= 0 or max_keys < 1:
            raise ValueError("rate and burst must be > 0, max_keys >= 1")
        super().__init__(rate, burst, max_keys)

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may be served again: 0.0 if it may now (balance > 0)."""
        balance = self.bucket(key, now).level(now)
        return 0.0 if balance > 0 else (1.0 - balance) / self._rate

    def charge(self, key: str, cost: float, now: float) -> None:
        """Take ``cost`` units from ``key``'s balance (it may go below zero)."""
        self.bucket(key, now).charge(cost, now)
