"""The node's local RocksDB store (rocksdict), opened once per process and closed on shutdown.

Roles keep their data under their own key prefixes. Opening fails with one clear line when the
directory is locked by another p2pchat process, unreadable, or not a RocksDB store.
"""

from __future__ import annotations

from pathlib import Path

from p2pchat.node.errors import StoreError
from rocksdict import Options, Rdict

SCHEMA_KEY = b"meta/schema"
SCHEMA_VERSION = b"1"


class Store:
    """A RocksDB database in ``<data dir>/store``; bytes keys and values."""

    def __init__(self, path: Path, db: Rdict) -> None:
        self.path = path
        self.db = db
        self._closed = False

    @classmethod
    def open(cls, path: Path) -> Store:
        """Open (creating if needed) the store at ``path``.

        Raises:
            StoreError: locked by another process, no permission, corrupt, or a newer schema.
        """
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
        return cls(path, db)

    def close(self) -> None:
        """Flush and close; safe to call twice."""
        if not self._closed:
            self._closed = True
            self.db.flush(wait=True)
            self.db.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def size_bytes(self) -> int:
        """Bytes the store occupies on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
