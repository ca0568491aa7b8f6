"""Archive benchmarks (issue #5): durable ingest, page queries on a large archive, catch-up.

Scenarios (one JSON object each on stdout):

- ``ingest``: the archiver's write path on real RocksDB: batches of genuine signed messages
  written and synced (fdatasync) exactly as the archiver's writer does, and, end to end, a
  peer publishing a burst to a real archiver process (GossipSub-bound).
- ``query``: an archiver process holding 1,000,000 messages; a client on 127.0.0.1 asks for
  50-message pages at random times, over the history protocol; round-trip percentiles, and
  the server's own query time.
- ``catchup``: an archiver holding 10,000 messages the peer missed; a fresh peer started with
  only the archiver's address; time from the peer being ready to the messages stored and
  announced (connect, identify, 20 pages, verifying 10,000 signatures, storing), and to the
  last of them shown to the script (``--json`` shows every missed message).

Usage: python -m tests.bench.archive [ingest] [query] [catchup]. BENCH_ARCHIVE_SIZE sets the
query archive's size.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.store import Store
from p2pchat.node.wire.store_query import PROTOCOL_ID, Query, Status

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.history_fixtures import ROOM, ask, fill_store, make_messages, reply_decoder, signer
from tests.test_host import running_host

ARCHIVE_SIZE = int(os.environ.get("BENCH_ARCHIVE_SIZE", "1000000"))
WRITER_BATCH = 256  # what one GossipSub subscription batch holds at most


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ingest(base: Path) -> dict[str, Any]:
    key = signer(base / "signer")
    messages = make_messages(key, ROOM, 20_000, step_ms=1)
    store = Store.open(base / "ingest" / "store")
    history = History(store)
    started = time.perf_counter()
    for first in range(0, len(messages), WRITER_BATCH):
        history.add_many(messages[first : first + WRITER_BATCH], sync=True)
    store_seconds = time.perf_counter() - started
    store.close()

    archiver = start_node(base / "archiver", "--role", "archiver")
    publisher = start_node(base / "publisher", "--json", "--bootstrap", archiver.addr())
    try:
        burst = 3000
        wait_metric(publisher, "p2pchat_room_infrastructure_peers", 1)  # the archiver
        started = time.perf_counter()
        for n in range(burst):
            publisher.say(f"burst message {n}")
        wait_metric(archiver, "p2pchat_archive_inserted_total", burst, timeout=120)
        e2e_seconds = time.perf_counter() - started
        stored = int(archiver.metric("p2pchat_archive_inserted_total"))
    finally:
        for node in (publisher, archiver):
            node.stop()
    return {
        "scenario": "ingest",
        "store_messages": len(messages),
        "store_batch": WRITER_BATCH,
        "store_synced_msgs_per_s": round(len(messages) / store_seconds),
        "e2e_burst": burst,
        "e2e_msgs_per_s": round(burst / e2e_seconds),
        "e2e_lost": burst - stored,
        "target_msgs_per_s": 10_000,
    }


def _fill_large(data_dir: Path, count: int) -> tuple[int, int]:
    """``count`` messages 1 ms apart from 1,000 genuine signed templates (the server does not
    verify; the sizes are real). Returns the first and last send times."""
    key = signer(data_dir.parent / "signer")
    templates = make_messages(key, ROOM, 1000)
    first_ms = int(time.time() * 1000) - count - 60_000
    store = Store.open(data_dir / "store")
    history = History(store)
    batch: list[StoredMessage] = []
    for n in range(count):
        template = templates[n % len(templates)]
        batch.append(
            StoredMessage(
                ROOM,
                n.to_bytes(16, "big"),
                first_ms + n,
                first_ms + n,
                template.sender,
                template.envelope,
            )
        )
        if len(batch) == 10_000:
            history.add_many(batch)
            batch = []
    history.add_many(batch)
    store.close()
    return first_ms, first_ms + count - 1


def query(base: Path) -> dict[str, Any]:
    started = time.perf_counter()
    first_ms, last_ms = _fill_large(base / "big", ARCHIVE_SIZE)
    fill_seconds = time.perf_counter() - started
    archiver = start_node(
        base / "big",
        "--role",
        "archiver",
        env=node_env(P2PCHAT_HISTORY__RATE="10000", P2PCHAT_HISTORY__BURST="100000"),
    )
    try:
        times = trio.run(_page_queries, base, archiver, first_ms, last_ms)
        server_sum = archiver.metric("p2pchat_archive_query_duration_seconds_sum")
        server_count = archiver.metric("p2pchat_archive_query_duration_seconds_count")
    finally:
        archiver.stop()
    return {
        "scenario": "query",
        "archive_messages": ARCHIVE_SIZE,
        "fill_seconds": round(fill_seconds, 1),
        "queries": len(times),
        "page": 50,
        "round_trip_p50_ms": round(percentile(times, 0.50) * 1000, 2),
        "round_trip_p99_ms": round(percentile(times, 0.99) * 1000, 2),
        "server_mean_ms": round(server_sum / server_count * 1000, 3),
        "target_p99_ms": 10,
    }


async def _page_queries(
    base: Path, archiver: NodeProcess, first_ms: int, last_ms: int
) -> list[float]:
    rng = random.Random(1)
    times: list[float] = []
    async with running_host(base / "client") as (host, _):
        await host.connect(archiver.addr())
        stream = await host.new_stream(archiver.peer_id, [PROTOCOL_ID])
        decoder = reply_decoder()
        for n in range(1, 2001):
            start = rng.randint(first_ms, last_ms)
            forward = rng.random() < 0.5
            bounds = {"start_ms": start} if forward else {"end_ms": start}
            began = time.perf_counter()
            reply = await ask(stream, decoder, Query(n, ROOM, limit=50, forward=forward, **bounds))  # type: ignore[arg-type]
            elapsed = time.perf_counter() - began
            assert reply.status is Status.OK
            if n > 100:  # after warm-up
                times.append(elapsed)
    return times


def catchup(base: Path) -> dict[str, Any]:
    key = signer(base / "signer")
    missed = 10_000
    fill_store(base / "archiver", make_messages(key, ROOM, missed, step_ms=1))
    archiver = start_node(base / "archiver", "--role", "archiver")
    peer = start_node(base / "peer", "--json", "--bootstrap", archiver.addr())
    try:
        ready_at = time.perf_counter()
        event = peer.next_event(lambda e: e["type"] == "caught_up", timeout=120)
        seconds = time.perf_counter() - ready_at
        # A script (--json) is then shown every missed message, as history messages.
        for _ in range(event.get("shown", 0)):
            peer.next_event(lambda e: e["type"] == "message" and e["history"], timeout=120)
        shown_seconds = time.perf_counter() - ready_at
    finally:
        for node in (peer, archiver):
            node.stop()
    return {
        "scenario": "catchup",
        "missed_messages": missed,
        "stored": event["count"],
        "seconds_from_ready": round(seconds, 2),
        "shown": event.get("shown", 0),
        "seconds_until_all_shown": round(shown_seconds, 2),
        "includes_settle_s": 1.0,
        "target_s": 5,
    }


SCENARIOS = {"ingest": ingest, "query": query, "catchup": catchup}


def main() -> None:
    names = sys.argv[1:] or list(SCENARIOS)
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(SCENARIOS[name](Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
