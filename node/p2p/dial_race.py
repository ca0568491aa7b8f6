"""Racing a peer's addresses, QUIC first: go-libp2p's dial ranker
(``p2p/net/swarm/dial_ranker.go``), in the host layer.

When a peer is known by a QUIC address and a TCP (or WebSocket) one, go-libp2p dials QUIC
first and TCP only after a head start (250 ms for public addresses, RFC 8305's estimate of one
round trip); the first connection that succeeds is kept and the other dials are cancelled. A
peer whose QUIC is blocked (a firewall dropping UDP) so costs one head start, not a dial
timeout, and a peer that answers both ends up on QUIC.

:func:`plan` ranks addresses into a dial plan, pure; :func:`race` runs a plan:

- QUIC addresses in the order given, the first at once, each further one ``head_start`` after
  the previous one;
- then TCP, then WebSocket addresses, the first ``head_start`` after the last QUIC dial (at once
  if there is no QUIC address), each further one ``head_start`` later;
- circuit and unparsable addresses are left out (the host dials circuits through their relay);
  at most :data:`MAX_ADDRS` addresses in all (a peer's record names many, a dial is a slot).

A planned dial also starts early when every dial started before it has failed (go-libp2p's
dial worker does the same): a refused QUIC port does not make TCP wait for the head start.

One ``head_start`` for every address, where go-libp2p uses 30 ms for private addresses: on a
LAN here a QUIC handshake takes longer than that (aioquic runs in Python; loopback p50 35 ms,
README "QUIC"), so 30 ms would start TCP before QUIC could finish and QUIC would rarely win.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import trio

QUIC = "quic"
TCP = "tcp"
WEBSOCKET = "websocket"
TRANSPORTS = (QUIC, TCP, WEBSOCKET)  # also the ranking, best first
MAX_ADDRS = 6  # addresses dialled for one peer in one race

_T = TypeVar("_T")


def transport_of(addr: str) -> str | None:
    """:data:`QUIC`, :data:`TCP` or :data:`WEBSOCKET` for a direct address
    (``/ip4|ip6|dns|dns4|dns6/<host>/udp/<port>/quic-v1``, ``.../tcp/<port>``,
    ``.../tcp/<port>/ws``, any ``/p2p/`` suffix ignored); None for anything else."""
    if "/p2p-circuit" in addr:
        return None
    parts = addr.split("/p2p/", 1)[0].split("/")
    if len(parts) < 5 or parts[0] or parts[1] not in ("ip4", "ip6", "dns", "dns4", "dns6"):
        return None
    if not parts[4].isdigit():
        return None
    rest = parts[5:]
    if parts[3] == "udp" and rest == ["quic-v1"]:
        return QUIC
    if parts[3] == "tcp" and not rest:
        return TCP
    if parts[3] == "tcp" and rest == ["ws"]:
        return WEBSOCKET
    return None


@dataclass(frozen=True)
class Planned:
    """One dial of a plan: ``addr`` (as given), started ``delay`` seconds after the race."""

    addr: str
    transport: str
    delay: float


def plan(addrs: Iterable[str], head_start: float) -> list[Planned]:
    """The dial plan for a peer's ``addrs`` (given first, known after: the order is kept within
    a transport), see the module doc. Duplicates (the same address with and without a ``/p2p/``
    suffix) are dialled once."""
    by_transport: dict[str, list[str]] = {name: [] for name in TRANSPORTS}
    seen: set[str] = set()
    for addr in addrs:
        transport = transport_of(addr)
        bare = addr.split("/p2p/", 1)[0]
        if transport is None or bare in seen:
            continue
        seen.add(bare)
        by_transport[transport].append(addr)
    ordered = [(name, addr) for name in TRANSPORTS for addr in by_transport[name]][:MAX_ADDRS]
    planned: list[Planned] = []
    delay = 0.0
    for index, (transport, addr) in enumerate(ordered):
        if index > 0:
            delay += head_start
        planned.append(Planned(addr, transport, delay))
    return planned


def worth_racing(planned: Sequence[Planned]) -> bool:
    """Whether ``planned`` holds a QUIC dial and another transport's: the case the race exists
    for (otherwise the library's own dial, one address per transport, does the same)."""
    transports = {dial.transport for dial in planned}
    return QUIC in transports and len(transports) > 1


@dataclass(frozen=True)
class Won(Generic[_T]):
    """The dial that won a race: its result, address and transport, when it started and how
    long the race took (seconds since the race began)."""

    result: _T
    addr: str
    transport: str
    started_after: float
    elapsed: float


class RaceLost(Exception):
    """Every dial of a race failed; ``errors`` maps each address to its error."""

    def __init__(self, errors: dict[str, BaseException]) -> None:
        detail = "; ".join(f"{addr}: {error}" for addr, error in errors.items())
        super().__init__(detail or "nothing to dial")
        self.errors = errors


Dial = Callable[[str], Awaitable[_T]]
Discard = Callable[[_T], Awaitable[None]]


async def race(planned: Sequence[Planned], dial: Dial[_T], discard: Discard[_T]) -> Won[_T]:
    """Run ``planned`` (see the module doc): ``dial`` each address at its time, keep the first
    result, cancel the other dials; a result that arrives after the winner's (two dials can
    finish at the same moment) is given to ``discard``. Raises :class:`RaceLost` when every
    dial failed. ``dial`` raises any Exception for a failed dial."""
    start = trio.current_time()
    winner: list[Won[_T]] = []
    errors: dict[str, BaseException] = {}
    running = 0
    changed = trio.Event()

    async def attempt(dial_plan: Planned, scope: trio.CancelScope) -> None:
        nonlocal running, changed
        started_after = trio.current_time() - start
        try:
            result = await dial(dial_plan.addr)
        except Exception as error:  # any failed dial: the race goes on without it
            errors[dial_plan.addr] = error
            running -= 1
            changed.set()
            return
        if winner:
            with trio.CancelScope(shield=True):
                await discard(result)
            return
        elapsed = trio.current_time() - start
        winner.append(Won(result, dial_plan.addr, dial_plan.transport, started_after, elapsed))
        scope.cancel()

    async with trio.open_nursery() as nursery:
        for dial_plan in planned:
            deadline = start + dial_plan.delay
            # Wait for this dial's time, unless every dial started so far has failed.
            while running > 0 and trio.current_time() < deadline:
                changed = trio.Event()
                with trio.move_on_at(deadline):
                    await changed.wait()
            if winner:
                break
            running += 1
            nursery.start_soon(attempt, dial_plan, nursery.cancel_scope)
    if winner:
        return winner[0]
    raise RaceLost(errors)


class RaceObserver(Protocol):
    """Told of each race (the metrics implement it). Called inline: must not block."""

    def dial_race_finished(self, transport: str | None, seconds: float) -> None:
        """A race ended: won over ``transport`` (one of :data:`TRANSPORTS`; None: every dial
        failed) after ``seconds``."""


class QuietRaceObserver:
    """A race observer that records nothing."""

    def dial_race_finished(self, transport: str | None, seconds: float) -> None:
        return None
