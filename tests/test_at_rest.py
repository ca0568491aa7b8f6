"""Encryption at rest with real ``p2pchat`` processes (issue #19, must have 5): a peer with a
passphrase chats and sends and receives DMs, and its data dir holds none of the texts, its
identity key or its Olm pickles; it restarts with its history and DM sessions intact; a wrong
or missing passphrase is one line and exit 2, with nothing changed; ``p2pchat passphrase set``
on a data dir in use leaves its history and sessions readable and no plaintext behind, and
``remove`` makes it plaintext again."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from p2pchat.node.atrest import is_encrypted, unlock
from p2pchat.node.history import History, chat_text_of
from p2pchat.node.p2p.identity import load_or_create_identity
from p2pchat.node.store import Store

from tests.conftest import NodeProcess, node_env, run_cli, start_node
from tests.test_archive import history_texts
from tests.test_dm import connected, direct_from, msg
from tests.test_json_contract import chat_peer, is_message

WAIT = 60.0
PASS = "correct horse battery staple"
ROOM = "p2p-chat-default"


def on_disk(path: Path, needle: bytes) -> list[Path]:
    """The files under ``path`` holding ``needle`` (the grep of the whole data dir)."""
    return [f for f in path.rglob("*") if f.is_file() and needle in f.read_bytes()]


def fingerprint(path: Path) -> dict[str, str]:
    return {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file()
    }


def with_pass(passphrase: str = PASS) -> dict[str, str]:
    return node_env(P2PCHAT_PASSPHRASE=passphrase)


def secrets_of(data_dir: Path, passphrase: str | None) -> list[bytes]:
    """The identity key (protobuf and raw) and the Olm account's pickle of a stopped node."""
    keys = unlock(data_dir, passphrase) if passphrase is not None else None
    identity = load_or_create_identity(data_dir, keys)
    store = Store.open(data_dir / "store", keys)
    try:
        account = store.namespace("dm").get(b"account")
    finally:
        store.close()
    assert account is not None
    raw = identity.key_pair.private_key.serialize()
    return [raw, raw[-32:], account]


def stored_texts(data_dir: Path, passphrase: str | None) -> list[str]:
    keys = unlock(data_dir, passphrase) if passphrase is not None else None
    store = Store.open(data_dir / "store", keys)
    try:
        found = [chat_text_of(m.envelope) for m in History(store).last(ROOM, 100)]
    finally:
        store.close()
    return [t.text for t in found if t is not None]


def chat(a: NodeProcess, b: NodeProcess, said_a: str, said_b: str) -> None:
    """A room message each way, then a DM each way (delivered)."""
    a.say(said_a)
    b.next_event(is_message(said_a), timeout=WAIT)
    b.say(said_b)
    a.next_event(is_message(said_b), timeout=WAIT)
    assert msg(a, b.peer_id, f"dm {said_a}", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, f"dm {said_a}")
    assert msg(b, a.peer_id, f"dm {said_b}", 2)["kind"] == "dm_delivered"
    direct_from(a, b.peer_id, f"dm {said_b}")


def refused(data_dir: Path, env: dict[str, str], *args: str) -> str:
    """Start a node on ``data_dir`` that must refuse at once: its one stderr line."""
    result = run_cli(
        "--data-dir",
        str(data_dir),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "off",
        *args,
        env=env,
    )
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_peer_with_a_passphrase_keeps_nothing_private_readable_and_restarts_intact(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    b_dir = tmp_path / "b"
    turned_on = run_cli("passphrase", "set", "--data-dir", str(b_dir), env=with_pass())
    assert turned_on.returncode == 0, turned_on.stderr
    assert is_encrypted(b_dir)
    a, _ = chat_peer(tmp_path / "a", nodes)
    b = start_node(b_dir, "--json", "--bootstrap", a.addr(), env=with_pass())
    nodes.append(b)
    b.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    connected(a, b)
    chat(a, b, "room words from alpha", "room words from bravo")
    # A leaves: B's next DM waits in B's store, sealed.
    assert a.stop() == 0
    nodes.remove(a)
    assert msg(b, a.peer_id, "dm kept while away", 3)["kind"] == "dm_waiting"
    assert b.stop() == 0
    nodes.remove(b)

    texts = [
        "room words from alpha",
        "room words from bravo",
        "dm room words from alpha",
        "dm room words from bravo",
        "dm kept while away",
    ]
    # The control: A (no passphrase) keeps the room's texts readable in its data dir. RocksDB
    # compresses its files (Snappy): a text repeating words stored just before it is kept as a
    # back-reference and its new bytes, so the whole text may not be there in one piece; the
    # words each text has alone are.
    distinct = [b"alpha", b"bravo", b"kept while away"]
    assert on_disk(tmp_path / "a", b"bravo")
    for secret in [t.encode() for t in texts] + distinct + secrets_of(b_dir, PASS):
        assert on_disk(b_dir, secret) == [], secret

    # Wrong or missing passphrase: one line, exit 2, nothing in the data dir changed.
    before = fingerprint(b_dir)
    assert "wrong passphrase" in refused(b_dir, with_pass("not it"), "--json")
    assert "is encrypted: give its passphrase" in refused(b_dir, node_env(), "--json")
    assert "is encrypted" in refused(b_dir, node_env())  # the console, but no terminal
    pass_file = tmp_path / "passphrase"
    pass_file.write_text(PASS + "\n")
    pass_file.chmod(0o640)  # others may read it: refused, as a shared identity key is
    from_file = node_env(P2PCHAT_NODE__PASSPHRASE_FILE=str(pass_file))
    assert "open to others" in refused(b_dir, from_file, "--json")
    assert fingerprint(b_dir) == before

    # Restarted with the passphrase, from its file: its history and its session with A are
    # intact.
    pass_file.chmod(0o600)
    b = start_node(b_dir, "--json", env=from_file)
    nodes.append(b)
    b.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    assert {"room words from alpha", "room words from bravo"} <= set(history_texts(b, 10))
    starting = [json.loads(line) for line in b.raw_stderr if '"starting"' in line]
    assert starting and starting[0]["encrypted_at_rest"] is True, starting
    assert b.metric("p2pchat_dm_sessions") == 1
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", b.addr())
    direct_from(a, b.peer_id, "dm kept while away")  # the sealed waiting DM, delivered
    assert msg(a, b.peer_id, "after the restart", 4)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "after the restart")
    # The same sessions: nothing had to be re-established.
    assert a.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0
    assert b.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0


def test_turning_it_on_for_a_data_dir_in_use_keeps_its_history_and_leaves_no_plaintext(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    c_dir = tmp_path / "c"
    a, _ = chat_peer(tmp_path / "a", nodes)
    c, _ = chat_peer(c_dir, nodes, "--bootstrap", a.addr())
    connected(a, c)
    chat(a, c, "before the passphrase one", "before the passphrase two")
    assert a.stop() == 0
    nodes.remove(a)
    assert msg(c, a.peer_id, "waiting in plaintext", 3)["kind"] == "dm_waiting"
    # Not while the node runs: one line, and nothing created.
    busy = run_cli("passphrase", "set", "--data-dir", str(c_dir), env=with_pass())
    assert busy.returncode == 2 and "in use by another p2pchat process" in busy.stderr, busy
    assert not is_encrypted(c_dir)
    assert c.stop() == 0
    nodes.remove(c)
    texts = [b"before the passphrase one", b"before the passphrase two", b"waiting in plaintext"]
    secrets = secrets_of(c_dir, None)
    # The control: all of it is readable in the data dir now.
    assert all(on_disk(c_dir, t) for t in texts)
    assert on_disk(c_dir, secrets[0])
    # What a console would have kept of the lines typed: deleted (not kept with a passphrase).
    (c_dir / "input_history").write_text("\n+/msg bravo waiting in plaintext\n")

    turned_on = run_cli("passphrase", "set", "--data-dir", str(c_dir), env=with_pass())
    assert turned_on.returncode == 0, turned_on.stderr
    assert "encrypted" in turned_on.stderr
    assert not (c_dir / "input_history").exists()
    for secret in texts + secrets:
        assert on_disk(c_dir, secret) == [], secret
    assert {"before the passphrase one", "before the passphrase two"} <= set(
        stored_texts(c_dir, PASS)
    )

    # Running it again with another passphrase changes nothing; with the right one, nothing
    # is left to do.
    again = run_cli("passphrase", "set", "--data-dir", str(c_dir), env=with_pass("other"))
    assert again.returncode == 2 and "wrong passphrase" in again.stderr, again

    c = start_node(c_dir, "--json", env=with_pass())
    nodes.append(c)
    c.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    assert c.metric("p2pchat_dm_sessions") == 1
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", c.addr())
    direct_from(a, c.peer_id, "waiting in plaintext")
    assert msg(a, c.peer_id, "sealed now", 4)["kind"] == "dm_delivered"
    direct_from(c, a.peer_id, "sealed now")
    assert a.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0
    assert c.metric("p2pchat_dm_dropped_total", reason="undecryptable") == 0
    assert a.stop() == 0 and c.stop() == 0
    nodes.clear()

    # Change, then remove: readable again without a passphrase, the same history.
    changed = run_cli(
        "passphrase",
        "change",
        "--data-dir",
        str(c_dir),
        env=node_env(P2PCHAT_PASSPHRASE=PASS, P2PCHAT_NEW_PASSPHRASE="second one"),
    )
    assert changed.returncode == 0, changed.stderr
    assert "wrong passphrase" in refused(c_dir, with_pass(), "--json")
    removed = run_cli("passphrase", "remove", "--data-dir", str(c_dir), env=with_pass("second one"))
    assert removed.returncode == 0, removed.stderr
    assert not is_encrypted(c_dir)
    assert {"before the passphrase one", "before the passphrase two"} <= set(
        stored_texts(c_dir, None)
    )
    c = start_node(c_dir, "--json")
    nodes.append(c)
    c.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    assert c.metric("p2pchat_dm_sessions") == 1  # re-pickled under the plain key, kept


def test_the_console_asks_for_the_passphrase_on_its_terminal(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "console"
    assert (
        run_cli("passphrase", "set", "--data-dir", str(data_dir), env=with_pass()).returncode == 0
    )
    wrong = start_node(data_dir, terminal=True, wait_ready=False)
    nodes.append(wrong)
    wrong.wait_screen("Passphrase for")
    wrong.type_keys("not it\r")
    assert wrong.proc.wait(timeout=WAIT) == 2
    assert "wrong passphrase" in "".join(wrong.raw_stderr)
    nodes.remove(wrong)

    console = start_node(data_dir, terminal=True, wait_ready=False)
    nodes.append(console)
    console.wait_screen("Passphrase for")
    console.type_keys(PASS + "\r")
    console.ready = console.wait_for("node ready", timeout=WAIT)
    assert PASS not in console.screen_text()  # not echoed
