"""Hole punching through the namespace NAT lab of tests/nat_lab.py (issue #4 benchmark).

Each trial builds the lab with port-preserving NAT, starts a relay, a listener (reserving on
it) and a dialer that knows only the listener's circuit address, and measures the time from
the dialer's relayed connection to the listener's "hole punch succeeded" (identify, the
direct dial that fails, the CONNECT/SYNC exchange and the punch itself), and the round trip
the initiator measured over the relay. Needs root, iproute2 and iptables.

Usage: python -m tests.bench.holepunch; one JSON object. BENCH_PUNCH_TRIALS sets the trials.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess, node_env, start_node
from tests.nat_lab import nat_lab
from tests.test_autorelay import CHAT_FRIENDLY, logged

TRIALS = int(os.environ.get("BENCH_PUNCH_TRIALS", "5"))


def _at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


def _trial(base: Path) -> tuple[float, float, int] | None:
    """(seconds from relayed connection to punched, relay RTT in ms, attempts), or None."""
    nodes: list[NodeProcess] = []
    with nat_lab("port-preserving") as lab:
        try:

            def node(name: str, ns: str, ip: str, *args: str, **env: str) -> NodeProcess:
                started = start_node(
                    base / name,
                    *args,
                    "--listen",
                    f"/ip4/{ip}/tcp/0",
                    env=node_env(**env),
                    netns=ns,
                )
                nodes.append(started)
                return started

            relay = node("relay", lab.relay_ns, lab.relay_ip, "--role", "relay", **CHAT_FRIENDLY)
            relay_addr = next(
                a for a in relay.ready["advertised"] if a.startswith(f"/ip4/{lab.relay_ip}/")
            )
            listener = node(
                "listener",
                lab.listener_ns,
                lab.listener_ip,
                P2PCHAT_AUTORELAY__MODE="on",
                P2PCHAT_AUTORELAY__RELAYS=relay_addr,
            )
            logged(listener, "relay reservation", relay=relay.peer_id)
            circuit = f"{relay_addr}/p2p-circuit/p2p/{listener.peer_id}"
            dialer = node("dialer", lab.dialer_ns, lab.dialer_ip, "--bootstrap", circuit)
            relayed = logged(dialer, "peer connected", remote=listener.peer_id)
            try:
                punched = logged(listener, "hole punch succeeded", timeout=90)
            except AssertionError:
                return None
            return _at(punched) - _at(relayed), punched["rtt"] * 1000, punched["attempts"]
        finally:
            for started in nodes:
                started.stop()


def main() -> None:
    results = []
    for trial in range(TRIALS):
        with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp:
            results.append(_trial(Path(tmp) / str(trial)))
    done = [r for r in results if r is not None]
    seconds = [r[0] for r in done]
    print(
        json.dumps(
            {
                "scenario": "holepunch_port_preserving_nat",
                "trials": TRIALS,
                "direct": len(done),
                "first_attempt": sum(1 for r in done if r[2] == 1),
                "seconds_relayed_to_direct_median": round(statistics.median(seconds), 2)
                if seconds
                else None,
                "seconds_relayed_to_direct_max": round(max(seconds), 2) if seconds else None,
                "relay_rtt_ms_median": round(statistics.median(r[1] for r in done), 1)
                if done
                else None,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
