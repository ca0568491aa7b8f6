"""Refusals logged at a bounded rate: a flood of refusals is one log line a minute per reason.

Every service that refuses a remote peer (history, AutoNAT, relay, archiver admission) counts
the refusal in a metric by reason and tells :class:`RefusalLog`, which logs the first refusal
of a reason at once and then at most one line per :data:`LOG_EVERY` seconds, carrying how many
were refused since the last line. Sans-IO: the caller may pass the clock. Memory is bounded by
the reasons, which are fixed words (never a peer id or an address).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

LOG_EVERY = 60.0  # seconds between two log lines of one reason


class RefusalLog:
    """Logs refusals of ``event`` (a log event name) by reason, at most once per ``every``."""

    def __init__(
        self,
        log: structlog.stdlib.BoundLogger,
        event: str,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._event = event
        self._every = every
        self._clock = clock
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def refused(self, reason: str, **fields: Any) -> bool:
        """Note one refusal for ``reason``; log it (with ``fields`` and the number refused
        unlogged since the last line) if none of this reason was logged in the last ``every``
        seconds. Returns whether it logged."""
        now = self._clock()
        last = self._logged_at.get(reason)
        if last is not None and now - last < self._every:
            self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
            return False
        self._logged_at[reason] = now
        suppressed = self._unlogged.pop(reason, 0)
        self._log.info(self._event, reason=reason, since_last_logged=suppressed, **fields)
        return True
