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


class DebtBudget:
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
        self._rate = rate
        self._burst = float(burst)
        self._max_keys = max_keys
        self._balances: OrderedDict[str, tuple[float, float]] = OrderedDict()  # balance, at

    def _balance(self, key: str, now: float) -> float:
        balance, at = self._balances.pop(key, (self._burst, now))
        balance = min(self._burst, balance + max(0.0, now - at) * self._rate)
        self._balances[key] = (balance, now)
        if len(self._balances) > self._max_keys:
            self._balances.popitem(last=False)
        return balance

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may be served again: 0.0 if it may now (balance > 0)."""
        balance = self._balance(key, now)
        return 0.0 if balance > 0 else (1.0 - balance) / self._rate

    def charge(self, key: str, cost: float, now: float) -> None:
        """Take ``cost`` units from ``key``'s balance (it may go below zero)."""
        balance = self._balance(key, now)
        self._balances[key] = (balance - cost, now)

    def __len__(self) -> int:
        return len(self._balances)
