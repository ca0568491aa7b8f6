"""The AutoNAT v1 codec (schema: ``autonat.proto`` beside this file), sans-IO.

A client asks a server to dial it back (:class:`DialRequest`); the server answers with a
:class:`DialResponse`. :func:`encode` frames either; :func:`decode_request` and
:func:`decode_response` turn one frame's payload into a record or raise :class:`AutoNatWireError`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pchat.node.wire import autonat_pb2
from p2pchat.node.wire.framing import frame, parse_message

PROTOCOL_ID = "/libp2p/autonat/1.0.0"
MAX_MESSAGE_BYTES = 4096  # go-libp2p's limit for AutoNAT messages
MAX_ADDRS = 16  # addresses a server considers per request (go-libp2p's maxPeerAddresses)
MAX_STATUS_TEXT = 256

_Message = autonat_pb2.Message


class Status(enum.IntEnum):
    """Response status codes, with the spec's values."""

    OK = 0
    E_DIAL_ERROR = 100
    E_DIAL_REFUSED = 101
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


class AutoNatWireError(ValueError):
    """A frame that is not an acceptable AutoNAT message."""


@dataclass(frozen=True)
class DialRequest:
    """ "Dial me back at one of these addresses" (binary PeerId and multiaddrs)."""

    peer_id: bytes
    addrs: tuple[bytes, ...]


@dataclass(frozen=True)
class DialResponse:
    """The server's verdict; ``addr`` is the address it reached (binary multiaddr) on OK."""

    status: Status
    text: str = ""
    addr: bytes = b""


def encode(message: DialRequest | DialResponse) -> bytes:
    """The framed wire form of ``message``."""
    if isinstance(message, DialRequest):
        wire = _Message(
            type=_Message.DIAL,
            dial=_Message.Dial(peer=_Message.PeerInfo(id=message.peer_id, addrs=message.addrs)),
        )
    else:
        response = _Message.DialResponse(status=int(message.status))  # type: ignore[arg-type]
        if message.text:
            response.statusText = message.text[:MAX_STATUS_TEXT]
        if message.addr:
            response.addr = message.addr
        wire = _Message(type=_Message.DIAL_RESPONSE, dialResponse=response)
    return frame(wire.SerializeToString())


def _parse(payload: bytes) -> autonat_pb2.Message:
    message = _Message()
    problem = parse_message(message, payload, MAX_MESSAGE_BYTES, "an AutoNAT message")
    if problem is not None:
        raise AutoNatWireError(problem)
    return message


def decode_request(payload: bytes) -> DialRequest:
    """The dial request in ``payload``; addresses beyond :data:`MAX_ADDRS` are ignored.

    Raises:
        AutoNatWireError: not a DIAL message with a peer id.
    """
    message = _parse(payload)
    if message.type != _Message.DIAL or not message.HasField("dial"):
        raise AutoNatWireError("expected a DIAL message")
    peer = message.dial.peer
    if not peer.id:
        raise AutoNatWireError("DIAL without a peer id")
    return DialRequest(
        peer_id=bytes(peer.id), addrs=tuple(bytes(a) for a in peer.addrs[:MAX_ADDRS])
    )


def decode_response(payload: bytes) -> DialResponse:
    """The dial response in ``payload``.

    Raises:
        AutoNatWireError: not a DIAL_RESPONSE, or a status the spec does not define.
    """
    message = _parse(payload)
    if message.type != _Message.DIAL_RESPONSE or not message.HasField("dialResponse"):
        raise AutoNatWireError("expected a DIAL_RESPONSE message")
    response = message.dialResponse
    # proto2 enums are closed: an undefined status value is kept aside as an unknown field and
    # the field reads as its default, OK. Only a status that is really there counts.
    if not response.HasField("status"):
        raise AutoNatWireError("missing or unknown status")
    try:
        status = Status(response.status)
    except ValueError:
        raise AutoNatWireError(f"unknown status {response.status}") from None
    return DialResponse(
        status=status, text=response.statusText[:MAX_STATUS_TEXT], addr=bytes(response.addr)
    )
