"""What the parts of the universal-connectivity peer share (roles/peer/uc.py composes them):
the pubsub they use, the counts they report, and one refusal counted and logged."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol

from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.refusals import RefusalLog

ROOM_PREFIX = "uc:"
"""UC's room is shown as ``uc:<topic>`` (no p2pchat room name has a colon)."""


class UcGossip(Protocol):
    """What this module needs of the node's pubsub (a role's
    :class:`~p2pchat.node.p2p.pubsub.Gossip`)."""

    async def join(
        self,
        topic: str,
        validator: Callable[[bytes], str | None],
        sender_check: Callable[[str], str | None] | None = None,
        signed_check: Callable[[str, bytes], str | None] | None = None,
    ) -> AsyncIterator[list[GossipMessage]]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def has_subscribers(self, topic: str) -> bool: ...


class UcObserver(Protocol):
    """Counts of what the UC peer did and refused (reasons: a fixed set of words)."""

    def uc_refused(self, reason: str) -> None: ...

    def uc_done(self, what: str) -> None: ...


class UcRefusals:
    """One refusal: counted by reason (:class:`UcObserver`) and logged rate-limited."""

    def __init__(self, observer: UcObserver, log: RefusalLog) -> None:
        self._observer = observer
        self._log = log

    def __call__(self, reason: str, **fields: object) -> None:
        self._observer.uc_refused(reason)
        self._log.refused(reason, **fields)
