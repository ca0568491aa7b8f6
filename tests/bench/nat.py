"""Hole punching through the container NAT lab of ops/compose/nat.yml, per NAT type (issue #6).

For each NAT type one topology is brought up (routers, bootstrap, relay, archiver, peer A behind
router A); A reserves a slot on the relay. Then each attempt recreates peer B behind router B on
a fresh listen port (fresh NAT mappings and sockets, as a new peer would have), knowing A's
circuit address: B dials A through the relay, A (which received the relayed connection) tries
to punch through both NATs, and the attempt ends with A's "hole punch succeeded" or "hole punch
failed". Measured:

- success over the attempts, and on which DCUtR round it came;
- the time from A's relayed connection to its punched one (p50 / p90 / max): identify, the
  direct dial of B's advertised (private) addresses, the CONNECT/SYNC exchange and the
  simultaneous open;
- the relay round trip that DCUtR measured (CONNECT to CONNECT over the relay);
- a chat round trip on the connection the peers end with: A says a line, the benchmark waits
  for it at B and makes B answer, and times A's line to B's answer arriving at A. It includes
  the benchmark's own path (the engine's attach socket and log stream, both ways) and two
  signed GossipSub messages (the archiver in the room gets them too); it is what separates
  relayed from direct here, as the lab's links add no delay. For it a last B is started as
  the suite starts one (it finds A through the DHT), and measured once settled: two batches of
  BENCH_NAT_ECHOES after a few unmeasured ones.

Usage: python -m tests.bench.nat [port-preserving] [symmetric]; one JSON object per scenario
on stdout (progress on stderr). BENCH_NAT_ATTEMPTS sets the attempts (default 20),
BENCH_NAT_ECHOES the chat round trips per batch (default 20). Needs what the NAT suite
(tests/nat) needs: the engine; it builds the image with ``make image``'s script unless
NAT_LAB_IMAGE names one. About 15 minutes on this project's machine kind.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.nat.lab import MEET_WAIT, NATS, LabPeer, Topology, build_images, engine

ATTEMPTS = int(os.environ.get("BENCH_NAT_ATTEMPTS", "20"))
ECHOES = int(os.environ.get("BENCH_NAT_ECHOES", "20"))
OUTCOME_WAIT = 120.0
SETTLE = 10.0
WARM_UP = 3
ECHO_BATCHES = 2
B_PORT = 4102


def _say(text: str) -> None:
    print(f"bench.nat: {text}", file=sys.stderr, flush=True)


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


def _find(
    node: LabPeer, start: int, event: str, **fields: Any
) -> tuple[int, dict[str, Any]] | None:
    log = node.read_logs()
    for index in range(start, len(log)):
        entry = log[index]
        if entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items()):
            return index, entry
    return None


def _outcome(a: LabPeer, b: LabPeer, start: int, wait: float = OUTCOME_WAIT) -> dict[str, Any]:
    """What A's logs from entry ``start`` on say about B: the relayed connection between them
    and the hole punch over it."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        relayed = _find(a, start, "peer connected", remote=b.peer_id, transport="p2p-circuit")
        if relayed is not None:
            done = _find(a, relayed[0], "hole punch succeeded", peer=b.peer_id) or _find(
                a, relayed[0], "hole punch failed; staying relayed", peer=b.peer_id
            )
            if done is not None:
                entry = done[1]
                return {
                    "direct": entry["event"] == "hole punch succeeded",
                    "side": entry.get("side"),
                    "attempts": entry.get("attempts"),
                    "seconds": _at(entry) - _at(relayed[1]),
                    "rtt_ms": entry["rtt"] * 1000 if "rtt" in entry else None,
                }
        time.sleep(0.2)
    return {"direct": False, "side": None, "attempts": None, "seconds": None, "rtt_ms": None}


def _attempt(lab: Topology, a: LabPeer, circuit: str, number: int) -> dict[str, Any]:
    """One attempt: a fresh B dials A through the relay; what A's logs say about it."""
    start = len(a.read_logs())
    lab.recreate("peer-b", LAB_PEER_B_PORT=str(B_PORT + number), LAB_PEER_B_BOOTSTRAP=circuit)
    return _outcome(a, lab.peers["peer-b"], start)


def _echoes(a: LabPeer, b: LabPeer, count: int) -> list[float]:
    """Chat round trips A -> B -> A in milliseconds."""
    rtts = []
    for n in range(count):
        ping, pong = f"ping {n} {time.time()}", f"pong {n}"
        started = time.monotonic()
        a.say(ping)
        b.next_event(lambda e, t=ping: e["type"] == "message" and e["text"] == t)
        b.say(pong)
        a.next_event(lambda e, t=pong: e["type"] == "message" and e["text"] == t)
        rtts.append((time.monotonic() - started) * 1000)
    return rtts


def _connection(node: LabPeer, peer: str) -> str:
    node.say("/peers")
    answer = node.next_event(lambda e: e["type"] == "output" and e["command"] == "peers")
    return str({p["peer"]: p["connection"] for p in answer["data"]["peers"]}.get(peer, "none"))


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "max": None}
    ordered = sorted(values)
    p90 = ordered[0]
    if len(ordered) > 1:
        p90 = statistics.quantiles(ordered, n=10, method="inclusive")[8]
    return {"p50": statistics.median(ordered), "p90": p90, "max": ordered[-1]}


def _rounded(stats: dict[str, float | None], digits: int) -> dict[str, float | None]:
    return {key: None if value is None else round(value, digits) for key, value in stats.items()}


def run(nat: str, image: str, router_image: str, workdir: Path) -> dict[str, Any]:
    client = engine()
    lab = Topology(client, nat, image, router_image, workdir / nat)
    try:
        # Everything but B. A reserves a slot on the relay once AutoNAT finds it private.
        lab.up(["bootstrap", "relay", "archiver", "router-a", "router-b", "net-b", "peer-a"])
        a = lab.peers["peer-a"]
        deadline = time.monotonic() + OUTCOME_WAIT
        while _find(a, 0, "relay reservation") is None:
            assert time.monotonic() < deadline, "peer A never got a relay reservation"
            time.sleep(0.5)
        circuit = f"{lab.addr('relay')}/p2p-circuit/p2p/{a.peer_id}"
        results = []
        for number in range(1, ATTEMPTS + 1):
            result = _attempt(lab, a, circuit, number)
            _say(f"{nat} attempt {number}: {result}")
            results.append(result)
        # The round trips: B as the suite runs it (no address of A given: they meet through
        # the DHT and the relay, then punch or not), once it has settled. (Measured on the B
        # of the last attempt instead, freshly started with A's circuit address, they came out
        # 1.5-4 times longer and noisier.)
        start = len(a.read_logs())
        lab.recreate("peer-b", LAB_PEER_B_PORT=str(B_PORT), LAB_PEER_B_BOOTSTRAP="")
        b = lab.peers["peer-b"]
        met = _outcome(a, b, start, wait=MEET_WAIT)
        assert met["seconds"] is not None, "the last B never reached A"
        time.sleep(SETTLE)
        kind = _connection(a, b.peer_id)
        _echoes(a, b, WARM_UP)
        echoes = []
        for _ in range(ECHO_BATCHES):
            echoes += _echoes(a, b, ECHOES)
            time.sleep(SETTLE)
        direct = [r for r in results if r["direct"]]
        seconds = [r["seconds"] for r in direct if r["seconds"] is not None]
        relay_rtts = [r["rtt_ms"] for r in results if r["rtt_ms"] is not None]
        return {
            "scenario": f"nat_holepunch_{nat.replace('-', '_')}",
            "attempts": len(results),
            "direct": len(direct),
            "failed": sum(1 for r in results if r["seconds"] is not None and not r["direct"]),
            "no_outcome": sum(1 for r in results if r["seconds"] is None),
            "first_round": sum(1 for r in direct if r["attempts"] == 1),
            "seconds_relayed_to_direct": _rounded(_quantiles(seconds), 2),
            "dcutr_relay_rtt_ms": _rounded(_quantiles(relay_rtts), 1),
            "chat_echo_connection": kind,
            "chat_echo_rtt_ms": _rounded(_quantiles(echoes), 1),
        }
    finally:
        lab.down()


def main() -> None:
    nats = [arg for arg in sys.argv[1:] if arg in NATS] or list(NATS)
    image, router_image = build_images()
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-nat-") as tmp:
        for nat in nats:
            print(json.dumps(run(nat, image, router_image, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
