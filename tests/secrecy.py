"""Helpers of the secrecy proofs (tests/test_secrecy.py): a node started with the test wiretap
(tests/secrecy_tap), the stream bytes it recorded, the frames of one protocol in them, and a
snapshot's Olm state read with vodozemac."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import vodozemac
from p2pchat.node.store import Store
from p2pchat.node.wire.framing import FrameDecoder

from tests.conftest import node_env

TAP_DIR = Path(__file__).parent / "secrecy_tap"
NO_PASSPHRASE_PICKLE_KEY = bytes(32)  # the store's fixed pickle key without a passphrase


def tapped_env(tap: Path, **extra: str) -> dict[str, str]:
    """A node's environment with the wiretap recording into ``tap``."""
    return node_env(PYTHONPATH=str(TAP_DIR), SECRECY_TAP=str(tap), **extra)


@dataclass
class TappedStream:
    serial: int
    protocol: str | None
    peer: str
    read: bytearray  # what the protocol read (after its negotiation)
    written: bytearray
    raw: bytearray  # everything, negotiation included, both ways
    remote_spoke_first: bool = False  # its first bytes after the negotiation were read


def streams(tap: Path) -> list[TappedStream]:
    """Every stream the tap recorded, in the order each was first used."""
    found: dict[int, TappedStream] = {}
    if not tap.exists():
        return []
    for line in tap.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line being written as the file is read
        held = found.setdefault(
            entry["s"],
            TappedStream(entry["s"], None, entry["peer"], bytearray(), bytearray(), bytearray()),
        )
        data = bytes.fromhex(entry["b"])
        held.raw.extend(data)
        if entry["p"] is not None:  # negotiated: the protocol's own bytes
            if held.protocol is None:
                held.remote_spoke_first = entry["d"] == "r"
            held.protocol = entry["p"]
            (held.read if entry["d"] == "r" else held.written).extend(data)
    return list(found.values())


def all_bytes(tap: Path) -> bytes:
    """Everything read and written on every stream, concatenated."""
    return b"".join(bytes(s.raw) for s in streams(tap))


def frames_read(tap: Path, protocol: str, limit: int = 1 << 20) -> list[tuple[str, bytes]]:
    """(peer, frame) of every length-prefixed frame read on ``protocol``'s streams where the
    remote spoke first (for a request-answer protocol: the requests it sent), in order. The
    multistream-select negotiation, recorded before the protocol is known, is left out."""
    out: list[tuple[str, bytes]] = []
    for stream in streams(tap):
        if stream.protocol != protocol or not stream.remote_spoke_first:
            continue
        out += [(stream.peer, f) for f in FrameDecoder(limit).feed(bytes(stream.read))]
    return out


def olm_state(data_dir: Path) -> tuple[vodozemac.Account, list[vodozemac.Session]]:
    """The Olm account and sessions kept in a (stopped) node's data dir, as vodozemac reads
    them: what an attacker holding a copy of the data dir (no passphrase) holds."""
    store = Store.open(data_dir / "store")
    try:
        keys = store.namespace("dm")
        account = vodozemac.Account.from_pickle(
            bytes(keys.get(b"account") or b"").decode(), NO_PASSPHRASE_PICKLE_KEY
        )
        sessions = [
            vodozemac.Session.from_pickle(
                value[struct.calcsize(">Q") :].decode(), NO_PASSPHRASE_PICKLE_KEY
            )
            for _, value in keys.items(b"s/")
        ]
    finally:
        store.close()
    return account, sessions


def decrypting(
    sessions: list[vodozemac.Session], olm_type: int, ciphertext: bytes
) -> Iterator[bytes]:
    """The plaintext of every session of ``sessions`` that decrypts the message (none, or one)."""
    for session in sessions:
        message = vodozemac.AnyOlmMessage.from_parts(olm_type, ciphertext)
        try:
            yield session.decrypt(message)
        except ValueError:
            continue
