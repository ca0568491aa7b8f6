"""The DCUtR codec (schema: ``dcutr.proto`` beside this file), sans-IO.

Two peers joined through a relay exchange CONNECT (each side's addresses to dial) and SYNC
("dial now") on one stream. :func:`encode` frames either record; :func:`decode` turns one frame's
payload into a record or raises :class:`DcutrWireError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.node.wire import dcutr_pb2
from p2pchat.node.wire.framing import frame, parse_message

PROTOCOL_ID = "/libp2p/dcutr"
MAX_MESSAGE_BYTES = 4096  # the spec's limit ("SHOULD refuse ... larger than 4 KiB")
MAX_ADDRS = 16  # addresses taken from one CONNECT; the rest are ignored

_HolePunch = dcutr_pb2.HolePunch


class DcutrWireError(ValueError):
    """A frame that is not an acceptable DCUtR message."""


@dataclass(frozen=True)
class Connect:
    """CONNECT: the sender's addresses (binary multiaddrs) to dial for a direct connection."""

    addrs: tuple[bytes, ...]


@dataclass(frozen=True)
class Sync:
    """SYNC: "dial me now" (sent by the initiator once it has measured the round trip)."""


Record = Connect | Sync


def encode(record: Record) -> bytes:
    """The framed wire form of ``record``."""
    if isinstance(record, Connect):
        wire = _HolePunch(type=_HolePunch.CONNECT, ObsAddrs=list(record.addrs))
    else:
        wire = _HolePunch(type=_HolePunch.SYNC)
    return frame(wire.SerializeToString())


def decode(payload: bytes) -> Record:
    """The message in ``payload``.

    Raises:
        DcutrWireError: too large, not a HolePunch message, or of no known type.
    """
    message = _HolePunch()
    problem = parse_message(message, payload, MAX_MESSAGE_BYTES, "a DCUtR message")
    if problem is not None:
        raise DcutrWireError(problem)
    # proto2 enums are closed: an unknown type is set aside and the field reads as unset.
    if not message.HasField("type"):
        raise DcutrWireError("missing or unknown message type")
    if message.type == _HolePunch.SYNC:
        return Sync()
    return Connect(tuple(bytes(addr) for addr in message.ObsAddrs[:MAX_ADDRS]))
