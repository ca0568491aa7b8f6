"""Fallback-key rotation between real ``p2pchat`` processes on 127.0.0.1 (issue #19): a first
message sealed for B with the fallback key of B's bundle, deposited with an archiver while B is
away, still opens when B comes back after rotating its key (the grace); a copy of B's keys
taken within the grace reads a first message made with the old key, a copy taken after the
next rotation does not (and does read one made with the key rotated in, so the check can fail).

B rotates every :data:`ROTATION` seconds (its ``mailbox.ttl`` set as short: the configuration
keeps the period no shorter). A's Olm sessions are bounded to one peer: A writing to C forgets
its session with B but keeps B's bundle, so A's letter to B opens a new session, a pre-key
message only B's fallback key decrypts (with a session in place, the key would not matter).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import vodozemac

from tests.conftest import NodeProcess, node_env, start_node
from tests.secrecy import olm_state
from tests.test_dm import connected, direct_from, msg
from tests.test_dm_mailbox import archiver, deposited, wait_metric
from tests.test_json_contract import chat_peer

ROTATION = 60.0  # seconds; B must fetch its letter within one period of its restart


def bob(path: Path, nodes: list[NodeProcess], *args: str) -> tuple[NodeProcess, float]:
    """B with a short rotation period; the monotonic time it was ready (its fallback key, made
    or rotated at its start, is at least that old)."""
    node = start_node(
        path,
        "--json",
        *args,
        env=node_env(
            P2PCHAT_CHAT__DM_FALLBACK_ROTATION=str(ROTATION), P2PCHAT_MAILBOX__TTL=str(ROTATION)
        ),
    )
    nodes.append(node)
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    return node, time.monotonic()


def stop(node: NodeProcess, nodes: list[NodeProcess]) -> None:
    assert node.stop() == 0
    nodes.remove(node)


def keys_of(data_dir: Path, copy: Path) -> vodozemac.Account:
    """The Olm account in a copy of a stopped node's data dir, as a thief of the disk reads it."""
    shutil.copytree(data_dir, copy)
    account, _ = olm_state(copy)
    return account


def fallback_of(account: vodozemac.Account) -> vodozemac.Curve25519PublicKey:
    (key,) = account.fallback_key.values()  # type: ignore[attr-defined]
    return key  # type: ignore[no-any-return]


def reads_first_message(
    account: vodozemac.Account,
    identity: vodozemac.Curve25519PublicKey,
    fallback: vodozemac.Curve25519PublicKey,
) -> bool:
    """Whether ``account`` opens a first (pre-key) message made with ``identity`` and
    ``fallback`` by a stranger's fresh account."""
    sender = vodozemac.Account()
    olm_type, ciphertext = (
        sender.create_outbound_session(identity, fallback).encrypt(b"first").to_parts()
    )
    pre_key = vodozemac.AnyOlmMessage.from_parts(olm_type, ciphertext).to_pre_key()
    assert pre_key is not None
    try:
        _, plaintext = account.create_inbound_session(sender.curve25519_key, pre_key)
    except ValueError:
        return False
    return plaintext == b"first"


def wait_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def test_a_letter_sealed_before_a_rotation_opens_and_the_key_is_forgotten_one_period_later(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    x = archiver(tmp_path / "x", nodes)
    a = start_node(
        tmp_path / "a",
        "--json",
        "--bootstrap",
        x.addr(),
        env=node_env(P2PCHAT_CHAT__DM_MAX_PEERS="1"),
    )
    nodes.append(a)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    b, made = bob(tmp_path / "b", nodes, "--bootstrap", f"{x.addr()},{a.addr()}")
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", a.addr())
    connected(a, b)
    connected(a, c)
    assert msg(a, b.peer_id, "hello while you are here", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "hello while you are here")
    # A's one session slot goes to C: A keeps B's bundle, not its session.
    assert msg(a, c.peer_id, "hello c", 2)["kind"] == "dm_delivered"
    recipient = b.peer_id
    stop(b, nodes)
    before = keys_of(tmp_path / "b", tmp_path / "b-before")
    identity, old_key = before.curve25519_key, fallback_of(before)

    text = "sealed with the key you had"
    got = deposited(a, msg(a, recipient, text, 3))
    assert got["kind"] == "dm_waiting" and got["data"]["deposited"] == 1, got
    wait_metric(x, "p2pchat_mailbox_letters", 1)
    stop(a, nodes)  # only the archiver can deliver it now

    # B comes back once its key is due: it rotates at its start, then opens the letter.
    wait_until(made + ROTATION + 1)
    b, made = bob(tmp_path / "b", nodes, "--bootstrap", x.addr())
    assert b.peer_id == recipient
    direct_from(b, a.peer_id, text)
    wait_metric(x, "p2pchat_mailbox_letters", 0)
    assert b.metric("p2pchat_dm_fallback_rotations_total") == 1
    assert b.metric("p2pchat_dm_received_total") == 1
    assert b.metric("p2pchat_dm_dropped_total", reason="undecryptable") in (None, 0)
    stop(b, nodes)
    within = keys_of(tmp_path / "b", tmp_path / "b-within")
    new_key = fallback_of(within)
    assert new_key.to_bytes() != old_key.to_bytes()
    assert reads_first_message(within, identity, old_key)  # the grace

    # One period later B rotates again: the old key is forgotten.
    wait_until(made + ROTATION + 1)
    b, _ = bob(tmp_path / "b", nodes, "--bootstrap", x.addr())
    assert b.metric("p2pchat_dm_fallback_rotations_total") == 1
    stop(b, nodes)
    after = keys_of(tmp_path / "b", tmp_path / "b-after")
    assert not reads_first_message(after, identity, old_key)
    assert reads_first_message(after, identity, new_key)  # the control: the check can fail
