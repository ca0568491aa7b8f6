"""Address groups: the unit per-IP limits count by (IPv4 address, IPv6 /64 by default).

One IPv4 address is what one host usually has; one IPv6 host usually has a whole /64 (SLAAC,
privacy addresses), so limiting IPv6 per exact address limits nothing. Every per-IP limit of
the node (connections, relay reservations, AutoNAT) counts by :func:`address_group`, with the
prefix lengths of its config (``ipv4_prefix``, ``ipv6_prefix``).
"""

from __future__ import annotations

import ipaddress

IPV4_PREFIX = 32
IPV6_PREFIX = 64


def address_group(ip: str, ipv4_prefix: int = IPV4_PREFIX, ipv6_prefix: int = IPV6_PREFIX) -> str:
    """The network ``ip`` counts under, as text (``"192.0.2.7/32"``, ``"2001:db8::/64"``).
    An IPv4-mapped IPv6 address counts as its IPv4 address. Raises ValueError for a string that
    is not an IP address."""
    address = ipaddress.ip_address(ip.strip("[]"))
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = ipv4_prefix if address.version == 4 else ipv6_prefix
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
