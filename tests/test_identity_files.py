"""Local files are private (#18): the data dir, the store and what the node writes in them end up
unreadable by group and others whatever mode they had, or the node refuses to start; a key file
with any group or other bit is refused.

The refusals for a directory the node cannot change run the real CLI as root without
CAP_FOWNER (``setpriv --bounding-set=-fowner``): then, as for any user, chmod works only on what
the process owns. Like the suite's network-namespace tests, they need root.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from p2pchat.node.errors import IdentityError, StoreError
from p2pchat.node.p2p.identity import (
    IDENTITY_FILE,
    load_or_create_identity,
    make_private,
)
from p2pchat.node.store import Store

from tests.conftest import NodeProcess, node_env, p2pchat_command, run_cli, start_node

WAIT = 60.0
NOBODY = 65534  # a uid that owns nothing here


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def shared_entries(root: Path) -> list[str]:
    """Every directory and file under ``root`` (itself included) with a group or other bit."""
    found = [root, *root.rglob("*")]
    return [
        f"{path} {mode_of(path):03o}"
        for path in found
        if not path.is_symlink() and mode_of(path) & 0o077
    ]


def assert_one_line(stderr: str, *fragments: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@contextmanager
def umask(value: int) -> Iterator[None]:
    """The test process's umask (inherited by the nodes it starts) for a block."""
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def make_key(data_dir: Path, mode: int) -> Path:
    """A valid identity in ``data_dir`` (made private), its key file then set to ``mode``."""
    data_dir.mkdir(mode=0o700, exist_ok=True)
    load_or_create_identity(data_dir)
    key = data_dir / IDENTITY_FILE
    key.chmod(mode)
    return key


def no_fowner(*args: str) -> subprocess.CompletedProcess[str]:
    """``p2pchat ARGS`` as root without CAP_FOWNER: it may chmod only what uid 0 owns."""
    assert os.geteuid() == 0, "these tests need root (as the netns tests do)"
    return subprocess.run(
        ["setpriv", "--bounding-set=-fowner", *p2pchat_command(), *args],
        capture_output=True,
        text=True,
        env=node_env(),
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


# --- real processes ---------------------------------------------------------------------------


def test_a_node_on_a_shared_data_dir_makes_it_and_everything_it_writes_private(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    data_dir = tmp_path / "data"
    # What an older p2pchat or a package left: 0755 directories, a 0644 file of history.
    data_dir.mkdir(mode=0o755)
    (data_dir / "exports").mkdir(mode=0o755)
    old_export = data_dir / "exports" / "old.jsonl"
    old_export.write_text("{}\n")
    for path, mode in ((data_dir, 0o755), (data_dir / "exports", 0o755), (old_export, 0o644)):
        path.chmod(mode)
    other = start_node(tmp_path / "other", "--json")
    nodes.append(other)
    # Started with the usual umask: left alone, RocksDB would write 0644 files in a 0755 store.
    with umask(0o022):
        node = start_node(data_dir, "--json", "--bootstrap", other.addr())
    nodes.append(node)
    warning = node.wait_for("data dir was open to others; made private")
    assert warning["level"] == "warning"
    assert warning["was_mode"] == "755"
    assert warning["entries_tightened"] == 2  # exports/ and old.jsonl
    node.next_event(lambda e: e["type"] == "output" and e["command"] == "ready", timeout=WAIT)
    words = f"private words {uuid.uuid4().hex}"
    node.say(words)  # sent (queued until the other joins the room) and kept in the history
    other.next_event(lambda e: e["type"] == "message" and e["text"] == words, timeout=WAIT)
    node.say("/export")
    exported = node.next_event(lambda e: e.get("kind") == "exported", timeout=WAIT)
    assert node.stop() == 0

    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / "store") == 0o700
    assert shared_entries(data_dir) == []
    # The words reached RocksDB's own files (its log or a table), and those are private too.
    holding = [
        path
        for path in (data_dir / "store").iterdir()
        if path.is_file() and words.encode() in path.read_bytes()
    ]
    assert holding, sorted(p.name for p in (data_dir / "store").iterdir())
    assert all(mode_of(path) == 0o600 for path in holding)
    export = Path(exported["data"]["file"])
    assert export.parent == data_dir / "exports"
    assert words in export.read_text()
    assert mode_of(export) == 0o600
    # Once private, a restart has nothing to say.
    again = start_node(data_dir)
    nodes.append(again)
    assert again.stop() == 0
    assert not any("made private" in line for line in again.raw_stderr)


@pytest.mark.parametrize("command", [(), ("id",)], ids=["node", "id"])
def test_a_key_open_to_the_group_is_refused_with_one_line(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    key = make_key(tmp_path / "data", 0o640)
    result = run_cli(*command, "--data-dir", str(tmp_path / "data"), "--metrics", "off")
    assert result.returncode == 2
    assert_one_line(
        result.stderr,
        f"identity file {key} is readable by others (mode 640)",
        f"run: chmod 600 {key}",
    )
    assert result.stdout == ""
    assert mode_of(key) == 0o640  # refused, never quietly fixed: others may have read it


def test_a_data_dir_the_node_cannot_make_private_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    os.chown(data_dir, NOBODY, NOBODY)
    for command in ((), ("id",)):
        result = no_fowner(*command, "--data-dir", str(data_dir), "--metrics", "off")
        assert result.returncode == 2, result.stderr
        assert_one_line(
            result.stderr,
            f"data dir {data_dir} is open to others (mode 755) and cannot be made private",
            f"owned by uid {NOBODY}",
            f"chmod go-rwx {data_dir}",
        )
    assert mode_of(data_dir) == 0o755
    assert list(data_dir.iterdir()) == []  # refused before anything was written


def test_a_volume_root_owns_is_used_with_its_contents_private() -> None:
    """A Kubernetes volume with fsGroup: root:<group> 2775, the node runs as another user of
    that group. The directory cannot be changed, but only root (who reads all anyway) owns it:
    the node runs, and what it keeps there is private."""
    assert os.geteuid() == 0, "this test needs root (as the netns tests do)"
    parent = Path(tempfile.mkdtemp(prefix="p2pchat-volume-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        volume = parent / "data"
        volume.mkdir()
        os.chown(volume, 0, NOBODY)
        volume.chmod(0o2775)
        result = subprocess.run(
            [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                *p2pchat_command(),
                "id",
                "--data-dir",
                str(volume),
            ],
            capture_output=True,
            text=True,
            env=node_env(),
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("12D3KooW")
        assert f"p2pchat: note: data dir {volume} is root's and open to others (mode 2775)" in (
            result.stderr
        )
        assert mode_of(volume) == 0o2775  # not this user's to change
        key = volume / "identity.key"
        assert key.stat().st_uid == NOBODY and mode_of(key) == 0o600
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_a_store_the_node_cannot_make_private_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    store = data_dir / "store"
    store.mkdir()
    store.chmod(0o755)
    os.chown(store, NOBODY, NOBODY)
    result = no_fowner("--data-dir", str(data_dir), "--metrics", "off")
    assert result.returncode == 2, result.stderr
    assert_one_line(
        result.stderr, f"store {store} is open to others (mode 755) and cannot be made private"
    )
    assert mode_of(store) == 0o755


# --- units ------------------------------------------------------------------------------------


def test_make_private_tightens_the_tree_and_leaves_links_and_the_key(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours to change")
    outside.chmod(0o644)
    data_dir = tmp_path / "data"
    key = make_key(data_dir, 0o640)
    files = {
        data_dir / "store" / "000009.sst": 0o644,
        data_dir / "logs" / "p2pchat.log": 0o640,
        data_dir / "input_history": 0o604,
        data_dir / "exports" / "room.jsonl": 0o666,
    }
    for path, mode in files.items():
        path.parent.mkdir(exist_ok=True)
        path.parent.chmod(0o775)
        path.write_text("x")
        path.chmod(mode)
    (data_dir / "logs").chmod(0o2750)  # setgid: kept, only group/other access goes
    (data_dir / "link").symlink_to(outside)
    data_dir.chmod(0o711)

    tightened = make_private(data_dir)

    assert tightened.was_mode == 0o711
    assert tightened.entries == 7  # store/, logs/, exports/ and the four files
    assert tightened.left == 0
    assert tightened.changed
    assert mode_of(data_dir) == 0o700
    assert mode_of(data_dir / "logs") == 0o2700
    for path in files:
        assert mode_of(path) == 0o600, path
    assert mode_of(outside) == 0o644  # a link is not followed
    assert mode_of(key) == 0o640  # the key is refused, never fixed
    assert [entry.split()[0] for entry in shared_entries(data_dir)] == [str(key)]


def test_make_private_on_a_private_data_dir_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_key(data_dir, 0o600)
    (data_dir / "notes").write_text("x")
    (data_dir / "notes").chmod(0o600)
    tightened = make_private(data_dir)
    assert (tightened.was_mode, tightened.entries, tightened.left) == (None, 0, 0)
    assert not tightened.changed
    assert load_or_create_identity(data_dir).tightened == tightened


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_key_is_accepted(tmp_path: Path, mode: int) -> None:
    key = make_key(tmp_path / "data", mode)
    first = load_or_create_identity(tmp_path / "data")
    assert first.path == key
    assert not first.created


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        (0o640, "readable by others (mode 640)"),
        (0o604, "readable by others (mode 604)"),
        (0o644, "readable by others (mode 644)"),
        (0o660, "readable by others (mode 660)"),
        (0o620, "open to others (mode 620)"),
        (0o601, "open to others (mode 601)"),
    ],
)
def test_a_key_with_any_group_or_other_bit_is_refused(tmp_path: Path, mode: int, says: str) -> None:
    key = make_key(tmp_path / "data", mode)
    with pytest.raises(IdentityError) as refused:
        load_or_create_identity(tmp_path / "data")
    assert str(refused.value) == f"identity file {key} is {says}; run: chmod 600 {key}"


def test_the_store_directory_is_created_private_or_made_so(tmp_path: Path) -> None:
    fresh = Store.open(tmp_path / "fresh")
    fresh.close()
    assert mode_of(tmp_path / "fresh") == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    Store.open(shared).close()
    assert mode_of(shared) == 0o700


def test_a_store_path_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match=r"^store .*/file/store: cannot open: Not a directory$"):
        Store.open(tmp_path / "file" / "store")
