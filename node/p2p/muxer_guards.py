"""The muxer guards installed on a host: every connection its upgrader makes gets one before
it starts reading (:mod:`~p2pchat.node.p2p.yamux_guard`, :mod:`~p2pchat.node.p2p.mplex_guard`).

The library's muxer negotiation builds Yamux connections itself, whatever class the host's
muxer options name (``MuxerMultistream.new_conn``), so the guard goes on the instance it
returns; the swarm starts the connection's read loop only after that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libp2p.abc import IHost
from libp2p.stream_muxer.mplex.mplex import Mplex
from libp2p.stream_muxer.yamux.yamux import Yamux
from p2pchat.node.p2p.mplex_guard import guard_mplex
from p2pchat.node.p2p.stream_limits import StreamLimits
from p2pchat.node.p2p.yamux_guard import guard_yamux


def guard_muxers(
    host: IHost,
    limits: StreamLimits,
    report: Callable[[str], None],
    dropped: Callable[[str, int], None],
) -> None:
    """Guard every connection ``host`` upgrades from now on: ``report`` is told each limit
    refusing something, ``dropped`` the unread bytes dropped of each reset or abandoned Yamux
    stream (reason, size)."""
    muxers = host.get_network().upgrader.muxer_multistream
    new_conn = muxers.new_conn

    async def guarded_new_conn(*args: Any, **kwargs: Any) -> Any:
        muxed = await new_conn(*args, **kwargs)
        if isinstance(muxed, Yamux):
            guard_yamux(muxed, limits, report, dropped)
        elif isinstance(muxed, Mplex):
            guard_mplex(muxed, limits, report)
        return muxed

    muxers.new_conn = guarded_new_conn
