"""AutoNAT v1: servers dial peers back; peers learn whether they are reachable from outside.

Server (bootstrap and relay roles, ``autonat.service``): a peer sends the addresses it believes
it can be reached at; the server dials back only those on the IP address it observes the peer
at (never a third party's: no amplification), on a new connection from a separate identity
(:mod:`p2pchat.node.p2p.dialback`), never for a peer whose address it cannot observe, and at
most ``autonat.max_requests_per_peer`` (3) per peer, ``max_requests_per_group`` (8) per
address group (IPv4 address, IPv6 /64) and ``max_requests`` (30) in all per
``throttle_period`` (60 s): go-libp2p's limits, and the group's so that 12 PeerIds of one host
cannot spend the whole window (the audit's attack). Refusals are counted by reason
(``p2pchat_autonat_refusals_total``) and logged once a minute per reason.

Client (every node, ``autonat.probe``): asks up to :data:`SERVERS_PER_ROUND` connected servers
each round. Any OK makes the node ``public``; dial errors and no OK make it ``private``;
a round with no verdict (no server, refusals, failures) keeps the previous state (``unknown``
until the first verdict).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Literal, Protocol

import multiaddr
import structlog
import trio
from p2pchat.node.config import AutoNatSection
from p2pchat.node.netprefix import address_group
from p2pchat.node.p2p.dialback import DialBack
from p2pchat.node.p2p.host import ConnectionInfo, P2PHost
from p2pchat.node.p2p.identity import peer_id_bytes, peer_id_text
from p2pchat.node.p2p.streams import (
    Stream,
    StreamEnded,
    StreamError,
    StreamOrigin,
    close_quietly,
    read_single_frame,
    stream_origin,
    write_quietly,
)
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire.autonat import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_ID,
    AutoNatWireError,
    DialRequest,
    DialResponse,
    Status,
    decode_request,
    decode_response,
    encode,
)
from p2pchat.node.wire.framing import FrameError

Reachability = Literal["unknown", "public", "private"]

REQUEST_TIMEOUT = 10.0  # to read a request, or (client) to get an answer after the dial-back
SERVERS_PER_ROUND = 3
# With no server connected, the client looks for one again only on news (a connection opened,
# an identify received), at most once per FIRST_PROBE_DELAY, and every IDLE_LOOK seconds
# without news (a safety net: a look lists every connected peer's protocols, and a node with
# many peers and no AutoNAT server among them once did that every second).
FIRST_PROBE_DELAY = 1.0
IDLE_LOOK = 60.0


class Throttle:
    """Fixed-window request counting per peer, per address group and in all; :meth:`allow`
    counts a request that fits all three."""

    def __init__(self, per_peer: int, total: int, period: float, per_group: int | None = None):
        self._per_peer = per_peer
        self._per_group = per_group if per_group is not None else total
        self._total = total
        self._period = period
        self._window_start = float("-inf")
        self._counts: dict[str, int] = {}
        self._groups: dict[str, int] = {}
        self._all = 0

    def allow(self, peer: str, now: float | None = None, group: str | None = None) -> bool:
        """Whether ``peer`` (of address group ``group``) may have one more request now (and
        count it if so)."""
        return self.refusal(peer, group, now) is None

    def refusal(self, peer: str, group: str | None, now: float | None = None) -> str | None:
        """Count one request of ``peer`` from ``group`` if it fits, and return None; else
        return which budget is spent (``total_limit``, ``group_limit``, ``peer_limit``).
        Memory: the window's peers and groups, at most ``total`` of each."""
        now = time.monotonic() if now is None else now
        if now - self._window_start >= self._period:
            self._window_start, self._counts, self._groups, self._all = now, {}, {}, 0
        if self._all >= self._total:
            return "total_limit"
        if group is not None and self._groups.get(group, 0) >= self._per_group:
            return "group_limit"
        if self._counts.get(peer, 0) >= self._per_peer:
            return "peer_limit"
        self._counts[peer] = self._counts.get(peer, 0) + 1
        if group is not None:
            self._groups[group] = self._groups.get(group, 0) + 1
        self._all += 1
        return None


def dialable_at(addrs: tuple[bytes, ...], observed_ip: str) -> list[str]:
    """The addresses to dial back for the claimed ``addrs`` (binary multiaddrs), all at
    ``observed_ip``, as text without /p2p/.

    Only the observed IP is ever dialled, so no third party can be made a target. A claimed
    TCP address on another IP (a peer behind a NAT knows only its private addresses) is tried
    at the observed IP with its port and transport, as go-libp2p's AutoNAT service does: where
    the NAT forwards that port the dial-back reaches the peer, otherwise it fails and the peer
    learns it is private (refusing such a peer left it "unknown" for good, so it never sought
    a relay). Addresses claimed at the observed IP come first, plain TCP before WebSocket;
    duplicates, circuit, non-TCP and unparsable addresses are left out.
    """
    family = "ip6" if ":" in observed_ip else "ip4"
    exact: list[str] = []
    moved: list[str] = []
    for raw in addrs:
        try:
            addr = multiaddr.Multiaddr(raw)
            names = [protocol.name for protocol in addr.protocols()]
            ip = addr.value_for_protocol(names[0]) if names[0] in ("ip4", "ip6") else None
        except Exception:  # the multiaddr library raises many types for bad bytes
            continue
        if ip is None or len(names) < 2 or names[1] != "tcp" or "p2p-circuit" in names:
            continue
        rest = str(addr).split("/p2p/")[0].split("/", 3)[3]  # "tcp/<port>[/ws]"
        (exact if ip == observed_ip else moved).append(f"/{family}/{observed_ip}/{rest}")
    chosen: list[str] = []
    for group in (exact, moved):
        for text in sorted(group, key=lambda text: text.count("/") > 4):  # stable: TCP first
            if text not in chosen:
                chosen.append(text)
    return chosen


class AutoNatServerObserver(Protocol):
    """What the AutoNAT server reports (the metrics implement it). Called inline."""

    def dialback_answered(self, status: str) -> None:
        """A dial-back request was answered with ``status``, the response status in lower
        case (``ok``, ``e_dial_error``, ``e_dial_refused``, ``e_bad_request``)."""

    def dialback_refused(self, reason: str) -> None:
        """A dial-back was refused for ``reason`` (``peer_limit``, ``group_limit``,
        ``total_limit``, ``no_address``, ``no_tcp_address``)."""


class AutoNatClientObserver(Protocol):
    """What the AutoNAT client reports (the metrics implement it). Called inline."""

    def probe_answered(self, outcome: str) -> None:
        """A probe ended: the server's status in lower case (``ok``, ``e_dial_error``, ...),
        ``bad_response`` (no well-formed answer) or ``error`` (no stream)."""

    def reachability_decided(self, reachability: Reachability) -> None:
        """A round of probes reached a verdict (the same as before, or a new one)."""


class QuietAutoNatObserver:
    """An AutoNAT observer (server and client) that records nothing, for tests."""

    def dialback_answered(self, status: str) -> None:
        return None

    def dialback_refused(self, reason: str) -> None:
        return None

    def probe_answered(self, outcome: str) -> None:
        return None

    def reachability_decided(self, reachability: Reachability) -> None:
        return None


class AutoNatServer:
    """Answers dial-back requests; register it with :meth:`install` once ``dial_back`` runs."""

    def __init__(
        self,
        host: P2PHost,
        dial_back: DialBack,
        observer: AutoNatServerObserver,
        log: structlog.stdlib.BoundLogger,
        settings: AutoNatSection | None = None,
    ) -> None:
        self._host = host
        self._dial_back = dial_back
        self._observer = observer
        self._log = log
        self._refusals = RefusalLog(log, "autonat dial-back refused")
        self._settings = settings or AutoNatSection()
        self._throttle = Throttle(
            self._settings.max_requests_per_peer,
            self._settings.max_requests,
            self._settings.throttle_period,
            self._settings.max_requests_per_group,
        )

    def install(self) -> None:
        """Serve the AutoNAT protocol."""
        self._host.set_stream_handler(PROTOCOL_ID, self._handle)

    async def _handle(self, stream: Stream) -> None:
        origin = stream_origin(stream)
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                payload = await read_single_frame(stream, MAX_MESSAGE_BYTES)
            response = await self.answer(origin, decode_request(payload))
        except (FrameError, StreamEnded, AutoNatWireError, trio.TooSlowError) as error:
            response = DialResponse(Status.E_BAD_REQUEST, str(error))
        self._observer.dialback_answered(response.status.name.lower())
        # Quietly: a peer that left before its answer is no failure of this handler.
        await write_quietly(stream, encode(response))
        await close_quietly(stream)

    async def answer(self, origin: StreamOrigin, request: DialRequest) -> DialResponse:
        """The verdict on ``request`` from the peer described by ``origin``."""
        try:
            claimed = peer_id_text(request.peer_id)
        except ValueError:
            return DialResponse(Status.E_BAD_REQUEST, "peer id is not a valid PeerId")
        if claimed != origin.peer_id:
            return DialResponse(Status.E_BAD_REQUEST, "peer id differs from the connection's")
        if origin.remote_ip is None:
            self._refuse("no_address", origin.peer_id)
            return DialResponse(Status.E_DIAL_REFUSED, "no dial-back without an observed address")
        refusal = self._throttle.refusal(origin.peer_id, self._group(origin.remote_ip))
        if refusal is not None:
            self._refuse(refusal, origin.peer_id)
            return DialResponse(Status.E_DIAL_REFUSED, f"too many requests ({refusal})")
        candidates = dialable_at(request.addrs, origin.remote_ip)
        if not candidates:
            self._refuse("no_tcp_address", origin.peer_id)
            return DialResponse(Status.E_DIAL_REFUSED, "no TCP address to dial back")
        reached = await self._dial_back.first_reachable(origin.peer_id, candidates)
        self._log.debug(
            "autonat dial-back", remote=origin.peer_id, tried=candidates, reached=reached
        )
        if reached is None:
            return DialResponse(Status.E_DIAL_ERROR, "dial-back failed")
        return DialResponse(Status.OK, addr=multiaddr.Multiaddr(reached).to_bytes())

    def _group(self, ip: str) -> str | None:
        try:
            return address_group(ip, self._settings.ipv4_prefix, self._settings.ipv6_prefix)
        except ValueError:
            return None

    def _refuse(self, reason: str, peer: str) -> None:
        self._observer.dialback_refused(reason)
        self._refusals.refused(reason, peer=peer)


class AutoNatClient:
    """Probes this node's reachability; :attr:`reachability` is the current verdict."""

    def __init__(
        self,
        host: P2PHost,
        interval: float,
        observer: AutoNatClientObserver,
        log: structlog.stdlib.BoundLogger,
    ) -> None:
        self._host = host
        self._interval = interval
        self._observer = observer
        self._log = log
        self._peer_id_bytes = peer_id_bytes(host.peer_id)
        self._news = trio.Event()  # set when a server may have appeared since the last look
        self.reachability: Reachability = "unknown"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe until cancelled: soon after servers appear, then every ``interval``. While
        none is connected, look again only on news (see :data:`IDLE_LOOK`)."""
        self._host.watch_identify(lambda _: self._news.set())
        self._host.watch_connections(self)
        task_status.started()
        while True:
            servers = [
                peer
                for peer in self._host.connected_peers()
                if PROTOCOL_ID in self._host.peer_protocols(peer)
            ]
            if not servers:
                await self._wait_for_news()
                continue
            random.shuffle(servers)
            verdicts = [await self._ask(server) for server in servers[:SERVERS_PER_ROUND]]
            self._decide(verdicts)
            await trio.sleep(self._interval)

    async def _wait_for_news(self) -> None:
        with trio.move_on_after(IDLE_LOOK):
            await self._news.wait()
        self._news = trio.Event()
        # A connection's identify follows it shortly; and at most one look per second.
        await trio.sleep(FIRST_PROBE_DELAY)

    # --- ConnectionWatcher: called inline by the swarm, must not block -------------------------

    def connection_opened(self, info: ConnectionInfo) -> None:
        """A new connection may be to a server (one identified before is not identified again)."""
        self._news.set()

    def connection_closed(self, info: ConnectionInfo) -> None:
        """Nothing to do: a server gone is seen at the next look."""

    def _decide(self, verdicts: list[Status | None]) -> None:
        if Status.OK in verdicts:
            state: Reachability = "public"
        elif Status.E_DIAL_ERROR in verdicts:
            state = "private"
        else:
            return
        if state != self.reachability:
            self._log.info("reachability", reachability=state)
        self.reachability = state
        self._observer.reachability_decided(state)

    async def _ask(self, server: str) -> Status | None:
        addrs = tuple(
            multiaddr.Multiaddr(addr.split("/p2p/")[0]).to_bytes()
            for addr in self._host.advertised_addrs()
        )
        try:
            # The server dials back within its own 15 s before it answers.
            with trio.fail_after(REQUEST_TIMEOUT + 20):
                stream = await self._host.new_stream(server, [PROTOCOL_ID])
                try:
                    await stream.write(encode(DialRequest(self._peer_id_bytes, addrs)))
                    payload = await read_single_frame(stream, MAX_MESSAGE_BYTES)
                finally:
                    await close_quietly(stream)
            response = decode_response(payload)
        except (FrameError, StreamEnded, AutoNatWireError, trio.TooSlowError) as error:
            # No well-formed answer: malformed, ended (or reset) before it, or late.
            self._observer.probe_answered("bad_response")
            self._log.debug("autonat probe failed", server=server, error=str(error))
            return None
        except StreamError as error:  # no stream: refused protocol, not connected, timed out
            self._observer.probe_answered("error")
            self._log.debug("autonat probe failed", server=server, error=repr(error))
            return None
        self._observer.probe_answered(response.status.name.lower())
        return response.status


ReachabilitySource = Callable[[], Reachability]
