"""The command line: flags, subcommands, identity persistence and the one-line errors."""

from __future__ import annotations

import stat
from pathlib import Path

import yaml

from tests.conftest import node_env, run_cli


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
