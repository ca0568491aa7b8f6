"""Sealing or opening everything private a store holds, for ``p2pchat passphrase set|remove``.

What is converted: the history's bodies (format 1 <-> 2, :func:`~p2pchat.node.history.
reseal_value`) and the values of every namespace in :data:`~p2pchat.node.store.
SEALED_NAMESPACES`. The work is idempotent (a value already in the wanted form is skipped), so
an interrupted run is finished by running the command again. Afterwards the store is flushed
and fully compacted, so that the old values' bytes (RocksDB keeps overwritten values in its
files until a compaction drops them) leave the disk files.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.node.atrest import AtRestKeys, SealError, is_sealed
from p2pchat.node.history import History, reseal_value
from p2pchat.node.store import SEALED_NAMESPACES, Store
from rocksdict import BottommostLevelCompaction, CompactOptions, WriteBatch

_HIST = b"hist/"
_BATCH = 10_000


@dataclass
class Converted:
    """What one conversion changed: history bodies, namespace values, values left as they
    were because they did not convert (damaged)."""

    history: int = 0
    values: int = 0
    skipped: int = 0


def convert_store(store: Store, keys: AtRestKeys, seal: bool) -> Converted:
    """Seal (``seal``) or open every private value of ``store`` (then :func:`compact` it)."""
    history = History(store)  # first: its one-off migrations re-key what exists
    db = store.db
    done = Converted()
    batch = WriteBatch(raw_mode=True)
    resized: dict[str, int] = {}
    it = db.iter()
    it.seek(_HIST)
    while it.valid() and it.key().startswith(_HIST):
        key, value = it.key(), it.value()
        try:
            new = reseal_value(value, key, keys, seal)
        except ValueError:
            done.skipped += 1
            new = value
        if new != value:
            batch.put(key, new)
            room = key[len(_HIST) :].split(b"\x00", 1)[0].decode()
            resized[room] = resized.get(room, 0) + len(new) - len(value)
            done.history += 1
            if len(batch) >= _BATCH:
                db.write(batch)
                batch = WriteBatch(raw_mode=True)
        it.next()
    del it
    for name in sorted(SEALED_NAMESPACES):
        prefix = name.encode() + b"/"
        it = db.iter()
        it.seek(prefix)
        while it.valid() and it.key().startswith(prefix):
            key, value = it.key(), it.value()
            if seal and not is_sealed(value):
                batch.put(key, keys.seal(key, value))
                done.values += 1
            elif not seal and is_sealed(value):
                try:
                    batch.put(key, keys.open(key, value))
                    done.values += 1
                except SealError:
                    done.skipped += 1
            it.next()
        del it
    db.write(batch)
    history.resize(resized)
    return done


def compact(store: Store) -> None:
    """Flush and compact the whole store, every level: the bytes of overwritten values leave
    its files (RocksDB keeps them until a compaction drops them)."""
    store.db.flush(wait=True)
    options = CompactOptions()
    options.set_bottommost_level_compaction(BottommostLevelCompaction.force())
    store.db.compact_range(None, None, options)
