"""Safety numbers: what two peers read to each other (out of band) to check that each talks to
the other's key, not to somebody in between.

The construction is Signal's numeric fingerprint (version 0), with the PeerId as the stable
identifier and the libp2p public identity key (as the PeerId inlines it, serialized) as the key:

- each side's fingerprint: ``h = SHA-512(0x0000 || key || peer_id_bytes)``, then
  :data:`ITERATIONS` times ``h = SHA-512(h || key)``; the first 30 bytes of ``h``, as six 5-byte
  big-endian numbers, each mod 100000, written as 5 digits: 30 digits;
- the safety number: the two fingerprints, the smaller first (so both peers compute the same
  number), 60 digits shown in 12 groups of 5.

SHA-512 comes from :mod:`hashlib`; nothing here is a primitive of its own. A PeerId whose key it
does not inline (RSA) has no safety number here (:class:`NoKey`).
"""

from __future__ import annotations

import hashlib

from p2pchat.node.p2p.peer_keys import peer_id_bytes, public_key_bytes

VERSION = b"\x00\x00"
ITERATIONS = 5200  # as Signal's: makes a search for a colliding key costlier
DIGITS = 60
GROUP = 5


class NoKey(ValueError):
    """The PeerId does not inline its public key (or is not a PeerId)."""


def fingerprint(peer_id: str) -> str:
    """The 30-digit fingerprint of one peer's identity key.

    Raises:
        NoKey: ``peer_id`` does not inline its key.
    """
    key = public_key_bytes(peer_id)
    if key is None:
        raise NoKey(f"{peer_id} does not carry its public key (an RSA PeerId?)")
    digest = hashlib.sha512(VERSION + key + peer_id_bytes(peer_id)).digest()
    for _ in range(ITERATIONS):
        digest = hashlib.sha512(digest + key).digest()
    chunks = (int.from_bytes(digest[i : i + 5], "big") % 100_000 for i in range(0, 30, 5))
    return "".join(f"{chunk:05d}" for chunk in chunks)


def safety_number(me: str, other: str) -> str:
    """The 60-digit safety number of ``me`` and ``other``, the same whichever side computes it.

    Raises:
        NoKey: one of the PeerIds does not inline its key.
    """
    return "".join(sorted((fingerprint(me), fingerprint(other))))


def grouped(number: str) -> str:
    """``number`` in groups of 5 digits, 6 to a line: how people read it to each other."""
    groups = [number[i : i + GROUP] for i in range(0, len(number), GROUP)]
    return "\n".join(" ".join(groups[i : i + 6]) for i in range(0, len(groups), 6))
