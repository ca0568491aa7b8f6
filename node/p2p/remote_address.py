"""The remote address of an IPv6 TCP connection (a py-libp2p trap not in the notes).

``TrioTCPStream.get_remote_address`` accepts only a 2-tuple from ``getpeername()``; an IPv6
socket gives a 4-tuple (host, port, flowinfo, scope id), so the library answers None for every
IPv6 connection. Every per-IP decision of the node then saw an IPv6 peer at no address: AutoNAT
refused to dial it back, the relay refused it a reservation (``no_observed_address``), and any
per-address-group limit could not count it. :func:`with_ipv6` wraps the library's method
(installed by :mod:`~p2pchat.node.p2p.patches`): when the library answers None, the socket's
own peer name is read and its first two fields returned. Re-check on every library upgrade
(``tests/test_stream_remote_ip.py``).

``P2PWebSocketConnection.get_remote_address`` is a placeholder that answers None for every
WebSocket connection: the relay refused every client connected to it over WebSocket a
reservation (``no_observed_address``; a browser-style js-libp2p peer speaks nothing else), and
the per-address limits counted all of them in one group. :func:`websocket_with_address` finds
the TCP socket beneath the WebSocket and answers its peer name the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from libp2p.io.trio import TrioTCPStream
from libp2p.transport.websocket.connection import P2PWebSocketConnection


def with_ipv6(
    library_method: Callable[[TrioTCPStream], tuple[str, int] | None],
) -> Callable[[TrioTCPStream], tuple[str, int] | None]:
    """``TrioTCPStream.get_remote_address`` that also answers for IPv6 sockets."""

    def get_remote_address(self: TrioTCPStream) -> tuple[str, int] | None:
        found = library_method(self)
        if found is not None:
            return found
        return _peer_name(self.stream)

    return get_remote_address


def websocket_with_address(
    library_method: Callable[[P2PWebSocketConnection], tuple[str, int] | None],
) -> Callable[[P2PWebSocketConnection], tuple[str, int] | None]:
    """``P2PWebSocketConnection.get_remote_address`` that answers with the peer name of the
    TCP socket beneath (P2PWebSocketConnection -> trio-websocket -> [PeekableStream ->]
    SocketStream)."""

    def get_remote_address(self: P2PWebSocketConnection) -> tuple[str, int] | None:
        found = library_method(self)
        if found is not None:
            return found
        layer: Any = self
        for _ in range(6):  # a few wrappers deep at most; a loop cannot hang on a cycle
            if hasattr(layer, "socket"):
                return _peer_name(layer)
            layer = next(
                (getattr(layer, n) for n in ("_ws", "_stream", "stream") if hasattr(layer, n)),
                None,
            )
            if layer is None:
                return None
        return None

    return get_remote_address


def _peer_name(socket_stream: Any) -> tuple[str, int] | None:
    """(host, port) of the socket stream's peer: the first two fields, IPv4 or IPv6."""
    try:
        name = socket_stream.socket.getpeername()
    except (AttributeError, OSError):
        return None
    if not isinstance(name, tuple) or len(name) < 2:
        return None
    return str(name[0]), int(name[1])
