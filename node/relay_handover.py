"""From relayed to direct without losing the other side's messages (issue #20, bug 1).

Once a hole punch (or a direct dial) has given us a direct connection to a peer we reached
through a relay, the relayed connection is to go. Our own pubsub stream moves to the direct
connection at once (:meth:`~p2pchat.node.p2p.pubsub.NodeGossip`, trap 23), but the peer's
stream to us is its library's business, and libraries differ (read in their sources):

* go-libp2p-pubsub and py-libp2p 0.8.1: when their stream dies while the peer is still
  connected they open a new one ("respawning writer"), on the best connection left;
* js-gossipsub (2.x and 3.x, run on limited connections): one outbound stream per peer, opened
  on a new connection or when a new stream of ours arrives while it has none; when its stream
  closes with the relayed connection it opens none by itself. If our new stream arrived before
  it saw the close (a direct path is shorter than the way through the relay), it never does,
  and everything it sends from then on is lost while ``/peers`` shows ``direct``.

So, :data:`GRACE` seconds after the direct connection is up (:meth:`RelayHandover.run`):

1. if the peer's pubsub streams to us are all on the relayed connection, the relayed connection
   is kept while that holds, at most ``keep_max`` seconds; usually the relay's own limits (its
   time and data per circuit) end it first;
   (a peer that speaks pubsub but has no stream to us at all lost it already: on to 2.);
2. then the relayed connection is closed (if still open), and the peer must be heard on a
   direct one: while it is not, our stream is renewed
   (:meth:`~p2pchat.node.p2p.pubsub.NodeGossip.renew_stream`) at once and then 0.1, 0.2, 0.4,
   0.8 and 1.6 s apart, and looked for a last time 3.2 s later: a new stream of ours makes
   js-gossipsub open its own, and costs go and py nothing. No redial: a peer behind NAT cannot
   simply be dialled again once its punched connection is closed (that takes a new relayed
   connection and a new punch), and the libraries above all reopen on a renewal or by
   themselves. A renewal is not made past
   :data:`~p2pchat.node.p2p.pubsub_streams.STREAMS_PER_CONNECTION` streams of ours on the
   connection (rust-libp2p disables GossipSub on a connection at the fifth); a nudge (below)
   takes its place;
3. rust-libp2p-gossipsub (0.50, read in its ``handler.rs``, ``queue.rs``, ``config.rs``)
   opens its stream on a connection only when it has something to send, and its send queue,
   shared by all the peer's connections, wakes only a connection that has a stream already: a
   message it queues while its only stream is gone waits until that connection is woken by
   something else (a frame from us), and is dropped unsent after 5 s (a publish; 1 s for a
   forward). So, still unheard after the renewals, the peer is *nudged*: an empty RPC on our
   stream (:meth:`~p2pchat.node.p2p.pubsub.NodeGossip.nudge`) every :data:`NUDGE_EVERY`
   seconds, until it is heard directly; the outcome is counted after :data:`NUDGES` of them,
   and the nudges go on, every :data:`WATCH_NUDGE_EVERY` seconds (:meth:`RelayHandover._watch`,
   one per peer), for as long as the peer is
   still unheard on a direct connection: a rust peer may stay silent for an hour, and its first
   word would otherwise be dropped. A rust peer that says nothing in that first window is
   counted ``failed`` (and warned about) though it is not lost.

Each handover ends with one outcome in ``p2pchat_relayed_handover_total``: ``not_needed`` (the
peer's stream was not on the relay only: closed after the grace as before), ``resumed`` (the
peer is heard on the direct connection again), ``failed`` (not after the renewals and nudges, or
the direct connection went away). Bounded: one handover per peer at a time (peers are bounded by
the connection limits), each at most ``keep_max`` + 9 s + :data:`NUDGES` x :data:`NUDGE_EVERY`,
six renewals (fewer within the streams budget); then one nudge (an empty RPC, 13 bytes with
Yamux's header) every :data:`WATCH_NUDGE_EVERY` seconds per peer still unheard, ended with its
direct connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import structlog
import trio
from p2pchat.node.p2p.direct import close_relayed, has_direct_connection, has_relayed
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.refusals import RefusalLog

GRACE = 2.0  # seconds the relayed connection stays in any case after a direct one is up
POLL = 1.0  # seconds between two looks at where the peer's stream is, while kept
# Seconds between two renewals of our stream, each followed by a look for the peer's stream on
# a direct connection. The first renewal goes out at once, and may overtake the close of the
# relayed connection on its way to the peer (a direct path is shorter than one through a
# relay): js-gossipsub still has its old stream then, and ignores it. Quick retries keep the
# time the peer cannot send short.
LOOKS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
# Then, still unheard, a nudge (an empty RPC on our stream) this often: what a rust-libp2p peer
# queues for us goes out within a nudge, under its 1 s (forward) and 5 s (publish) queue
# deadlines (module docstring, 3.). The outcome is counted after this many.
NUDGE_EVERY = 0.5
NUDGES = 20
# After the outcome, a peer still unheard is nudged this often for as long as it stays so: still
# under rust's 5 s publish deadline, at a quarter of the cost (7 bytes/s per silent peer).
WATCH_NUDGE_EVERY = 2.0
CIRCUIT = "p2p-circuit"

OUTCOMES = ("not_needed", "resumed", "failed")


class PubsubStreams(Protocol):
    """What the handover needs of the pubsub (:class:`~p2pchat.node.p2p.pubsub.NodeGossip`)."""

    def remote_stream_transports(self, peer: str) -> list[str]:
        """The transports of the connections ``peer``'s live pubsub streams to us are on."""
        ...

    async def stream_ended(self, peer: str) -> None:
        """Return when one of ``peer``'s pubsub streams to us ends next."""
        ...

    def has_stream_to(self, peer: str) -> bool:
        """Whether we have a pubsub stream to ``peer`` (it speaks pubsub)."""
        ...

    async def renew_stream(self, peer: str) -> bool:
        """Replace our pubsub stream to ``peer`` with a new one on its best connection (not
        past the budget of streams per connection): whether it was replaced."""
        ...

    def nudge(self, peer: str) -> bool:
        """Send ``peer`` an empty RPC on our current pubsub stream: whether it was queued."""
        ...

    def streams_opened_to(self, peer: str) -> int:
        """How many pubsub streams we opened on the connection our stream to ``peer`` is on."""
        ...


class HandoverObserver(Protocol):
    """What the handover reports (the metrics implement it). Called inline: must not block."""

    def handover_finished(self, outcome: str) -> None:
        """A handover ended with ``outcome``, one of :data:`OUTCOMES`."""


class RelayHandover:
    """Retires relayed connections that a direct connection replaced, keeping the peer heard."""

    def __init__(
        self,
        host: P2PHost,
        pubsub: Callable[[], PubsubStreams | None],
        observer: HandoverObserver,
        log: structlog.stdlib.BoundLogger,
        *,
        keep_max: float,
    ) -> None:
        """``pubsub`` gives the node's pubsub, None if it runs none (then a relayed connection
        is closed after :data:`GRACE`); ``keep_max``: seconds a relayed connection is kept at
        most for the peer's pubsub stream on it."""
        self._host = host
        self._pubsub = pubsub
        self._observer = observer
        self._log = log
        self._keep_max = keep_max
        self._running: set[str] = set()  # one handover per peer
        self._watching: set[str] = set()  # one watch (nudges after the outcome) per peer
        # A peer not heard after the renewals (reason "renewals") or whose direct connection
        # went away meanwhile ("direct_gone"): a warning, at most one a minute per reason.
        self._unheard = RefusalLog(
            log, "peer not heard after the relayed handover", level="warning"
        )

    async def run(self, peer: str) -> None:
        """Retire the relayed connections to ``peer``, a direct connection being up (run as a
        task). A second call for a peer whose handover runs returns at once."""
        if peer in self._running:
            return
        self._running.add(peer)
        try:
            pubsub = await self._hand_over(peer)
        finally:
            self._running.discard(peer)
        if pubsub is not None and peer not in self._watching:
            self._watching.add(peer)
            try:
                await self._watch(pubsub, peer)
            finally:
                self._watching.discard(peer)

    async def _hand_over(self, peer: str) -> PubsubStreams | None:
        """Hand over; the pubsub if the peer is still unheard on a direct connection (to be
        watched), else None."""
        await trio.sleep(GRACE)
        pubsub = self._pubsub()
        transports = pubsub.remote_stream_transports(peer) if pubsub is not None else []
        if (
            pubsub is None
            or any(t != CIRCUIT for t in transports)  # heard directly already
            or not (transports or pubsub.has_stream_to(peer))  # no pubsub between us
        ):
            if await close_relayed(self._host, peer):
                self._log.info("relayed connection closed; chat is direct", peer=peer)
            self._observer.handover_finished("not_needed")
            return None
        if transports:  # heard through the relay only: keep it while that holds
            kept_since = trio.current_time()
            with trio.move_on_after(self._keep_max):
                while has_relayed(self._host, peer) and self._heard_only_relayed(pubsub, peer):
                    # Woken when its stream ends, to renew ours at once; polled for the rest.
                    with trio.move_on_after(POLL):
                        await pubsub.stream_ended(peer)
            self._log.info(
                "relayed connection kept for the peer's pubsub stream",
                peer=peer,
                seconds=round(trio.current_time() - kept_since, 1),
            )
        # Else it speaks pubsub but is not heard at all: its stream was lost already.
        await close_relayed(self._host, peer)
        outcome, renewals, reason = await self._resume(pubsub, peer)
        self._observer.handover_finished(outcome)
        streams = pubsub.streams_opened_to(peer)  # within STREAMS_PER_CONNECTION
        if outcome == "resumed":
            self._log.info(
                "relayed handover finished", peer=peer, renewals=renewals, streams=streams
            )
            return None
        self._unheard.refused(reason, peer=peer, renewals=renewals, streams=streams)
        return pubsub if reason == "renewals" else None

    async def _watch(self, pubsub: PubsubStreams, peer: str) -> None:
        """Nudge ``peer`` while it is unheard on a direct connection and one is up (module
        docstring, 3.)."""
        since = trio.current_time()
        while has_direct_connection(self._host, peer):
            if self._heard_directly(pubsub, peer):
                self._log.info(
                    "peer heard directly after the relayed handover",
                    peer=peer,
                    seconds=round(trio.current_time() - since, 1),
                )
                return
            pubsub.nudge(peer)
            await trio.sleep(WATCH_NUDGE_EVERY)

    async def _resume(self, pubsub: PubsubStreams, peer: str) -> tuple[str, int, str]:
        """Wait for ``peer``'s stream on a direct connection, renewing ours, then nudging:
        (outcome, how many renewals it took, why not heard: ``renewals`` or
        ``direct_gone``)."""
        renewals = 0
        for look in LOOKS:
            if self._heard_directly(pubsub, peer):
                return "resumed", renewals, ""
            if not has_direct_connection(self._host, peer):
                return "failed", renewals, "direct_gone"
            if await pubsub.renew_stream(peer):
                renewals += 1
            else:  # the streams budget of the connection is spent (or no stream to renew)
                pubsub.nudge(peer)
            await trio.sleep(look)
        for _ in range(NUDGES):
            if self._heard_directly(pubsub, peer):
                return "resumed", renewals, ""
            if not has_direct_connection(self._host, peer):
                return "failed", renewals, "direct_gone"
            pubsub.nudge(peer)
            await trio.sleep(NUDGE_EVERY)
        if self._heard_directly(pubsub, peer):
            return "resumed", renewals, ""
        return "failed", renewals, "renewals"

    @staticmethod
    def _heard_directly(pubsub: PubsubStreams, peer: str) -> bool:
        return any(t != CIRCUIT for t in pubsub.remote_stream_transports(peer))

    @staticmethod
    def _heard_only_relayed(pubsub: PubsubStreams, peer: str) -> bool:
        transports = pubsub.remote_stream_transports(peer)
        return bool(transports) and all(t == CIRCUIT for t in transports)
