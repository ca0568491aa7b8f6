"""A wiretap for tests: put this directory on a ``p2pchat`` process's PYTHONPATH and name a file
in ``SECRECY_TAP``, and every byte the process reads from or writes to a libp2p stream (after
Noise and the muxer: what the application protocols exchange, including the bytes a relay
forwards) is appended to that file, one JSON line per read or write:
``{"s": stream serial, "p": protocol or null, "d": "r"|"w", "peer": PeerId, "b": hex}``.

Test-only (tests/test_secrecy.py): the node's code is unchanged; Python imports this module at
start (``sitecustomize``), before the node, and wraps py-libp2p's ``NetStream.read``/``write``.
Without ``SECRECY_TAP`` it does nothing.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

_PATH = os.environ.get("SECRECY_TAP")


def _install(path: str) -> None:
    from libp2p.network.stream.net_stream import NetStream

    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's life
    serials = itertools.count()
    read, write = NetStream.read, NetStream.write

    def record(stream: Any, direction: str, data: bytes) -> None:
        if not data:
            return
        serial = getattr(stream, "_secrecy_tap_serial", None)
        if serial is None:
            serial = next(serials)
            stream._secrecy_tap_serial = serial
        try:
            peer = str(stream.muxed_conn.peer_id)
        except Exception:  # a tap never breaks the node
            peer = "?"
        line = {"s": serial, "p": stream.protocol_id, "d": direction, "peer": peer}
        out.write(json.dumps({**line, "b": bytes(data).hex()}) + "\n")

    async def tapped_read(self: NetStream, n: int | None = None) -> bytes:
        data = await read(self, n)
        record(self, "r", data)
        return data

    async def tapped_write(self: NetStream, data: bytes) -> None:
        record(self, "w", data)
        await write(self, data)

    NetStream.read = tapped_read  # type: ignore[method-assign]
    NetStream.write = tapped_write  # type: ignore[method-assign]


if _PATH:
    _install(_PATH)
