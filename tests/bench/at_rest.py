"""What encryption at rest costs the history (``python -m tests.bench.at_rest``): the same
20,000 messages of ~300-byte envelopes added one by one (unsynced, as a chat peer adds them),
then 2,000 queries of the newest 50, into a store without a passphrase and into one with it
(ChaCha20-Poly1305 per body), alternating, three rounds; and what unlocking a data dir costs
(Argon2id, RFC 9106's second recommended parameters).

Prints one JSON line per round and one for the unlock: seconds, and microseconds per message.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path

from p2pchat.node.atrest import AtRestKeys, create_vault, unlock
from p2pchat.node.history import History, StoredMessage, history_id
from p2pchat.node.store import Store

MESSAGES = 20_000
QUERIES = 2_000
ROUNDS = 3
SENDER = "12D3KooW" + "1" * 44


def _messages() -> list[StoredMessage]:
    return [
        StoredMessage(
            "room",
            history_id(SENDER, n.to_bytes(16, "big")),
            1_000_000 + n,
            2_000_000 + n,
            SENDER,
            secrets.token_bytes(300),
        )
        for n in range(MESSAGES)
    ]


def _run(path: Path, keys: AtRestKeys | None, messages: list[StoredMessage]) -> dict[str, float]:
    store = Store.open(path) if keys is None else Store.open(path, keys)
    try:
        history = History(store)
        start = time.perf_counter()
        for message in messages:
            history.add(message)
        added = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(QUERIES):
            assert len(history.last("room", 50)) == 50
        queried = time.perf_counter() - start
    finally:
        store.close()
    return {
        "add_s": round(added, 3),
        "add_us_per_message": round(added / MESSAGES * 1e6, 2),
        "query_s": round(queried, 3),
        "query_us_per_message": round(queried / (QUERIES * 50) * 1e6, 2),
    }


def main() -> None:
    messages = _messages()
    with tempfile.TemporaryDirectory() as top:
        base = Path(top)
        keys = AtRestKeys(os.urandom(32))
        for round_ in range(ROUNDS):
            plain = _run(base / f"plain{round_}", None, messages)
            sealed = _run(base / f"sealed{round_}", keys, messages)
            print(
                json.dumps(
                    {
                        "scenario": "history_at_rest",
                        "round": round_,
                        "plain": plain,
                        "passphrase": sealed,
                    }
                )
            )
        start = time.perf_counter()
        create_vault(base, "bench passphrase")
        created = time.perf_counter() - start
        start = time.perf_counter()
        unlock(base, "bench passphrase")
        unlocked = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "scenario": "unlock",
                    "create_s": round(created, 3),
                    "unlock_s": round(unlocked, 3),
                }
            )
        )


if __name__ == "__main__":
    main()
