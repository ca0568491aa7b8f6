"""Refusals logged at a bounded rate: a flood of refusals is one log line a minute per reason.

Every place that refuses a remote peer (connection admission, stream limits, the DHT, pubsub,
history, AutoNAT, relay, archiver admission, moderation) counts the refusal in a metric by
reason and tells :class:`RefusalLog`, which logs the first refusal of a reason at once and then
at most one line per ``every`` seconds (default :data:`LOG_EVERY`), carrying how many were
refused since the last line. :class:`RefusalCount` is the counting alone, for a caller that
writes its own line (the console's warning summaries, :class:`~p2pchat.node.logs.WarningWatch`,
count the same way). Sans-IO: the caller may pass the clock. Memory is bounded by the reasons,
which are fixed words (never a peer id or an address), or by ``most`` where they are not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import structlog

LOG_EVERY = 60.0  # seconds between two log lines of one reason

Level = Literal["debug", "info", "warning", "error"]


class RefusalCount:
    """Which of a storm of refusals to log: one of a reason is to be logged at most once per
    ``every`` seconds, and that one says how many were not since.

    ``most`` bounds the reasons remembered, for a caller whose reasons are not a fixed set of
    words: past it, the reason logged longest ago is forgotten (its next one is logged at
    once, its held-back count lost). Not thread-safe: a caller on several threads locks."""

    def __init__(
        self,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
        most: int | None = None,
    ) -> None:
        if most is not None and most < 1:
            raise ValueError("most must be at least 1")
        self._every = every
        self._clock = clock
        self._most = most
        # reason -> when last logged, the least recently logged first
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def note(self, reason: str, now: float | None = None) -> int | None:
        """Note one refusal for ``reason`` at ``now`` (default: the clock's time): None if it
        is not to be logged, else the number of them not logged since the last that was."""
        if now is None:
            now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self._every:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return None
        self._logged_at.pop(reason, None)
        self._logged_at[reason] = now  # (moved last: logged most recently)
        if self._most is not None:
            while len(self._logged_at) > self._most:
                oldest = next(iter(self._logged_at))
                del self._logged_at[oldest]
                self._unlogged.pop(oldest, None)
        return self._unlogged.pop(reason, 0)


class RefusalLog:
    """Logs refusals of ``event`` (a log event name) by reason, at ``level``, at most once per
    ``every`` seconds per reason."""

    def __init__(
        self,
        log: structlog.stdlib.BoundLogger,
        event: str,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
        level: Level = "info",
    ) -> None:
        self._emit: Callable[..., Any] = getattr(log, level)
        self._event = event
        self._count = RefusalCount(every, clock)

    def refused(self, reason: str, **fields: Any) -> bool:
        """Note one refusal for ``reason``; log it (with ``fields`` and the number refused
        unlogged since the last line) if none of this reason was logged in the last ``every``
        seconds. Returns whether it logged."""
        suppressed = self._count.note(reason)
        if suppressed is None:
            return False
        self._emit(self._event, reason=reason, since_last_logged=suppressed, **fields)
        return True
