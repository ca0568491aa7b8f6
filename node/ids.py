"""How peers and their addresses are named to the user.

:func:`short_id` is the one short form of a PeerId every output uses: a PeerId is 52 characters
(``12D3KooW`` and 44 more), a line naming a peer shows ``12D3Ko…x7Qa``, enough to tell peers apart
at a glance. Where the user must copy an id (``p2pchat id``, ``/info``, a peer address), the full
id is printed.

:func:`check_peer_addr`, :func:`check_listen_addr` and :func:`check_announce_addr` read a
multiaddr the user typed and, when it is wrong, say what is wrong in plain words (which part,
why, and a right example) instead of the multiaddr library's message (``The last protocol should
be `P_P2P` (421) instead of `6```, ``Invalid CID: ...``).
"""

from __future__ import annotations

import difflib
import ipaddress
import re

import multiaddr
import multiaddr.protocols

SHORT_ID_MAX = 14  # ids this long or shorter are shown whole: shortening would not shorten them

PEER_ADDR_EXAMPLE = (
    "/ip4/203.0.113.9/tcp/4001/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
)
LISTEN_ADDR_EXAMPLE = "/ip4/0.0.0.0/tcp/4001"
ANNOUNCE_ADDR_EXAMPLE = "/dns4/chat.example.org/tcp/4001"

# What the value after each common protocol is, for "…needs <this> after it".
_VALUE_NAMES = {
    "ip4": "an IPv4 address",
    "ip6": "an IPv6 address",
    "dns": "a host name",
    "dns4": "a host name",
    "dns6": "a host name",
    "dnsaddr": "a host name",
    "tcp": "a port number",
    "udp": "a port number",
    "p2p": "a peer id",
}
# Suggested first for a misspelt protocol name: the ones p2pchat addresses use.
_COMMON_PROTOCOLS = (
    "ip4",
    "ip6",
    "dns",
    "dns4",
    "dns6",
    "tcp",
    "udp",
    "ws",
    "wss",
    "p2p",
    "p2p-circuit",
)
_LIBRARY_MESSAGE = re.compile(r"^Invalid MultiAddr '.*?': (?P<what>.*?)(?: \(string: .*\))?$", re.S)


def short_id(peer_id: str) -> str:
    """``12D3Ko…x7Qa``: the first 6 characters, an ellipsis, the last 4; an id of
    :data:`SHORT_ID_MAX` characters or fewer unchanged."""
    if len(peer_id) <= SHORT_ID_MAX:
        return peer_id
    return f"{peer_id[:6]}…{peer_id[-4:]}"


def addr_peer(addr: str) -> str:
    """The PeerId an address names last (after its last ``/p2p/``: for a circuit address, the
    peer reached through the relay); the address itself when it names none."""
    return addr.rsplit("/p2p/", 1)[-1]


class AddressError(ValueError):
    """A multiaddr the user gave is wrong. The message is one line: which address, what is wrong
    with it, and a right example."""


def check_peer_addr(value: str, what: str = "peer address") -> multiaddr.Multiaddr:
    """``value`` as the address of a peer to dial: a transport address ending in
    ``/p2p/<peer id>`` (a relayed ``…/p2p/<relay>/p2p-circuit/p2p/<peer id>`` too).

    Raises:
        AddressError: see the class; ``what`` names the address in the message.
    """
    addr = _parse(value, what, PEER_ADDR_EXAMPLE)
    names = _names(addr)
    if names[-1] != "p2p":
        raise _error(
            value,
            what,
            "has no peer id: it must end with /p2p/<peer id> (the id `p2pchat id` prints on "
            "that node)",
            PEER_ADDR_EXAMPLE,
        )
    if len(names) < 2:
        raise _error(
            value,
            what,
            "has only a peer id: put the transport (/ip4/<address>/tcp/<port>) before /p2p/",
            PEER_ADDR_EXAMPLE,
        )
    return addr


def check_listen_addr(value: str, what: str = "listen address") -> multiaddr.Multiaddr:
    """``value`` as an address to listen on: ``/ip4|ip6/<address>/tcp/<port>[/ws]`` or
    ``/ip4|ip6/<address>/udp/<port>/quic-v1``.

    Raises:
        AddressError: see the class.
    """
    addr = _parse(value, what, LISTEN_ADDR_EXAMPLE)
    names = _names(addr)
    if len(names) < 2 or names[0] not in ("ip4", "ip6") or names[1] not in ("tcp", "udp"):
        raise _error(
            value,
            what,
            "must be /ip4/<address>/tcp/<port> or /ip6/<address>/tcp/<port> (a local IP "
            "address, 0.0.0.0 for all; add /ws for WebSocket), or /ip4/<address>/udp/<port>"
            "/quic-v1 for QUIC",
            LISTEN_ADDR_EXAMPLE,
        )
    allowed = [[], ["ws"]] if names[1] == "tcp" else [["quic-v1"]]
    if names[2:] not in allowed:
        extra = "/" + "/".join(names[2:]) if names[2:] else "nothing"
        raise _error(
            value,
            what,
            f"has {extra} after the port: p2pchat listens on TCP, WebSocket (/tcp/<port>/ws) "
            "and QUIC (/udp/<port>/quic-v1) only",
            LISTEN_ADDR_EXAMPLE,
        )
    return addr


def check_announce_addr(value: str, what: str = "announce address") -> multiaddr.Multiaddr:
    """``value`` as an address advertised to peers: any transport address, without
    ``/p2p/`` (the node adds its own id).

    Raises:
        AddressError: see the class.
    """
    addr = _parse(value, what, ANNOUNCE_ADDR_EXAMPLE)
    if "p2p" in _names(addr):
        raise _error(
            value, what, "must not contain /p2p/ (the node adds its own id)", ANNOUNCE_ADDR_EXAMPLE
        )
    return addr


def _names(addr: multiaddr.Multiaddr) -> list[str]:
    return [proto.name for proto in addr.protocols()]


def _error(value: str, what: str, problem: str, example: str) -> AddressError:
    return AddressError(f"{what} {value!r} {problem}; e.g. {example}")


def _parse(value: str, what: str, example: str) -> multiaddr.Multiaddr:
    """The multiaddr ``value``, or an :class:`AddressError` saying what is wrong with it."""
    if not value.strip():
        raise _error(value, what, "is empty", example)
    if not value.startswith("/"):
        raise _error(value, what, _not_a_multiaddr(value), example)
    try:
        addr = multiaddr.Multiaddr(value)
    except Exception as error:  # the library raises several unrelated types for bad input
        raise _error(value, what, _explain(value, error), example) from None
    if not _names(addr):
        raise _error(value, what, "is empty", example)
    return addr


def _not_a_multiaddr(value: str) -> str:
    """What to say about an address that does not start with ``/``."""
    host, sep, port = value.rpartition(":")
    if sep and port.isdigit() and "/" not in value:
        host = host.strip("[]")
        try:
            kind = "ip6" if ipaddress.ip_address(host).version == 6 else "ip4"
        except ValueError:
            kind = "dns4"
        return f"is host:port, not a multiaddr: write it /{kind}/{host}/tcp/{port}"
    return "is not a multiaddr: it must start with / (like /ip4/<address>/tcp/<port>)"


def _explain(value: str, error: Exception) -> str:
    """The plain-words problem with ``value``, which the library refused with ``error``:
    the components are walked one by one to name the one at fault."""
    tokens = value.split("/")[1:]
    index = 0
    while index < len(tokens):
        name = tokens[index]
        index += 1
        if not name:  # a doubled or trailing slash: the library skips it too
            continue
        try:
            protocol = multiaddr.protocols.protocol_with_name(name)
        except Exception:
            return _unknown_protocol(name)
        if protocol.size == 0:  # /ws, /p2p-circuit, /quic-v1: no value
            continue
        if getattr(protocol, "path", False):  # /unix/<path>: the rest is the value
            rest = "/".join(tokens[index:])
            index = len(tokens)
        else:
            rest = tokens[index] if index < len(tokens) else ""
            index += 1
        if not rest:
            return f"has /{name} without {_VALUE_NAMES.get(name, 'a value')} after it"
        try:
            multiaddr.Multiaddr(f"/{name}/{rest}")
        except Exception:
            return _bad_value(name, rest)
    # No single component is at fault: the library's own words, without its prefix.
    found = _LIBRARY_MESSAGE.match(str(error))
    return f"is not a valid multiaddr ({found['what'] if found else error})"


def _unknown_protocol(name: str) -> str:
    known = [proto.name for proto in multiaddr.protocols.PROTOCOLS]
    close = difflib.get_close_matches(name, _COMMON_PROTOCOLS, n=1) or difflib.get_close_matches(
        name, known, n=1
    )
    hint = f" (did you mean {close[0]}?)" if close else ""
    if ":" in name:
        hint = " (a port is written /tcp/<port>, not after a colon)"
    return f"has /{name}, which is not a protocol name{hint}"


def _bad_value(name: str, value: str) -> str:
    host, colon, port = value.rpartition(":")
    if colon and port.isdigit() and name in ("ip4", "dns", "dns4", "dns6"):
        return (
            f"has {value!r} after /{name}: a port is written /tcp/<port>, not after a colon "
            f"(/{name}/{host}/tcp/{port})"
        )
    if name in ("tcp", "udp"):
        return f"has port {value!r}: a port is a number from 0 to 65535"
    if name in ("ip4", "ip6"):
        version = name[-1]
        return (
            f"has {value!r} after /{name}, which is not an IPv{version} address (a host name "
            f"is written /dns{version}/<name>)"
        )
    if name == "p2p":
        return (
            f"has {value!r} after /p2p, which is not a peer id (a peer id looks like "
            "12D3KooW… and is 52 letters and digits long: copy it whole)"
        )
    return f"has {value!r} after /{name}, which is not a valid value for it"
