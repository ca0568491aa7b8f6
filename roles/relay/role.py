"""The relay role: a Circuit Relay v2 hop server with go-libp2p's limits, all enforced.

The node answers AutoNAT for it (``autonat.service`` auto includes the relay role). Limits and
the allow-list come from the ``relay`` config section. With the DHT on, the relay announces
itself under :data:`~p2pchat.node.rendezvous.RELAY_KEY`, where auto-relay looks for relays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Self

import trio
from p2pchat.node.config import Config, RelaySection
from p2pchat.node.rendezvous import RELAY_KEY
from p2pchat.node.role import NodeContext
from p2pchat.node.wire.circuit import HOP_PROTOCOL_ID
from p2pchat.roles.relay.chat_policy import ChatPolicy
from p2pchat.roles.relay.hop import HopServer
from p2pchat.roles.relay.limits import AllowList, RelayLimits, RelayResources
from p2pchat.roles.relay.metrics import RelayMetrics

# The relay section's fields that are not RelayLimits: the allow-list and the chat policy.
_NOT_LIMITS = {"allow", "chat_peers", "chat_circuit_duration", "chat_circuit_data"}


class RelayRole:
    """Relay node."""

    name: ClassVar[str] = "relay"
    protocols: ClassVar[Sequence[str]] = (HOP_PROTOCOL_ID,)
    in_rooms: ClassVar[bool] = False

    def __init__(self, settings: RelaySection) -> None:
        """``settings``: the limits and the allow-list (the ``relay`` config section)."""
        self._settings = settings

    @classmethod
    def from_config(cls, config: Config) -> Self:
        """The relay with the ``relay`` section of ``config``."""
        return cls(config.relay)

    async def run(
        self, ctx: NodeContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the hop protocol until cancelled."""
        settings = self._settings
        # The config section holds the limits under the same names, and the allow-list.
        limits = RelayLimits(**settings.model_dump(exclude=_NOT_LIMITS))
        resources = RelayResources(limits, AllowList.parse(settings.allow))
        policy = ChatPolicy(
            settings.chat_peers, settings.chat_circuit_duration, settings.chat_circuit_data, limits
        )
        metrics = RelayMetrics(ctx.metrics.registry)
        HopServer(ctx.host, resources, metrics, ctx.log, policy).install()
        ctx.log.info(
            "relay role started",
            limits=limits.__dict__,
            allow=settings.allow,
            chat_peers=settings.chat_peers,
        )
        task_status.started()
        if ctx.rendezvous is not None:  # so that auto-relay finds this relay in the DHT
            await ctx.rendezvous.announce("relay service", RELAY_KEY)
        await trio.sleep_forever()
