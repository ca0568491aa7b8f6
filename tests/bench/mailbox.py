"""Sealed offline delivery benchmark (issue #19): 1,000 sealed messages deposited with a real
archiver process and fetched by their recipient.

One JSON object on stdout: A and B meet (A learns B's bundle), B stops, A sends 1,000 ``/msg``
to B (each is sealed and deposited: the time until the archiver holds all of them), A stops, B
starts and fetches, opens, checks and shows them (the time from B's start until the 1,000th is
shown and the archiver holds none). The archiver's store on disk before, with the 1,000
letters, and after they were deleted (RocksDB keeps tombstones until it compacts): bytes per
letter. The archiver's per-PeerId limits are raised so that one sender may deposit 1,000.

Usage: python -m tests.bench.mailbox (BENCH_MAILBOX_MESSAGES sets the count).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.test_json_contract import answer

MESSAGES = int(os.environ.get("BENCH_MAILBOX_MESSAGES", "1000"))
TEXT = "sealed benchmark message number {n:04d}, about as long as a chat line is"


def _peer(path: Path, *args: str) -> NodeProcess:
    node = start_node(path, "--json", *args)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def _settled_store_bytes(node: NodeProcess) -> float:
    time.sleep(1.0)
    return node.metric("p2pchat_archive_store_bytes")


def run(base: Path) -> dict[str, Any]:
    archiver = start_node(
        base / "x",
        "--role",
        "archiver",
        env=node_env(
            P2PCHAT_ARCHIVER__ROOMS="mailbox-bench-nobody",
            P2PCHAT_MAILBOX__DEPOSIT_RATE="10000",
            P2PCHAT_MAILBOX__DEPOSIT_BURST="100000",
            P2PCHAT_MAILBOX__MAX_ENTRIES_PER_MAILBOX="5000",
            P2PCHAT_MAILBOX__MAX_BYTES_PER_MAILBOX=str(64 << 20),
            P2PCHAT_MAILBOX__MAX_ENTRIES_PER_DEPOSITOR="5000",
            P2PCHAT_MAILBOX__MAX_BYTES_PER_DEPOSITOR=str(64 << 20),
        ),
    )
    nodes = [archiver]
    try:
        a = _peer(base / "a", "--bootstrap", archiver.addr())
        nodes.append(a)
        b = _peer(base / "b", "--bootstrap", f"{archiver.addr()},{a.addr()}")
        nodes.append(b)
        a.next_event(lambda e: e["type"] == "connection" and e["peer"] == b.peer_id, timeout=60)
        first = answer(a, {"id": "first", "line": f"/msg {b.peer_id} hello"})
        assert any(e.get("kind") == "dm_delivered" for e in first), first
        recipient = b.peer_id
        b.stop()
        nodes.remove(b)
        empty = _settled_store_bytes(archiver)

        started = time.perf_counter()
        for n in range(MESSAGES):
            answer(a, {"id": n, "line": f"/msg {recipient} {TEXT.format(n=n)}"})
        wait_metric(archiver, "p2pchat_mailbox_letters", MESSAGES, timeout=300)
        deposit_seconds = time.perf_counter() - started
        letter_bytes = archiver.metric("p2pchat_mailbox_bytes")
        full = _settled_store_bytes(archiver)
        a.stop()
        nodes.remove(a)

        started = time.perf_counter()
        b = _peer(base / "b", "--bootstrap", archiver.addr())
        nodes.append(b)
        for _ in range(MESSAGES):
            b.next_event(lambda e: e["type"] == "direct", timeout=300)
        shown_seconds = time.perf_counter() - started
        deadline = time.monotonic() + 120
        while archiver.metric("p2pchat_mailbox_letters") and time.monotonic() < deadline:
            time.sleep(0.1)
        deleted_seconds = time.perf_counter() - started
        after = _settled_store_bytes(archiver)
        received = b.metric("p2pchat_dm_received_total")
    finally:
        for node in nodes:
            node.stop()
    return {
        "scenario": "mailbox",
        "messages": MESSAGES,
        "deposit_seconds": round(deposit_seconds, 2),
        "deposits_per_s": round(MESSAGES / deposit_seconds, 1),
        "sealed_letter_bytes": round(letter_bytes / MESSAGES),
        "archiver_disk_bytes_per_message": round((full - empty) / MESSAGES),
        "archiver_disk_bytes_after_delete_per_message": round((after - empty) / MESSAGES),
        "fetch_shown_seconds_from_start": round(shown_seconds, 2),
        "fetch_deleted_seconds_from_start": round(deleted_seconds, 2),
        "received": int(received),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
