"""Connection setup, QUIC against TCP and WebSocket, on loopback (issue #20, must-have 2).

Two p2pchat hosts (the host layer, in one process and one trio loop: both ends' CPU counts) on
127.0.0.1, each listening on TCP, WebSocket and QUIC. For each transport, ``ROUNDS`` times, a
fresh dialler (a new identity, so nothing is cached) dials the listener and the time is taken
from the dial to the listener's identify being received: TCP + Noise + Yamux + identify against
QUIC (TLS 1.3 in the QUIC handshake) + identify. Rounds alternate between transports so a slow
moment of the shared machine hits them alike. Reported per transport: p50, p90, max (ms).

Usage: python -m tests.bench.connection_setup; BENCH_SETUP_ROUNDS sets the rounds (default
30). One JSON object.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.bench.chat import percentile

ROUNDS = int(os.environ.get("BENCH_SETUP_ROUNDS", "30"))
LISTEN = (
    "/ip4/127.0.0.1/tcp/0",
    "/ip4/127.0.0.1/tcp/0/ws",
    "/ip4/127.0.0.1/udp/0/quic-v1",
)
TRANSPORTS = {"tcp": "/tcp/", "websocket": "/ws/", "quic": "/quic-v1/"}


def _addr(host: P2PHost, transport: str) -> str:
    for addr in host.advertised_addrs():
        is_ws = "/ws/" in addr
        if TRANSPORTS[transport] in addr and (transport != "tcp" or not is_ws):
            return addr
    raise SystemExit(f"no {transport} address in {host.advertised_addrs()}")


async def _one_setup(root: Path, listener: P2PHost, transport: str, round_: int) -> float:
    """Milliseconds from a fresh dialler's dial to its identify of ``listener``."""
    identity = load_or_create_identity(root / f"{transport}-{round_}")
    dialler = P2PHost(identity, HostSettings(listen=LISTEN), QuietObserver())
    async with dialler.run(listen=False):
        began = time.perf_counter()
        await dialler.connect(_addr(listener, transport))
        with trio.fail_after(60):
            await dialler.wait_identified(listener.peer_id)
        elapsed = (time.perf_counter() - began) * 1000
        await dialler.disconnect(listener.peer_id)
    return elapsed


async def _run() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        listener = P2PHost(
            load_or_create_identity(root / "listener"), HostSettings(listen=LISTEN), QuietObserver()
        )
        times: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
        async with listener.run():
            for round_ in range(ROUNDS + 1):
                for transport in TRANSPORTS:
                    elapsed = await _one_setup(root, listener, transport, round_)
                    if round_ > 0:  # the first round warms imports and caches up
                        times[transport].append(elapsed)
    return {
        "bench": "connection_setup",
        "what": "dial to identified, fresh dialler each round, both ends in one process",
        "rounds": ROUNDS,
        **{
            name: {
                "p50_ms": round(percentile(values, 0.5), 1),
                "p90_ms": round(percentile(values, 0.9), 1),
                "max_ms": round(max(values), 1),
            }
            for name, values in times.items()
        },
    }


def main() -> None:
    """Run the benchmark and print its JSON object."""
    json.dump(trio.run(_run), sys.stdout)
    print()


if __name__ == "__main__":
    main()
