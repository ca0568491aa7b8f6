"""The node's local RocksDB store (rocksdict), opened once per process and closed on shutdown.

The node's own data (the schema key, the history: :mod:`p2pchat.node.history`) lives under
prefixes of its own. Roles never see the database: each small thing a role keeps (the chat
peer's name, its queue of pending messages) lives in a :class:`Namespace`, the keys
``<namespace>/<key>`` seen through :class:`KeyValue`. Opening fails with one clear line when the
directory is locked by another p2pchat process, unreadable, or not a RocksDB store.

Encryption at rest (:mod:`p2pchat.node.atrest`): when the data dir has a passphrase, the store
is opened with its keys, and the values of every namespace named in :data:`SEALED_NAMESPACES`
are sealed (ChaCha20-Poly1305, the full key ``<namespace>/<key>`` as associated data) by
:class:`Namespace` itself: a role that keeps private bodies (message texts, ratchet state) puts
them in such a namespace and gets encryption by using it, nothing else. To seal a new
namespace, add its name to :data:`SEALED_NAMESPACES` (``p2pchat passphrase set|remove``
converts what exists through the same list). Keys stay readable (they are what lookups and
ordering use), so a role must not put secrets in keys. A value that does not open (tampered,
moved to another key) reads as absent. The history seals its message bodies the same way
(:mod:`p2pchat.node.history`); :attr:`Namespace.pickle_key` is the one key to pickle ratchet
state with (:func:`p2pchat.node.atrest.pickle_key`).
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from p2pchat.node.atrest import AtRestKeys, SealError, is_sealed, pickle_key
from p2pchat.node.errors import StoreError
from rocksdict import Options, Rdict

SCHEMA_KEY = b"meta/schema"
SCHEMA_VERSION = b"1"

# Key prefixes the node keeps its own data under (the schema here, the history in
# node/history.py): no role's namespace may be one of them.
NODE_NAMESPACES = frozenset({"meta", "hist", "hid", "hcnt", "hmeta", "hsnd", "hscnt"})

# The namespaces whose values are private bodies, sealed when the data dir has a passphrase:
# "dm" (the Olm account and sessions, the DMs waiting: roles/peer/dm_crypto.py, dm_waiting.py),
# "pend" (room messages waiting to be published: roles/peer/outbox.py).
SEALED_NAMESPACES = frozenset({"dm", "dmlog", "pend", "private"})


class KeyValue(Protocol):
    """The keys of one namespace, what a role keeps in the node's store: bytes keys and
    values, relative to the namespace; writes are durable once the node closes the store."""

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key``, or None."""

    def put(self, key: bytes, value: bytes) -> None:
        """Set ``key`` to ``value``."""

    def delete(self, key: bytes) -> None:
        """Remove ``key`` (nothing happens if it is absent)."""

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key starting with ``prefix``, in byte order of the keys."""

    @property
    def pickle_key(self) -> bytes:
        """The key to pickle secret ratchet state with (see the module docstring)."""


class Namespace:
    """A :class:`KeyValue` over the keys ``<name>/...`` of a store's database.

    The name is part of the on-disk key: ``Namespace(db, "peer").put(b"name", v)`` writes
    ``peer/name``, so what a role wrote before it used namespaces reads back unchanged.
    """

    def __init__(self, db: Rdict, name: str, keys: AtRestKeys | None = None) -> None:
        """Raises ValueError for a name that is empty, holds ``/`` or NUL, or is the node's
        (:data:`NODE_NAMESPACES`): one namespace never reaches into another's keys. With
        ``keys``, the values of a namespace in :data:`SEALED_NAMESPACES` are sealed."""
        if not name or "/" in name or "\x00" in name:
            raise ValueError(f"namespace {name!r}: must be non-empty, without '/' or NUL")
        if name in NODE_NAMESPACES:
            raise ValueError(f"namespace {name!r} holds the node's own data")
        self._db = db
        self._prefix = name.encode() + b"/"
        self._sealed = name in SEALED_NAMESPACES
        self._keys = keys if self._sealed else None
        self.pickle_key = pickle_key(keys)

    def _open(self, full_key: bytes, value: bytes | None) -> bytes | None:
        if value is None or not self._sealed:
            return value
        if self._keys is None:  # sealed, and no keys: unreadable (the node asks for them first)
            return None if is_sealed(value) else value
        try:
            return self._keys.open(full_key, value)
        except SealError:
            return None  # tampered, moved, or left plaintext: as good as absent

    def get(self, key: bytes) -> bytes | None:
        full_key = self._prefix + key
        return self._open(full_key, self._db.get(full_key))

    def put(self, key: bytes, value: bytes) -> None:
        full_key = self._prefix + key
        self._db[full_key] = value if self._keys is None else self._keys.seal(full_key, value)

    def delete(self, key: bytes) -> None:
        del self._db[self._prefix + key]

    def items(self, prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        start = self._prefix + prefix
        skip = len(self._prefix)
        for key, value in itertools.takewhile(
            lambda item: item[0].startswith(start), self._db.items(from_key=start)
        ):
            opened = self._open(key, value)
            if opened is not None:
                yield key[skip:], opened


def _make_private(path: Path) -> None:
    """Create directory ``path`` 0700, or remove the group/other bits it has.

    Raises:
        StoreError: it cannot be created, or is open to others and cannot be changed.
    """
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as error:
        raise StoreError(f"store {path}: cannot open: {error.strerror or error}") from None
    if mode & 0o077:
        try:
            path.chmod(mode & ~0o077)
        except OSError as error:
            raise StoreError(
                f"store {path} is open to others (mode {mode:03o}) and cannot be made private: "
                f"{error.strerror or error}; run the node as its owner, or have the owner run: "
                f"chmod go-rwx {path}"
            ) from None


class Store:
    """A RocksDB database in ``<data dir>/store`` (a private directory); bytes keys and
    values."""

    def __init__(self, path: Path, db: Rdict, keys: AtRestKeys | None = None) -> None:
        self.path = path
        self.db = db
        # The data dir's keys when it has a passphrase (sealed namespaces, history bodies).
        self.keys = keys
        self._closed = False

    @classmethod
    def open(cls, path: Path, keys: AtRestKeys | None = None) -> Store:
        """Open (creating if needed) the store at ``path``, a private directory: created 0700,
        or made so if it has group/other bits (RocksDB would create it 0755 under the usual
        umask). The files RocksDB writes in it follow the process umask (the node sets one that
        keeps them private: :func:`p2pchat.node.runtime.run_node`).

        Raises:
            StoreError: locked by another process, no permission, open to others and not this
                user's to make private, corrupt, or a newer schema.
        """
        _make_private(path)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        try:
            db = Rdict(str(path), options)
        except Exception as error:
            text = str(error)
            if "lock" in text.lower():
                reason = "in use by another p2pchat process (one process per data dir)"
            elif "permission" in text.lower():
                reason = "permission denied"
            else:
                reason = text.splitlines()[0] if text else type(error).__name__
            raise StoreError(f"store {path}: cannot open: {reason}") from None
        schema = db.get(SCHEMA_KEY)
        if schema is None:
            db[SCHEMA_KEY] = SCHEMA_VERSION
        elif schema != SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"store {path}: schema {schema.decode(errors='replace')} is not supported by "
                f"this version (expects {SCHEMA_VERSION.decode()})"
            )
        return cls(path, db, keys)

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.db.flush(wait=True)
            self.db.close()

    def namespace(self, name: str) -> Namespace:
        """The keys ``<name>/...`` of this store, for a role (see :class:`Namespace`)."""
        return Namespace(self.db, name, self.keys)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def size_bytes(self) -> int:
        """Bytes the store occupies on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
