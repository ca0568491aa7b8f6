"""How many relayed conversations one relay process carries at 1 msg/s each (issue #21, 5).

One real relay (``p2pchat --role relay``, chat-friendly circuits for 127.0.0.1 so none is reset
for its age or size, and room for every connection and reservation), and the load generator
tests/interop/go/cmd/load (``make load-go``): N conversations, each two go-libp2p hosts talking
over a circuit through the relay, chat-sized frames at ``BENCH_CAPACITY_RATE`` messages per
second per conversation (see that program's note for why a raw stream and not GossipSub).

For each N of ``BENCH_CAPACITY_STEPS`` (a fresh relay each): the setup time, then, over the
measuring window, the relay's CPU (its share of one core), its resident memory, the relayed
bytes, the messages delivered (due in the window and read within the grace after it), the
latency from when a message was due to when it was read (p50, p99, max) and the generator's own
CPU (it shares the machine). Delivery "suffers" when fewer than 99.9 % arrive or p99 passes 1 s.

Usage: python -m tests.bench.relay_capacity; one JSON object per step.
Environment: BENCH_CAPACITY_STEPS (default "100,250,500,1000"), BENCH_CAPACITY_SECONDS (60),
BENCH_CAPACITY_RATE (1.0), BENCH_CAPACITY_SIZE (336 bytes a message: the GossipSub RPC of a
100-byte text), BENCH_CAPACITY_PROFILE (a directory: the relay runs under cProfile and writes
relay-<N>.prof there when it stops).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests import conftest
from tests.conftest import NodeProcess, node_env, start_node

ROOT = Path(__file__).resolve().parents[2]
LOAD = ROOT / "tests" / "interop" / "go" / "build" / "load"
STEPS = [int(n) for n in os.environ.get("BENCH_CAPACITY_STEPS", "100,250,500,1000").split(",")]
SECONDS = float(os.environ.get("BENCH_CAPACITY_SECONDS", "60"))
RATE = float(os.environ.get("BENCH_CAPACITY_RATE", "1.0"))
SIZE = int(os.environ.get("BENCH_CAPACITY_SIZE", "336"))
WARMUP = 5.0
GRACE = 10.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RELAYED_BYTES = "libp2p_relaysvc_data_transferred_bytes_total"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _relay(base: Path, pairs: int, profile: str | None) -> NodeProcess:
    connections = 2 * pairs + 64
    if profile:  # the relay under cProfile (trio runs in the main thread, all of it profiled)
        out = Path(profile) / f"relay-{pairs}.prof"
        conftest.p2pchat_command = lambda: [  # bench-only: start_node's command, profiled
            sys.executable,
            *("-m", "cProfile", "-o", str(out), "-m", "p2pchat.node"),
        ]
    return start_node(
        base / "relay",
        "--role",
        "relay",
        env=node_env(
            P2PCHAT_NODE__MAX_CONNECTIONS=str(connections),
            P2PCHAT_PEERSTORE__MAX_PEERS=str(connections + 64),
            P2PCHAT_RELAY__MAX_RESERVATIONS=str(pairs + 16),
            P2PCHAT_RELAY__MAX_RESERVATIONS_PER_IP=str(pairs + 16),
            P2PCHAT_RELAY__CHAT_PEERS="127.0.0.1/32",
        ),
    )


def capacity_step(pairs: int, seconds: float = SECONDS) -> dict[str, Any]:
    """One relay, ``pairs`` conversations through it for a ``seconds`` window; the
    measurements above."""
    if not LOAD.exists():
        raise SystemExit(f"{LOAD} is missing: run `make load-go` (needs Go)")
    profile = os.environ.get("BENCH_CAPACITY_PROFILE")
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        relay = _relay(Path(tmp), pairs, profile)
        try:
            rss_idle = _rss_mib(relay.proc.pid)
            generator = subprocess.Popen(
                [
                    str(LOAD),
                    "-relay",
                    relay.addr(),
                    "-pairs",
                    str(pairs),
                    "-rate",
                    str(RATE),
                    "-size",
                    str(SIZE),
                    "-seconds",
                    str(seconds),
                    "-warmup",
                    str(WARMUP),
                    "-grace",
                    str(GRACE),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            assert generator.stdout is not None
            setup = json.loads(generator.stdout.readline())
            time.sleep(WARMUP)
            bytes_before = relay.metric(RELAYED_BYTES)
            cpu0, wall0 = _cpu_seconds(relay.proc.pid), time.monotonic()
            peak_rss = [0.0]
            done = threading.Event()

            def sample_rss() -> None:
                while not done.wait(1.0):
                    peak_rss[0] = max(peak_rss[0], _rss_mib(relay.proc.pid))

            threading.Thread(target=sample_rss, daemon=True).start()
            time.sleep(seconds)
            cpu1, wall1 = _cpu_seconds(relay.proc.pid), time.monotonic()
            relayed = relay.metric(RELAYED_BYTES) - bytes_before
            done.set()
            result = json.loads(generator.stdout.readline() or "{}")
            generator.wait(timeout=60)
            cpu = cpu1 - cpu0
            messages = result.get("sent", 0)
            return {
                "scenario": "relay_capacity",
                "pairs": pairs,
                "established": setup.get("established"),
                "setup_failures": result.get("setup_failures"),
                "setup_s": round(setup.get("setup_s", 0), 1),
                "rate_per_pair": RATE,
                "message_bytes": SIZE,
                "window_s": seconds,
                "messages": messages,
                "delivered_ratio": round(result.get("delivered_ratio", 0), 5),
                "lost": result.get("lost"),
                "later_than_1s": result.get("later_than_1s"),
                "latency_ms_p50": result.get("latency_ms_p50"),
                "latency_ms_p99": result.get("latency_ms_p99"),
                "latency_ms_max": result.get("latency_ms_max"),
                "relay_cpu_share": round(cpu / (wall1 - wall0), 3),
                "relay_cpu_us_per_message": round(cpu / messages * 1e6) if messages else None,
                "relay_rss_mib_idle": round(rss_idle),
                "relay_rss_mib_peak": round(peak_rss[0]),
                "relayed_bytes_per_message": round(relayed / messages) if messages else None,
                "generator_cpu_share": round(
                    result.get("generator_cpu_s", 0) / (WARMUP + seconds + GRACE), 3
                ),
                "stream_errors": result.get("stream_errors"),
            }
        finally:
            relay.stop(timeout=120)


def main(argv: list[str]) -> None:
    for pairs in [int(a) for a in argv] or STEPS:
        print(json.dumps(capacity_step(pairs)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
