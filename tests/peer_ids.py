"""Fresh PeerIds for tests that check a bound against peers who cost nothing to invent."""

from __future__ import annotations

import os
from collections.abc import Iterator

import base58

# An Ed25519 public key as a PeerId: identity multihash (0x00, length 36) of the protobuf
# PublicKey {Type: Ed25519 (1), Data: 32 bytes}. Its text starts with "12D3KooW".
_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def fresh_peer_id() -> str:
    """A PeerId nobody has used: a random Ed25519 key's, as text."""
    return base58.b58encode(_PREFIX + os.urandom(32)).decode()


def fresh_peer_ids(count: int) -> Iterator[str]:
    """``count`` fresh PeerIds."""
    for _ in range(count):
        yield fresh_peer_id()
