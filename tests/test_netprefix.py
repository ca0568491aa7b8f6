"""Per-IP limits count IPv4 by address and IPv6 by /64 (configurable)."""

from __future__ import annotations

import pytest
from p2pchat.node.netprefix import address_group


def test_ipv4_counts_by_address_and_ipv6_by_its_64() -> None:
    assert address_group("192.0.2.7") == "192.0.2.7/32"
    assert address_group("2001:db8:1:2:aaaa::1") == address_group("2001:db8:1:2:bbbb::9")
    assert address_group("2001:db8:1:2::1") != address_group("2001:db8:1:3::1")
    assert address_group("2001:db8:1:2::1") == "2001:db8:1:2::/64"


def test_prefixes_are_configurable_and_mapped_addresses_count_as_ipv4() -> None:
    assert address_group("192.0.2.7", ipv4_prefix=24) == "192.0.2.0/24"
    assert address_group("2001:db8:1:2::1", ipv6_prefix=48) == "2001:db8:1::/48"
    assert address_group("::ffff:192.0.2.7") == "192.0.2.7/32"
    assert address_group("[2001:db8::1]") == "2001:db8::/64"


def test_not_an_address_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        address_group("example.org")
