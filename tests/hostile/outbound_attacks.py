"""Attackers that make a victim dial, and that flood it with relayed connections.

Everything is on 127.0.0.1: the attackers are in-process py-libp2p hosts of the test, the
addresses they make the victim dial are listeners of the test (:class:`Sinks`), and the relay
is a real ``p2pchat --role relay`` process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio
from p2pchat.node.p2p.circuit import CircuitError, dial_through
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver, Stream
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.wire.dcutr import PROTOCOL_ID as DCUTR_PROTOCOL_ID


@dataclass
class Sinks:
    """TCP listeners that accept and hold every connection, silent, until its dialler gives
    up: each dial the victim makes to one stays in flight (a TCP connection, a Noise hello
    never answered) until its timeout. ``open``/``peak``: connections held now / at most."""

    ports: list[int] = field(default_factory=list)
    open: int = 0
    peak: int = 0
    accepted: int = 0

    @property
    def addrs(self) -> list[str]:
        return [f"/ip4/127.0.0.1/tcp/{port}" for port in self.ports]

    async def _hold(self, stream: trio.SocketStream) -> None:
        self.open += 1
        self.accepted += 1
        self.peak = max(self.peak, self.open)
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
        finally:
            self.open -= 1
            stream.socket.close()

    async def serve(
        self, count: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen on ``count`` ports of 127.0.0.1 until cancelled."""
        listeners = []
        for _ in range(count):
            listeners += await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.ports = [listener.socket.getsockname()[1] for listener in listeners]
        task_status.started()
        await trio.serve_listeners(self._hold, listeners)


@asynccontextmanager
async def attackers(
    path: Path, count: int, announce: list[str] | None = None, *, dcutr: bool = False
) -> AsyncIterator[list[P2PHost]]:
    """``count`` in-process hosts that listen nowhere; each claims ``announce`` as its
    addresses in identify and, with ``dcutr``, says it speaks DCUtR (its handler never
    answers): a victim that receives a relayed connection from one dials those addresses."""

    async def never_answer(stream: Stream) -> None:
        await trio.sleep_forever()

    async with AsyncExitStack() as stack:
        hosts = []
        for n in range(count):
            host = P2PHost(
                load_or_create_identity(path / f"attacker{n}"),
                HostSettings(listen=("/ip4/127.0.0.1/tcp/0",), announce=tuple(announce or ())),
                QuietObserver(),
            )
            await stack.enter_async_context(host.run(listen=False))
            if dcutr:
                host.set_stream_handler(DCUTR_PROTOCOL_ID, never_answer)
            hosts.append(host)
        yield hosts


@dataclass
class Circuits:
    """How the attackers' relayed connections to the victim fared."""

    connected: int = 0
    refused: int = 0


async def connect_through(
    host: P2PHost, relay_addr: str, relay: str, victim: str, tally: Circuits
) -> None:
    """``host`` connects to the relay, then to ``victim`` through it (a full connection:
    Noise, a muxer, identify); counted in ``tally``."""
    try:
        if not host.is_connected(relay):
            await host.connect(relay_addr)
        await dial_through(host, relay, victim)
    except (CircuitError, Exception):  # refused by the victim (the relay answers for it)
        tally.refused += 1
        return
    tally.connected += 1
