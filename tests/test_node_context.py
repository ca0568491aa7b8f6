"""What a role gets of the running node: the operator endpoint's address (``/info`` shows it)."""

from __future__ import annotations

import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Self

import trio
from p2pchat.node.config import Config, load_config
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.role import NodeContext
from p2pchat.node.runtime import run_node


class _Probe:
    """A role that records what the node context says once the node listens, then stops it."""

    name: ClassVar[str] = "probe"
    protocols: ClassVar[Sequence[str]] = ()
    in_rooms: ClassVar[bool] = False

    def __init__(self) -> None:
        self.metrics_address: str | None = "not asked"

    @classmethod
    def from_config(cls, config: Config) -> Self:
        return cls()

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await ctx.listening.wait()
        self.metrics_address = ctx.metrics_address()
        ctx.request_stop()


def _config(tmp_path: Path, *, metrics: bool) -> Config:
    return load_config(
        environ={},
        flags={
            "node": {"data_dir": str(tmp_path), "listen": ["/ip4/127.0.0.1/tcp/0"]},
            "discovery": {"mdns": False},
            "dht": {"enabled": False},
            "autonat": {"probe": False},
            "metrics": {"enabled": metrics, "listen": "127.0.0.1:0"},
        },
    )


async def test_metrics_address_is_the_bound_endpoint_with_its_real_port(tmp_path: Path) -> None:
    config = _config(tmp_path, metrics=True)
    answers: list[int] = []
    addresses: list[str] = []

    class _Fetcher(_Probe):
        async def run(
            self,
            ctx: NodeContext,
            *,
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        ) -> None:
            task_status.started()
            await ctx.listening.wait()
            address = ctx.metrics_address()
            assert address is not None
            addresses.append(address)

            def get() -> int:
                with urllib.request.urlopen(f"{address}/healthz", timeout=10) as response:
                    return int(response.status)

            answers.append(await trio.to_thread.run_sync(get))
            ctx.request_stop()

    with trio.fail_after(60):
        await run_node(config, load_or_create_identity(tmp_path), [_Fetcher()])
    assert answers == [200]  # /healthz answered at that address while the node ran
    assert addresses[0].startswith("http://127.0.0.1:") and not addresses[0].endswith(":0")


async def test_metrics_address_is_none_when_metrics_are_off(tmp_path: Path) -> None:
    probe = _Probe()
    with trio.fail_after(60):
        await run_node(_config(tmp_path, metrics=False), load_or_create_identity(tmp_path), [probe])
    assert probe.metrics_address is None
