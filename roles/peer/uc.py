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
every refusal is counted (:class:`UcObserver`) and logged rate-limited.
"""

from __future__ import annotations

import collections
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

import trio
from p2pchat.node.config import UcSection
from p2pchat.node.p2p.host import DialError, P2PHost
from p2pchat.node.p2p.multiaddr_bytes import dial_target, from_bytes, to_bytes
from p2pchat.node.p2p.peer_keys import public_key_bytes
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    StreamIdle,
    close_quietly,
    read_frame_within,
    reset_quietly,
)
from p2pchat.node.ratelimit import PeerRateLimit, TokenBucket
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.wire import uc as wire
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, MessageEvent, NoticeEvent, OutputEvent

FILES_DIR = "uc-files"
ROOM_PREFIX = "uc:"
DIALS_AT_ONCE = 2
REMEMBERED_DIALS = 256  # peers dialled recently (not dialled again for a minute)
REDIAL_SECONDS = 60.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UcGossip(Protocol):
    """What this module needs of the node's pubsub (a role's
    :class:`~p2pchat.node.p2p.pubsub.Gossip`)."""

    async def join(
        self,
        topic: str,
        validator: Callable[[bytes], str | None],
        sender_check: Callable[[str], str | None] | None = None,
        signed_check: Callable[[str, bytes], str | None] | None = None,
    ) -> AsyncIterator[list[GossipMessage]]: ...

    async def publish(self, topic: str, data: bytes) -> None: ...

    def has_subscribers(self, topic: str) -> bool: ...


class UcObserver(Protocol):
    """Counts of what the UC peer did and refused (reasons: a fixed set of words)."""

    def uc_refused(self, reason: str) -> None: ...

    def uc_done(self, what: str) -> None: ...


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
        self._files_dir = data_dir / FILES_DIR
        self._emit = emit
        self._observer = observer
        self._refusals = refusals
        self._is_ignored = is_ignored
        self._me = host.peer_id
        self.room = settings.room
        self._file_topic = wire.file_topic(settings.room)
        # The topics this peer joins: no p2pchat room may be one of them (its validator would
        # refuse UC's payloads, and a role joins a topic once).
        self.topics = frozenset(
            (settings.room, self._file_topic)
            + ((wire.DISCOVERY_TOPIC,) if settings.discovery else ())
        )
        # id -> path of the files this peer serves, oldest first (bounded: max_shared_files)
        self._shared: collections.OrderedDict[str, Path] = collections.OrderedDict()
        # id -> the peer that announced it, oldest first (bounded: max_announced_files)
        self._announced: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._transfers = trio.Semaphore(settings.max_transfers)
        rpm = settings.requests_per_minute
        self._requests = PeerRateLimit(rpm / 60.0, rpm)
        dpm = settings.discovery_dials_per_minute
        self._dials = TokenBucket(dpm / 60.0, dpm, time.monotonic()) if dpm else None
        self._dialling = trio.Semaphore(DIALS_AT_ONCE)
        self._dialled: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._nursery: trio.Nursery | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the file protocol, join the chat and file topics (and the discovery topic),
        then handle what arrives there until cancelled."""
        self._host.set_stream_handler(wire.FILE_PROTOCOL, self._serve)
        chat = await self._gossip.join(self.room, self._check_chat, sender_check=self._sender_check)
        files = await self._gossip.join(
            self._file_topic, self._check_file_id, sender_check=self._sender_check
        )
        discovery = None
        if self._settings.discovery:
            discovery = await self._gossip.join(
                wire.DISCOVERY_TOPIC, self._check_record, signed_check=self._check_record_key
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive, chat, self._chat_received)
            nursery.start_soon(self._receive, files, self._file_announced)
            if discovery is not None:
                nursery.start_soon(self._receive, discovery, self._peer_announced)
                nursery.start_soon(self._announce)
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

    def _refused(self, reason: str, **fields: object) -> None:
        self._observer.uc_refused(reason)
        self._refusals.refused(reason, **fields)

    def _sender_check(self, sender: str) -> str | None:
        return "ignored" if self._is_ignored(sender) else None

    def _check_chat(self, data: bytes) -> str | None:
        try:
            wire.decode_chat(data, self._settings.max_text_bytes)
        except wire.UcWireError as error:
            self._refused(error.reason, what="chat")
            return error.reason
        return None

    def _check_file_id(self, data: bytes) -> str | None:
        try:
            wire.check_file_id(data)
        except wire.UcWireError as error:
            self._refused(error.reason, what="file announcement")
            return "malformed"
        return None

    def _check_record(self, data: bytes) -> str | None:
        try:
            wire.decode_peer(data)
        except wire.UcWireError as error:
            self._refused(error.reason, what="peer record")
            return error.reason
        return None

    def _check_record_key(self, sender: str, data: bytes) -> str | None:
        # A record is about its signer only: anything else could aim us at any host.
        if wire.decode_peer(data).public_key != public_key_bytes(sender):
            self._refused("wrong_key", what="peer record", sender=sender)
            return "invalid"
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

    # --- files: announcing and serving ----------------------------------------------------------

    async def send_file(self, argument: str) -> ChatEvent:
        """Share the file at ``argument`` (a path): served from now on under a new id, and the
        id announced on the file topic. The file is read when asked for, at most
        ``uc.max_file_bytes``."""
        try:
            path, size = await trio.to_thread.run_sync(_file_size, argument)
        except OSError as error:
            return ErrorEvent(
                "bad_argument", f"cannot share {argument}: {_why(error)}", "send-file"
            )
        if size > self._settings.max_file_bytes:
            return ErrorEvent(
                "bad_argument",
                f"{argument} has {size} bytes; at most {self._settings.max_file_bytes} are "
                "shared (uc.max_file_bytes)",
                "send-file",
            )
        file_id = str(uuid.uuid4())  # as UC's js peer names its files
        self._shared[file_id] = path
        while len(self._shared) > self._settings.max_shared_files:
            self._shared.popitem(last=False)
        await self._gossip.publish(self._file_topic, file_id.encode())
        self._observer.uc_done("file_shared")
        return OutputEvent(
            "send-file",
            f"sharing {path.name} ({size} bytes) in {ROOM_PREFIX}{self.room} as {file_id}",
            {"id": file_id, "path": str(path), "bytes": size, "room": ROOM_PREFIX + self.room},
        )

    def _file_announced(self, message: GossipMessage) -> None:
        file_id = wire.check_file_id(message.data)  # validated
        self._announced.pop(file_id, None)
        self._announced[file_id] = message.sender
        while len(self._announced) > self._settings.max_announced_files:
            self._announced.popitem(last=False)
        self._observer.uc_done("file_announced")
        name = wire.short_name(message.sender)
        self._emit(
            NoticeEvent(
                "uc_file",
                f"{name} shares a file in {ROOM_PREFIX}{self.room}: /get {file_id}",
                {"id": file_id, "peer": message.sender, "room": ROOM_PREFIX + self.room},
            )
        )

    async def _serve(self, stream: Stream) -> None:
        peer = stream.remote_peer
        if not self._requests.allow(peer, time.monotonic()):
            self._refused("rate", what="file request", peer=peer)
            await reset_quietly(stream)
            return
        try:
            self._transfers.acquire_nowait()
        except trio.WouldBlock:
            self._refused("busy", what="file request", peer=peer)
            await reset_quietly(stream)
            return
        try:
            with trio.move_on_after(self._settings.transfer_timeout) as scope:
                await self._answer(stream, peer)
            if scope.cancelled_caught:
                self._refused("timeout", what="file request", peer=peer)
                await reset_quietly(stream)
        finally:
            self._transfers.release()

    async def _answer(self, stream: Stream, peer: str) -> None:
        try:
            request = await read_frame_within(
                stream, FrameDecoder(wire.MAX_FILE_ID_BYTES), self._settings.transfer_timeout
            )
            file_id = wire.check_file_id(request)
        except (FrameError, wire.UcWireError) as error:
            self._refused(getattr(error, "reason", "bad_file_id"), what="file request", peer=peer)
            await reset_quietly(stream)
            return
        except StreamIdle:  # no whole request in time: reset by the reader
            self._refused("timeout", what="file request", peer=peer)
            return
        except StreamError:
            return
        path = self._shared.get(file_id)
        body = None
        if path is not None:
            body = await trio.to_thread.run_sync(_read_bounded, path, self._settings.max_file_bytes)
        if body is None:
            self._refused("unknown_file", what="file request", peer=peer)
            await reset_quietly(stream)
            return
        try:
            await stream.write(wire.file_response(body))
        except StreamError:
            return
        await close_quietly(stream)
        self._observer.uc_done("file_served")

    # --- files: fetching -------------------------------------------------------------------------

    async def get(self, file_id: str) -> ChatEvent:
        """Fetch the file announced as ``file_id`` from its announcer into
        ``<data dir>/uc-files/``."""
        peer = self._announced.get(file_id)
        if peer is None:
            return ErrorEvent(
                "bad_argument", f"no file {file_id} was announced here (the uc_file notices)", "get"
            )
        try:
            self._transfers.acquire_nowait()
        except trio.WouldBlock:
            return ErrorEvent("not_sent", "too many file transfers at once; try again", "get")
        try:
            with trio.move_on_after(self._settings.transfer_timeout):
                return await self._fetch(file_id, peer)
            self._refused("timeout", what="file fetch", peer=peer)
            return ErrorEvent("not_sent", f"{file_id}: no answer in time", "get")
        finally:
            self._transfers.release()

    async def _fetch(self, file_id: str, peer: str) -> ChatEvent:
        try:
            stream = await self._host.new_stream(peer, [wire.FILE_PROTOCOL])
        except StreamError as error:
            return ErrorEvent("not_sent", f"{file_id}: {error}", "get")
        try:
            await stream.write(wire.file_request(file_id))
            await stream.close()
            body = await read_frame_within(
                stream,
                FrameDecoder(self._settings.max_file_bytes),
                self._settings.transfer_timeout,
            )
        except FrameTooLarge:
            self._refused("file_too_large", what="file fetch", peer=peer)
            await reset_quietly(stream)
            return ErrorEvent(
                "not_sent",
                f"{file_id} is over {self._settings.max_file_bytes} bytes (uc.max_file_bytes)",
                "get",
            )
        except FrameError:
            self._refused("malformed", what="file fetch", peer=peer)
            await reset_quietly(stream)
            return ErrorEvent("not_sent", f"{file_id}: not a file response", "get")
        except StreamIdle:
            self._refused("timeout", what="file fetch", peer=peer)
            return ErrorEvent("not_sent", f"{file_id}: no answer in time", "get")
        except StreamError as error:
            return ErrorEvent("not_sent", f"{file_id}: {error}", "get")
        await reset_quietly(stream)  # nothing more is read: done with it either way
        path = self._files_dir / _file_name(file_id)
        try:
            await trio.to_thread.run_sync(_write_file, path, body)
        except OSError as error:
            return ErrorEvent("not_sent", f"cannot save {path}: {_why(error)}", "get")
        self._observer.uc_done("file_fetched")
        return OutputEvent(
            "get",
            f"saved {file_id} ({len(body)} bytes) from {wire.short_name(peer)} to {path}",
            {"id": file_id, "peer": peer, "path": str(path), "bytes": len(body)},
        )

    # --- peer discovery --------------------------------------------------------------------------

    def _record(self) -> bytes | None:
        key = public_key_bytes(self._me)
        if key is None:
            return None
        addrs = [b for b in (to_bytes(_without_p2p(a)) for a in self._host.advertised_addrs()) if b]
        return wire.encode_peer(wire.PeerRecord(key, tuple(addrs[: wire.MAX_RECORD_ADDRS])))

    async def _announce(self) -> None:
        while True:
            record = self._record()
            if record is not None and self._gossip.has_subscribers(wire.DISCOVERY_TOPIC):
                await self._gossip.publish(wire.DISCOVERY_TOPIC, record)
                self._observer.uc_done("peer_announced")
            await trio.sleep(self._settings.discovery_interval)

    def _peer_announced(self, message: GossipMessage) -> None:
        peer = message.sender
        now = time.monotonic()
        if self._host.is_connected(peer):
            return
        last = self._dialled.get(peer)
        if last is not None and now - last < REDIAL_SECONDS:
            return
        record = wire.decode_peer(message.data)  # validated
        private = self._settings.dial_private_addresses
        target = next(
            (
                t
                for t in (dial_target(a, peer, private=private) for a in _texts(record.addrs))
                if t is not None
            ),
            None,
        )
        if target is None:
            self._refused("no_dialable_address", what="peer record", sender=peer)
            return
        try:  # first: a record refused as busy must not spend the minute's dials
            self._dialling.acquire_nowait()
        except trio.WouldBlock:
            self._refused("dial_busy", what="peer record", sender=peer)
            return
        if self._dials is None or not self._dials.take(now):
            self._dialling.release()
            self._refused("dial_rate", what="peer record", sender=peer)
            return
        self._dialled.pop(peer, None)
        self._dialled[peer] = now
        while len(self._dialled) > REMEMBERED_DIALS:
            self._dialled.popitem(last=False)
        assert self._nursery is not None  # handlers run in it
        self._nursery.start_soon(self._dial, target)

    async def _dial(self, target: str) -> None:
        try:
            await self._host.connect(target)
            self._observer.uc_done("peer_dialled")
        except DialError:
            self._observer.uc_done("peer_dial_failed")
        finally:
            self._dialling.release()


def _message_id(message: GossipMessage) -> str:
    return hashlib.sha256(message.sender.encode() + b"/" + message.seqno).hexdigest()[:32]


def _texts(addrs: tuple[bytes, ...]) -> list[str]:
    return [t for t in (from_bytes(a) for a in addrs) if t is not None]


def _without_p2p(addr: str) -> str:
    head, sep, tail = addr.rpartition("/p2p/")
    return head if sep and "/" not in tail else addr


def _file_name(file_id: str) -> str:
    """Where a fetched file is saved: its id when that is a safe file name, else a hash of it
    (an id is the remote peer's text: never a path)."""
    if _SAFE_NAME.match(file_id):
        return file_id
    return hashlib.sha256(file_id.encode()).hexdigest()[:32]


def _write_file(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    partial.write_bytes(body)
    os.replace(partial, path)


def _file_size(argument: str) -> tuple[Path, int]:
    """The path ``argument`` names (``~`` expanded) and the size of the regular file there.

    Raises:
        OSError: missing, unreadable, or not a regular file.
    """
    path = Path(argument).expanduser()
    if not path.is_file():
        raise IsADirectoryError(0, "not a regular file")
    return path, path.stat().st_size


def _read_bounded(path: Path, limit: int) -> bytes | None:
    """The file's bytes if it is still there and at most ``limit`` long."""
    try:
        with path.open("rb") as handle:
            body = handle.read(limit + 1)
    except OSError:
        return None
    return body if len(body) <= limit else None


def _why(error: OSError) -> str:
    return error.strerror or type(error).__name__
