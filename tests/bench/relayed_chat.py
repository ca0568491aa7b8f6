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

Usage: python -m tests.bench.relayed_chat [conversation|overhead ...] (default: conversation);
BENCH_RELAYED_SECONDS sets the conversation's length (default 180; the issue's long run is
1800). One JSON object per scenario. ``overhead``: bytes relayed and relay CPU per chat message
by text size, measured and computed (see :func:`relayed_overhead`).
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


def relayed_pair(base: Path, nodes: list[NodeProcess], **relay_env: str) -> tuple[NodeProcess, ...]:
    """(relay, A, B): B reaches A only through the relay, over as many circuits as it takes."""
    relay = start_node(base / "relay", "--role", "relay", env=node_env(**relay_env))
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
    return relay, a, b


def relayed_conversation() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        nodes: list[NodeProcess] = []
        try:
            relay, a, b = relayed_pair(Path(tmp), nodes)
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
            relayed = relay.metric("libp2p_relaysvc_data_transferred_bytes_total")
            cpu = relay.metric("process_cpu_seconds_total")
            sent = a_to_b["sent"] + b_to_a["sent"]
            text_bytes = sum(len(_text(s.label, i)[1]) for s in sides for i in range(len(s.order)))
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
                    for trigger in ("limit", "listener_limit", "relay_gone")
                    for outcome in ("renewed", "unheard", "failed")
                },
                "relayed_connections_opened_by_b": b.metric(
                    "libp2p_swarm_connections_opened_total", transport="p2p-circuit"
                ),
                "relayed_bytes": relayed,
                "relay_cpu_seconds": cpu,
                # Everything the relay carried (chat, catch-up, re-dial handshakes, control)
                # per message sent, against the texts' own bytes; and the relay's whole CPU
                # (its idle work included) per message.
                "relayed_bytes_per_message": round(relayed / sent) if sent else None,
                "text_bytes_per_message": round(text_bytes / sent) if sent else None,
                "relay_cpu_ms_per_message": round(cpu / sent * 1000, 2) if sent else None,
            }
        finally:
            for node in nodes:
                node.stop()


OVERHEAD_SIZES = (10, 100, 1000, 4000)
OVERHEAD_COUNT = int(os.environ.get("BENCH_OVERHEAD_COUNT", "60"))
OVERHEAD_RATE = 2.0  # messages per second: each its own GossipSub RPC, as at a human pace
IDLE_SECONDS = 20.0
YAMUX_HEADER = 12
NOISE_FRAME = 2 + 16  # length prefix and AEAD tag of one Noise transport message


def _gossip_breakdown(text_bytes: int) -> dict[str, int]:
    """What one chat message of ``text_bytes`` costs on a relayed connection, computed from
    the codecs: p2pchat's payload, the signed GossipSub RPC around it (StrictSign, Ed25519: the
    signer's PeerId, key and signature travel with every message), and the relayed
    connection's own Yamux header and Noise frame (one of each per write)."""
    from libp2p.pubsub.pb import rpc_pb2  # the library's own codec: only the size is used
    from p2pchat.node.wire.chat import ChatText, encode, new_message_id

    payload = encode(
        ChatText(new_message_id(), "p2p-chat-default", "anon", "z" * text_bytes, 1 << 40)
    )
    message = rpc_pb2.Message(
        from_id=b"\0" * 38,  # an Ed25519 PeerId (identity multihash)
        data=payload,
        seqno=b"\0" * 8,
        topicIDs=["p2p-chat-default"],
        signature=b"\0" * 64,
        key=b"\0" * 36,  # the serialized Ed25519 public key py-libp2p adds
    )
    rpc = rpc_pb2.RPC(publish=[message]).SerializeToString()
    prefix = len(_uvarint(len(rpc)))
    return {
        "text": text_bytes,
        "chat_payload_overhead": len(payload) - text_bytes,
        "gossipsub_rpc_overhead": len(rpc) + prefix - len(payload),
        "yamux_noise_overhead": YAMUX_HEADER + NOISE_FRAME,
        "total": len(rpc) + prefix + YAMUX_HEADER + NOISE_FRAME,
    }


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _relay_counters(relay: NodeProcess) -> tuple[float, float, float]:
    """(relayed bytes, relay CPU seconds, when)."""
    return (
        relay.metric("libp2p_relaysvc_data_transferred_bytes_total"),
        relay.metric("process_cpu_seconds_total"),
        time.monotonic(),
    )


def relayed_overhead() -> dict[str, Any]:
    """Bytes the relay carries, and CPU it spends, per chat message, by text size.

    A relayed pair as in :func:`relayed_conversation`, but on chat-friendly circuits (127.0.0.1
    is listed in ``relay.chat_peers``) so no reset or catch-up mixes in. First the idle cost
    (GossipSub heartbeats, keep-alive pings) over ``IDLE_SECONDS``; then, for each size, A sends
    ``OVERHEAD_COUNT`` messages at ``OVERHEAD_RATE`` per second and B shows them all; the idle
    rate is subtracted. Beside the measured bytes, the computed breakdown of one message.
    """
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        nodes: list[NodeProcess] = []
        try:
            relay, a, b = relayed_pair(Path(tmp), nodes, P2PCHAT_RELAY__CHAT_PEERS="127.0.0.1/32")
            receiver = Side(b, "B")
            stop = threading.Event()
            threading.Thread(target=receiver.read, args=(stop,), daemon=True).start()
            time.sleep(5)  # the pair's opening exchanges (identify, subscriptions, catch-up)
            idle0 = _relay_counters(relay)
            time.sleep(IDLE_SECONDS)
            idle1 = _relay_counters(relay)
            idle_bytes_s = (idle1[0] - idle0[0]) / (idle1[2] - idle0[2])
            idle_cpu_s = (idle1[1] - idle0[1]) / (idle1[2] - idle0[2])
            rows = []
            index = 0
            for size in OVERHEAD_SIZES:
                before = _relay_counters(relay)
                keys = []
                for _ in range(OVERHEAD_COUNT):
                    key = f"A{index}"
                    a.say(f"A {key} " + "z" * size)
                    keys.append(key)
                    index += 1
                    time.sleep(1 / OVERHEAD_RATE)
                deadline = time.monotonic() + 60
                while any(k not in receiver.shown for k in keys):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"B did not show the {size}-byte messages")
                    time.sleep(0.2)
                time.sleep(2)  # window updates and the like that follow the last message
                after = _relay_counters(relay)
                elapsed = after[2] - before[2]
                carried = after[0] - before[0] - idle_bytes_s * elapsed
                cpu = after[1] - before[1] - idle_cpu_s * elapsed
                text = len(f"A {keys[0]} ") + size
                measured = carried / OVERHEAD_COUNT
                rows.append(
                    {
                        "text_bytes": text,
                        "relayed_bytes_per_message": round(measured),
                        "overhead_bytes_per_message": round(measured - text),
                        "relay_cpu_us_per_message": round(cpu / OVERHEAD_COUNT * 1e6),
                        "computed": _gossip_breakdown(text),
                    }
                )
            stop.set()
            return {
                "scenario": "relayed_overhead",
                "messages_per_size": OVERHEAD_COUNT,
                "rate": OVERHEAD_RATE,
                "idle_relayed_bytes_per_s": round(idle_bytes_s, 1),
                "idle_relay_cpu_share": round(idle_cpu_s, 4),
                "sizes": rows,
            }
        finally:
            for node in nodes:
                node.stop()


SCENARIOS = {"conversation": relayed_conversation, "overhead": relayed_overhead}


def main(argv: list[str]) -> None:
    for name in argv or ["conversation"]:
        print(json.dumps(SCENARIOS[name]()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
