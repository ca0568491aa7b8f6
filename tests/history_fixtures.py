"""Room histories of genuine signed messages, written straight into a node's store (so a test
or benchmark can start an archiver that already holds them), a store-query client, and the
forging archiver test double run as a process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.history import History, StoredMessage, history_id
from p2pchat.node.p2p.envelopes import sign_envelope
from p2pchat.node.p2p.identity import Identity, load_or_create_identity
from p2pchat.node.p2p.streams import Stream, read_frame
from p2pchat.node.store import Store
from p2pchat.node.wire.chat import ChatText, decode, encode
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.node.wire.store_query import MAX_REPLY_BYTES, Query, Reply, decode_reply, encode_query

ROOM = "p2p-chat-default"


def signed_message(
    signer: Identity, room: str, n: int, sent_at_ms: int, text: str | None = None
) -> StoredMessage:
    """Message number ``n`` of ``room`` (the id its sender chose is ``n`` big-endian; its
    history id is derived from that, see :func:`history_id`), signed by ``signer``."""
    payload = ChatText(
        id=n.to_bytes(16, "big"),
        room=room,
        sender_name="filler",
        text=text if text is not None else f"message {n}",
        sent_at_ms=sent_at_ms,
    )
    envelope = sign_envelope(signer, room, encode(payload))
    message = StoredMessage.of_text(payload, signer.peer_id_text, envelope, sent_at_ms)
    _NUMBERS[message.message_id] = n
    return message


_NUMBERS: dict[bytes, int] = {}  # history id -> n, for every message made in this process


def number(message_id: bytes) -> int:
    """The ``n`` of the message :func:`signed_message` made, in this process, with history id
    ``message_id``."""
    return _NUMBERS[message_id]


def history_id_of(signer: str, n: int) -> bytes:
    """The history id of message ``n`` by ``signer`` (PeerId text): made or not."""
    return history_id(signer, n.to_bytes(16, "big"))


def chosen_number(envelope: bytes) -> int:
    """The ``n`` of a message :func:`signed_message` made (anywhere), read from its envelope."""
    message = rpc_pb2.Message()
    message.ParseFromString(envelope)
    payload = decode(bytes(message.data), max_text_bytes=1 << 20)
    return int.from_bytes(payload.id, "big")


def make_messages(
    signer: Identity,
    room: str,
    count: int,
    *,
    first_id: int = 1,
    first_ms: int | None = None,
    step_ms: int = 10,
) -> list[StoredMessage]:
    """``count`` messages numbered from ``first_id``, ``step_ms`` apart, the first at
    ``first_ms`` (default: an hour ago)."""
    start = first_ms if first_ms is not None else int(time.time() * 1000) - 3_600_000
    return [signed_message(signer, room, first_id + i, start + i * step_ms) for i in range(count)]


def fill_store(data_dir: Path, messages: list[StoredMessage], batch: int = 10_000) -> None:
    """Write ``messages`` into the store a node started on ``data_dir`` will open."""
    store = Store.open(data_dir / "store")
    try:
        history = History(store)
        for first in range(0, len(messages), batch):
            history.add_many(messages[first : first + batch])
    finally:
        store.close()


def signer(path: Path) -> Identity:
    return load_or_create_identity(path)


async def ask(stream: Stream, decoder: FrameDecoder, query: Query) -> Reply:
    """Send ``query`` on ``stream`` and read its reply (no verification)."""
    await stream.write(encode_query(query))
    return decode_reply(await read_frame(stream, decoder))


def reply_decoder() -> FrameDecoder:
    return FrameDecoder(MAX_REPLY_BYTES)


@contextmanager
def forging_archiver(data_dir: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Run tests/forging_archiver.py on the store in ``data_dir``: its ``{"peer_id", "addr"}``;
    killed on exit."""
    liar = subprocess.Popen(
        [sys.executable, "-m", "tests.forging_archiver", str(data_dir)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert liar.stdout is not None
        yield dict(json.loads(liar.stdout.readline()))
    finally:
        liar.kill()
        liar.wait(timeout=10)
