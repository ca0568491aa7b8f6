"""Direct connections to a peer already reached through a relay: the host layer's part of hole
punching (DCUtR, driven by :mod:`p2pchat.node.holepunch`).

A TCP hole punch is a simultaneous open: both peers dial each other's NAT-mapped address at about
the same time, each *from its listen port*, so that each NAT has an outbound mapping for the SYN
that arrives from the other side, and a port-preserving NAT maps the listen port to the same
port outside. py-libp2p 0.8.1 binds a dial to a source when asked (its TCP listeners set
SO_REUSEPORT for this) and can upgrade a dialled socket as the responder. After a simultaneous
open both ends have "dialled", so the security roles are fixed by DCUtR instead: the peer that
dialled through the relay is the initiator, the peer that received the relayed connection the
responder (go-libp2p's rule).

QUIC addresses are punched too (UDP: the dialler becomes the QUIC client, the other side opens
its NAT with random packets; :mod:`p2pchat.node.p2p.quic_punch`), each dial from the QUIC
listen port.

Everything here is bounded: at most :data:`MAX_DIAL_ADDRS` addresses per attempt (TCP and QUIC
together), dialled together, within :data:`DIAL_TIMEOUT` seconds.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import multiaddr
import trio
from libp2p.abc import INetConn
from libp2p.peer.id import ID
from libp2p.peer.peerstore import PeerStoreError
from p2pchat.node.p2p import outbound, quic_punch
from p2pchat.node.p2p.host import P2PHost, connection_info, transport_label

log = logging.getLogger("p2pchat.host.direct")

DIAL_TIMEOUT = 5.0  # go-libp2p's hole-punch dial timeout
MAX_DIAL_ADDRS = 8  # addresses dialled per attempt: a peer cannot make us dial a long list
MAX_PUNCH_ADDRS = 16  # addresses we offer in CONNECT
MAX_IMPLIED = 4  # IPs and QUIC ports combined into implied QUIC addresses (at most 16)

IPAddress = IPv4Address | IPv6Address


def _tcp_endpoint(text: str) -> tuple[str, IPAddress, int] | None:
    """``(family, ip, port)`` of a plain TCP address (``/ip4|ip6/<ip>/tcp/<port>``, any
    ``/p2p/`` suffix ignored); None for circuit, WebSocket and unparsable addresses."""
    if "/p2p-circuit" in text:
        return None
    parts = text.split("/p2p/", 1)[0].split("/")
    # ['', 'ip4', '<ip>', 'tcp', '<port>'] and nothing more
    if len(parts) != 5 or parts[1] not in ("ip4", "ip6") or parts[3] != "tcp":
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        return None
    return (parts[1], ip, port) if 0 < port < 65536 else None


def _quic_endpoint(text: str) -> tuple[str, IPAddress, int] | None:
    """``(family, ip, port)`` of a plain QUIC address (``/ip4|ip6/<ip>/udp/<port>/quic-v1``,
    any ``/p2p/`` suffix ignored); None for anything else."""
    if "/p2p-circuit" in text:
        return None
    parts = text.split("/p2p/", 1)[0].split("/")
    # ['', 'ip4', '<ip>', 'udp', '<port>', 'quic-v1'] and nothing more
    if len(parts) != 6 or parts[1] not in ("ip4", "ip6") or parts[3:6:2] != ["udp", "quic-v1"]:
        return None
    try:
        ip = ipaddress.ip_address(parts[2])
        port = int(parts[4])
    except ValueError:
        return None
    return (parts[1], ip, port) if 0 < port < 65536 else None


def quic_addrs(addrs: Iterable[str]) -> list[str]:
    """The plain QUIC addresses (``/ip4|ip6/<ip>/udp/<port>/quic-v1``, any ``/p2p/`` suffix
    dropped) among ``addrs``, in order, without duplicates; others and unspecified IPs left
    out."""
    return _plain(addrs, _quic_endpoint, "udp/{port}/quic-v1")


def _plain(
    addrs: Iterable[str],
    endpoint_of: Callable[[str], tuple[str, IPAddress, int] | None],
    transport: str,
) -> list[str]:
    """``/<family>/<ip>/`` + ``transport`` (formatted with the port) for each address of
    ``addrs`` ``endpoint_of`` reads, in order, without duplicates; unspecified IPs left out."""
    result: list[str] = []
    for text in addrs:
        endpoint = endpoint_of(text)
        if endpoint is None or endpoint[1].is_unspecified:
            continue
        family, ip, port = endpoint
        addr = f"/{family}/{ip}/" + transport.format(port=port)
        if addr not in result:
            result.append(addr)
    return result


def punch_targets(addrs: Iterable[str]) -> list[str]:
    """The addresses of ``addrs`` a hole punch can use: plain TCP ones, then plain QUIC ones,
    then the QUIC ones a port-preserving NAT implies (:func:`implied_quic_addrs`)."""
    listed = list(addrs)
    quic = quic_addrs(listed)
    implied = [addr for addr in implied_quic_addrs(listed) if addr not in quic]
    return tcp_addrs(listed) + quic + implied


def implied_quic_addrs(addrs: Sequence[str]) -> list[str]:
    """Each IP of the TCP addresses among ``addrs`` with each QUIC port among them. A peer
    that was observed over TCP only knows its NAT's address for TCP (go-libp2p and py-libp2p
    keep an observation for listen addresses of the same transport), so it offers its QUIC
    listen port at its LAN address only; a port-preserving NAT maps that port at the address
    its TCP was seen at. Only IPs and ports the peer named itself, the first
    :data:`MAX_IMPLIED` of each (so at most their product)."""
    ips: list[tuple[str, IPAddress]] = []
    for endpoint in map(_tcp_endpoint, addrs):
        key = endpoint[:2] if endpoint is not None else None
        if key is not None and key not in ips and len(ips) < MAX_IMPLIED:
            ips.append(key)
    ports: list[tuple[str, int]] = []
    for endpoint in map(_quic_endpoint, addrs):
        key2 = (endpoint[0], endpoint[2]) if endpoint is not None else None
        if key2 is not None and key2 not in ports and len(ports) < MAX_IMPLIED:
            ports.append(key2)
    combined = [
        f"/{family}/{ip}/udp/{port}/quic-v1"
        for family, ip in ips
        for quic_family, port in ports
        if family == quic_family
    ]
    return quic_addrs(combined)


def tcp_addrs(addrs: Iterable[str]) -> list[str]:
    """The plain TCP addresses (``/ip4|ip6/<ip>/tcp/<port>``, any ``/p2p/`` suffix dropped) among
    ``addrs``, in order, without duplicates; circuit, WebSocket, unspecified and unparsable
    addresses are left out."""
    return _plain(addrs, _tcp_endpoint, "tcp/{port}")


def worth_a_direct_dial(addrs: Iterable[str]) -> list[str]:
    """The TCP addresses among ``addrs`` worth dialling before a hole punch: public ones (as
    go-libp2p does) and loopback ones (a peer on this host). A peer behind NAT advertises its
    private LAN addresses; dialled from another network they lead nowhere (the dial waits out
    its timeout when no "unreachable" comes back) or, worse, to some other host that happens to
    have that address on our own LAN."""
    chosen = []
    for addr in tcp_addrs(addrs):
        endpoint = _tcp_endpoint(addr)
        if endpoint is not None and (endpoint[1].is_global or endpoint[1].is_loopback):
            chosen.append(addr)
    return chosen


def punch_addrs(
    observed: Sequence[str], listen: Sequence[str], advertised: Sequence[str]
) -> list[str]:
    """The addresses to offer a peer in a DCUtR CONNECT.

    First the predictions: each IP that others observed us at, with each TCP listen port (what a
    port-preserving NAT maps a dial from the listen port to; the observed ports themselves belong
    to ephemeral dials and are useless for a punch), and with each QUIC listen port (UDP: the
    same for a punch from the QUIC listen port, :mod:`~p2pchat.node.p2p.quic_punch`). Then our
    advertised TCP and QUIC addresses (right for a node that is not behind NAT at all). TCP
    first: peers that punch over TCP only read the list in order. Pure, for testing with
    vectors.
    """
    tcp_ports: dict[str, list[int]] = {}  # ip4 / ip6 -> listen ports
    udp_ports: dict[str, list[int]] = {}
    for endpoint in map(_tcp_endpoint, listen):
        if endpoint is not None:
            tcp_ports.setdefault(endpoint[0], []).append(endpoint[2])
    for endpoint in map(_quic_endpoint, listen):
        if endpoint is not None:
            udp_ports.setdefault(endpoint[0], []).append(endpoint[2])
    predicted = []
    for endpoint in [*map(_tcp_endpoint, observed), *map(_quic_endpoint, observed)]:
        if endpoint is not None:  # an unspecified observed IP falls out below
            family, ip, _ = endpoint
            predicted += [f"/{family}/{ip}/tcp/{port}" for port in tcp_ports.get(family, [])]
            predicted += [
                f"/{family}/{ip}/udp/{port}/quic-v1" for port in udp_ports.get(family, [])
            ]
    return punch_targets(predicted + list(advertised))[:MAX_PUNCH_ADDRS]


# --- the live host ------------------------------------------------------------------------------


def _connections(host: P2PHost, peer: str) -> list[INetConn]:
    try:
        return list(host.libp2p_host.get_network().get_connections(ID.from_base58(peer)))
    except ValueError:  # not a PeerId
        return []


def _is_relayed(conn: INetConn) -> bool:
    return transport_label(conn.muxed_conn) == "p2p-circuit"


def has_direct_connection(host: P2PHost, peer: str) -> bool:
    """Whether a connection to ``peer`` that does not go through a relay is open."""
    return any(not _is_relayed(conn) for conn in _connections(host, peer))


def has_relayed(host: P2PHost, peer: str) -> bool:
    """Whether a connection to ``peer`` through a relay is open."""
    return any(_is_relayed(conn) for conn in _connections(host, peer))


def has_outbound_relayed(host: P2PHost, peer: str) -> bool:
    """Whether we dialled ``peer`` through a relay (and that connection is open)."""
    return any(
        _is_relayed(conn) and connection_info(conn).direction == "outbound"
        for conn in _connections(host, peer)
    )


async def close_relayed(host: P2PHost, peer: str) -> int:
    """Close the relayed connections to ``peer``, if a direct one is open; how many closed."""
    if not has_direct_connection(host, peer):
        return 0
    closed = 0
    for conn in _connections(host, peer):
        if _is_relayed(conn):
            try:
                await conn.close()
            except Exception:  # already going away; the library's connection close raises
                continue  # whatever its layers do (muxer, security, transport): none matters
            closed += 1
    return closed


def peer_tcp_addrs(host: P2PHost, peer: str) -> list[str]:
    """The TCP addresses the peerstore holds for ``peer`` (identify, DHT, configuration)."""
    try:
        addrs = host.libp2p_host.get_peerstore().addrs(ID.from_base58(peer))
    except (PeerStoreError, ValueError):
        return []
    return tcp_addrs(str(addr) for addr in addrs)


def peer_quic_addrs(host: P2PHost, peer: str) -> list[str]:
    """The QUIC addresses the peerstore holds for ``peer`` (its identify's listen addresses)."""
    try:
        addrs = host.libp2p_host.get_peerstore().addrs(ID.from_base58(peer))
    except (PeerStoreError, ValueError):
        return []
    return quic_addrs(str(addr) for addr in addrs)


def with_listen_ports(theirs: Sequence[str], known_quic: Sequence[str]) -> list[str]:
    """``theirs`` (a peer's CONNECT addresses, as :func:`punch_targets`) and the QUIC addresses
    its TCP addresses' IPs imply with the QUIC listen ports of ``known_quic`` (from its
    identify): a peer observed over TCP only (go-libp2p reaching a relay over TCP) offers no
    QUIC address at all, but a port-preserving NAT maps its QUIC listen port at the IP its TCP
    was seen at. The ``known_quic`` addresses themselves (LAN ones, usually) are not added."""
    implied = implied_quic_addrs([*tcp_addrs(theirs), *known_quic])
    extra = [addr for addr in implied if addr not in theirs and addr not in known_quic]
    return [*theirs, *extra]


def own_punch_addrs(host: P2PHost) -> list[str]:
    """What this node offers in a DCUtR CONNECT (see :func:`punch_addrs`)."""
    manager: Any = getattr(host.libp2p_host, "_observed_addr_manager", None)
    # One observer is enough to learn our NAT's IP for a punch; the library waits for four
    # before advertising an observed address, which a peer with one relay never reaches.
    observed = [str(addr) for addr in manager.addrs(min_observers=1)] if manager else []
    return punch_addrs(observed, host.listen_addrs(), host.advertised_addrs())


def _listen_source(host: P2PHost, family: str, quic: bool = False) -> tuple[str, int] | None:
    """The (ip, port) of our TCP (or QUIC) listener of ``family``: hole-punch dials leave from
    it."""
    parse = _quic_endpoint if quic else _tcp_endpoint
    for endpoint in map(parse, host.listen_addrs()):
        if endpoint is not None and endpoint[0] == family:
            return str(endpoint[1]), endpoint[2]
    return None


async def _dial_one(host: P2PHost, peer: str, addr: str, *, punch: bool, initiator: bool) -> None:
    swarm: Any = host.libp2p_host.get_network()
    target = multiaddr.Multiaddr(addr)
    quic = _quic_endpoint(addr) is not None
    source = _listen_source(host, addr.split("/")[1], quic) if punch else None
    if quic:
        # QUIC's client is whoever dials (no simultaneous open to settle roles); a punch dial
        # without a QUIC listener to leave from is a plain dial, which a NAT will not let in.
        await swarm._dial_addr_single_attempt(target, ID.from_base58(peer), source)
    elif initiator:
        # One attempt, no library retries: DCUtR runs its own rounds.
        await swarm._dial_addr_single_attempt(target, ID.from_base58(peer), source)
    else:
        await swarm.dial_addr_as_responder(target, ID.from_base58(peer), source)


async def dial_direct(
    host: P2PHost, peer: str, addrs: Sequence[str], *, punch: bool, initiator: bool = True
) -> bool:
    """Dial ``peer`` at its TCP and QUIC ``addrs`` (the first :data:`MAX_DIAL_ADDRS`) all at
    once, each dial from our listen port if ``punch``, upgrading TCP as the security
    ``initiator`` or the responder. QUIC addresses in a punch: the ``initiator`` (the peer that
    dialled through the relay) dials them, the other side sends them punch packets instead
    (:mod:`~p2pchat.node.p2p.quic_punch`). Whether a direct connection to ``peer`` is open
    afterwards (ours, or the peer's dial that arrived meanwhile). Never raises for a failed
    dial."""
    targets = punch_targets(addrs)[:MAX_DIAL_ADDRS]
    packets = [addr for addr in targets if punch and not initiator and _quic_endpoint(addr)]
    targets = [addr for addr in targets if addr not in packets]

    async def attempt(addr: str, done: trio.CancelScope) -> None:
        try:
            await _dial_one(host, peer, addr, punch=punch, initiator=initiator)
        except Exception as error:  # refused, unreachable, wrong peer, handshake failed: next
            # address. The host layer's one mapping of the library's dial failures, which come
            # from every layer (swarm, transport, Noise, muxer) and are not all its own types.
            log.debug("hole punch dial failed: %s: %s", addr, error)
            return
        done.cancel()

    async def send_packets(done: trio.CancelScope) -> None:
        endpoints = [_quic_endpoint(addr) for addr in packets]
        where = [(str(end[1]), end[2]) for end in endpoints if end is not None]
        transports = host.libp2p_host.get_network().transport_manager.get_transports()
        await quic_punch.send_punch_packets(
            transports, where, lambda: has_direct_connection(host, peer)
        )
        if has_direct_connection(host, peer):
            done.cancel()

    with trio.move_on_after(DIAL_TIMEOUT) as scope, outbound.direct_dials():
        async with trio.open_nursery() as nursery:
            for addr in targets:
                nursery.start_soon(attempt, addr, scope)
            if packets:
                nursery.start_soon(send_packets, scope)
    return has_direct_connection(host, peer)
