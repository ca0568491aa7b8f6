"""A conversation at a human pace between two ``--json`` peers, and what each side saw (#21).

The one driver of relayed conversations, shared by the CI test (tests/test_relayed_nat_chat.py,
shortened) and the benchmarks (tests/bench/relayed_chat.py on loopback, tests/bench/
relayed_nat.py in the NAT lab, 30 minutes): a :class:`Scenario` (pace, bursts, text sizes,
duration), :func:`converse` to play it on two running nodes, and :func:`direction` /
:func:`summary` to tell, per sender, what the other side showed: sent, shown, lost, shown twice,
shown out of the sender's order, and the time from sending to shown (p50, p99, max).

Texts are ``"<label> <key> <filler>"`` (label ``A`` or ``B``, key ``A17``: the 18th text A
sent), of a random length up to ``max_text`` bytes, the same for every run (seeded by the key).
Times are taken in this process: just before the line is written to the sender's stdin, and
when the receiver's stdout line announcing the message is read.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.bench.chat import percentile
from tests.conftest import NodeProcess


@dataclass(frozen=True)
class Scenario:
    """Both sides send ``rate`` texts per second for ``seconds``, plus ``burst`` texts at once
    at ``first_burst`` s and every ``burst_every`` s after; texts of ``min_text`` to
    ``max_text`` bytes (``burst_text``: the burst's texts all of that size instead). Then up
    to ``settle`` seconds for the last texts (and any catch-up) to be shown."""

    seconds: float
    rate: float = 1.0
    burst: int = 50
    first_burst: float = 60.0
    burst_every: float = 300.0
    min_text: int = 20
    max_text: int = 4096
    burst_text: int | None = None
    settle: float = 90.0

    def text(self, label: str, index: int, *, in_burst: bool = False) -> tuple[str, str]:
        """(key, text) of the ``index``-th text ``label`` sends."""
        key = f"{label}{index}"
        prefix = f"{label} {key} "
        size = self.burst_text if in_burst and self.burst_text else None
        if size is None:
            size = random.Random(key).randint(self.min_text, self.max_text)
        return key, prefix + "z" * max(1, size - len(prefix))

    def bursts_at(self) -> list[float]:
        """Seconds after the start at which a burst is sent."""
        out, at = [], self.first_burst
        while self.burst and at < self.seconds:
            out.append(at)
            at += self.burst_every
        return out


@dataclass
class Side:
    """One peer's view: what it sent (key -> when, and in which order) and what it showed
    (key -> every time it was shown, and the order)."""

    node: NodeProcess
    label: str
    sent: dict[str, float] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    sent_bytes: int = 0
    shown: dict[str, list[float]] = field(default_factory=dict)
    shown_order: list[str] = field(default_factory=list)

    def read(self, stop: threading.Event) -> None:
        """Read the node's stdout (started with ``read_output=False``) until it ends or
        ``stop`` is set, noting every message of the other side as it is shown."""
        assert self.node.proc.stdout is not None
        for line in self.node.proc.stdout:
            at = time.monotonic()
            if stop.is_set():
                return
            if '"type": "message"' not in line:
                continue
            event = json.loads(line)
            text = event.get("text", "")
            if not text.startswith(("A ", "B ")) or text.startswith(self.label):
                continue
            key = text.split(" ", 2)[1]
            self.shown.setdefault(key, []).append(at)
            self.shown_order.append(key)

    def send(self, scenario: Scenario, *, in_burst: bool = False) -> None:
        key, text = scenario.text(self.label, len(self.order), in_burst=in_burst)
        self.sent[key] = time.monotonic()
        self.order.append(key)
        self.sent_bytes += len(text.encode())
        self.node.say(text)


def _talk(side: Side, scenario: Scenario, began: float) -> None:
    """Send at ``scenario.rate`` on a fixed schedule from ``began``, a burst when one is due."""
    bursts = scenario.bursts_at()
    tick = 0
    while (due := began + tick / scenario.rate) < began + scenario.seconds:
        time.sleep(max(0.0, due - time.monotonic()))
        if bursts and due - began >= bursts[0]:
            bursts.pop(0)
            for _ in range(scenario.burst):
                side.send(scenario, in_burst=True)
        else:
            side.send(scenario)
        tick += 1


def converse(a: NodeProcess, b: NodeProcess, scenario: Scenario) -> tuple[Side, Side]:
    """Play ``scenario`` between ``a`` (label A) and ``b`` (label B), both ``--json`` nodes
    started with ``read_output=False``; return once every text was shown on the other side or
    ``scenario.settle`` seconds passed after the last was sent."""
    sides = Side(a, "A"), Side(b, "B")
    stop = threading.Event()
    for side in sides:
        threading.Thread(target=side.read, args=(stop,), daemon=True).start()
    began = time.monotonic()
    talkers = [threading.Thread(target=_talk, args=(s, scenario, began)) for s in sides]
    for talker in talkers:
        talker.start()
    for talker in talkers:
        talker.join()
    settle_end = time.monotonic() + scenario.settle
    while time.monotonic() < settle_end:
        if all(set(s.order) <= set(o.shown) for s, o in (sides, sides[::-1])):
            break
        time.sleep(0.5)
    time.sleep(2)  # a duplicate that would come right after the last text
    stop.set()
    return sides


def _delays(sender: Side, receiver: Side) -> list[float]:
    """Milliseconds from sending to first shown, of every text shown."""
    return [
        (receiver.shown[key][0] - sender.sent[key]) * 1000
        for key in sender.order
        if key in receiver.shown
    ]


def _figures(delays: list[float]) -> dict[str, int | None]:
    return {
        "delay_ms_p50": round(percentile(delays, 0.5)) if delays else None,
        "delay_ms_p99": round(percentile(delays, 0.99)) if delays else None,
        "delay_ms_max": round(max(delays)) if delays else None,
    }


def direction(sender: Side, receiver: Side) -> dict[str, Any]:
    """What ``receiver`` showed of what ``sender`` sent."""
    first_seen: list[str] = []
    seen: set[str] = set()
    for key in receiver.shown_order:
        if key in sender.sent and key not in seen:
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
        "unknown_shown": sum(1 for key in receiver.shown if key not in sender.sent),
        **_figures(_delays(sender, receiver)),
    }


def summary(sides: tuple[Side, Side]) -> dict[str, Any]:
    """Both directions, and the delays of both together."""
    a, b = sides
    return {
        "a_to_b": direction(a, b),
        "b_to_a": direction(b, a),
        "both": _figures(_delays(a, b) + _delays(b, a)),
        "messages": len(a.order) + len(b.order),
        "text_bytes": a.sent_bytes + b.sent_bytes,
    }


def faults(report: dict[str, Any]) -> list[str]:
    """What breaks "every message delivered exactly once, in order within each sender"."""
    out = []
    for way in ("a_to_b", "b_to_a"):
        for what in ("lost", "shown_twice", "shown_out_of_order", "unknown_shown"):
            if report[way][what]:
                out.append(f"{way}: {what} {report[way][what]}")
    return out


RENEWAL_TRIGGERS = ("limit", "listener_limit", "relay_gone")
RENEWAL_OUTCOMES = ("renewed", "unheard", "failed")


def circuit_figures(
    relay: NodeProcess, peers: tuple[NodeProcess, ...], messages: int
) -> dict[str, Any]:
    """What carrying the conversation took, from the nodes' metrics: the relay's circuit resets
    by limit, the peers' next circuits by trigger and outcome (``limit``: opened before the
    relay's limit by the dialler, ``listener_limit`` by the listener; ``relay_gone``: dialled
    again after a circuit was lost), the relayed
    connections they opened, and the bytes the relay carried (in both directions: chat,
    catch-up, control, handshakes), in all and per message sent."""
    relayed = relay.metric("libp2p_relaysvc_data_transferred_bytes_total")
    renewals = {
        f"{trigger}/{outcome}": sum(
            peer.metric("p2pchat_relayed_circuit_renewals_total", trigger=trigger, outcome=outcome)
            for peer in peers
        )
        for trigger in RENEWAL_TRIGGERS
        for outcome in RENEWAL_OUTCOMES
    }
    return {
        "circuit_resets": {
            limit: relay.metric("p2pchat_relay_circuit_resets_total", limit=limit)
            for limit in ("data", "duration")
        },
        "next_circuits": {k: v for k, v in renewals.items() if v},
        # Both directions: with the listener's renewals a peer opens circuits either way, and
        # metric() reads one sample (a CI run counted 2 of them while 4 renewals were made).
        "relayed_connections_opened": sum(
            peer.metric("libp2p_swarm_connections_opened_total", transport="p2p-circuit", dir=d)
            for peer in peers
            for d in ("inbound", "outbound")
        ),
        "relayed_bytes": relayed,
        "relayed_bytes_per_message": round(relayed / messages) if messages else None,
        "relay_cpu_seconds": relay.metric("process_cpu_seconds_total"),
    }
