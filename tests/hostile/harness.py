"""What every attack of the hostile suite measures: the victim's footprint and honest delivery.

An attack test starts a real ``p2pchat`` victim, watches its memory and file descriptors
(:class:`Footprint`), keeps two honest chat peers talking through it (:class:`HonestChat`)
while the attacker works, and then asserts three things: the footprint stayed under the bound
the test states, the fds came back to their baseline once the attacker left, and honest
delivery during the attack was at least :data:`MIN_DELIVERY`. Each test also asserts the metric
that counted the attack, and prints one ``HOSTILE {json}`` line with its figures (the README's
table of the hostile suite is made of them: ``pytest tests/hostile -s | grep HOSTILE``).

Everything is on 127.0.0.1 and bounded in count and time; nothing here reaches other addresses.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import NodeProcess, node_env, start_node

MIN_DELIVERY = 0.99
WAIT = 60.0
SAMPLE_EVERY = 0.1


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid`` (VmRSS), in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} has no VmRSS")


def open_fds(pid: int) -> int:
    """How many file descriptors process ``pid`` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Footprint:
    """Samples a process's RSS and fds every :data:`SAMPLE_EVERY` s while in a ``with``."""

    pid: int
    baseline_rss: int = 0
    baseline_fds: int = 0
    peak_rss: int = 0
    peak_fds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Footprint:
        self.baseline_rss = self.peak_rss = rss_bytes(self.pid)
        self.baseline_fds = self.peak_fds = open_fds(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self.peak_rss = max(self.peak_rss, rss_bytes(self.pid))
                self.peak_fds = max(self.peak_fds, open_fds(self.pid))
            except (FileNotFoundError, ProcessLookupError, RuntimeError):
                return  # the process is gone: the test's own assertions say why

    @property
    def peak_rss_mib(self) -> float:
        return round(self.peak_rss / 2**20, 1)

    @property
    def baseline_rss_mib(self) -> float:
        return round(self.baseline_rss / 2**20, 1)

    def assert_rss_below(self, bound_mib: float) -> None:
        assert self.peak_rss_mib <= bound_mib, (
            f"victim RSS peaked at {self.peak_rss_mib} MiB (baseline {self.baseline_rss_mib}"
            f" MiB), over the bound of {bound_mib} MiB"
        )

    def assert_fds_back(self, slack: int = 4, timeout: float = WAIT) -> None:
        """The victim's fds return to within ``slack`` of the baseline (sockets close)."""
        deadline = time.monotonic() + timeout
        while (now := open_fds(self.pid)) > self.baseline_fds + slack:
            assert time.monotonic() < deadline, (
                f"victim holds {now} fds, {now - self.baseline_fds} over its baseline"
            )
            time.sleep(0.2)


def chat_peer(
    path: Path, nodes: list[NodeProcess], *args: str, dht: bool = True, **env: str
) -> NodeProcess:
    """A ``--json`` chat peer with the P2PCHAT_* settings ``env``, ready (``dht=False``: it
    meets only the peers it is told of)."""
    if not dht:
        env = {"P2PCHAT_DHT__ENABLED": "false", **env}
    node = start_node(path, "--json", *args, env=node_env(**env))
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node


def wait_room_peers(node: NodeProcess, count: int, timeout: float = WAIT) -> None:
    """Until ``node`` sees ``count`` others subscribed to its room (members or infrastructure)."""
    deadline = time.monotonic() + timeout
    while True:
        seen = node.metric("p2pchat_room_peers") + node.metric("p2pchat_room_infrastructure_peers")
        if seen >= count:
            return
        assert time.monotonic() < deadline, f"room never had {count} others"
        time.sleep(0.2)


@dataclass
class HonestChat:
    """Two honest chat peers, ``sender`` and ``receiver``; the test decides how they meet
    (through the victim when the victim is a chat peer: :meth:`through`)."""

    sender: NodeProcess
    receiver: NodeProcess
    sent: int = 0
    delivered: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)  # receiving is over
    _threads: list[threading.Thread] = field(default_factory=list)
    _texts: set[str] = field(default_factory=set)

    @classmethod
    def through(cls, victim: NodeProcess, tmp_path: Path, nodes: list[NodeProcess]) -> HonestChat:
        """Two peers whose only path to each other is the chat peer ``victim``: each knows
        only the victim and runs without the DHT (rendezvous would introduce them)."""
        sender = chat_peer(tmp_path / "honest-a", nodes, "--bootstrap", victim.addr(), dht=False)
        receiver = chat_peer(tmp_path / "honest-b", nodes, "--bootstrap", victim.addr(), dht=False)
        wait_room_peers(victim, 2)
        wait_room_peers(sender, 1)
        wait_room_peers(receiver, 1)
        chat = cls(sender, receiver)
        chat.warm_up()
        return chat

    def warm_up(self) -> None:
        """One message end to end, so the meshes are formed before the measured part."""
        self.sender.say("warm-up")
        self.receiver.next_event(
            lambda e: e["type"] == "message" and e["text"] == "warm-up", timeout=WAIT
        )

    def start(self, rate: float = 5.0) -> None:
        """Start chatting: ``sender`` says a numbered line ``rate`` times a second until
        :meth:`stop`; the receiver's messages are counted as they arrive."""
        self._threads = [
            threading.Thread(target=self._send, args=(rate,), daemon=True),
            threading.Thread(target=self._receive, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _send(self, rate: float) -> None:
        while not self._stop.wait(1 / rate):
            text = f"honest {self.sent}"
            self._texts.add(text)
            self.sender.say(text)
            self.sent += 1

    def _receive(self) -> None:
        while not self._done.is_set() and (not self._stop.is_set() or self.delivered < self.sent):
            try:
                event = self.receiver.next_event(lambda e: e["type"] == "message", timeout=0.5)
            except AssertionError:
                if self._stop.is_set():
                    return
                continue
            if event["text"] in self._texts:
                self._texts.discard(event["text"])
                self.delivered += 1

    def stop(self, drain: float = 15.0) -> float:
        """Stop sending; wait up to ``drain`` s for what is in flight; the delivery ratio."""
        self._stop.set()
        self._threads[0].join()
        deadline = time.monotonic() + drain
        while self.delivered < self.sent and time.monotonic() < deadline:
            time.sleep(0.1)
        # The receiver stops too, even with messages missing: a later chat between the same
        # peers would otherwise lose its messages to this one's receiving thread.
        self._done.set()
        self._threads[1].join()
        return self.delivered / self.sent if self.sent else 1.0


def report(attack: str, footprint: Footprint, delivery: float | None, **figures: Any) -> None:
    """Print the attack's figures as one ``HOSTILE`` JSON line (the README's table)."""
    line = {
        "attack": attack,
        "baseline_rss_mib": footprint.baseline_rss_mib,
        "peak_rss_mib": footprint.peak_rss_mib,
        "baseline_fds": footprint.baseline_fds,
        "peak_fds": footprint.peak_fds,
        "honest_delivery": None if delivery is None else round(delivery, 4),
        **figures,
    }
    print("HOSTILE " + json.dumps(line, sort_keys=True))
