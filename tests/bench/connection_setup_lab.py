"""Connection setup, QUIC against TCP and WebSocket, through the NAT lab (issue #20, must-have 2).

As :mod:`tests.bench.connection_setup`, but across a real NAT: the listener is a process in the
lab's relay namespace (the "internet", 10.77.0.1), the dialler a process in the dialer's LAN
behind its router's port-preserving NAT (iptables MASQUERADE and conntrack, UDP and TCP alike).
Two processes, so each end has its own CPU; the lab adds no delay (its kernel has no netem),
so the figures compare the transports' handshake cost over a path of veths, a bridge and a
NAT, not their round trips over a long link. For each transport, ``ROUNDS`` times, a fresh
dialler host (a new identity) dials the listener and the time is taken from the dial to the
listener's identify being received; rounds alternate between transports. Needs root (the lab).

Usage: sudo python -m tests.bench.connection_setup_lab; BENCH_SETUP_ROUNDS sets the rounds
(default 30). One JSON object. (``serve`` and ``dial`` are the two ends, run by it.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity

from tests.bench.chat import percentile
from tests.bench.connection_setup import ROUNDS, TRANSPORTS
from tests.nat_lab import nat_lab


def _pick(addrs: list[str], transport: str) -> str:
    for addr in addrs:
        is_ws = "/ws/" in addr
        if TRANSPORTS[transport] in addr and (transport != "tcp" or not is_ws):
            return addr
    raise SystemExit(f"no {transport} address in {addrs}")


async def _serve(ip: str) -> None:
    """The listener: print its addresses as one JSON line, serve until stdin closes."""
    listen = (f"/ip4/{ip}/tcp/0", f"/ip4/{ip}/tcp/0/ws", f"/ip4/{ip}/udp/0/quic-v1")
    with tempfile.TemporaryDirectory() as tmp:
        identity = load_or_create_identity(Path(tmp) / "listener")
        host = P2PHost(identity, HostSettings(listen=listen), QuietObserver())
        async with host.run():
            print(json.dumps(host.advertised_addrs()), flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)


async def _dial(addrs: list[str]) -> dict[str, object]:
    times: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(ROUNDS + 1):
            for transport in TRANSPORTS:
                addr = _pick(addrs, transport)
                peer = addr.rsplit("/p2p/", 1)[1]
                identity = load_or_create_identity(Path(tmp) / f"{transport}-{round_}")
                dialler = P2PHost(identity, HostSettings(listen=()), QuietObserver())
                async with dialler.run(listen=False):
                    began = time.perf_counter()
                    await dialler.connect(addr)
                    with trio.fail_after(60):
                        await dialler.wait_identified(peer)
                    elapsed = (time.perf_counter() - began) * 1000
                    await dialler.disconnect(peer)
                if round_ > 0:  # the first round warms imports and caches up
                    times[transport].append(elapsed)
    return {
        name: {
            "p50_ms": round(percentile(values, 0.5), 1),
            "p90_ms": round(percentile(values, 0.9), 1),
            "max_ms": round(max(values), 1),
        }
        for name, values in times.items()
    }


def _in(netns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", netns, sys.executable, "-m", __spec__.name, *args]  # type: ignore[name-defined]


def main() -> None:
    """Run the benchmark (or one of its ends) and print its JSON object."""
    if sys.argv[1:2] == ["serve"]:
        trio.run(_serve, sys.argv[2])
        return
    if sys.argv[1:2] == ["dial"]:
        json.dump(trio.run(_dial, json.loads(sys.argv[2])), sys.stdout)
        return
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    with nat_lab("port-preserving") as lab:
        server = subprocess.Popen(
            _in(lab.relay_ns, "serve", lab.relay_ip),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert server.stdout is not None and server.stdin is not None
            addrs = json.loads(server.stdout.readline())
            dialled = subprocess.run(
                _in(lab.dialer_ns, "dial", json.dumps(addrs)),
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
        finally:
            if server.stdin is not None:
                server.stdin.close()
            server.wait(timeout=30)
    result = {
        "bench": "connection_setup_lab",
        "what": "dial to identified, fresh dialler each round, dialler behind the lab's "
        "port-preserving NAT, listener on the lab's internet, two processes, no added delay",
        "rounds": ROUNDS,
        **json.loads(dialled.stdout),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
