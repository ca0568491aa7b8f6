"""A universal-connectivity peer inside the chat peer (issue #20): libp2p's chat demo's room,
file sharing and peer discovery, in its own formats (:mod:`p2pchat.node.wire.uc`).

- Chat: messages of UC's chat topic are shown as messages of the room ``uc:<topic>``, named
  by the last 8 characters of the sender's PeerId as UC does; ``/uc <text>`` sends plain text.
- Files: ``/send-file <path>`` serves the file on ``/universal-connectivity-file/1`` and
  announces its id on the file topic; an announcement heard there is a ``uc_file`` notice and
  ``/get <id>`` fetches the file from its announcer into ``<data dir>/uc-files/``.
- Peer discovery: this peer's record (key and addresses) is published on UC's discovery topic;
  the records heard there are dialled, a few per minute, the first dialable address each.

Everything a remote peer can make this module hold is bounded by the ``uc`` config section;
every refusal is counted (:class:`UcObserver`) and logged rate-limited. The files are
:mod:`~p2pchat.roles.peer.uc_files`, the discovery :mod:`~p2pchat.roles.peer.uc_discovery`.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio
from p2pchat.node.config import UcSection
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire import uc as wire
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, MessageEvent
from p2pchat.roles.peer.uc_common import ROOM_PREFIX, UcGossip, UcObserver, UcRefusals
from p2pchat.roles.peer.uc_discovery import UcDiscovery
from p2pchat.roles.peer.uc_files import UcFiles

__all__ = ["ROOM_PREFIX", "UcObserver", "UcPeer"]


class UcPeer:
    """The universal-connectivity peer of one chat peer; :meth:`run` joins its topics and
    serves its file protocol, the chat service calls :meth:`say`, :meth:`send_file` and
    :meth:`get` for ``/uc``, ``/send-file`` and ``/get``."""

    def __init__(
        self,
        host: P2PHost,
        gossip: UcGossip,
        settings: UcSection,
        data_dir: Path,
        emit: Callable[[ChatEvent], None],
        observer: UcObserver,
        refusals: RefusalLog,
        is_ignored: Callable[[str], bool] = lambda peer: False,
    ) -> None:
        self._host = host
        self._gossip = gossip
        self._settings = settings
        self._emit = emit
        self._observer = observer
        self._refused = UcRefusals(observer, refusals)
        self._is_ignored = is_ignored
        self._me = host.peer_id
        self.room = settings.room
        self.files = UcFiles(host, gossip, settings, data_dir, emit, observer, self._refused)
        self.discovery = (
            UcDiscovery(host, gossip, settings, observer, self._refused)
            if settings.discovery
            else None
        )
        # The topics this peer joins: no p2pchat room may be one of them (its validator would
        # refuse UC's payloads, and a role joins a topic once).
        self.topics = frozenset(
            (settings.room, self.files.topic)
            + ((wire.DISCOVERY_TOPIC,) if settings.discovery else ())
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the file protocol, join the chat and file topics (and the discovery topic),
        then handle what arrives there until cancelled."""
        self._host.set_stream_handler(wire.FILE_PROTOCOL, self.files.serve)
        chat = await self._gossip.join(self.room, self._check_chat, sender_check=self._sender_check)
        files = await self._gossip.join(
            self.files.topic, self.files.check_file_id, sender_check=self._sender_check
        )
        discovery = self.discovery
        records = None
        if discovery is not None:
            records = await self._gossip.join(
                wire.DISCOVERY_TOPIC,
                discovery.check_record,
                signed_check=discovery.check_record_key,
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive, chat, self._chat_received)
            nursery.start_soon(self._receive, files, self.files.announced)
            if discovery is not None and records is not None:
                discovery.nursery = nursery
                nursery.start_soon(self._receive, records, discovery.announced)
                nursery.start_soon(discovery.announce_forever)
            task_status.started()

    async def _receive(
        self,
        batches: AsyncIterator[list[GossipMessage]],
        handle: Callable[[GossipMessage], None],
    ) -> None:
        async for batch in batches:
            for message in batch:
                if message.sender != self._me:
                    handle(message)

    # --- validation (in the pubsub's validator: before a message is delivered or forwarded) ---

    def _sender_check(self, sender: str) -> str | None:
        return "ignored" if self._is_ignored(sender) else None

    def _check_chat(self, data: bytes) -> str | None:
        try:
            wire.decode_chat(data, self._settings.max_text_bytes)
        except wire.UcWireError as error:
            self._refused(error.reason, what="chat")
            return error.reason
        return None

    # --- chat ------------------------------------------------------------------------------------

    def _chat_received(self, message: GossipMessage) -> None:
        text = wire.decode_chat(message.data, self._settings.max_text_bytes)  # validated
        self._observer.uc_done("chat_received")
        self._emit(
            MessageEvent(
                room=ROOM_PREFIX + self.room,
                id=_message_id(message),
                sender=message.sender,
                sender_name=wire.short_name(message.sender),
                text=text,
                sent_at_ms=int(time.time() * 1000),  # UC messages carry no time
                own=False,
            )
        )

    async def say(self, text: str) -> ChatEvent:
        """Send ``text`` to UC's chat topic, as its peers do (the text, UTF-8)."""
        data = wire.encode_chat(text)
        if len(data) > self._settings.max_text_bytes:
            return ErrorEvent(
                "message_too_long",
                f"{len(data)} bytes; universal-connectivity messages are at most "
                f"{self._settings.max_text_bytes} (uc.max_text_bytes)",
                "uc",
            )
        await self._gossip.publish(self.room, data)
        self._observer.uc_done("chat_sent")
        return MessageEvent(
            room=ROOM_PREFIX + self.room,
            id=hashlib.sha256(self._me.encode() + os.urandom(8)).hexdigest()[:32],
            sender=self._me,
            sender_name=wire.short_name(self._me),
            text=text,
            sent_at_ms=int(time.time() * 1000),
            own=True,
        )

    # --- files ---------------------------------------------------------------------------------

    async def send_file(self, argument: str) -> ChatEvent:
        """``/send-file <path>`` (:meth:`UcFiles.send_file`)."""
        return await self.files.send_file(argument)

    async def get(self, file_id: str) -> ChatEvent:
        """``/get <id>`` (:meth:`UcFiles.get`)."""
        return await self.files.get(file_id)


def _message_id(message: GossipMessage) -> str:
    return hashlib.sha256(message.sender.encode() + b"/" + message.seqno).hexdigest()[:32]
