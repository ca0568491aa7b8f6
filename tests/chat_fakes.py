"""Test doubles for the chat service's parts: a node without a network, a pubsub in memory.

:class:`FakePubsub` behaves like the node's pubsub as the chat service sees it: joining a
topic installs its validator and returns the topic's batches; publishing signs the payload
with this peer's identity and delivers it back through its own subscription (as GossipSub
does); :meth:`FakePubsub.deliver` plays a message from another peer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog
import trio
from p2pchat.node.config import Config
from p2pchat.node.history import History
from p2pchat.node.p2p import peer_keys
from p2pchat.node.p2p.envelopes import sign_envelope
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.p2p.identity import Identity, ephemeral_identity
from p2pchat.node.p2p.pubsub import (
    GossipMessage,
    SubscriptionEvent,
    TopicSubscribed,
    TopicUnsubscribed,
)
from p2pchat.node.role import NodeContext
from p2pchat.node.store import Store
from p2pchat.roles.peer.events import ChatEvent
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.peer.service import ChatService
from prometheus_client import CollectorRegistry

Validator = Callable[[bytes], str | None]


@dataclass
class FakeHost:
    identity: Identity
    connected: list[str] = field(default_factory=list)
    watchers: list[object] = field(default_factory=list)
    # PeerId -> the p2pchat roles its identify named (absent: no identify yet).
    roles: dict[str, frozenset[str]] = field(default_factory=dict)
    identify_watchers: list[Callable[[object], None]] = field(default_factory=list)

    handlers: dict[str, object] = field(default_factory=dict)

    def watch_connections(self, watcher: object) -> None:
        self.watchers.append(watcher)

    def sign(self, data: bytes) -> bytes:
        return peer_keys.sign(self.identity, data)

    def set_stream_handler(self, protocol: str, handler: object) -> None:
        self.handlers[protocol] = handler

    def watch_identify(self, watcher: Callable[[object], None]) -> None:
        self.identify_watchers.append(watcher)

    def peer_roles(self, peer: str) -> frozenset[str] | None:
        return self.roles.get(peer)

    def peer_protocols(self, peer: str) -> list[str]:
        # Every peer of these tests counts as identified: a chat peer unless ``roles`` says.
        return ["/meshsub/1.1.0"]

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id_text

    def connected_peers(self) -> list[str]:
        return list(self.connected)

    def connections(self) -> list[ConnectionInfo]:
        return [
            ConnectionInfo(p, "outbound", "tcp", "/noise", "/yamux/1.0.0") for p in self.connected
        ]

    def listen_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]

    def advertised_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001"]


class FakePubsub:
    def __init__(self, me: Identity) -> None:
        self._me = me
        self.validators: dict[str, Validator] = {}
        self.sender_checks: dict[str, Callable[[str], str | None] | None] = {}
        self.signed_checks: dict[str, Callable[[str, bytes], str | None] | None] = {}
        self._send: dict[str, trio.MemorySendChannel[list[GossipMessage]]] = {}
        self.members: dict[str, set[str]] = {}
        self.published: list[tuple[str, bytes]] = []
        self.dropped: list[str] = []
        # Awaited inside join(topic), after subscribing and before join returns.
        self.while_joining: Callable[[str], Awaitable[None]] | None = None
        self.watchers: list[Callable[[SubscriptionEvent], None]] = []

    def watch_subscriptions(self, watcher: Callable[[SubscriptionEvent], None]) -> None:
        self.watchers.append(watcher)

    async def join(
        self,
        topic: str,
        validator: Validator,
        sender_check: Callable[[str], str | None] | None = None,
        signed_check: Callable[[str, bytes], str | None] | None = None,
    ) -> AsyncIterator[list[GossipMessage]]:
        send, receive = trio.open_memory_channel[list[GossipMessage]](float("inf"))
        self.validators[topic], self._send[topic] = validator, send
        self.sender_checks[topic] = sender_check
        self.signed_checks[topic] = signed_check
        if self.while_joining is not None:
            await self.while_joining(topic)

        async def batches() -> AsyncIterator[list[GossipMessage]]:
            async with receive:
                async for batch in receive:
                    yield batch

        return batches()

    async def leave(self, topic: str) -> None:
        self.validators.pop(topic)
        await self._send.pop(topic).aclose()

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append((topic, data))
        if topic in self._send:
            self.deliver(topic, [(self._me, data)])

    def has_subscribers(self, topic: str) -> bool:
        return bool(self.members.get(topic, set()) - {self._me.peer_id_text})

    def subscribers(self, topic: str) -> list[str]:
        return sorted(self.members.get(topic, ()))

    def deliver(self, topic: str, messages: list[tuple[Identity | str, bytes]]) -> None:
        """One batch of messages from the given signers (an Identity signs a real envelope; a
        bare PeerId gets an empty one), each passed through the topic's validator first."""
        batch = []
        for signer, data in messages:
            check = self.sender_checks.get(topic)
            signer_id = signer if isinstance(signer, str) else signer.peer_id_text
            reason = check(signer_id) if check is not None else None
            if reason is None:
                reason = self.validators[topic](data)
            signed = self.signed_checks.get(topic)
            if reason is None and signed is not None:
                reason = signed(signer_id, data)
            if reason is not None:
                self.dropped.append(reason)
                continue
            if isinstance(signer, str):
                sender, envelope = signer, b""
            else:
                sender, envelope = signer.peer_id_text, sign_envelope(signer, topic, data)
            batch.append(GossipMessage(topic, data, sender, b"", envelope))
        if batch:
            self._send[topic].send_nowait(batch)


@dataclass
class Chat:
    service: ChatService
    pubsub: FakePubsub
    host: FakeHost
    store: Store
    events: list[ChatEvent]
    discovered: dict[str, str]
    joined: list[str]
    discovery_watchers: list[Callable[[str, str], None]]

    def peer_arrives(self, peer: str, room: str, via: str = "mdns") -> None:
        """``peer`` is discovered, connects and joins ``room``, each with its event."""
        self.discovered[peer] = via
        for watch in self.discovery_watchers:
            watch(peer, via)
        self.host.connected.append(peer)
        for watcher in self.host.watchers:
            watcher.connection_opened(  # type: ignore[attr-defined]
                ConnectionInfo(peer, "outbound", "tcp", "/noise", "/yamux/1.0.0")
            )
        self.pubsub.members.setdefault(room, set()).add(peer)
        for subscribed in self.pubsub.watchers:
            subscribed(TopicSubscribed(peer, room))

    def peer_leaves(self, peer: str, room: str) -> None:
        """``peer`` leaves ``room`` and disconnects, each with its event."""
        self.pubsub.members.get(room, set()).discard(peer)
        for unsubscribed in self.pubsub.watchers:
            unsubscribed(TopicUnsubscribed(peer, room))
        self.host.connected.remove(peer)
        for watcher in self.host.watchers:
            watcher.connection_closed(  # type: ignore[attr-defined]
                ConnectionInfo(peer, "outbound", "tcp", "/noise", "/yamux/1.0.0")
            )


@asynccontextmanager
async def running(chat: Chat) -> AsyncIterator[Chat]:
    """``chat``'s service running for the block, cancelled at its end."""
    async with trio.open_nursery() as nursery:
        await nursery.start(chat.service.run)
        yield chat
        nursery.cancel_scope.cancel()


@contextmanager
def chat_service(
    tmp_path: Path,
    *,
    missed_inline: int | None = None,
    data_dir: Path | None = None,
    **chat: object,
) -> Iterator[Chat]:
    """A chat service on the store in ``tmp_path`` (created if new; not yet running: start
    ``chat.service.run``); ``missed_inline`` and ``data_dir`` as ChatService takes them."""
    me = ephemeral_identity()
    host = FakeHost(me)
    pubsub = FakePubsub(me)
    store = Store.open(tmp_path / "store")
    events: list[ChatEvent] = []
    discovered: dict[str, str] = {}
    joined: list[str] = []
    discovery_watchers: list[Callable[[str, str], None]] = []
    config = Config.model_validate({"chat": chat})
    ctx = NodeContext(
        host=host,  # type: ignore[arg-type]
        metrics=None,  # type: ignore[arg-type]
        log=structlog.get_logger(),
        keys=store.namespace,
        store_size=store.size_bytes,
        request_stop=lambda: None,
        discovered_peers=lambda: discovered,
        watch_discoveries=discovery_watchers.append,
    )
    service = ChatService(
        ctx,
        config.chat,
        config.roles,
        pubsub,
        History(store),
        ChatMetrics(CollectorRegistry()),
        events.append,
        on_join=joined.append,
        missed_inline=missed_inline,
        data_dir=data_dir,
    )
    try:
        yield Chat(service, pubsub, host, store, events, discovered, joined, discovery_watchers)
    finally:
        store.close()
