"""A conversation that stays relayed, through a relay with go-libp2p's default limits (issue #21).

Three real processes on 127.0.0.1: a relay (defaults: a circuit is reset after 2 minutes or
128 KiB per direction), A (holds a reservation there) and B (knows only A's circuit address).
Both announce a dead port, so neither can dial the other directly: every byte between them
goes through the relay, over as many circuits as it takes (B's bootstrap keep-alive dials A's
circuit address again whenever the relay resets one).

Both send at a human pace, ``RATE`` messages per second each, texts of 100 to 4,000 bytes, plus
a burst of ``BURST`` messages every ``BURST_EVERY`` seconds, for ``SECONDS`` seconds; then up
to ``SETTLE`` seconds pass for catch-up. Reported, per direction and together: sent, shown
(live or caught up), shown twice, shown out of the sender's order, lost; the time from sending
to being shown (p50, p99, max); the relay's circuit resets; B's next circuits (opened before a
limit, or at once after a loss: :mod:`p2pchat.node.circuit_renewal`) and relayed connections opened.

Usage: python -m tests.bench.relayed_chat; BENCH_RELAYED_SECONDS sets the length (default 180;
the issue's long run is 1800). One JSON object.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.chat import percentile
from tests.conftest import NodeProcess, node_env, start_node
from tests.test_autorelay import dead_port, tcp_circuit

SECONDS = float(os.environ.get("BENCH_RELAYED_SECONDS", "180"))
RATE = 1.0
BURST = 50
BURST_EVERY = float(os.environ.get("BENCH_RELAYED_BURST_EVERY", "300"))
BURST_AT = float(os.environ.get("BENCH_RELAYED_FIRST_BURST", "60"))
SETTLE = 90.0
SIZES = (100, 400, 1000, 2000, 4000)


@dataclass
class Side:
    """One peer's view: what it sent (text -> when) and what it showed (text -> times)."""

    node: NodeProcess
    label: str
    sent: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # texts in the order this side sent them
    shown: dict[str, list[float]] = field(default_factory=dict)
    shown_order: list[str] = field(default_factory=list)

    def read(self, stop: threading.Event) -> None:
        assert self.node.proc.stdout is not None
        for line in self.node.proc.stdout:
            at = time.monotonic()
            if '"type": "message"' not in line:
                continue
            event = json.loads(line)
            text = event.get("text", "")
            if not text.startswith(("A ", "B ")) or text.startswith(self.label):
                continue
            key = text.split(" ", 2)[1]
            self.shown.setdefault(key, []).append(at)
            self.shown_order.append(key)
            if stop.is_set():
                return


def _text(label: str, index: int) -> tuple[str, str]:
    key = f"{label}{index}"
    size = SIZES[index % len(SIZES)]
    return key, f"{label} {key} " + "z" * size


def _talk(side: Side, began: float, stop: threading.Event) -> None:
    """Send at RATE, with a burst every BURST_EVERY s from BURST_AT, until SECONDS pass."""
    index = 0
    next_burst = BURST_AT
    while (elapsed := time.monotonic() - began) < SECONDS:
        count = 1
        if elapsed >= next_burst:
            count, next_burst = BURST, next_burst + BURST_EVERY
        for _ in range(count):
            key, text = _text(side.label, index)
            side.sent[key] = time.monotonic()
            side.order.append(key)
            side.node.say(text)
            index += 1
        target = began + index / RATE if count == 1 else time.monotonic() + 1 / RATE
        time.sleep(max(0.0, min(target - time.monotonic(), 1 / RATE)) + random.random() * 0.01)


def _direction(sender: Side, receiver: Side) -> dict[str, Any]:
    latencies = [
        (receiver.shown[key][0] - sender.sent[key]) * 1000
        for key in sender.order
        if key in receiver.shown
    ]
    shown_keys = [k for k in receiver.shown_order if k in sender.sent]
    first_seen: list[str] = []
    seen: set[str] = set()
    for key in shown_keys:
        if key not in seen:
            seen.add(key)
            first_seen.append(key)
    rank = {key: n for n, key in enumerate(sender.order)}
    out_of_order = sum(1 for a, b in itertools.pairwise(first_seen) if rank[b] < rank[a])
    return {
        "sent": len(sender.order),
        "shown": len(seen),
        "lost": len(sender.order) - len(seen),
        "shown_twice": sum(1 for times in receiver.shown.values() if len(times) > 1),
        "shown_out_of_order": out_of_order,
        "delay_ms_p50": round(percentile(latencies, 0.5)) if latencies else None,
        "delay_ms_p99": round(percentile(latencies, 0.99)) if latencies else None,
        "delay_ms_max": round(max(latencies)) if latencies else None,
    }


def relayed_conversation() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        base = Path(tmp)
        nodes: list[NodeProcess] = []
        try:
            relay = start_node(base / "relay", "--role", "relay", env=node_env())
            nodes.append(relay)
            unreachable = {
                "P2PCHAT_HOLEPUNCH__ENABLED": "false",
                "P2PCHAT_PUBSUB__SENDER_BURST": "100",  # the 50-message burst, with room
            }
            a = start_node(
                base / "a",
                "--json",
                env=node_env(
                    P2PCHAT_AUTORELAY__MODE="on",
                    P2PCHAT_AUTORELAY__RELAYS=relay.addr(),
                    P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
                    **unreachable,
                ),
                read_output=False,
            )
            nodes.append(a)
            circuit = f"{tcp_circuit(a, relay)}/p2p/{a.peer_id}"
            b = start_node(
                base / "b",
                "--json",
                "--bootstrap",
                circuit,
                env=node_env(
                    P2PCHAT_AUTORELAY__MODE="off",
                    P2PCHAT_NODE__ANNOUNCE=f"/ip4/127.0.0.1/tcp/{dead_port()}",
                    **unreachable,
                ),
                read_output=False,
            )
            nodes.append(b)
            deadline = time.monotonic() + 60
            while a.metric("p2pchat_room_peers") < 1 or b.metric("p2pchat_room_peers") < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the relayed pair did not form")
                time.sleep(0.2)
            sides = Side(a, "A"), Side(b, "B")
            stop = threading.Event()
            for side in sides:
                threading.Thread(target=side.read, args=(stop,), daemon=True).start()
            began = time.monotonic()
            talkers = [threading.Thread(target=_talk, args=(s, began, stop)) for s in sides]
            for talker in talkers:
                talker.start()
            for talker in talkers:
                talker.join()
            settle_end = time.monotonic() + SETTLE
            while time.monotonic() < settle_end:
                if all(len(o.shown) >= len(s.order) for s, o in (sides, sides[::-1])):
                    break
                time.sleep(0.5)
            stop.set()
            a_to_b, b_to_a = _direction(sides[0], sides[1]), _direction(sides[1], sides[0])
            return {
                "scenario": "relayed_conversation",
                "seconds": SECONDS,
                "relay_limits": "default (120 s, 128 KiB per direction)",
                "a_to_b": a_to_b,
                "b_to_a": b_to_a,
                "circuit_resets": {
                    limit: relay.metric("p2pchat_relay_circuit_resets_total", limit=limit)
                    for limit in ("data", "duration")
                },
                "next_circuits_by_b": {
                    f"{trigger}/{outcome}": b.metric(
                        "p2pchat_relayed_circuit_renewals_total", trigger=trigger, outcome=outcome
                    )
                    for trigger in ("limit", "relay_gone")
                    for outcome in ("renewed", "unheard", "failed")
                },
                "relayed_connections_opened_by_b": b.metric(
                    "libp2p_swarm_connections_opened_total", transport="p2p-circuit"
                ),
                "relayed_bytes": relay.metric("libp2p_relaysvc_data_transferred_bytes_total"),
                "relay_cpu_seconds": relay.metric("process_cpu_seconds_total"),
            }
        finally:
            for node in nodes:
                node.stop()


def main(argv: list[str]) -> None:
    print(json.dumps(relayed_conversation()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
