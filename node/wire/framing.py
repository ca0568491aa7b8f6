"""Length-prefixed frames, as libp2p protocols carry protobuf messages: an unsigned varint
(LEB128) byte count, then that many bytes. Sans-IO: :func:`frame` encodes, :class:`FrameDecoder`
is fed whatever a stream read returned and hands back whole frames.

Untrusted lengths are checked before anything is buffered: a peer that announces a frame over
the decoder's limit (the "uvarint length bomb") gets a :class:`FrameError`, never an allocation.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError, Message

MAX_VARINT_BYTES = 10  # enough for any 64-bit length; more is malformed


class FrameError(ValueError):
    """Bytes that cannot be a valid frame (over-long varint, or a frame over the limit)."""


class FrameTooLarge(FrameError):
    """A frame announced over the decoder's limit."""


def frame(payload: bytes) -> bytes:
    """``payload`` with its varint length prefix."""
    return encode_uvarint(len(payload)) + payload


def parse_message(message: Message, payload: bytes, limit: int, name: str) -> str | None:
    """Parse one frame's ``payload`` into the protobuf ``message``: None if it went well, else
    why the payload is not acceptable (over ``limit`` bytes, or not ``name``)."""
    if len(payload) > limit:
        return f"message of {len(payload)} bytes; the limit is {limit}"
    try:
        message.ParseFromString(payload)
    except DecodeError as error:
        return f"not {name}: {error}"
    return None


def encode_uvarint(value: int) -> bytes:
    """The unsigned LEB128 encoding of ``value`` (>= 0)."""
    if value < 0:
        raise ValueError("a uvarint cannot be negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class FrameDecoder:
    """Turns a byte stream into frames of at most ``max_frame_bytes`` each."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer)

    @property
    def bytes_wanted(self) -> int:
        """How many more bytes the next frame needs: exactly what completes it once its length
        is known (0 if it is complete), else 1 (its length is still arriving). A reader that
        never asks for more never takes a byte past the frame.

        Raises:
            FrameError: the length buffered so far is over the limit or malformed.
        """
        header = self._read_length()
        if header is None:
            return 1
        length, header_bytes = header
        return max(header_bytes + length - len(self._buffer), 0)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame now complete, in order.

        Raises:
            FrameError: the stream announces a frame over the limit or a malformed length.
        """
        frames: list[bytes] = []
        while (complete := self.next_frame(data)) is not None:
            frames.append(complete)
            data = b""
        return frames

    def next_frame(self, data: bytes = b"") -> bytes | None:
        """Add ``data``; return the first complete frame, or None. Frames after it stay
        buffered for the next call (a peer may send its next message before our answer).

        Raises:
            FrameError: the stream announces a frame over the limit or a malformed length.
        """
        self._buffer += data
        header = self._read_length()
        if header is None:
            return None
        length, header_bytes = header
        end = header_bytes + length
        if len(self._buffer) < end:
            return None
        complete = bytes(self._buffer[header_bytes:end])
        del self._buffer[:end]
        return complete

    def _read_length(self) -> tuple[int, int] | None:
        value = 0
        for index in range(min(len(self._buffer), MAX_VARINT_BYTES)):
            byte = self._buffer[index]
            value |= (byte & 0x7F) << (7 * index)
            if value > self.max_frame_bytes:
                raise FrameTooLarge(
                    f"frame of {value}+ bytes announced; the limit is {self.max_frame_bytes}"
                )
            if not byte & 0x80:
                return value, index + 1
        if len(self._buffer) >= MAX_VARINT_BYTES:
            raise FrameError("malformed length prefix (varint over 10 bytes)")
        return None
