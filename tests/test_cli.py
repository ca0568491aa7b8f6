"""The command line: flags, subcommands, identity persistence and the one-line errors."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import NodeProcess, node_env, run_cli, start_node


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_version_and_help() -> None:
    version = run_cli("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("p2pchat ")
    helped = run_cli("--help")
    assert helped.returncode == 0
    for flag in ("--role", "--config", "--data-dir", "--listen", "--bootstrap", "--log-level"):
        assert flag in helped.stdout


def test_unknown_flag_is_a_usage_error() -> None:
    result = run_cli("--colour=blue")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "unrecognized arguments: --colour=blue")


def test_bad_choice_is_a_usage_error() -> None:
    result = run_cli("--log-format", "xml")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--log-format", "xml")


def test_config_check_prints_the_effective_config(tmp_path: Path) -> None:
    file = tmp_path / "relay.yaml"
    file.write_text("roles: [relay]\nchat:\n  room: ops\n")
    result = run_cli("config", "check", str(file), env=node_env(P2PCHAT_LOG__LEVEL="debug"))
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["roles"] == ["relay"]
    assert effective["chat"]["room"] == "ops"
    assert effective["log"]["level"] == "debug"  # environment applies on top of the file
    assert effective["node"]["listen"][0] == "/ip4/0.0.0.0/tcp/4011"  # the relay preset


def test_config_check_reports_the_bad_key_and_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("node:\n  listen: ['/ip4/127.0.0.1/tcp/99999']\n")
    result = run_cli("config", "check", str(file))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "config error", "node.listen[0]", str(file))
    assert result.stdout == ""


def test_run_with_a_bad_config_file_exits_2(tmp_path: Path) -> None:
    missing = run_cli("--config", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 2
    assert_one_line_error(missing.stderr, "missing.yaml", "file not found")
    bad_env = run_cli("--data-dir", str(tmp_path), env=node_env(P2PCHAT_NODE__MUXERS="quic"))
    assert bad_env.returncode == 2
    assert_one_line_error(bad_env.stderr, "node.muxers[0]", "P2PCHAT_NODE__MUXERS")


def test_bad_multiaddr_flag_exits_2(tmp_path: Path) -> None:
    result = run_cli("--data-dir", str(tmp_path), "--bootstrap", "/ip4/127.0.0.1/tcp/4001")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "node.bootstrap[0]", "command line", "/p2p/")


def test_identity_is_created_once_with_mode_0600_and_kept(tmp_path: Path) -> None:
    first = run_cli("id", "--data-dir", str(tmp_path))
    assert first.returncode == 0, first.stderr
    peer_id = first.stdout.strip()
    assert peer_id.startswith("12D3KooW")  # Ed25519 identity multihash
    assert "created a new identity" in first.stderr
    key = tmp_path / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    second = run_cli("id", "--data-dir", str(tmp_path))
    assert second.returncode == 0
    assert second.stdout.strip() == peer_id
    assert second.stderr == ""


def test_identity_from_environment_data_dir(tmp_path: Path) -> None:
    by_flag = run_cli("id", "--data-dir", str(tmp_path)).stdout
    by_env = run_cli("id", env=node_env(P2PCHAT_NODE__DATA_DIR=str(tmp_path))).stdout
    assert by_flag == by_env


def test_corrupt_identity_is_an_error_and_is_not_replaced(tmp_path: Path) -> None:
    key = tmp_path / "identity.key"
    key.write_bytes(b"\x08\x01\x12\x03abc")  # a protobuf PrivateKey header with a truncated key
    key.chmod(0o600)
    for args in (("id",), ()):
        result = run_cli(*args, "--data-dir", str(tmp_path), "--metrics", "off")
        assert result.returncode == 2
        assert_one_line_error(result.stderr, "identity file", "corrupt")
    assert key.read_bytes() == b"\x08\x01\x12\x03abc"


def test_world_readable_identity_is_refused(tmp_path: Path) -> None:
    assert run_cli("id", "--data-dir", str(tmp_path)).returncode == 0
    key = tmp_path / "identity.key"
    key.chmod(0o644)
    result = run_cli("id", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "readable by others", "chmod 600")


def test_unusable_data_dir_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli("id", "--data-dir", str(blocker / "sub"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "data dir", "cannot create")


# --- each subcommand's help shows its own options -------------------------------------------------

NODE_ONLY = ("--listen", "--announce", "--bootstrap", "--metrics", "--role")


def _options_in(help_text: str) -> set[str]:
    return {word.strip("[],") for word in help_text.split() if word.startswith(("--", "[--"))}


@pytest.mark.parametrize(
    ("command", "shown", "hidden"),
    [
        (
            ["history"],
            {"--room", "--since", "--limit", "--timeout", "--json", "--config", "--log-level"},
            {*NODE_ONLY, "--data-dir"},
        ),
        (["id"], {"--data-dir", "--config"}, {*NODE_ONLY, "--room", "--json", "--log-level"}),
        (["config", "check"], set(), {*NODE_ONLY, "--config", "--data-dir", "--room"}),
        ([], {*NODE_ONLY, "--room", "--json", "--config", "--data-dir", "--log-level"}, set()),
    ],
)
def test_each_subcommand_help_lists_only_its_options(
    command: list[str], shown: set[str], hidden: set[str]
) -> None:
    result = run_cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    options = _options_in(result.stdout)
    assert shown <= options, result.stdout
    assert not hidden & options, result.stdout
    if command == ["history"]:
        assert "MULTIADDR" in result.stdout
    if command == ["config", "check"]:
        assert "file" in result.stdout and options == {"--help"}


def test_node_options_before_a_subcommand_still_parse(tmp_path: Path) -> None:
    by_flag = run_cli("--data-dir", str(tmp_path), "id")
    assert by_flag.returncode == 0, by_flag.stderr
    assert by_flag.stdout == run_cli("id", "--data-dir", str(tmp_path)).stdout
    # A node option a subcommand does not use is still accepted there (hidden from its help).
    result = run_cli("id", "--data-dir", str(tmp_path), "--metrics", "off", "--role", "relay")
    assert result.returncode == 0 and result.stdout == by_flag.stdout
    result = run_cli("history", "/ip4/127.0.0.1/tcp/1", "--listen", "/ip4/0.0.0.0/tcp/0")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "history source '/ip4/127.0.0.1/tcp/1' has no peer id")


# --- multiaddrs in plain words --------------------------------------------------------------------


def test_the_issues_bad_bootstrap_address_is_explained(tmp_path: Path) -> None:
    for addr, says in (
        ("/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW-bad", "'12D3KooW-bad' after /p2p, which is not a"),
        ("/ip4/1.2.3.4/tcp/4001", "has no peer id: it must end with /p2p/<peer id>"),
    ):
        result = run_cli("--data-dir", str(tmp_path), "--bootstrap", addr)
        assert result.returncode == 2
        assert_one_line_error(
            result.stderr,
            f"p2pchat: config error: node.bootstrap[0] (from command line): peer address {addr!r}",
            says,
            "e.g. /ip4/203.0.113.9/tcp/4001/p2p/12D3KooW",
        )
        assert "P_P2P" not in result.stderr and "Invalid CID" not in result.stderr


def test_every_config_error_is_listed_on_its_own_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("node:\n  bootstrap: ['/ip4/1.2.3.4/tcp/1']\nlog:\n  level: loud\n")
    result = run_cli("config", "check", str(file))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("p2pchat: config error: node.bootstrap[0] (from file ")
    assert lines[1].startswith("p2pchat: config error: log.level (from file ")
    assert "more error" not in result.stderr and result.stdout == ""


# --- config check: the data dir -------------------------------------------------------------------


def _check_with_data_dir(tmp_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    file = tmp_path / "node.yaml"
    file.write_text(f"node:\n  data_dir: {json.dumps(str(data_dir))}\n")
    return run_cli("config", "check", str(file))


def test_config_check_passes_a_usable_data_dir_and_creates_nothing(tmp_path: Path) -> None:
    fresh = tmp_path / "not" / "yet"
    result = _check_with_data_dir(tmp_path, fresh)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["node"]["data_dir"] == str(fresh)
    assert not (tmp_path / "not").exists()
    assert run_cli("id", "--data-dir", str(fresh)).returncode == 0
    assert _check_with_data_dir(tmp_path, fresh).returncode == 0  # with its identity


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d.write_text("a file"), "data dir {d}: not a directory"),
        (
            lambda d: d.parent.write_text("x"),
            "data dir {d}: cannot be created: {d.parent} is not a directory",
        ),
        (
            lambda d: (d.mkdir(), d.joinpath("identity.key").write_bytes(b"junk"), _chmod(d)),
            "identity file {d}/identity.key is corrupt",
        ),
        (
            lambda d: (d.mkdir(), d.joinpath("identity.key").write_bytes(b"junk")),
            "identity file {d}/identity.key is readable by others",
        ),
    ],
    ids=["a-file", "under-a-file", "corrupt-identity", "world-readable-identity"],
)
def test_config_check_names_what_is_wrong_with_the_data_dir(
    tmp_path: Path, make: Any, says: str
) -> None:
    data_dir = tmp_path / "parent" / "data"
    data_dir.parent.mkdir()
    if "{d.parent}" in says:  # the parent is a file: the data dir cannot be made under it
        data_dir.parent.rmdir()
    make(data_dir)
    result = _check_with_data_dir(tmp_path, data_dir)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "p2pchat: config error: ", says.format(d=data_dir))
    assert result.stdout == ""


def _chmod(data_dir: Path) -> None:
    (data_dir / "identity.key").chmod(0o600)


def test_config_check_refuses_a_data_dir_it_cannot_write(tmp_path: Path) -> None:
    # /proc refuses new files even to root, whom permission bits do not stop.
    result = _check_with_data_dir(tmp_path, Path("/proc/p2pchat-test/data"))
    assert result.returncode == 2
    assert_one_line_error(
        result.stderr, "data dir /proc/p2pchat-test/data: cannot be created: /proc is not writable"
    )


def test_config_check_notes_the_data_dir_of_a_running_node(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """An operator checks the next config of a running node: a note, not an error."""
    node = start_node(tmp_path / "busy", "--role", "bootstrap")
    nodes.append(node)
    result = _check_with_data_dir(tmp_path, tmp_path / "busy")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"p2pchat: note: data dir {tmp_path / 'busy'} is in use by a running p2pchat node; this "
        "config takes effect when it restarts (another node cannot share the data dir)\n"
    )
    assert node.stop() == 0
    after = _check_with_data_dir(tmp_path, tmp_path / "busy")
    assert after.returncode == 0 and after.stderr == "", after.stderr
