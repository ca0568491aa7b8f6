"""Node composition in-process: readiness waits for every role; roles stop on cancellation."""

from __future__ import annotations

import gc
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import trio
from p2pchat.node.config import Config, load_config
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.role import NodeContext
from p2pchat.node.runtime import GC_THRESHOLDS, run_node
from p2pchat.node.store import Store


class GatedRole:
    """A role that reports started only when the test lets it."""

    name: ClassVar[str] = "gated"
    protocols: ClassVar[Sequence[str]] = ("/test/gated/1.0.0",)
    in_rooms: ClassVar[bool] = False

    def __init__(self) -> None:
        self.release = trio.Event()
        self.entered = trio.Event()
        self.context: NodeContext | None = None
        self.cancelled = False

    @classmethod
    def from_config(cls, config: Config) -> Self:
        return cls()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.context = ctx
        self.entered.set()
        await self.release.wait()
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            self.cancelled = True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


async def test_listening_and_readyz_only_after_every_role_started(tmp_path: Path) -> None:
    thresholds = gc.get_threshold()
    try:
        await _listening_and_readyz_only_after_every_role_started(tmp_path)
    finally:
        gc.set_threshold(*thresholds)  # the node set this process's; the next tests get theirs


async def _listening_and_readyz_only_after_every_role_started(tmp_path: Path) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    config = load_config(
        environ={},
        flags={
            "node": {"data_dir": str(tmp_path), "listen": ["/ip4/127.0.0.1/tcp/0"]},
            "metrics": {"listen": metrics},
            "discovery": {"mdns": False},
        },
    )
    first, second = GatedRole(), GatedRole()
    identity = load_or_create_identity(tmp_path)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_node, config, identity, [first, second])
        with trio.fail_after(30):
            await first.entered.wait()
        # Roles start before the listeners open: no peer can connect before every protocol
        # has its handler (trap 25)...
        assert first.context is not None
        assert first.context.host.listen_addrs() == []
        # ... and the node is not ready while a role has not started.
        assert await trio.to_thread.run_sync(get_status, f"http://{metrics}/healthz") == 200
        assert await trio.to_thread.run_sync(get_status, f"http://{metrics}/readyz") == 503
        first.release.set()
        with trio.fail_after(30):
            await second.entered.wait()
        assert await trio.to_thread.run_sync(get_status, f"http://{metrics}/readyz") == 503
        assert first.context.host.listen_addrs() == []
        second.release.set()
        with trio.fail_after(30):
            while await trio.to_thread.run_sync(get_status, f"http://{metrics}/readyz") != 200:
                await trio.sleep(0.05)
        assert first.context.host.listen_addrs()
        # Ready, the collector runs its young passes rarely enough that a relay's short-lived
        # objects die young (runtime.GC_THRESHOLDS: full passes froze a busy relay for ~1 s).
        assert gc.get_threshold() == GC_THRESHOLDS
        nursery.cancel_scope.cancel()
    assert first.cancelled and second.cancelled
    # The store is closed: it opens again (RocksDB refuses a second open in one process).
    Store.open(config.data_dir() / "store").close()
