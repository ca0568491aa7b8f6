"""Direct message latency, direct and relayed (issue #19), real processes on 127.0.0.1.

Scenarios:
- ``direct``: A and B connected over TCP; A sends ``COUNT`` DMs to B, one every ``INTERVAL`` s;
- ``relayed``: a relay, A holding a reservation there, B knowing only A's circuit address (both
  announce a dead port and hole punching is off, so every byte goes through the relay, as in
  tests.bench.relayed_chat, whose relay keeps go-libp2p's circuit limits; this one lifts them,
  so one circuit carries the run); B sends ``COUNT`` DMs to A.

Latency is what a user sees, as tests.bench.chat times room messages: from the moment the
benchmark writes ``/msg <PeerId> <text>`` to the sender's stdin to the moment the recipient's
``direct`` event for it is read from its stdout (decrypted, acknowledged on the stream, shown).
A first DM opens the Olm session (fetches the bundle, pre-key message) and is left out. CPU
per DM: each process's CPU over the run less its idle rate (measured for 10 s just before)
times the run's length.

Usage: python -m tests.bench.dm [direct|relayed ...]; prints one JSON object per scenario.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.chat import cpu_seconds, percentile
from tests.bench.relayed_pair import relayed_pair
from tests.conftest import NodeProcess, node_env, start_node
from tests.test_autorelay import CHAT_FRIENDLY

COUNT = int(os.environ.get("BENCH_DM_COUNT", "200"))
INTERVAL = 0.1  # a DM every 100 ms: each is delivered (~ms) long before the next
WAIT = 60.0
IDLE_SECONDS = 10.0


class Shown:
    """The recipient's ``direct`` events, each timed as its line is read."""

    def __init__(self, node: NodeProcess) -> None:
        self.at: dict[str, float] = {}
        self._changed = threading.Condition()
        assert node.proc.stdout is not None
        self._output = node.proc.stdout
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._output:
            at = time.monotonic()
            if '"type": "direct"' not in line:
                continue
            event = json.loads(line)
            with self._changed:
                self.at.setdefault(event["text"], at)
                self._changed.notify_all()

    def wait(self, text: str, timeout: float = WAIT) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: text in self.at, timeout)


def _measure(
    sender: NodeProcess, recipient: NodeProcess, shown: Shown, label: str
) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    # The first DM opens the session; it is resent until the pair is connected.
    while True:
        sender.say(f"/msg {recipient.peer_id} warm-up")
        if shown.wait("warm-up", 5):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the first DM never arrived")
    # The two processes' CPU while idle (heartbeats, keep-alives), to take out of the run's.
    idle_before, idle_began = [cpu_seconds(n) for n in (sender, recipient)], time.monotonic()
    time.sleep(IDLE_SECONDS)
    idle_seconds = time.monotonic() - idle_began
    idle_rate = [
        (cpu_seconds(n) - b) / idle_seconds
        for n, b in zip((sender, recipient), idle_before, strict=True)
    ]
    cpu_before = [cpu_seconds(n) for n in (sender, recipient)]
    sent: dict[str, float] = {}
    began = time.monotonic()
    for index in range(COUNT):
        target = began + index * INTERVAL
        while (now := time.monotonic()) < target:
            time.sleep(target - now)
        text = f"{label} dm {index}"
        sent[text] = time.monotonic()
        sender.say(f"/msg {recipient.peer_id} {text}")
    shown.wait(f"{label} dm {COUNT - 1}")
    time.sleep(1)
    run_seconds = time.monotonic() - began
    cpu_used = [
        cpu_seconds(n) - b - idle * run_seconds
        for n, b, idle in zip((sender, recipient), cpu_before, idle_rate, strict=True)
    ]
    latencies = [(shown.at[t] - at) * 1000 for t, at in sent.items() if t in shown.at]
    return {
        "sent": COUNT,
        "shown": len(latencies),
        "interval_s": INTERVAL,
        "latency_ms_p50": round(statistics.median(latencies), 2) if latencies else None,
        "latency_ms_p99": round(percentile(latencies, 0.99), 2) if latencies else None,
        "latency_ms_max": round(max(latencies), 2) if latencies else None,
        # CPU over the run less what the process used idle for as long, per DM
        "cpu_ms_per_dm_sender_recipient": [round(1000 * u / COUNT, 3) for u in cpu_used],
    }


def direct() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        base = Path(tmp)
        nodes: list[NodeProcess] = []
        try:
            a = start_node(base / "a", "--json", env=node_env(), discard_output=True)
            nodes.append(a)
            b = start_node(
                base / "b", "--json", "--bootstrap", a.addr(), env=node_env(), read_output=False
            )
            nodes.append(b)
            result = _measure(a, b, Shown(b), "direct")
            return {"scenario": "direct", "topology": "A-B over TCP, 127.0.0.1", **result}
        finally:
            for node in nodes:
                node.stop()


def relayed() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        base = Path(tmp)
        nodes: list[NodeProcess] = []
        try:
            # Circuits without go-libp2p's 2 min / 128 KiB limit: this measures a DM's way
            # through a relay, not a circuit's renewal (tests.bench.relayed_chat measures that).
            _, a, b = relayed_pair(base, nodes, relay_env=CHAT_FRIENDLY, b_discards_output=True)
            result = _measure(b, a, Shown(a), "relayed")
            circuits = b.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit")
            return {
                "scenario": "relayed",
                "topology": "B -> relay -> A (A reachable only through the relay), 127.0.0.1",
                **result,
                "relayed_connections_opened_at_b": circuits,
            }
        finally:
            for node in nodes:
                node.stop()


def main(argv: list[str]) -> int:
    for scenario in argv or ["direct", "relayed"]:
        if scenario == "direct":
            result = direct()
        elif scenario == "relayed":
            result = relayed()
        else:
            print(f"unknown scenario {scenario!r}; use direct or relayed", file=sys.stderr)
            return 2
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
