"""universal-connectivity's files (issue #20): ``/send-file`` shares a file (served on
``/universal-connectivity-file/1``, its id announced on the file topic), an announcement heard
is a ``uc_file`` notice, and ``/get`` fetches a file from its announcer into
``<data dir>/uc-files/``. Files served and fetched, announcements remembered, requests per peer
and the time a transfer takes are bounded by the ``uc`` config section."""

from __future__ import annotations

import collections
import hashlib
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import trio
from p2pchat.node.config import UcSection
from p2pchat.node.p2p.host import P2PHost
from p2pchat.node.p2p.pubsub import GossipMessage
from p2pchat.node.p2p.streams import (
    Stream,
    StreamError,
    StreamIdle,
    close_quietly,
    read_frame_within,
    reset_quietly,
)
from p2pchat.node.ratelimit import PeerRateLimit
from p2pchat.node.wire import uc as wire
from p2pchat.node.wire.framing import FrameDecoder, FrameError, FrameTooLarge
from p2pchat.roles.peer.events import ChatEvent, ErrorEvent, NoticeEvent, OutputEvent
from p2pchat.roles.peer.uc_common import ROOM_PREFIX, UcGossip, UcObserver, UcRefusals

FILES_DIR = "uc-files"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UcFiles:
    """The files of UC's room ``room``: shared, announced, served and fetched."""

    def __init__(
        self,
        host: P2PHost,
        gossip: UcGossip,
        settings: UcSection,
        data_dir: Path,
        emit: Callable[[ChatEvent], None],
        observer: UcObserver,
        refused: UcRefusals,
    ) -> None:
        self._host = host
        self._gossip = gossip
        self._settings = settings
        self._files_dir = data_dir / FILES_DIR
        self._emit = emit
        self._observer = observer
        self._refused = refused
        self.room = settings.room
        self.topic = wire.file_topic(settings.room)
        # id -> path of the files this peer serves, oldest first (bounded: max_shared_files)
        self._shared: collections.OrderedDict[str, Path] = collections.OrderedDict()
        # id -> the peer that announced it, oldest first (bounded: max_announced_files)
        self._announced: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._transfers = trio.Semaphore(settings.max_transfers)
        rpm = settings.requests_per_minute
        self._requests = PeerRateLimit(rpm / 60.0, rpm)

    def check_file_id(self, data: bytes) -> str | None:
        """The file topic's validator: None for a valid file id, else the drop reason."""
        try:
            wire.check_file_id(data)
        except wire.UcWireError as error:
            self._refused(error.reason, what="file announcement")
            return "malformed"
        return None

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
        await self._gossip.publish(self.topic, file_id.encode())
        self._observer.uc_done("file_shared")
        return OutputEvent(
            "send-file",
            f"sharing {path.name} ({size} bytes) in {ROOM_PREFIX}{self.room} as {file_id}",
            {"id": file_id, "path": str(path), "bytes": size, "room": ROOM_PREFIX + self.room},
        )

    def announced(self, message: GossipMessage) -> None:
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

    async def serve(self, stream: Stream) -> None:
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
