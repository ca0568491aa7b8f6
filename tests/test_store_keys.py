"""What roles keep in the node's store: namespaces of keys (node/store.py), each its own run
of ``<namespace>/...`` keys on disk, none reaching the node's own data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from p2pchat.node.history import History
from p2pchat.node.store import NODE_NAMESPACES, Store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "store")
    yield opened
    opened.close()


def test_a_namespace_keeps_its_keys_under_its_name_on_disk(store: Store) -> None:
    keys = store.namespace("pend")
    assert keys.get(b"a") is None
    keys.put(b"a", b"1")
    assert keys.get(b"a") == b"1"
    assert store.db[b"pend/a"] == b"1"
    keys.delete(b"a")
    assert keys.get(b"a") is None and store.db.get(b"pend/a") is None
    keys.delete(b"a")  # absent: nothing happens


def test_items_of_a_prefix_stay_inside_the_namespace_in_key_order(store: Store) -> None:
    pend, pending = store.namespace("pend"), store.namespace("pending")
    for key in (b"room\x00b", b"room\x00a", b"room2\x00a", b"other"):
        pend.put(key, key.upper())
    pending.put(b"room\x00c", b"x")  # its keys sort right after pend/'s
    store.db[b"pene"] = b"x"  # a key just past the namespace's
    assert list(pend.items(b"room\x00")) == [
        (b"room\x00a", b"ROOM\x00A"),
        (b"room\x00b", b"ROOM\x00B"),
    ]
    assert [key for key, _ in pend.items()] == [b"other", b"room\x00a", b"room\x00b", b"room2\x00a"]
    assert list(pending.items()) == [(b"room\x00c", b"x")]
    assert list(store.namespace("empty").items()) == []


def test_the_node_s_own_data_is_no_role_s_namespace(store: Store) -> None:
    History(store)  # writes its own keys
    assert {"meta", "hist", "hid", "hcnt", "hmeta"} <= NODE_NAMESPACES
    for name in NODE_NAMESPACES:
        with pytest.raises(ValueError, match="node's own data"):
            store.namespace(name)
    for name in ("", "a/b", "a\x00"):
        with pytest.raises(ValueError):
            store.namespace(name)
    # Every key the node writes itself is under one of its namespaces.
    assert {key.split(b"/", 1)[0].decode() for key, _ in store.db.items()} <= NODE_NAMESPACES
