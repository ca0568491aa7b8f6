"""What one fair trim costs at archiver scale: a room of ~100k messages from 1,001 senders,
one of them over its share, trimmed back to the cap (``python -m tests.bench.history_trim``).

Prints one JSON line: seconds of the over-cap trim and of a within-cap check, and how many
messages it deleted. Used to measure the per-sender index (#18): before it the trim walked the
whole room twice; with it, it reads the senders' counts and deletes what it deletes.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from p2pchat.node.history import History, StoredMessage, history_id
from p2pchat.node.store import Store

SENDERS = 1000
EACH = 90  # messages of each ordinary sender
FLOODER = 11_000  # one sender over its 10% share of the cap
CAP = 100_000
SHARE = 0.1


def _sender(n: int) -> str:
    return f"12D3KooW{n:044d}"


def _reindexed(path: Path) -> float | None:
    """Seconds the one-time indexing of the room takes when a store written before the
    per-sender index is opened (None: this version has no index)."""
    store = Store.open(path)
    try:
        if store.db.get(b"hmeta/senders") is None:
            return None
        for key in [k for k, _ in store.db.items() if k.startswith((b"hsnd/", b"hscnt/"))]:
            del store.db[key]
        del store.db[b"hmeta/senders"]
        started = time.perf_counter()
        History(store)
        return round(time.perf_counter() - started, 3)
    finally:
        store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store")
        history = History(store)
        envelope = os.urandom(200)
        batch: list[StoredMessage] = []
        filling = 0.0
        ms = 1_700_000_000_000
        senders = [_sender(n) for n in range(SENDERS)] * EACH + [_sender(SENDERS)] * FLOODER
        for i, sender in enumerate(senders):
            batch.append(
                StoredMessage(
                    "bench", history_id(sender, i.to_bytes(8, "big")), ms + i, ms, sender, envelope
                )
            )
            if len(batch) == 10_000:
                started = time.perf_counter()
                history.add_many(batch)
                filling += time.perf_counter() - started
                batch = []
        started = time.perf_counter()
        history.add_many(batch)
        filling += time.perf_counter() - started
        held = history.count("bench")
        store.db.flush(wait=True)  # measured on disk (SST files), not in the memtable
        started = time.perf_counter()
        deleted = history.apply_retention(
            "bench", max_count=CAP, max_age_ms=None, now_ms=ms, sender_share=SHARE
        )
        trim = time.perf_counter() - started
        started = time.perf_counter()
        history.apply_retention(
            "bench", max_count=CAP, max_age_ms=None, now_ms=ms, sender_share=SHARE
        )
        within = time.perf_counter() - started
        store.close()
        indexing = _reindexed(Path(tmp) / "store")
    print(
        json.dumps(
            {
                "bench": "history_trim",
                "held": held,
                "deleted": deleted,
                "senders": SENDERS + 1,
                "trim_s": round(trim, 4),
                "within_cap_s": round(within, 5),
                "add_s": round(filling, 3),
                "index_once_s": indexing,
            }
        )
    )


if __name__ == "__main__":
    main()
