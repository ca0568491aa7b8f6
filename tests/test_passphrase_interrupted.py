"""An interrupted ``p2pchat passphrase set`` (issue #19): the real command, killed (SIGKILL)
while it converts a data dir of 300,000 history bodies, leaves the data dir marked; the node
then refuses to start in one line naming the command to run again (it would otherwise start on
a half-converted store); another ``passphrase`` action is refused; ``set`` run again finishes
it: every body readable with the passphrase, none in plaintext on disk, the node starts."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from p2pchat.node.atrest import PENDING_FILE, is_encrypted, unlock, vault_path
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.store import Store

from tests.conftest import NodeProcess, p2pchat_command, run_cli, start_node
from tests.test_at_rest import PASS, on_disk, refused, with_pass
from tests.test_json_contract import chat_peer

ROOMS = ("r0", "r1", "r2")
PER_ROOM = 100_000
WAIT = 60.0


def body(n: int) -> bytes:
    return b"interrupted body %07d" % n


def fill(data_dir: Path) -> None:
    store = Store.open(data_dir / "store")
    try:
        history = History(store)
        for r, room in enumerate(ROOMS):
            for start in range(0, PER_ROOM, 10_000):
                history.add_many(
                    [
                        StoredMessage(
                            room, n.to_bytes(16, "big"), 1000 + n, 2000 + n, "12D3KooWx", body(n)
                        )
                        for n in range(r * PER_ROOM + start, r * PER_ROOM + start + 10_000)
                    ]
                )
    finally:
        store.close()


def test_a_passphrase_set_killed_in_the_middle_is_detected_and_finished_by_running_it_again(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "a"
    a, _ = chat_peer(data_dir, nodes)
    assert a.stop() == 0
    nodes.remove(a)
    fill(data_dir)

    setting = subprocess.Popen(
        [*p2pchat_command(), "passphrase", "set", "--data-dir", str(data_dir)],
        env=with_pass(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + WAIT
    while not vault_path(data_dir).exists():  # the key is there: the conversion begins
        assert setting.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(1.0)
    assert setting.poll() is None, "finished before it could be killed in the middle"
    setting.send_signal(signal.SIGKILL)
    setting.wait(timeout=WAIT)
    assert (data_dir / PENDING_FILE).exists()
    assert is_encrypted(data_dir)

    line = refused(data_dir, with_pass(), "--json")
    assert "interrupted 'p2pchat passphrase set'" in line and "run" in line, line
    other = run_cli("passphrase", "remove", "--data-dir", str(data_dir), env=with_pass())
    assert other.returncode == 2 and "passphrase set" in other.stderr, other.stderr

    again = run_cli("passphrase", "set", "--data-dir", str(data_dir), env=with_pass(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert not (data_dir / PENDING_FILE).exists()
    assert on_disk(data_dir, b"interrupted body") == []
    store = Store.open(data_dir / "store", unlock(data_dir, PASS))
    try:
        history = History(store)
        for r, room in enumerate(ROOMS):
            last = [m.envelope for m in history.last(room, 3)]
            assert last == [body(r * PER_ROOM + PER_ROOM - n) for n in (3, 2, 1)], last
    finally:
        store.close()
    a = start_node(data_dir, "--json", env=with_pass())
    nodes.append(a)
    a.next_event(lambda e: e["type"] == "output" and e["command"] == "ready", timeout=WAIT)
