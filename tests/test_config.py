"""Config precedence (defaults < preset < file < env < flags) and every error path."""

from __future__ import annotations

from pathlib import Path

import pytest
from p2pchat.node.config import load_config
from p2pchat.node.errors import ConfigError
from p2pchat.node.ids import short_id

TCP = "/ip4/127.0.0.1/tcp/{}"
PEER_ID = "12D3KooWLcpGQadRha8CsuUByzaGRwXuCdUBM4s4jWLa3a7Bd6RX"


def write(tmp_path: Path, text: str, name: str = "p2pchat.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_peer_preset_over_the_model() -> None:
    config = load_config(environ={})
    assert config.roles == ["peer"]
    assert config.chat.room == "p2p-chat-default"
    assert config.metrics.listen == "127.0.0.1:0"  # peer preset overrides the model default
    assert config.node.muxers == ["yamux", "mplex"]
    assert config.log.format == "auto"


def test_role_preset_is_applied_for_each_role_in_order() -> None:
    relay = load_config(environ={}, flags={"roles": "relay"})
    assert relay.node.listen == ["/ip4/0.0.0.0/tcp/4011", "/ip4/0.0.0.0/tcp/4011/ws"]
    assert relay.metrics.listen == "0.0.0.0:9465"
    combined = load_config(environ={}, flags={"roles": "relay,bootstrap"})
    assert combined.roles == ["relay", "bootstrap"]
    assert combined.metrics.listen == "0.0.0.0:9464"  # bootstrap named last wins


def test_each_layer_overrides_the_one_below(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        f"""
roles: [bootstrap]
node:
  listen: ["{TCP.format(1)}"]
  dial_timeout: 3
log:
  level: warning
chat:
  room: from-file
""",
    )
    only_file = load_config(file=file, environ={})
    assert only_file.node.listen == [TCP.format(1)]  # file beats the bootstrap preset
    assert only_file.metrics.listen == "0.0.0.0:9464"  # preset still applies where file is silent
    assert only_file.node.dial_timeout == 3

    env = {
        "P2PCHAT_NODE__LISTEN": f"{TCP.format(2)},{TCP.format(3)}",
        "P2PCHAT_LOG__LEVEL": "error",
    }
    with_env = load_config(file=file, environ=env)
    assert with_env.node.listen == [TCP.format(2), TCP.format(3)]
    assert with_env.log.level == "error"
    assert with_env.chat.room == "from-file"

    flags = {"node": {"listen": [TCP.format(4)]}, "chat": {"room": "from-flag"}}
    with_flags = load_config(file=file, environ=env, flags=flags)
    assert with_flags.node.listen == [TCP.format(4)]
    assert with_flags.chat.room == "from-flag"
    assert with_flags.log.level == "error"  # env still applies where flags are silent


def test_roles_from_a_higher_layer_select_the_presets(tmp_path: Path) -> None:
    file = write(tmp_path, "roles: [relay]\n")
    config = load_config(file=file, environ={"P2PCHAT_ROLES": "archiver"})
    assert config.roles == ["archiver"]
    assert config.metrics.listen == "0.0.0.0:9466"


def test_legacy_chat_topic_selects_the_room_and_p2pchat_variable_wins() -> None:
    assert load_config(environ={"CHAT_TOPIC": "lobby"}).chat.room == "lobby"
    both = {"CHAT_TOPIC": "lobby", "P2PCHAT_CHAT__ROOM": "hall"}
    assert load_config(environ=both).chat.room == "hall"
    assert (
        load_config(environ={"CHAT_TOPIC": "lobby"}, flags={"chat": {"room": "x"}}).chat.room == "x"
    )


def test_env_booleans_and_numbers_are_parsed() -> None:
    config = load_config(
        environ={"P2PCHAT_METRICS__ENABLED": "false", "P2PCHAT_NODE__MAX_CONNECTIONS": "12"}
    )
    assert config.metrics.enabled is False
    assert config.node.max_connections == 12


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(file=write(tmp_path, ""), environ={}).roles == ["peer"]


def test_effective_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(environ={"CHAT_TOPIC": "lobby"}, flags={"roles": "relay"})
    again = load_config(file=write(tmp_path, config.to_yaml()), environ={})
    assert again == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node:\n  listn: []\n", "node.listn (from file {file}): unknown key"),
        ("nodes: {}\n", "nodes (from file {file}): unknown key"),
        ("node:\n  dial_timeout: soon\n", "node.dial_timeout (from file {file}): "),
        ("node:\n  max_connections: 0\n", "node.max_connections (from file {file}): "),
        (
            'node:\n  listen: ["/ip4/127.0.0.1/tcp/1", "/ip4/1.2.3/tcp/1"]\n',
            "node.listen[1] (from file {file}): listen address '/ip4/1.2.3/tcp/1' has '1.2.3' "
            "after /ip4, which is not an IPv4 address",
        ),
        (
            'node:\n  listen: ["/ip4/127.0.0.1/udp/1/quic"]\n',
            "node.listen[0] (from file {file}): listen address",
        ),
        (
            'node:\n  bootstrap: ["/ip4/127.0.0.1/tcp/1"]\n',
            "node.bootstrap[0] (from file {file}): peer address '/ip4/127.0.0.1/tcp/1' has no "
            "peer id: it must end with /p2p/<peer id>",
        ),
        (
            f'node:\n  announce: ["/ip4/1.2.3.4/tcp/1/p2p/{PEER_ID}"]\n',
            "node.announce[0] (from file {file}): announce address",
        ),
        ("roles: [peer, chef]\n", "roles[1] (from file {file}): got 'chef'"),
        ("roles: []\n", "roles (from file {file}): "),
        ("metrics:\n  listen: localhost:80\n", "metrics.listen (from file {file}): "),
        ("metrics:\n  listen: 127.0.0.1:70000\n", "metrics.listen (from file {file}): "),
        ("log:\n  level: loud\n", "log.level (from file {file}): got 'loud'"),
        ("chat:\n  room: 'a room'\n", "chat.room (from file {file}): room 'a room' must be"),
        ("- just\n- a list\n", "config file {file}: the top level must be a mapping"),
        ("node: [\n", "config file {file}: invalid YAML at line 2"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_config(file=file, environ={})
    message = str(raised.value)
    assert message.startswith(expected.format(file=file)), message
    assert "\n" not in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.yaml: file not found$"):
        load_config(file=tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match=r"cannot read: Is a directory$"):
        load_config(file=tmp_path, environ={})
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(file=binary, environ={})


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"P2PCHAT_NODE__LISTN": "x"},
            "node.listn (from environment P2PCHAT_NODE__LISTN): unknown",
        ),
        ({"P2PCHAT_ROLES": "peer,chef"}, "roles[1] (from environment P2PCHAT_ROLES): got 'chef'"),
        (
            {"P2PCHAT_METRICS__ENABLED": "maybe"},
            "metrics.enabled (from environment P2PCHAT_METRICS__ENABLED): ",
        ),
        ({"CHAT_TOPIC": "no spaces"}, "chat.room (from environment CHAT_TOPIC): "),
        ({"P2PCHAT_NODE__": "x"}, "environment P2PCHAT_NODE__: malformed name"),
        ({"P2PCHAT_NODE": "x"}, "node (from environment P2PCHAT_NODE): "),
    ],
)
def test_environment_errors_name_the_variable(environ: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ=environ)
    assert str(raised.value).startswith(expected), str(raised.value)


def test_flag_errors_name_the_command_line() -> None:
    with pytest.raises(ConfigError, match=r"^node\.listen\[0\] \(from command line\): "):
        load_config(environ={}, flags={"node": {"listen": ["/ip4/127.0.0.1/tcp/x"]}})


def test_an_error_below_an_override_is_reported_from_its_own_source(tmp_path: Path) -> None:
    file = write(tmp_path, "node:\n  dial_timeout: soon\n")
    with pytest.raises(ConfigError, match=r"^node\.dial_timeout \(from file "):
        load_config(file=file, environ={"P2PCHAT_LOG__LEVEL": "debug"})
    # ... and an override from a higher layer fixes it
    fixed = load_config(file=file, environ={"P2PCHAT_NODE__DIAL_TIMEOUT": "2.5"})
    assert fixed.node.dial_timeout == 2.5


def test_dht_mode_follows_the_roles_and_a_bootstrap_node_must_serve_it() -> None:
    peer = load_config(environ={})
    assert peer.dht.enabled and not peer.dht.server_mode(peer.roles)
    boot = load_config(environ={}, flags={"roles": "bootstrap"})
    assert boot.dht.server_mode(boot.roles)
    forced = load_config(environ={"P2PCHAT_DHT__MODE": "server"})
    assert forced.dht.server_mode(forced.roles)
    with pytest.raises(ConfigError, match=r"bootstrap role serves the DHT.*P2PCHAT_DHT__ENABLED"):
        load_config(environ={"P2PCHAT_DHT__ENABLED": "false"}, flags={"roles": "bootstrap"})
    with pytest.raises(ConfigError, match=r"dht\.mode auto or server"):
        load_config(environ={"P2PCHAT_DHT__MODE": "client"}, flags={"roles": "bootstrap"})


def test_autonat_service_follows_the_roles_unless_set() -> None:
    assert not load_config(environ={}).autonat.serves(["peer"])
    for roles in ("bootstrap", "relay", "archiver,relay"):
        config = load_config(environ={}, flags={"roles": roles})
        assert config.autonat.serves(config.roles)
    assert not load_config(environ={}, flags={"roles": "archiver"}).autonat.serves(["archiver"])
    forced = load_config(environ={"P2PCHAT_AUTONAT__SERVICE": "on"})
    assert forced.autonat.serves(forced.roles)


def test_relay_limits_default_to_go_libp2p_and_the_allow_list_is_checked() -> None:
    relay = load_config(environ={}, flags={"roles": "relay"}).relay
    assert (relay.max_reservations, relay.max_reservations_per_ip, relay.max_circuits) == (
        128,
        8,
        16,
    )
    assert (relay.reservation_ttl, relay.circuit_duration, relay.circuit_data) == (
        3600,
        120,
        131072,
    )
    allowed = load_config(environ={"P2PCHAT_RELAY__ALLOW": f"10.0.0.0/8, {PEER_ID}"})
    assert allowed.relay.allow == ["10.0.0.0/8", PEER_ID]
    with pytest.raises(ConfigError, match=r"relay\.allow\[0\].*'not-a-thing' is neither"):
        load_config(environ={"P2PCHAT_RELAY__ALLOW": "not-a-thing"})


def test_several_errors_are_all_listed_one_line_each(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "node:\n  listen: ['/ip4/127.0.0.1/tcp/99999']\n  max_connections: 0\n"
        "log:\n  level: loud\nchat:\n  room: 'a room'\n",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(file=file, environ={})
    lines = str(raised.value).splitlines()
    assert [line.split(" (from ")[0] for line in lines] == [
        "node.listen[0]",
        "node.max_connections",
        "log.level",
        "chat.room",
    ]
    assert all(f"(from file {file}): " in line for line in lines)
    assert "more error" not in str(raised.value)
    # A value that several branches of a type refuse is one problem, reported once.
    with pytest.raises(ConfigError) as raised:
        load_config(environ={"P2PCHAT_ARCHIVER__RETENTION__MAX_AGE_DAYS": "soon"})
    assert len(str(raised.value).splitlines()) == 1


# --- addresses in plain words (node/ids.py) ------------------------------------------------------

EXAMPLE = "e.g. /ip4/203.0.113.9/tcp/4001/p2p/12D3KooW"


@pytest.mark.parametrize(
    ("addr", "says"),
    [
        # The issue's example: the library said "The last protocol should be `P_P2P` (421)
        # instead of `6`" for a missing peer id, "Invalid CID" for a bad one.
        ("/ip4/1.2.3.4/tcp/4001", "has no peer id: it must end with /p2p/<peer id>"),
        (
            "/ip4/1.2.3.4/tcp/4001/p2p/12D3KooW-bad",
            "has '12D3KooW-bad' after /p2p, which is not a peer id",
        ),
        ("/ip4/1.2.3.4/tcp/4001/p2p/", "has /p2p without a peer id after it"),
        ("/ip4/1.2.3.4/tpc/4001", "has /tpc, which is not a protocol name (did you mean tcp?)"),
        ("/ip4/1.2.3.4/tcp/99999", "has port '99999': a port is a number from 0 to 65535"),
        ("/ip4/1.2.3.4/tcp/http", "has port 'http': a port is a number from 0 to 65535"),
        ("/ip4/1.2.3.4/tcp", "has /tcp without a port number after it"),
        ("/ip4/localhost/tcp/1", "'localhost' after /ip4, which is not an IPv4 address"),
        ("/ip4/1.2.3.4:4001", "a port is written /tcp/<port>, not after a colon"),
        ("1.2.3.4:4001", "is host:port, not a multiaddr: write it /ip4/1.2.3.4/tcp/4001"),
        ("ip4/1.2.3.4/tcp/1", "is not a multiaddr: it must start with /"),
        ("", "is empty"),
        (f"/p2p/{PEER_ID}", "has only a peer id: put the transport"),
    ],
)
def test_a_bad_peer_address_is_explained_in_plain_words(addr: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(environ={}, flags={"node": {"bootstrap": [addr]}})
    message = str(raised.value)
    assert message.startswith(f"node.bootstrap[0] (from command line): peer address {addr!r} ")
    assert says in message and EXAMPLE in message, message
    for library_words in ("P_P2P", "Invalid CID", "Invalid MultiAddr", "(string:"):
        assert library_words not in message


def test_listen_and_announce_addresses_are_explained_too() -> None:
    cases = [
        ("listen", "/dns4/example.org/tcp/1", "must be /ip4/<address>/tcp/<port>"),
        (
            "listen",
            "/ip4/127.0.0.1/tcp/1/wss",
            "has /wss after the port: p2pchat listens on TCP, WebSocket (/tcp/<port>/ws) and "
            "QUIC (/udp/<port>/quic-v1) only",
        ),
        # QUIC draft-29 (/quic), and a UDP port without QUIC, are not listened on.
        ("listen", "/ip4/127.0.0.1/udp/1/quic", "has /quic after the port"),
        ("listen", "/ip4/127.0.0.1/udp/1", "has nothing after the port"),
        ("announce", f"/ip4/1.2.3.4/tcp/1/p2p/{PEER_ID}", "must not contain /p2p/"),
        ("announce", "/dns4//tcp/1", "has /dns4 without a host name after it"),
    ]
    for key, addr, says in cases:
        with pytest.raises(ConfigError) as raised:
            load_config(environ={}, flags={"node": {key: [addr]}})
        assert f"{key} address {addr!r} {says}" in str(raised.value)
        assert "; e.g. /" in str(raised.value)
    fine = load_config(
        environ={},
        flags={
            "node": {
                "bootstrap": [
                    f"/ip4/1.2.3.4/tcp/1/p2p/{PEER_ID}",
                    f"/dns4/relay.example.org/tcp/4011/p2p/{PEER_ID}/p2p-circuit/p2p/{PEER_ID}",
                ],
                "announce": ["/dns4/chat.example.org/tcp/4001"],
                "listen": ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::1/udp/4001/quic-v1"],
            }
        },
    )
    assert len(fine.node.bootstrap) == 2
    assert len(fine.node.listen) == 2


def test_short_id_is_the_consoles_format() -> None:
    assert short_id(PEER_ID) == f"{PEER_ID[:6]}…{PEER_ID[-4:]}"
    assert short_id("QmShort") == "QmShort"
    assert short_id("x" * 14) == "x" * 14
    assert short_id("x" * 15) == "xxxxxx…xxxx"


def test_the_fallback_key_period_is_no_shorter_than_the_mailbox_ttl() -> None:
    with pytest.raises(
        ConfigError, match=r"chat\.dm_fallback_rotation must be at least mailbox\.ttl"
    ):
        load_config(environ={"P2PCHAT_CHAT__DM_FALLBACK_ROTATION": "3600"})
    both = {"P2PCHAT_CHAT__DM_FALLBACK_ROTATION": "60", "P2PCHAT_MAILBOX__TTL": "60"}
    assert load_config(environ=both).chat.dm_fallback_rotation == 60
