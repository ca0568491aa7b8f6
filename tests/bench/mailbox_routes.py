"""What unlinkable mailbox requests cost (issue #19, ``mailbox.unlinkable``): 10 deposits and
the fetch of the 10 letters (a listing request, then the one that deletes them) with a real
archiver process on 127.0.0.1, made over this process's own connection (one identity, the
connection open beforehand, as a peer connected to the archiver has it: ``own``) and over a
throwaway connection per request (:class:`~p2pchat.node.p2p.throwaway.Throwaway`: a fresh
Ed25519 key, a dial, the Noise handshake, and the close: ``throwaway``).

One JSON object on stdout: per mode, the median over ``BENCH_ROUTES_ROUNDS`` rounds (5) of the
seconds for the 10 deposits (sequential) and for the fetch, and the median per request.

Usage: python -m tests.bench.mailbox_routes
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import nacl.signing
import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity
from p2pchat.node.p2p.peer_keys import peer_id_bytes
from p2pchat.node.p2p.streams import read_frame_within
from p2pchat.node.p2p.throwaway import Throwaway
from p2pchat.node.wire import mailbox
from p2pchat.node.wire.framing import FrameDecoder, frame

from tests.conftest import NodeProcess, node_env, start_node

ROUNDS = int(os.environ.get("BENCH_ROUTES_ROUNDS", "5"))
LETTERS = 10

Connect = Callable[[], AbstractAsyncContextManager[P2PHost]]


async def _request(connect: Connect, archiver: str, payload: bytes) -> mailbox.Response:
    async with connect() as host:
        stream = await host.new_stream(archiver, [mailbox.PROTOCOL_ID])
        await stream.write(frame(payload))
        data = await read_frame_within(stream, FrameDecoder(mailbox.MAX_RESPONSE_BYTES), 30)
        return mailbox.decode_response(data)


def _fetch(key: nacl.signing.SigningKey, archiver: str, delete: tuple[bytes, ...]) -> bytes:
    at = int(time.time() * 1000)
    signed = mailbox.fetch_signed_bytes(peer_id_bytes(archiver), at, delete)
    return mailbox.encode_request(
        mailbox.Fetch(bytes(key.verify_key), at, key.sign(signed).signature, delete)
    )


async def _round(connect: Connect, archiver: str) -> tuple[float, float]:
    """Seconds for 10 deposits to a new mailbox, and for fetching (listing, then deleting)."""
    key = nacl.signing.SigningKey.generate()
    address = mailbox.address_of(bytes(key.verify_key))
    started = time.perf_counter()
    for n in range(LETTERS):
        deposit = mailbox.Deposit(address, n.to_bytes(2, "big") + b"\x01" * 400)
        response = await _request(connect, archiver, mailbox.encode_request(deposit))
        assert response.status is mailbox.Status.OK, response
    deposits = time.perf_counter() - started
    started = time.perf_counter()
    listed = await _request(connect, archiver, _fetch(key, archiver, ()))
    assert len(listed.entries) == LETTERS, listed
    ids = tuple(entry.id for entry in listed.entries)
    emptied = await _request(connect, archiver, _fetch(key, archiver, ids))
    assert emptied.status is mailbox.Status.OK and not emptied.entries, emptied
    return deposits, time.perf_counter() - started


async def _measure(x: NodeProcess) -> dict[str, Any]:
    results: dict[str, Any] = {}
    own = P2PHost(ephemeral_identity(), HostSettings(listen=()), QuietObserver())
    async with own.run():
        await own.connect(x.addr())
        route = Throwaway(parallel=4)
        async with trio.open_nursery() as nursery:
            await nursery.start(route.run)
            await _modes(x, own, route, results)
            nursery.cancel_scope.cancel()
    return results


async def _modes(x: NodeProcess, own: P2PHost, route: Throwaway, results: dict[str, Any]) -> None:
    """Each mode's rounds, into ``results``."""

    @asynccontextmanager
    async def connected() -> AsyncIterator[P2PHost]:
        yield own

    modes: dict[str, Connect] = {
        "own": connected,
        "throwaway": lambda: route.connection(x.peer_id, [x.addr()]),
    }
    for mode, connect in modes.items():
        await _round(connect, x.peer_id)  # warm-up
        rounds = [await _round(connect, x.peer_id) for _ in range(ROUNDS)]
        deposit = statistics.median(r[0] for r in rounds)
        fetch = statistics.median(r[1] for r in rounds)
        results[mode] = {
            "deposit_10_s": round(deposit, 4),
            "fetch_10_s": round(fetch, 4),
            "per_request_ms": round(1000 * (deposit + fetch) / (LETTERS + 2), 1),
        }


def run(base: Path) -> dict[str, Any]:
    x = start_node(
        base / "x",
        "--role",
        "archiver",
        env=node_env(
            P2PCHAT_ARCHIVER__ROOMS="mailbox-routes-bench-nobody",
            P2PCHAT_MAILBOX__DEPOSIT_RATE="10000",
            P2PCHAT_MAILBOX__DEPOSIT_BURST="100000",
            P2PCHAT_MAILBOX__FETCH_RATE="10000",
            P2PCHAT_MAILBOX__FETCH_BURST="100000",
        ),
    )
    try:
        measured = trio.run(_measure, x)
    finally:
        x.stop()
    return {"scenario": "mailbox_routes", "letters": LETTERS, "rounds": ROUNDS, **measured}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run(Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
