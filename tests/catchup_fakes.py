"""A history source for catch-up's unit tests: answers at once from memory."""

from __future__ import annotations

from collections.abc import Sequence

from p2pchat.node.history import StoredMessage
from p2pchat.node.store_client import Fetched, Known, Resume


class MemorySources:
    """Each source serves ``served[source]`` (else ``everywhere``), oldest first, at most what
    was asked for, as if its stream came from ``ips.get(source)`` (None: relayed); records
    every source asked in ``asked``. Nothing is rejected and every walk completes."""

    def __init__(
        self,
        served: dict[str, list[StoredMessage]] | None = None,
        *,
        everywhere: Sequence[StoredMessage] = (),
        ips: dict[str, str] | None = None,
    ) -> None:
        self.served = served or {}
        self.everywhere = list(everywhere)
        self.ips = ips or {}
        self.asked: list[str] = []

    async def fetch_range(
        self,
        peer: str,
        room: str,
        start_ms: int | None,
        max_messages: int,
        resume: Resume | None = None,
        known: Known | None = None,
    ) -> Fetched:
        self.asked.append(peer)
        messages = self.served.get(peer, self.everywhere)
        return Fetched(peer, messages[:max_messages], 0, True, remote_ip=self.ips.get(peer))
