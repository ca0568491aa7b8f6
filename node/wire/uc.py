"""universal-connectivity's wire formats, sans-IO (libp2p/universal-connectivity, issue #20).

libp2p's chat demo has go, rust, js and nim peers that share three pubsub topics and one
stream protocol, and nothing else:

- the chat topic (``universal-connectivity``, the room): a message's data is the text itself,
  plain UTF-8, no envelope: the sender is the pubsub message's signer (StrictSign), its name
  is shown as the PeerId's last 8 characters;
- the file topic (the room's name + ``-file``): a message's data is a file id (UTF-8 text,
  a UUID in the js peer); the file is fetched from the signer with the file protocol;
- the peer-discovery topic (``universal-connectivity-browser-peer-discovery``): a
  ``uc_peer.proto`` ``Peer`` record, the signer's public key and multiaddrs;
- ``/universal-connectivity-file/1``: one request, one response on a stream, each a frame
  (unsigned varint length, then the bytes): the file id, then the file's contents.

This module checks what a remote peer sends before anything else looks at it; every error
carries a ``reason``, the label of the drop counter.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError
from p2pchat.node.wire import uc_peer_pb2 as pb
from p2pchat.node.wire.chat import unsafe_in_text
from p2pchat.node.wire.framing import frame

CHAT_TOPIC = "universal-connectivity"
FILE_TOPIC_SUFFIX = "-file"
DISCOVERY_TOPIC = "universal-connectivity-browser-peer-discovery"
FILE_PROTOCOL = "/universal-connectivity-file/1"

MAX_FILE_ID_BYTES = 128
"""A file id longer than this is refused (the js peer's are 36-character UUIDs)."""
MAX_PEER_RECORD_BYTES = 4096
MAX_RECORD_ADDRS = 16
MAX_ADDR_BYTES = 256
MAX_PUBLIC_KEY_BYTES = 1024  # an RSA-4096 key serialized is ~550 bytes; Ed25519 36
NAME_CHARS = 8
"""UC shows a sender by the last 8 characters of its PeerId (its go peer's ``shortID``)."""


class UcWireError(ValueError):
    """Bytes that are not an acceptable UC message; ``reason`` labels the drop."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def file_topic(room: str) -> str:
    """The file topic of the chat topic ``room`` (UC's go peer: room name + ``-file``)."""
    return room + FILE_TOPIC_SUFFIX


def short_name(peer_id: str) -> str:
    """How UC names a peer: the last :data:`NAME_CHARS` characters of its PeerId."""
    return peer_id[-NAME_CHARS:]


def decode_chat(data: bytes, max_bytes: int) -> str:
    """The text of a chat-topic message.

    Raises:
        UcWireError: over ``max_bytes`` (oversized); not UTF-8, blank, or holding control
            characters other than newline and tab, surrogates or bidi controls (malformed).
    """
    if len(data) > max_bytes:
        raise UcWireError("oversized", f"chat message of {len(data)} bytes (limit {max_bytes})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UcWireError("malformed", "chat message is not UTF-8") from None
    if not text.strip():
        raise UcWireError("malformed", "empty chat message")
    if unsafe_in_text(text):  # p2pchat's own rule for texts: no terminal control sequences
        raise UcWireError("malformed", "control characters in a chat message")
    return text


def encode_chat(text: str) -> bytes:
    """A chat-topic message: the text, UTF-8."""
    return text.encode("utf-8")


def check_file_id(data: bytes) -> str:
    """A file id as it arrives (file topic or file request), checked: 1 to
    :data:`MAX_FILE_ID_BYTES` bytes of UTF-8 without control characters.

    Raises:
        UcWireError: ``bad_file_id``.
    """
    if not data or len(data) > MAX_FILE_ID_BYTES:
        raise UcWireError("bad_file_id", f"file id of {len(data)} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UcWireError("bad_file_id", "file id is not UTF-8") from None
    if not text.isprintable() or text != text.strip():
        raise UcWireError("bad_file_id", "file id has control characters or spaces at its ends")
    return text


def file_request(file_id: str) -> bytes:
    """The request frame for ``file_id``."""
    return frame(file_id.encode("utf-8"))


def file_response(body: bytes) -> bytes:
    """The response frame carrying ``body``."""
    return frame(body)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer-discovery record: the serialized public key and the binary multiaddrs."""

    public_key: bytes
    addrs: tuple[bytes, ...]


def encode_peer(record: PeerRecord) -> bytes:
    """The ``Peer`` protobuf of ``record``."""
    return bytes(
        pb.Peer(publicKey=record.public_key, multiAddrs=list(record.addrs)).SerializeToString()
    )


def decode_peer(data: bytes) -> PeerRecord:
    """A peer-discovery record, checked for size: at most :data:`MAX_RECORD_ADDRS` addresses
    of at most :data:`MAX_ADDR_BYTES` bytes are kept (the rest is ignored, not refused).

    Raises:
        UcWireError: oversized, or malformed (not a ``Peer``, no public key).
    """
    if len(data) > MAX_PEER_RECORD_BYTES:
        raise UcWireError("oversized", f"peer record of {len(data)} bytes")
    message = pb.Peer()
    try:
        message.ParseFromString(data)
    except DecodeError as error:
        raise UcWireError("malformed", f"not a Peer record: {error}") from None
    key = bytes(message.publicKey)
    if not key or len(key) > MAX_PUBLIC_KEY_BYTES:
        raise UcWireError("malformed", f"public key of {len(key)} bytes")
    addrs = tuple(
        bytes(a) for a in message.multiAddrs[:MAX_RECORD_ADDRS] if 0 < len(a) <= MAX_ADDR_BYTES
    )
    return PeerRecord(key, addrs)
