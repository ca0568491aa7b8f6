"""The store of this peer's waiting direct messages (:mod:`p2pchat.roles.peer.dm_waiting`):
order across reopening, removal, and damaged records left out."""

from __future__ import annotations

from pathlib import Path

from p2pchat.node.store import Store
from p2pchat.node.wire.dm import Plaintext
from p2pchat.roles.peer.dm_waiting import PREFIX, WaitingStore


def _plain(n: int) -> Plaintext:
    return Plaintext(bytes([n]) * 16, f"text {n}", 1000 + n)


def test_waiting_messages_come_back_in_order_and_removed_ones_do_not(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        waiting = WaitingStore(store.namespace("dm"), 4096)
        keys = [waiting.add("peer-b" if n % 2 else "peer-c", _plain(n)) for n in range(1, 6)]
        waiting.remove(keys[1])
    finally:
        store.close()
    store = Store.open(tmp_path / "store")
    try:
        reopened = WaitingStore(store.namespace("dm"), 4096)
        loaded = reopened.load()
        assert [(peer, plain) for _, peer, plain in loaded] == [
            ("peer-b", _plain(1)),
            ("peer-b", _plain(3)),
            ("peer-c", _plain(4)),
            ("peer-b", _plain(5)),
        ]
        # A message added after reopening comes after every earlier one.
        later = reopened.add("peer-c", _plain(6))
        assert later > max(key for key, _, _ in loaded)
    finally:
        store.close()


def test_a_damaged_record_is_deleted_and_left_out(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    try:
        keys = store.namespace("dm")
        waiting = WaitingStore(keys, 4096)
        good = waiting.add("peer-b", _plain(1))
        bad = PREFIX + (99).to_bytes(8, "big") + b"x" * 16
        keys.put(bad, b"peer-b\x00not a protobuf \xff\xff")
        oversized = WaitingStore(keys, 4)  # "text 1" is over 4 bytes
        assert oversized.load() == []
        assert keys.get(good) is None and keys.get(bad) is None
    finally:
        store.close()
