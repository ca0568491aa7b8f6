"""A long conversation through real symmetric NATs and a relay with default limits (#21).

The setup of tests/test_relayed_nat_chat.py (network namespaces, both NATs symmetric so every
hole punch fails; the relay resets a circuit after 2 minutes or 128 KiB per direction), the
driver of tests/relayed_conversation.py, longer:

- ``long``: 30 minutes (``BENCH_RELAYED_NAT_SECONDS``) at 1 text/s each way, texts of random
  length up to 4 KiB, a burst of 50 texts every 5 minutes from the first;
- ``overburst``: 4 minutes (``BENCH_OVERBURST_SECONDS``) at 1 text/s, plus every minute a burst
  of 40 texts of 4 KiB each way (160 KiB: more than a whole circuit's budget, so always more
  than what is left of the current one): does the next circuit keep up, is anything lost?

Printed, one JSON object per scenario: per direction sent, shown, lost, shown twice, shown out
of the sender's order, the time from sending to shown (p50, p99, max); the relay's circuit
resets, the peers' next circuits (before the limit, or after a loss) and relayed connections,
the bytes the relay carried per message. Needs root, iproute2 and iptables.

Usage: python -m tests.bench.relayed_nat [long|overburst ...] (default: long).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess
from tests.nat_lab import nat_lab
from tests.relayed_conversation import Scenario, circuit_figures, converse, faults, summary
from tests.test_relayed_nat_chat import symmetric_pair

SCENARIOS = {
    "long": Scenario(
        seconds=float(os.environ.get("BENCH_RELAYED_NAT_SECONDS", "1800")),
        first_burst=60,
        burst_every=300,
    ),
    "overburst": Scenario(
        seconds=float(os.environ.get("BENCH_OVERBURST_SECONDS", "240")),
        burst=40,
        first_burst=30,
        burst_every=60,
        burst_text=4096,
    ),
}


def run(name: str) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    with tempfile.TemporaryDirectory(prefix="p2pchat-bench-") as tmp, nat_lab("symmetric") as lab:
        nodes: list[NodeProcess] = []
        try:
            relay, a, b = symmetric_pair(lab, Path(tmp), nodes)
            began = time.monotonic()
            report = summary(converse(a, b, scenario))
            report.update(circuit_figures(relay, (a, b), report["messages"]))
            return {
                "scenario": f"relayed_nat_{name}",
                "nat": "symmetric",
                "relay_limits": "default (120 s, 128 KiB per direction)",
                "seconds": scenario.seconds,
                "bursts": f"{scenario.burst} every {scenario.burst_every:g} s from "
                f"{scenario.first_burst:g} s"
                + (f", {scenario.burst_text} B each" if scenario.burst_text else ""),
                "wall_seconds": round(time.monotonic() - began),
                "faults": faults(report),
                "hole_punch_successes": sum(
                    n.metric("libp2p_holepunch_outcomes_total", outcome="success") for n in (a, b)
                ),
                **report,
            }
        finally:
            for node in nodes:
                node.stop()


def main(argv: list[str]) -> None:
    for name in argv or ["long"]:
        print(json.dumps(run(name)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
