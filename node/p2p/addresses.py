"""Address helpers for the host layer: what a node advertises, and listen-address bookkeeping.

py-libp2p advertises an unspecified listen address (``/ip4/0.0.0.0/...``) as it is, which no peer
can dial. Like go-libp2p, we advertise each interface address instead, unless the operator set
explicit announce addresses.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Sequence

import ifaddr
import multiaddr

_UNSPECIFIED = {"ip4": "0.0.0.0", "ip6": "::"}


def interface_ips() -> dict[str, list[str]]:
    """The machine's interface addresses by family (``ip4`` / ``ip6``), link-local excluded."""
    found: dict[str, list[str]] = {"ip4": [], "ip6": []}
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                found["ip4"].append(ip.ip)
            else:
                address = ipaddress.IPv6Address(ip.ip[0])
                if not address.is_link_local:
                    found["ip6"].append(str(address))
    return {family: sorted(set(ips)) for family, ips in found.items()}


def expand_unspecified(
    addrs: Iterable[multiaddr.Multiaddr], ips_by_family: dict[str, list[str]]
) -> list[multiaddr.Multiaddr]:
    """Replace each ``0.0.0.0`` / ``::`` address by one address per interface IP of its family.

    Pure: the interface IPs are passed in, so this is testable with vectors.
    """
    result: list[multiaddr.Multiaddr] = []
    seen: set[str] = set()
    for addr in addrs:
        text = str(addr)
        expanded = [text]
        for family, unspecified in _UNSPECIFIED.items():
            prefix = f"/{family}/{unspecified}/"
            if text.startswith(prefix):
                rest = text[len(prefix) :]
                expanded = [f"/{family}/{ip}/{rest}" for ip in ips_by_family.get(family, [])]
        for item in expanded:
            if item not in seen:
                seen.add(item)
                result.append(multiaddr.Multiaddr(item))
    return result


ADVERTISED_REFRESH_SECONDS = 30.0


def advertised_addrs_factory(
    announce: Sequence[str], clock: Callable[[], float] = time.monotonic
) -> Callable[[list[multiaddr.Multiaddr]], list[multiaddr.Multiaddr]]:
    """The address factory given to the host: fixed announce addresses, or expanded listen ones.

    py-libp2p calls it for every pubsub RPC it sends (to check its signed peer record), so the
    result is computed at most every :data:`ADVERTISED_REFRESH_SECONDS`, or when the listen
    addresses change: enumerating interfaces each time cost a quarter of a relaying peer's CPU.
    """
    fixed = [multiaddr.Multiaddr(text) for text in announce]
    last_candidates: list[multiaddr.Multiaddr] = []
    advertised: list[multiaddr.Multiaddr] = []
    computed_at = float("-inf")

    def factory(candidates: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
        nonlocal last_candidates, advertised, computed_at
        if fixed:
            return list(fixed)
        now = clock()
        if now - computed_at >= ADVERTISED_REFRESH_SECONDS or candidates != last_candidates:
            advertised = expand_unspecified(candidates, interface_ips())
            last_candidates, computed_at = list(candidates), now
        return list(advertised)

    return factory
