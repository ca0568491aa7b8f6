"""What a private room's message costs against a public one's (``python -m
tests.bench.private_rooms``): CPU per message on the sender (encode; for a private room also the
Megolm encryption and the outbound session's pickle written to the store) and on a receiver
(decode and check; also the decryption), and the payload bytes GossipSub carries, for texts of
100 and 1,000 bytes.

Prints one JSON line. The code measured is the one the peer runs (the chat codec,
:class:`~p2pchat.roles.peer.group_crypto.GroupKeys` on a real RocksDB store); the network and
the GossipSub envelope (the same ~150 bytes of signature, key and ids for both) are not.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from p2pchat.node.store import Store
from p2pchat.node.wire.chat import (
    ChatText,
    PrivateText,
    check_inner_text,
    decode,
    encode,
    encode_inner_text,
    new_message_id,
)
from p2pchat.roles.peer.group_crypto import GroupKeys

ROOM = "private-" + "0" * 32
COUNT = 2000
LIMIT = 4096


def _per_message_us(run: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(COUNT):
        run(i)
    return round((time.perf_counter() - started) / COUNT * 1e6, 1)


def _measure(size: int, sender: GroupKeys, receiver: GroupKeys) -> dict[str, object]:
    texts = [
        ChatText(new_message_id(), ROOM, "alice", "x" * size, 1_700_000_000_000 + i)
        for i in range(COUNT)
    ]
    public = [encode(t) for t in texts]
    private: list[bytes] = []

    def send_private(i: int) -> None:
        text = texts[i]
        session_id, ciphertext = sender.encrypt(ROOM, encode_inner_text(text))
        private.append(encode(PrivateText(text.id, ROOM, text.sent_at_ms, session_id, ciphertext)))

    def receive_private(i: int) -> None:
        payload = decode(private[i], max_text_bytes=LIMIT)
        assert isinstance(payload, PrivateText)
        raw = receiver.decrypt(ROOM, "alice", payload.session_id, payload.ciphertext, payload.id)
        check_inner_text(raw, LIMIT)

    return {
        "text_bytes": size,
        "public_send_us": _per_message_us(lambda i: encode(texts[i])),
        "private_send_us": _per_message_us(send_private),
        "public_receive_us": _per_message_us(lambda i: decode(public[i], max_text_bytes=LIMIT)),
        "private_receive_us": _per_message_us(receive_private),
        "public_payload_bytes": len(public[0]),
        "private_payload_bytes": len(private[0]),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(Path(tmp) / "store")
        sender = GroupKeys(store.namespace("a"), "alice", 256)
        receiver = GroupKeys(store.namespace("b"), "bob", 256)
        receiver.add_inbound(ROOM, "alice", sender.share(ROOM)[1])
        results = [_measure(size, sender, receiver) for size in (100, 1000)]
        store.close()
    print(json.dumps({"bench": "private_rooms", "messages": COUNT, "results": results}))


if __name__ == "__main__":
    main()
