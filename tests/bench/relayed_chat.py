"""A conversation that stays relayed, through a relay with go-libp2p's default limits (issue #21).

Three real processes on 127.0.0.1: a relay (defaults: a circuit is reset after 2 minutes or
128 KiB per direction), A (holds a reservation there) and B (knows only A's circuit address).
Both announce a dead port, so neither can dial the other directly: every byte between them
goes through the relay, over as many circuits as it takes (B's bootstrap keep-alive dials A's
circuit address again whenever the relay resets one).

Both send at a human pace (tests/relayed_conversation.py, the driver the NAT lab's test and
benchmark use too): 1 message per second each, texts of random length up to 4 KiB, plus a
burst of 50 messages every ``BENCH_RELAYED_BURST_EVERY`` seconds, for ``BENCH_RELAYED_SECONDS``
seconds; then up to 90 seconds pass for catch-up. Reported, per direction and together: sent,
shown (live or caught up), shown twice, shown out of the sender's order, lost; the time from
sending to being shown (p50, p99, max); the relay's circuit resets; the peers' next circuits
(opened before a limit, or at once after a loss: :mod:`p2pchat.node.circuit_renewal`) and
relayed connections opened.

Usage: python -m tests.bench.relayed_chat [conversation|overhead ...] (default: conversation);
BENCH_RELAYED_SECONDS sets the conversation's length (default 180; the 30-minute run is in
the NAT lab: tests/bench/relayed_nat.py). One JSON object per scenario. ``overhead``: bytes
relayed and relay CPU per chat message by text size, measured and computed (see
:func:`relayed_overhead`).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.relayed_pair import relayed_pair
from tests.conftest import NodeProcess
from tests.relayed_conversation import (
    Scenario,
    Side,
    circuit_figures,
    converse,
    faults,
    summary,
)

BURSTY = {"P2PCHAT_PUBSUB__SENDER_BURST": "100"}  # the 50-message burst, with room

SCENARIO = Scenario(
    seconds=float(os.environ.get("BENCH_RELAYED_SECONDS", "180")),
    burst_every=float(os.environ.get("BENCH_RELAYED_BURST_EVERY", "300")),
    first_burst=float(os.environ.get("BENCH_RELAYED_FIRST_BURST", "60")),
)


def relayed_conversation() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
        nodes: list[NodeProcess] = []
        try:
            relay, a, b = relayed_pair(Path(tmp), nodes, peer_env=BURSTY)
            report = summary(converse(a, b, SCENARIO))
            figures = circuit_figures(relay, (a, b), report["messages"])
            messages = report["messages"]
            return {
                "scenario": "relayed_conversation",
                "seconds": SCENARIO.seconds,
                "relay_limits": "default (120 s, 128 KiB per direction)",
                "faults": faults(report),
                **report,
                **figures,
                # Everything the relay carried (chat, catch-up, re-dial handshakes, control)
                # per message sent, against the texts' own bytes; and the relay's whole CPU
                # (its idle work included) per message.
                "text_bytes_per_message": round(report["text_bytes"] / messages),
                "relay_cpu_ms_per_message": round(
                    figures["relay_cpu_seconds"] / messages * 1000, 2
                ),
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
            relay, a, b = relayed_pair(
                Path(tmp),
                nodes,
                relay_env={"P2PCHAT_RELAY__CHAT_PEERS": "127.0.0.1/32"},
                peer_env=BURSTY,
            )
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
