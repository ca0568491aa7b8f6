"""The remote address of an IPv6 TCP connection (a py-libp2p trap not in the notes).

``TrioTCPStream.get_remote_address`` accepts only a 2-tuple from ``getpeername()``; an IPv6
socket gives a 4-tuple (host, port, flowinfo, scope id), so the library answers None for every
IPv6 connection. Every per-IP decision of the node then saw an IPv6 peer at no address: AutoNAT
refused to dial it back, the relay refused it a reservation (``no_observed_address``), and any
per-address-group limit could not count it. :func:`with_ipv6` wraps the library's method
(installed by :mod:`~p2pchat.node.p2p.patches`): when the library answers None, the socket's
own peer name is read and its first two fields returned. Re-check on every library upgrade
(``tests/test_stream_remote_ip.py``).
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.io.trio import TrioTCPStream


def with_ipv6(
    library_method: Callable[[TrioTCPStream], tuple[str, int] | None],
) -> Callable[[TrioTCPStream], tuple[str, int] | None]:
    """``TrioTCPStream.get_remote_address`` that also answers for IPv6 sockets."""

    def get_remote_address(self: TrioTCPStream) -> tuple[str, int] | None:
        found = library_method(self)
        if found is not None:
            return found
        try:
            name = self.stream.socket.getpeername()
        except (AttributeError, OSError):
            return None
        if not isinstance(name, tuple) or len(name) < 2:
            return None
        return str(name[0]), int(name[1])

    return get_remote_address
