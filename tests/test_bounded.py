"""The bounded mapping that every map keyed by remote peers uses."""

from __future__ import annotations

import pytest
from p2pchat.node.bounded import BoundedDict

from tests.peer_ids import fresh_peer_id, fresh_peer_ids

FLOOD = 10_000


def test_fresh_peer_ids_look_like_peer_ids() -> None:
    peer = fresh_peer_id()
    assert peer.startswith("12D3KooW") and len(peer) == 52
    assert peer != fresh_peer_id()


def test_a_flood_of_fresh_peer_ids_keeps_only_the_newest() -> None:
    bounded: BoundedDict[str, int] = BoundedDict(100)
    peers = list(fresh_peer_ids(FLOOD))
    for n, peer in enumerate(peers):
        bounded[peer] = n
        assert len(bounded) <= 100
    assert list(bounded) == peers[-100:]
    assert dict(bounded) == {peer: FLOOD - 100 + n for n, peer in enumerate(peers[-100:])}


def test_a_write_makes_a_key_the_newest_and_a_read_does_not() -> None:
    bounded: BoundedDict[str, int] = BoundedDict(3)
    bounded["a"], bounded["b"], bounded["c"] = 1, 2, 3
    assert bounded["a"] == 1 and bounded.get("a") == 1 and "a" in bounded  # reads: no reorder
    bounded["d"] = 4
    assert list(bounded) == ["b", "c", "d"]
    bounded["b"] = 20  # rewritten: now the newest
    bounded["e"] = 5
    assert list(bounded.items()) == [("d", 4), ("b", 20), ("e", 5)]
    bounded.touch("d")
    bounded.touch("absent")
    bounded["f"] = 6
    assert list(bounded.newest_first()) == [("f", 6), ("d", 4), ("e", 5)]


def test_setdefault_pop_and_delete_behave_like_a_dict() -> None:
    bounded: BoundedDict[str, int] = BoundedDict(2)
    assert bounded.setdefault("a", 1) == 1
    assert bounded.setdefault("a", 9) == 1
    assert bounded.pop("a") == 1
    assert bounded.pop("a", None) is None
    bounded["b"] = 2
    del bounded["b"]
    assert not bounded
    with pytest.raises(KeyError):
        bounded["b"]


def test_iterating_while_reading_is_safe() -> None:
    bounded: BoundedDict[str, int] = BoundedDict(10)
    for n in range(10):
        bounded[str(n)] = n
    assert {key: bounded[key] for key in list(bounded.keys())} == dict(bounded)
    assert sum(bounded.values()) == 45


def test_a_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        BoundedDict(0)
