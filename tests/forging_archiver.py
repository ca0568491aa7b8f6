"""A lying history server, the test double of tests/test_archive_forgery.py.

``python -m tests.forging_archiver DATA_DIR`` serves the history protocol from the store in
DATA_DIR on 127.0.0.1, prints ``{"peer_id": ..., "addr": ...}`` on one line, and runs until
killed. Every reply is the honest one, then falsified:

- message 2 is withheld;
- message 3's text is altered, its signature kept;
- message 4 is swapped for a genuine, signed message of another room (listed under 4's id);
- message 5 is listed with another send time than the one signed;
- a message claiming to be from message 1's sender, signed by this server's own key, is
  injected.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import trio
from libp2p.pubsub.pb import rpc_pb2
from p2pchat.node.history import History
from p2pchat.node.p2p.host import HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.p2p.streams import Stream, StreamEnded, read_frame
from p2pchat.node.store import Store
from p2pchat.node.store_server import answer
from p2pchat.node.wire.chat import ChatText, decode, encode
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.node.wire.store_query import (
    MAX_QUERY_BYTES,
    PROTOCOL_ID,
    Entry,
    Query,
    Reply,
    decode_query,
    encode_reply,
)

from tests.history_fixtures import chosen_number

OTHER_ROOM_ID = 104  # tests/test_archive_forgery.py stores messages 100.. in another room
INJECTED_CHOSEN = (999).to_bytes(16, "big")  # the payload id the injected message chooses


def _altered(envelope: bytes) -> bytes:
    message = rpc_pb2.Message()
    message.ParseFromString(envelope)
    payload = decode(bytes(message.data), max_text_bytes=4096)
    assert isinstance(payload, ChatText)
    message.data = encode(replace(payload, text="ALTERED by the archiver"))
    return message.SerializeToString()


def _forged(envelope: bytes, forger_key: object) -> Entry:
    """A new message in the name of ``envelope``'s sender, signed with the forger's key."""
    message = rpc_pb2.Message()
    message.ParseFromString(envelope)
    payload = decode(bytes(message.data), max_text_bytes=4096)
    assert isinstance(payload, ChatText)
    fake = replace(payload, id=INJECTED_CHOSEN, text="INJECTED by the archiver")
    message.data = encode(fake)
    message.signature = forger_key.sign(b"libp2p-pubsub:" + message.SerializeToString())  # type: ignore[attr-defined]
    return Entry(fake.id, fake.sent_at_ms, message.SerializeToString())


def falsify(reply: Reply, history: History, forger_key: object) -> Reply:
    entries: list[Entry] = []
    for entry in reply.entries:
        number = chosen_number(entry.envelope)
        if number == 2:
            continue
        if number == 3:
            entry = replace(entry, envelope=_altered(entry.envelope))
        elif number == 4:
            other = next(m for m in history.rooms() if m != "p2p-chat-default")
            swapped = next(
                m for m in history.last(other, 100) if chosen_number(m.envelope) == OTHER_ROOM_ID
            )
            entry = replace(entry, envelope=swapped.envelope)
        elif number == 5:
            entry = replace(entry, sent_at_ms=entry.sent_at_ms + 1000)
        elif number == 1:
            entries.append(_forged(entry.envelope, forger_key))
        entries.append(entry)
    return replace(reply, entries=tuple(entries))


def lie(history: History, query: Query, forger_key: object) -> Reply:
    """The falsified answer to ``query``: a page of ids lists the falsified page's ids (2
    left out, the injected one in); a lookup answers the falsified messages asked for (the
    injected one too, when its id is asked)."""
    if query.message_ids:
        honest = replace(
            query, message_ids=tuple(i for i in query.message_ids if i != INJECTED_CHOSEN)
        )
        lied = falsify(answer(history, honest), history, forger_key)
        asked = set(query.message_ids)
        return replace(lied, entries=tuple(e for e in lied.entries if e.message_id in asked))
    lied = falsify(answer(history, replace(query, ids_only=False)), history, forger_key)
    if not query.ids_only:
        return lied
    return replace(lied, entries=tuple(replace(e, envelope=b"") for e in lied.entries))


async def main(data_dir: Path) -> None:
    identity = load_or_create_identity(data_dir)
    store = Store.open(data_dir / "store")
    history = History(store)
    host = P2PHost(identity, HostSettings(listen=["/ip4/127.0.0.1/tcp/0"]), QuietObserver())

    async def serve(stream: Stream) -> None:
        decoder = FrameDecoder(MAX_QUERY_BYTES)
        while True:
            try:
                query = decode_query(await read_frame(stream, decoder))
            except StreamEnded:
                return
            reply = lie(history, query, identity.key_pair.private_key)
            await stream.write(encode_reply(reply))

    async with host.run():
        host.set_stream_handler(PROTOCOL_ID, serve)
        addr = host.advertised_addrs()[0]
        print(json.dumps({"peer_id": host.peer_id, "addr": addr}), flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]))
