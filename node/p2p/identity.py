"""The node's persistent Ed25519 identity.

The key is stored as a libp2p protobuf ``PrivateKey`` (the same encoding go-libp2p and js-libp2p
use) in ``<data dir>/identity.key``, created once with mode 0600. A file that cannot be read back
as an Ed25519 key is an error: silently replacing it would change the node's PeerId and orphan
every record other peers hold about it.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID
from p2pchat.node.errors import IdentityError

IDENTITY_FILE = "identity.key"


@dataclass(frozen=True)
class Identity:
    """A loaded identity: the key pair and the PeerId derived from it."""

    key_pair: KeyPair
    peer_id: ID
    path: Path
    created: bool

    @property
    def peer_id_text(self) -> str:
        """The PeerId in its usual base58 text form (``12D3KooW...``)."""
        return str(self.peer_id.to_base58())


def _decode(path: Path, data: bytes) -> KeyPair:
    try:
        private_key = deserialize_private_key(data)
    except Exception:
        raise IdentityError(
            f"identity file {path} is corrupt (not a libp2p private key); "
            "restore it from a backup or move it away to create a new identity"
        ) from None
    if private_key.get_type() != KeyType.Ed25519:
        raise IdentityError(
            f"identity file {path} holds a {private_key.get_type().name} key; "
            "p2pchat needs an Ed25519 key"
        )
    return KeyPair(private_key, private_key.get_public_key())


def _create(path: Path) -> KeyPair:
    key_pair = create_new_key_pair()
    data = key_pair.private_key.serialize()
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Written to a private temp file, synced, then linked into place: a crash never leaves a
    # half-written key, and two processes racing to create it end up with the same one.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return key_pair


def load_or_create_identity(data_dir: Path) -> Identity:
    """Load the identity from ``data_dir``, creating the directory and key on first use.

    Raises:
        IdentityError: the directory or key cannot be created or read, or the key is corrupt.
    """
    path = data_dir / IDENTITY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"data dir {data_dir}: cannot create: {exc.strerror or exc}") from None
    created = False
    try:
        if not path.exists():
            try:
                key_pair = _create(path)
                created = True
            except FileExistsError:  # another process created it first: use theirs
                key_pair = _decode(path, path.read_bytes())
        else:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o007:
                raise IdentityError(
                    f"identity file {path} is readable by others (mode {mode:o}); "
                    f"run: chmod 600 {path}"
                )
            key_pair = _decode(path, path.read_bytes())
    except OSError as exc:
        raise IdentityError(f"identity file {path}: {exc.strerror or exc}") from None
    return Identity(
        key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key), path=path, created=created
    )


def ephemeral_identity() -> Identity:
    """A fresh identity that lives in memory only (for helper hosts such as AutoNAT's
    dial-back dialer, which must not look like this node)."""
    key_pair = create_new_key_pair()
    return Identity(
        key_pair=key_pair,
        peer_id=ID.from_pubkey(key_pair.public_key),
        path=Path("/dev/null"),  # never read or written
        created=True,
    )


def peer_id_text(raw: bytes) -> str:
    """The text form of a binary PeerId (as protocols carry it).

    Raises:
        ValueError: ``raw`` is not a PeerId.
    """
    if not _is_multihash(raw):
        raise ValueError("not a PeerId")
    return str(ID(raw).to_base58())


def peer_id_bytes(text: str) -> bytes:
    """The binary form of a PeerId given as text."""
    return bytes(ID.from_base58(text).to_bytes())


def _is_multihash(raw: bytes) -> bool:
    # identity (0x00) or sha2-256 (0x12) multihash with a one-byte length that matches
    return len(raw) >= 2 and raw[0] in (0x00, 0x12) and raw[1] == len(raw) - 2
