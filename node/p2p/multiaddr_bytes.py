"""Multiaddrs in their binary form, for records other peers publish (universal-connectivity's
peer discovery carries binary multiaddrs): conversions that never raise on hostile bytes, and
the check of what an announced address may make this node dial.
"""

from __future__ import annotations

import ipaddress

import multiaddr

DIALABLE_TRANSPORTS = ("tcp", "ws")
"""What this node can dial from an announced address: TCP, and WebSocket over it; QUIC,
WebTransport and WebRTC addresses are skipped."""


def to_bytes(addr: str) -> bytes | None:
    """The binary form of the multiaddr text ``addr``; None if it is not one."""
    try:
        return bytes(multiaddr.Multiaddr(addr).to_bytes())
    except Exception:  # the multiaddr parser raises many types
        return None


def from_bytes(data: bytes) -> str | None:
    """The text form of the binary multiaddr ``data``; None if it is not one (never raises)."""
    try:
        return str(multiaddr.Multiaddr(data))
    except Exception:  # hostile bytes: the decoder raises many types
        return None


def dial_target(addr: str, peer_id: str, *, private: bool) -> str | None:
    """``addr`` as an address to dial ``peer_id`` at (``/p2p/<peer_id>`` appended), or None
    when it is not one this node dials: not ``/ip4|ip6/<ip>/tcp/<port>[/ws]``, a relayed
    address, naming another peer, or (unless ``private``) a loopback, private, link-local or
    otherwise non-public IP (an announcement must not aim this node at its own network)."""
    try:
        tokens = str(multiaddr.Multiaddr(addr)).split("/")[1:]
    except Exception:  # the multiaddr parser raises many types
        return None
    if len(tokens) >= 2 and tokens[-2] == "p2p":
        if tokens[-1] != peer_id:
            return None
        tokens = tokens[:-2]
    shape = tokens[0:1] + tokens[2:3] + tokens[4:]
    if shape not in (["ip4", "tcp"], ["ip6", "tcp"], ["ip4", "tcp", "ws"], ["ip6", "tcp", "ws"]):
        return None
    try:
        ip = ipaddress.ip_address(tokens[1])
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast:
        return None
    if not private and not ip.is_global:
        return None
    return "/" + "/".join(tokens) + f"/p2p/{peer_id}"
