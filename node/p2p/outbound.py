"""The swarm's outbound dials, bounded (policy: :class:`~p2pchat.node.p2p.dial_admission.Dials`).

py-libp2p 0.8.1 dials through three methods of its swarm: ``_dial_with_retry`` (under
``dial_peer``, ``dial_addr``: one address, up to 4 attempts with backoff),
``_dial_addr_single_attempt`` (one attempt; DCUtR's initiator calls it directly) and
``dial_addr_as_responder`` (DCUtR's responder). :func:`install` wraps the three on one swarm
instance (the class and other hosts are untouched) so each dial first takes a slot of
:class:`~p2pchat.node.p2p.dial_admission.Dials` and gives it back when it ends: a dial with
retries holds one slot across its attempts (the attempts inside it are not counted again).
DCUtR's dials (:mod:`p2pchat.node.p2p.direct`) run inside :func:`direct_dials`: they count
against ``direct_in_flight`` as well.

A dial over a bound raises :class:`DialRefused` (a ``SwarmException``: every caller of the
swarm already treats it as a failed dial), is told to the observer (metrics) and logged at
WARNING at most once per :data:`LOG_EVERY` seconds per reason.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from libp2p.network.exceptions import SwarmException
from libp2p.network.swarm import Swarm
from p2pchat.node.p2p.admission import AdmissionObserver
from p2pchat.node.p2p.dial_admission import Dials, Slot
from p2pchat.node.refusals import RefusalLog

log = structlog.get_logger("p2pchat.host.outbound")

LOG_EVERY = 10.0

# Set while a dial holding a slot runs in this task: the single attempts it makes are its own.
_holding: contextvars.ContextVar[bool] = contextvars.ContextVar("p2pchat_dial_slot", default=False)
# Set by :func:`direct_dials` around DCUtR's dials (tasks started inside inherit it).
_direct: contextvars.ContextVar[bool] = contextvars.ContextVar("p2pchat_direct", default=False)


@contextlib.contextmanager
def direct_dials() -> Iterator[None]:
    """The dials made inside (and in tasks started inside) are DCUtR dials to addresses a
    peer named: they count against ``direct_in_flight`` too."""
    token = _direct.set(True)
    try:
        yield
    finally:
        _direct.reset(token)


class DialRefused(SwarmException):  # type: ignore[misc]
    """A dial refused by an outbound limit (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"dial refused: {reason} limit reached")
        self.reason = reason


class OutboundGate:
    """Takes a slot for each dial of one swarm (see the module doc)."""

    def __init__(
        self,
        swarm: Swarm,
        dials: Dials,
        observer: AdmissionObserver,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._swarm = swarm
        self.dials = dials
        self._observer = observer
        self._log = RefusalLog(
            log, "outbound dial refused", LOG_EVERY, clock=clock, level="warning"
        )

    def outbound(self, peer: str) -> tuple[int, int]:
        """Open outbound connections now: in all, and to ``peer``."""
        total = to_peer = 0
        for conn in self._swarm.get_connections():
            if str(getattr(conn, "direction", "")).lower() != "outbound":
                continue
            total += 1
            if str(conn.muxed_conn.peer_id) == peer:
                to_peer += 1
        return total, to_peer

    def take(self, peer: str) -> Slot:
        """A slot for one dial to ``peer``; :class:`DialRefused` if a bound says no."""
        outbound, to_peer = self.outbound(peer)
        decision = self.dials.begin(peer, outbound, to_peer, direct=_direct.get())
        if isinstance(decision, str):
            self._observer.connection_refused(decision)
            if not self._log.refused(decision, in_flight=self.dials.in_flight, outbound=outbound):
                log.debug("outbound dial refused", reason=decision)
            raise DialRefused(decision)
        return decision

    def wrap(self, dial: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """``dial`` (a swarm method taking ``(addr, peer_id, ...)``) within a slot, unless the
        task already holds one."""

        async def bounded(addr: Any, peer_id: Any, *args: Any, **kwargs: Any) -> Any:
            if _holding.get():
                return await dial(addr, peer_id, *args, **kwargs)
            slot = self.take(str(peer_id))
            token = _holding.set(True)
            try:
                return await dial(addr, peer_id, *args, **kwargs)
            finally:
                _holding.reset(token)
                self.dials.done(slot)

        return bounded


def refusal_in(error: BaseException) -> DialRefused | None:
    """The :class:`DialRefused` behind a failed dial's ``error``, if a bound refused it: the
    library wraps each address's error (``SwarmDialAllFailedError`` from a ``MultiError``)."""
    seen: list[BaseException] = [error]
    while seen:
        current = seen.pop()
        if isinstance(current, DialRefused):
            return current
        if current.__cause__ is not None and len(seen) < 16:
            seen.append(current.__cause__)
        seen.extend(list(getattr(current, "errors", ()))[:16])
    return None


def install(swarm: Swarm, dials: Dials, observer: AdmissionObserver) -> OutboundGate:
    """Bound every dial of ``swarm`` by ``dials`` (see the module doc)."""
    gate = OutboundGate(swarm, dials, observer)
    for name in ("_dial_with_retry", "_dial_addr_single_attempt", "dial_addr_as_responder"):
        setattr(swarm, name, gate.wrap(getattr(swarm, name)))
    return gate
