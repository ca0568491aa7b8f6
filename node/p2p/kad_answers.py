"""Kad-DHT answers cut to what a Kademlia server sends before the library walks them (#18).

py-libp2p's lookups walk every peer an answer names with list membership tests
(``peer_routing._query_single_peer_for_closest`` dedups into a list, then builds a debug
message that walks the list again, even with debug logging off; ``_query_peer_for_closest``
and ``provider_store.find_providers`` do the same): quadratic in the answer, without a
checkpoint. A spec server names the K = 20 closest peers it knows (go-libp2p: its bucket size)
and the providers it stores for the key (20 at most here and in go-libp2p). Measured in
process, one lookup asking six servers whose answers name 1,500 invented peers each: 18.6 s,
with a stall of 7.3 s in which no other task ran (two such servers: 3.4 s, a 1.0 s stall, on
an idle machine); with the cut, 1.8 s and no stall over 0.06 s. A chat peer looking its room
up every 2 s among six such servers was busy without pause (py-spy: 85% of its samples in
the library's walk of the answers) and the honest chat it relayed waited: 19-54% of the
messages arrived 17-26 s late, only once the liars left. Nothing was dropped, so no drop
counter moved; that was the "unexplained loss" of honest messages under a Kad answer flood.

:func:`trimmed` keeps the first :data:`MAX_CLOSER_PEERS` closer peers and
:data:`MAX_PROVIDER_PEERS` providers of an answer and counts each answer cut
(``kad_refused("closer_peers")`` / ``("providers")``) on the observer of the lookup that read
it (:func:`counting_on`; a context variable, since the library reads answers from a
module-level function, inherited by the lookup's tasks). :mod:`~p2pchat.node.p2p.patches`
installs :func:`reading_trimmed` as the answer reader of the library's three lookup modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

from google.protobuf.message import DecodeError
from libp2p.kad_dht.pb.kademlia_pb2 import Message

MAX_CLOSER_PEERS = 20  # K: what a Kademlia server names (go-libp2p's bucket size)
MAX_PROVIDER_PEERS = 20  # what a server stores per key (ProviderLimits.per_key, go-libp2p's)


class AnswerObserver(Protocol):
    """Told of each answer cut, by reason (``closer_peers``, ``providers``)."""

    def kad_refused(self, reason: str) -> None: ...


_observer: ContextVar[AnswerObserver | None] = ContextVar("kad_answer_observer", default=None)


@contextlib.contextmanager
def counting_on(observer: AnswerObserver) -> Iterator[None]:
    """Answers read within (and by the tasks started within) count their cuts on
    ``observer``."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


def trimmed(data: bytes) -> bytes:
    """The answer ``data`` with at most :data:`MAX_CLOSER_PEERS` closer peers and
    :data:`MAX_PROVIDER_PEERS` providers (``data`` itself when within both, or unparsable:
    the library's own parse then refuses it)."""
    answer = Message()
    try:
        answer.ParseFromString(data)
    except DecodeError:
        return data
    cut = []
    if len(answer.closerPeers) > MAX_CLOSER_PEERS:
        del answer.closerPeers[MAX_CLOSER_PEERS:]
        cut.append("closer_peers")
    if len(answer.providerPeers) > MAX_PROVIDER_PEERS:
        del answer.providerPeers[MAX_PROVIDER_PEERS:]
        cut.append("providers")
    if not cut:
        return data
    observer = _observer.get()
    if observer is not None:
        for reason in cut:
            observer.kad_refused(reason)
    return bytes(answer.SerializeToString())


def reading_trimmed(
    library_read: Callable[..., Awaitable[bytes]],
) -> Callable[..., Awaitable[bytes]]:
    """The library's ``read_varint_prefixed_bytes_limited`` (its size bound kept), with
    each answer :func:`trimmed`."""

    async def read(stream: Any, max_length: int) -> bytes:
        return trimmed(await library_read(stream, max_length))

    return read
