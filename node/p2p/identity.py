"""The node's persistent Ed25519 identity, and the privacy of the data dir that holds it.

The key is stored as a libp2p protobuf ``PrivateKey`` (the same encoding go-libp2p and js-libp2p
use) in ``<data dir>/identity.key``, created once with mode 0600. A file that cannot be read back
as an Ed25519 key is an error: silently replacing it would change the node's PeerId and orphan
every record other peers hold about it. So is a key file with any group or other permission bit:
the key is the node's whole identity, and a key others could read is no longer its own.

With a passphrase (:mod:`p2pchat.node.atrest`) the file holds the same bytes sealed
(ChaCha20-Poly1305 under the data dir's key, the file name as associated data); a sealed key
without the data dir's keys is one clear error, never a new identity.

Loading the identity is the first thing every command does with the data dir, so it also makes
the data dir private (:func:`make_private`): the history, logs, input history and exports in it
are nobody else's business, whatever mode the directory was created with.
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
from p2pchat.node.atrest import AtRestKeys, SealError, is_sealed
from p2pchat.node.errors import IdentityError

IDENTITY_FILE = "identity.key"
# The node's store directory under the data dir (node/config.py's STORE_DIR; the host layer may
# not import the config): like the data dir, it must end up private or the node does not start.
STORE_DIR = "store"
# The associated data of the sealed key: a sealed record of another kind does not open here.
_SEAL_CONTEXT = IDENTITY_FILE.encode()
# Group and other permission bits: none may be set on the data dir, the store or the key.
_SHARED_BITS = 0o077


@dataclass(frozen=True)
class Tightened:
    """What :func:`make_private` changed: ``was_mode`` is the data dir's mode before (None: it
    was private already), ``entries`` how many directories and files under it lost group/other
    bits, ``left`` how many could not be changed (not this user's: harmless while the data dir
    itself is private, since nobody else can reach them)."""

    data_dir: Path
    was_mode: int | None
    entries: int
    left: int
    # The data dir's mode when it stays open to others: root owns it (a volume root), so only
    # what is in it could be made private.
    left_open: int | None = None

    @property
    def changed(self) -> bool:
        """Whether anything was tightened or left open (then the node says so, once)."""
        return self.was_mode is not None or self.entries > 0 or self.left_open is not None


@dataclass(frozen=True)
class Identity:
    """A loaded identity: the key pair and the PeerId derived from it."""

    key_pair: KeyPair
    peer_id: ID
    path: Path
    created: bool
    # What loading it made private in the data dir (None: not loaded from a data dir).
    tightened: Tightened | None = None
    # The data dir's keys when it has a passphrase (the node opens its store with them).
    at_rest: AtRestKeys | None = None

    @property
    def peer_id_text(self) -> str:
        """The PeerId in its usual base58 text form (``12D3KooW...``)."""
        return str(self.peer_id.to_base58())


def _decode(path: Path, data: bytes, keys: AtRestKeys | None = None) -> KeyPair:
    if is_sealed(data):
        if keys is None:
            raise IdentityError(
                f"identity file {path} is encrypted and the data dir's passphrase was not given"
            )
        try:
            data = keys.open(_SEAL_CONTEXT, data)
        except SealError:
            raise IdentityError(
                f"identity file {path} does not open with the data dir's key (damaged, or "
                "another data dir's); restore it from a backup"
            ) from None
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


def _encode(key_pair: KeyPair, keys: AtRestKeys | None) -> bytes:
    data = key_pair.private_key.serialize()
    return data if keys is None else keys.seal(_SEAL_CONTEXT, data)


def _write(path: Path, data: bytes, *, replace: bool = False) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # Written to a private temp file, synced, then linked into place: a crash never leaves a
    # half-written key, and two processes racing to create it end up with the same one.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _create(path: Path, keys: AtRestKeys | None) -> KeyPair:
    key_pair = create_new_key_pair()
    _write(path, _encode(key_pair, keys))
    return key_pair


def reseal_identity(data_dir: Path, keys: AtRestKeys, seal: bool) -> bool:
    """Rewrite ``data_dir``'s identity key sealed with ``keys`` (``seal``) or in plaintext;
    False if there is none. The same key either way: the PeerId does not change.

    Raises:
        IdentityError: the key cannot be read or written.
    """
    path = data_dir / IDENTITY_FILE
    try:
        if not path.exists():
            return False
        key_pair = _decode(path, path.read_bytes(), keys)
        _write(path, _encode(key_pair, keys if seal else None), replace=True)
    except OSError as exc:
        raise IdentityError(f"identity file {path}: {exc.strerror or exc}") from None
    return True


def _mode_text(mode: int) -> str:
    return f"{mode:03o}"


def _refuse_shared(what: str, path: Path, mode: int, error: OSError) -> IdentityError:
    """The one line for a directory that must be private and cannot be made so."""
    try:
        owner = f"owned by uid {path.stat().st_uid}, this process runs as uid {os.geteuid()}"
    except OSError:
        owner = error.strerror or str(error)
    return IdentityError(
        f"{what} {path} is open to others (mode {_mode_text(mode)}) and cannot be made private "
        f"({owner}); run the node as its owner, or have the owner run: chmod go-rwx {path}"
    )


def _tighten_required(what: str, path: Path) -> int | None:
    """Remove group/other bits from directory ``path``; its mode before if it had any, None if
    it was private already or does not exist. Raises IdentityError if it cannot be changed."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IdentityError(f"{what} {path}: {exc.strerror or exc}") from None
    if not mode & _SHARED_BITS:
        return None
    try:
        path.chmod(mode & ~_SHARED_BITS)
    except OSError as exc:
        raise _refuse_shared(what, path, mode, exc) from None
    return mode


def make_private(data_dir: Path) -> Tightened:
    """Make the existing directory ``data_dir`` and everything the node keeps in it unreadable
    by group and others, whatever modes they were created with (an older p2pchat, a data dir
    made by hand or by a package with 0755): the directory and its ``store`` directory lose
    their group/other bits (0755 becomes 0700), and so does every directory and regular file
    under them that this user owns. Symbolic links are neither followed nor changed. The
    identity key is left as it is: a shared key is refused by :func:`load_or_create_identity`,
    never quietly fixed, since others may already have read it.

    The data dir is tightened first, so nobody else can reach what lies under it while the rest
    is changed; what cannot be changed under it (another user's file) is only counted.

    Raises:
        IdentityError: the data dir or its store directory is open to others and cannot be made
            private (this user does not own it; a data dir root owns and lets this user write
            in is left open, and :attr:`Tightened.left_open` says so).
    """
    left_open: int | None = None
    try:
        was_mode = _tighten_required("data dir", data_dir)
    except IdentityError:
        # A directory root owns and lets this user write (a Kubernetes volume root with
        # fsGroup, root:<group> 2775) cannot be changed, but root could read everything anyway:
        # what the node keeps in it is made and created private, and the node says so. Owned by
        # another user, that user could swap what is in it: refused.
        mode = _root_owned_open_mode(data_dir)
        if mode is None:
            raise
        was_mode, left_open = None, mode
    entries = 0 if _tighten_required("store", data_dir / STORE_DIR) is None else 1
    left = 0
    for root, directories, files in os.walk(data_dir):
        base = Path(root)
        for name in (*directories, *files):
            entry = base / name
            if base == data_dir and name in (IDENTITY_FILE, STORE_DIR):
                continue  # the key is checked, never changed; the store was done above
            if name.startswith(f".{IDENTITY_FILE}."):
                continue  # a key being created by a racing process: written 0600
            try:
                info = entry.lstat()
                mode = stat.S_IMODE(info.st_mode)
                kind = stat.S_IFMT(info.st_mode)
                if kind not in (stat.S_IFDIR, stat.S_IFREG) or not mode & _SHARED_BITS:
                    continue
                entry.chmod(mode & ~_SHARED_BITS)
                entries += 1
            except FileNotFoundError:
                continue  # removed meanwhile (a store compaction): nothing left to protect
            except OSError:  # another user's (EPERM): out of reach behind the private data dir
                left += 1
    return Tightened(
        data_dir=data_dir, was_mode=was_mode, entries=entries, left=left, left_open=left_open
    )


def _root_owned_open_mode(path: Path) -> int | None:
    """The mode of directory ``path`` if root owns it and this (other) user may write in it,
    else None."""
    try:
        info = path.stat()
    except OSError:
        return None
    if info.st_uid != 0 or os.geteuid() == 0 or not os.access(path, os.W_OK | os.X_OK):
        return None
    return stat.S_IMODE(info.st_mode)


def load_or_create_identity(data_dir: Path, keys: AtRestKeys | None = None) -> Identity:
    """Load the identity from ``data_dir``, creating the directory (0700) and key on first use,
    and make the data dir private (:func:`make_private`; what it changed is
    :attr:`Identity.tightened`, for the node to log). With ``keys`` (the data dir has a
    passphrase) a new key is written sealed, and a sealed key is opened.

    Raises:
        IdentityError: the directory or key cannot be created or read, the data dir cannot be
            made private, the key is corrupt, or the key file has any group or other bit set.
    """
    path = data_dir / IDENTITY_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise IdentityError(f"data dir {data_dir}: cannot create: {exc.strerror or exc}") from None
    tightened = make_private(data_dir)
    created = False
    try:
        if not path.exists():
            try:
                key_pair = _create(path, keys)
                created = True
            except FileExistsError:  # another process created it first: use theirs
                key_pair = _decode(path, path.read_bytes(), keys)
        else:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & _SHARED_BITS:
                # Any group or other bit, 0640 as much as 0644: the key is this node alone.
                access = "readable by" if mode & 0o044 else "open to"
                raise IdentityError(
                    f"identity file {path} is {access} others (mode {_mode_text(mode)}); "
                    f"run: chmod 600 {path}"
                )
            key_pair = _decode(path, path.read_bytes(), keys)
    except OSError as exc:
        raise IdentityError(f"identity file {path}: {exc.strerror or exc}") from None
    return Identity(
        key_pair=key_pair,
        peer_id=ID.from_pubkey(key_pair.public_key),
        path=path,
        created=created,
        tightened=tightened,
        at_rest=keys,
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
