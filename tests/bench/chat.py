"""Chat delivery over a 3-peer line A-B-C (C reachable only through B), real processes.

Scenarios (issue #3 targets):
- ``burst``: A sends 2,000 messages as fast as it can take them; delivered count at C and
  latency p50/p99 (target: 2,000 of 2,000, p99 < 1 s);
- ``paced``: A sends 500 msg/s for 10 s; latency p50/p99 at C (target: p99 < 20 ms).

Latency is end to end as a user sees it: from the moment the benchmark writes the line to A's
stdin to the moment C's JSON event for it is read from C's stdout.

Usage: python -m tests.bench.chat [burst|paced ...]; prints one JSON object per scenario.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess, node_env, start_node

BURST = 2000
PACED_RATE = 500
PACED_SECONDS = 10
DELIVERY_TIMEOUT = 120.0


def _settings() -> dict[str, str]:
    """The nodes' environment: one sender's 500 msg/s is far over the default sender budget
    (the benchmark measures capacity, not flood control), so it is lifted; P2PCHAT_* variables
    of the benchmark's own environment are passed on (A/B runs: P2PCHAT_PUBSUB__SCORING=false)."""
    settings = {
        "P2PCHAT_PUBSUB__SENDER_RATE": "100000",
        "P2PCHAT_PUBSUB__SENDER_BURST": "1000000",
    }
    settings.update({k: v for k, v in os.environ.items() if k.startswith("P2PCHAT_")})
    return node_env(**settings)


def _line(tmp: Path) -> tuple[NodeProcess, NodeProcess, NodeProcess]:
    # Only C's output is read (and timed); A's and B's go to /dev/null, so that the benchmark
    # reading them does not take CPU from the three peers sharing this machine's cores.
    env = _settings()
    a = start_node(tmp / "a", "--json", env=env, discard_output=True)
    b = start_node(tmp / "b", "--json", "--bootstrap", a.addr(), env=env, discard_output=True)
    c = start_node(tmp / "c", "--json", "--bootstrap", b.addr(), env=env, read_output=False)
    deadline = time.monotonic() + 60
    while b.metric("p2pchat_room_peers") < 2 or a.metric("p2pchat_room_peers") < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the A-B-C line did not form")
        time.sleep(0.2)
    time.sleep(2)  # let the mesh settle past a few heartbeats
    return a, b, c


def percentile(values: list[float], fraction: float) -> float:
    """The value below which ``fraction`` of ``values`` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Delivery:
    """When each message was written to the sender and read from the receiver."""

    began: float
    send_seconds: float
    sent: dict[str, float]
    received: dict[str, float]

    def latencies_ms(self) -> list[float]:
        return [(self.received[t] - self.sent[t]) * 1000 for t in self.received if t in self.sent]


def deliver(
    sender: NodeProcess, receiver: NodeProcess, prefix: str, count: int, interval: float
) -> Delivery:
    """Type ``count`` messages into ``sender`` (one every ``interval`` s; 0: as fast as it
    takes them) and time each one's arrival at ``receiver``, end to end as a user sees it.

    ``receiver`` must be started with ``read_output=False``: its stdout is read here, each
    line timed as soon as it is read (before parsing, and without a hand-over between threads
    that would add the interpreter's thread-switch delay to the figure).
    """
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    done = threading.Event()
    assert receiver.proc.stdout is not None
    output = receiver.proc.stdout

    lines: list[tuple[float, str]] = []  # (read at, line), parsed once the run is over

    def collect() -> None:
        messages = 0
        for line in output:
            lines.append((time.monotonic(), line))
            if '"type": "message"' in line:  # a text's own quotes are escaped in JSON
                messages += 1
                if messages == count:
                    break
        done.set()

    threading.Thread(target=collect, daemon=True).start()
    began = time.monotonic()
    for index in range(count):
        text = f"{prefix} {index}"
        if interval:
            target = began + index * interval
            while (now := time.monotonic()) < target:
                time.sleep(target - now)
        sent[text] = time.monotonic()
        sender.say(text)
    send_seconds = time.monotonic() - began
    done.wait(DELIVERY_TIMEOUT + send_seconds)
    for at, line in list(lines):
        event = json.loads(line)
        if event.get("type") == "message":
            received[event["text"]] = at
    return Delivery(began, send_seconds, sent, received)


def cpu_seconds(node: NodeProcess) -> float:
    """CPU time (user + system) the node's process has used so far, from /proc."""
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(scenario: str, count: int, interval: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        a, b, c = _line(Path(tmp))
        cpu_before = [cpu_seconds(node) for node in (a, b, c)]
        delivery = deliver(a, c, scenario, count, interval)
        cpu_used = [
            cpu_seconds(node) - before for node, before in zip((a, b, c), cpu_before, strict=True)
        ]
        received, began = delivery.received, delivery.began
        latencies = delivery.latencies_ms()
        result = {
            "scenario": scenario,
            "topology": "A-B-C line, C only via B, 127.0.0.1",
            "sent": count,
            "delivered_at_c": len(received),
            "send_seconds": round(delivery.send_seconds, 3),
            "rate_at_c_per_s": round(len(received) / max(max(received.values()) - began, 1e-9), 1)
            if received
            else 0.0,
            "latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
            "latency_ms_p99": round(percentile(latencies, 0.99), 2) if latencies else None,
            "latency_ms_max": round(max(latencies), 2) if latencies else None,
            # over the delivery: from the first line written to A until C showed the last
            "cpu_ms_per_message_a_b_c": [round(1000 * used / count, 3) for used in cpu_used],
        }
        for node in (a, b, c):
            node.stop()
        return result


def main(argv: list[str]) -> int:
    scenarios = argv or ["burst", "paced"]
    for scenario in scenarios:
        if scenario == "burst":
            result = _run("burst", BURST, 0.0)
        elif scenario == "paced":
            result = _run("paced", PACED_RATE * PACED_SECONDS, 1 / PACED_RATE)
        else:
            print(f"unknown scenario {scenario!r}; use burst or paced", file=sys.stderr)
            return 2
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
