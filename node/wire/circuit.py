"""The Circuit Relay v2 codec (schema: ``circuit.proto`` beside this file), sans-IO.

Hop messages pass between a peer and a relay, stop messages between the relay and the
destination of a circuit. :func:`encode` frames any record below; :func:`decode_hop` and
:func:`decode_stop` turn one frame's payload into a record or raise :class:`CircuitWireError`,
whose :attr:`~CircuitWireError.status` is what the spec says to answer (MALFORMED_MESSAGE or
UNEXPECTED_MESSAGE).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from p2pchat.node.wire import circuit_pb2
from p2pchat.node.wire.framing import frame, parse_message

HOP_PROTOCOL_ID = "/libp2p/circuit/relay/0.2.0/hop"
STOP_PROTOCOL_ID = "/libp2p/circuit/relay/0.2.0/stop"
MAX_MESSAGE_BYTES = 4096  # go-libp2p's limit for relay messages
MAX_ADDRS = 16

_Hop = circuit_pb2.HopMessage
_Stop = circuit_pb2.StopMessage


class Status(enum.IntEnum):
    """Status codes, with the spec's values."""

    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


class CircuitWireError(ValueError):
    """A frame that is not an acceptable relay message; ``status`` is the answer to give."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True)
class Limit:
    """What a relayed connection may use: seconds and bytes per direction (None: no limit)."""

    duration: int | None = None
    data: int | None = None


@dataclass(frozen=True)
class Reservation:
    """A slot on a relay: until ``expire`` (Unix seconds), reachable at ``addrs``."""

    expire: int
    addrs: tuple[bytes, ...] = ()
    voucher: bytes = b""


@dataclass(frozen=True)
class Reserve:
    """Hop RESERVE: "keep a slot for me"."""


@dataclass(frozen=True)
class Connect:
    """Hop CONNECT: "relay me to ``peer_id``" (binary PeerId)."""

    peer_id: bytes


@dataclass(frozen=True)
class HopStatus:
    """Hop STATUS: the relay's answer to RESERVE or CONNECT."""

    status: Status
    reservation: Reservation | None = None
    limit: Limit | None = None


@dataclass(frozen=True)
class StopConnect:
    """Stop CONNECT: "``peer_id`` wants a relayed connection to you"."""

    peer_id: bytes
    limit: Limit | None = None


@dataclass(frozen=True)
class StopStatus:
    """Stop STATUS: the destination's answer."""

    status: Status


HopRecord = Reserve | Connect | HopStatus
StopRecord = StopConnect | StopStatus


def _limit_pb(limit: Limit) -> circuit_pb2.Limit:
    wire = circuit_pb2.Limit()
    if limit.duration is not None:
        wire.duration = limit.duration
    if limit.data is not None:
        wire.data = limit.data
    return wire


def encode(record: HopRecord | StopRecord) -> bytes:
    """The framed wire form of ``record``."""
    wire: _Hop | _Stop
    if isinstance(record, Reserve):
        wire = _Hop(type=_Hop.RESERVE)
    elif isinstance(record, Connect):
        wire = _Hop(type=_Hop.CONNECT, peer=circuit_pb2.Peer(id=record.peer_id))
    elif isinstance(record, HopStatus):
        wire = _Hop(type=_Hop.STATUS, status=int(record.status))  # type: ignore[arg-type]
        if record.reservation is not None:
            wire.reservation.expire = record.reservation.expire
            wire.reservation.addrs.extend(record.reservation.addrs)
            if record.reservation.voucher:
                wire.reservation.voucher = record.reservation.voucher
        if record.limit is not None:
            wire.limit.CopyFrom(_limit_pb(record.limit))
    elif isinstance(record, StopConnect):
        wire = _Stop(type=_Stop.CONNECT, peer=circuit_pb2.Peer(id=record.peer_id))
        if record.limit is not None:
            wire.limit.CopyFrom(_limit_pb(record.limit))
    else:
        wire = _Stop(type=_Stop.STATUS, status=int(record.status))  # type: ignore[arg-type]
    return frame(wire.SerializeToString())


def _parse(payload: bytes, message: _Hop | _Stop) -> None:
    problem = parse_message(message, payload, MAX_MESSAGE_BYTES, "a relay message")
    if problem is not None:
        raise CircuitWireError(Status.MALFORMED_MESSAGE, problem)
    # proto2 enums are closed: an undefined value is set aside and the field reads as its
    # default, which here would turn garbage into RESERVE or CONNECT.
    if not message.HasField("type"):
        raise CircuitWireError(Status.MALFORMED_MESSAGE, "missing or unknown message type")


def _status(message: _Hop | _Stop) -> Status:
    if not message.HasField("status"):
        raise CircuitWireError(Status.MALFORMED_MESSAGE, "STATUS without a known status")
    try:
        return Status(message.status)
    except ValueError:  # UNUSED
        raise CircuitWireError(Status.MALFORMED_MESSAGE, "status UNUSED") from None


def _peer_id(message: _Hop | _Stop) -> bytes:
    if not message.HasField("peer") or not message.peer.id:
        raise CircuitWireError(Status.MALFORMED_MESSAGE, "CONNECT without a peer id")
    return bytes(message.peer.id)


def _limit(message: _Hop | _Stop) -> Limit | None:
    if not message.HasField("limit"):
        return None
    wire = message.limit
    return Limit(
        duration=wire.duration if wire.HasField("duration") else None,
        data=wire.data if wire.HasField("data") else None,
    )


def decode_hop(payload: bytes) -> HopRecord:
    """The hop message in ``payload``.

    Raises:
        CircuitWireError: not a well-formed hop message.
    """
    message = _Hop()
    _parse(payload, message)
    if message.type == _Hop.RESERVE:
        return Reserve()
    if message.type == _Hop.CONNECT:
        return Connect(_peer_id(message))
    reservation = None
    if message.HasField("reservation"):
        wire = message.reservation
        if not wire.HasField("expire"):
            raise CircuitWireError(Status.MALFORMED_MESSAGE, "reservation without expiry")
        reservation = Reservation(
            expire=wire.expire,
            addrs=tuple(bytes(addr) for addr in wire.addrs[:MAX_ADDRS]),
            voucher=bytes(wire.voucher),
        )
    return HopStatus(_status(message), reservation, _limit(message))


def decode_stop(payload: bytes) -> StopRecord:
    """The stop message in ``payload``.

    Raises:
        CircuitWireError: not a well-formed stop message.
    """
    message = _Stop()
    _parse(payload, message)
    if message.type == _Stop.CONNECT:
        return StopConnect(_peer_id(message), _limit(message))
    return StopStatus(_status(message))
