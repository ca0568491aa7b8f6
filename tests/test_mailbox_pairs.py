"""Per-contact mailbox addresses between real ``p2pchat`` processes on 127.0.0.1 (issue #19): B
wrote to A, so A's letter to B goes to the mailbox of the pair (A, B); C never heard from B, so
its letter goes to B's published mailbox. The archiver holds B's two letters in two mailboxes
whose addresses it cannot tie to each other (neither is derived from the other's key); B, back,
fetches both and shows each once."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
from p2pchat.node.store import Store
from p2pchat.node.wire.mailbox import address_of
from p2pchat.roles.peer.dm_mailbox import MailKeys

from tests.conftest import NodeProcess
from tests.test_dm import connected, direct_from, msg
from tests.test_dm_mailbox import archiver, deposited, wait_metric
from tests.test_json_contract import chat_peer


def mail_keys(data_dir: Path) -> MailKeys:
    store = Store.open(data_dir / "store")
    try:
        return MailKeys(store.namespace("dm"))
    finally:
        store.close()


def published_address(data_dir: Path) -> bytes:
    store = Store.open(data_dir / "store")
    try:
        seed = store.namespace("dm").get(b"m/auth")
    finally:
        store.close()
    assert seed is not None
    return address_of(bytes(nacl.signing.SigningKey(seed).verify_key))


def addresses_held(data_dir: Path) -> set[bytes]:
    """The mailbox addresses a stopped archiver holds letters in (its store's keys)."""
    store = Store.open(data_dir / "store")
    try:
        return {key[2:34] for key, _ in store.namespace("mailbox").items(b"e/")}
    finally:
        store.close()


def test_a_contact_writes_to_the_pair_mailbox_a_stranger_to_the_published_one(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    x = archiver(tmp_path / "x", nodes)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", x.addr())
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", f"{x.addr()},{a.addr()}")
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{x.addr()},{b.addr()}")
    connected(a, b)
    connected(c, b)
    assert msg(b, a.peer_id, "b writes to a", 1)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, "b writes to a")
    assert msg(c, b.peer_id, "c writes to b", 1)["kind"] == "dm_delivered"
    direct_from(b, c.peer_id, "c writes to b")
    recipient = b.peer_id
    assert b.stop() == 0
    nodes.remove(b)

    for sender, text in ((a, "to our pair's mailbox"), (c, "to your published mailbox")):
        got = deposited(sender, msg(sender, recipient, text, 2))
        assert got["kind"] == "dm_waiting" and got["data"]["deposited"] == 1, got
    wait_metric(x, "p2pchat_mailbox_letters", 2)
    assert x.metric("p2pchat_mailboxes") == 2  # one recipient, two unrelated addresses
    for sender in (a, c):
        assert sender.stop() == 0
        nodes.remove(sender)
    assert x.stop() == 0
    nodes.remove(x)
    pair = address_of(
        bytes(mail_keys(tmp_path / "b").pair(mail_keys(tmp_path / "a").sealing_key).verify_key)
    )
    assert addresses_held(tmp_path / "x") == {pair, published_address(tmp_path / "b")}

    x = archiver(tmp_path / "x", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", x.addr())
    direct_from(b, a.peer_id, "to our pair's mailbox")
    direct_from(b, c.peer_id, "to your published mailbox")
    wait_metric(x, "p2pchat_mailbox_letters", 0)
    assert b.metric("p2pchat_dm_mail_fetched_total") == 2
    # Two mailboxes fetched (and fetched again at each identify) stay within the fetch rate.
    assert x.metric("p2pchat_mailbox_refused_total", reason="rate") in (None, 0)
    shown = [e["text"] for e in b.drain_events() if e["type"] == "direct"]
    assert sorted(shown) == ["to our pair's mailbox", "to your published mailbox"]
