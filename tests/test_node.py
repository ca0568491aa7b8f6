"""Real ``p2pchat`` processes on 127.0.0.1: readiness, connections, shutdown, startup failures."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, metric_value, start_node

WAIT = 30.0  # seconds; generous for loaded CI machines, never a performance claim


def eventually(check: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def test_health_ready_and_build_info(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    node = start_node(tmp_path, "--role", "relay,bootstrap")
    nodes.append(node)
    assert node.http_get("/healthz") == (200, "ok\n")
    assert node.http_get("/readyz") == (200, "ready\n")
    assert node.http_get("/nope")[0] == 404
    assert node.metric("p2pchat_build_info", roles="relay,bootstrap") == 1
    assert node.metric("p2pchat_ready") == 1
    listen = node.ready["listen"]
    assert any(addr.startswith("/ip4/127.0.0.1/tcp/") and "/ws" not in addr for addr in listen)
    assert any(addr.endswith("/ws") for addr in listen)


def test_two_nodes_connect_through_bootstrap_and_both_report_it(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    first = start_node(tmp_path / "a", "--role", "bootstrap")
    nodes.append(first)
    second = start_node(tmp_path / "b", "--bootstrap", first.addr("tcp"))
    nodes.append(second)

    eventually(lambda: second.metric("p2pchat_connected_peers") == 1)
    eventually(lambda: first.metric("p2pchat_connected_peers") == 1)
    labels = {"transport": "tcp", "security": "/noise", "muxer": "/yamux/1.0.0"}
    opened = "libp2p_swarm_connections_opened_total"
    assert second.metric(opened, dir="outbound", **labels) == 1
    assert first.metric(opened, dir="inbound", **labels) == 1
    assert second.metric("p2pchat_bootstrap_dials_total", outcome="success") == 1
    connected = second.wait_for("peer connected")
    assert connected["remote"] == first.peer_id
    assert connected["peer_id"] == second.peer_id


def test_bootstrap_over_websocket(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    first = start_node(tmp_path / "a")
    nodes.append(first)
    second = start_node(tmp_path / "b", "--bootstrap", first.addr("ws"))
    nodes.append(second)
    eventually(
        lambda: (
            second.metric(
                "libp2p_swarm_connections_opened_total", dir="outbound", transport="websocket"
            )
            == 1
        )
    )


def test_bootstrap_is_redialled_after_its_restart(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    port = free_port()
    listen = f"/ip4/127.0.0.1/tcp/{port}"
    first = start_node(tmp_path / "a", "--listen", listen)
    nodes.append(first)
    second = start_node(tmp_path / "b", "--bootstrap", first.addr("tcp"))
    nodes.append(second)
    eventually(lambda: second.metric("p2pchat_connected_peers") == 1)
    assert first.stop() == 0
    eventually(lambda: second.metric("p2pchat_connected_peers") == 0)
    eventually(lambda: second.metric("p2pchat_bootstrap_dials_total", outcome="failure") >= 1)
    again = start_node(tmp_path / "a", "--listen", listen)  # same identity, same port
    nodes.append(again)
    eventually(lambda: second.metric("p2pchat_bootstrap_dials_total", outcome="success") == 2)
    eventually(lambda: again.metric("p2pchat_connected_peers") == 1)


@pytest.mark.parametrize(
    ("sig", "role"),
    [(signal.SIGTERM, "archiver"), (signal.SIGINT, "archiver"), (signal.SIGTERM, "peer")],
)
def test_signal_stops_the_node_cleanly_within_5_seconds(
    tmp_path: Path, nodes: list[NodeProcess], sig: int, role: str
) -> None:
    node = start_node(tmp_path, "--role", role, *(["--json"] if role == "peer" else []))
    nodes.append(node)
    began = time.monotonic()
    code = node.stop(sig, timeout=30)
    elapsed = time.monotonic() - began
    assert code == 0
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"
    node.wait_for("stopped")
    # the store was closed cleanly: the next start opens it without complaint
    again = start_node(tmp_path, "--role", role)
    nodes.append(again)
    assert again.stop() == 0


def test_logs_are_json_lines_with_role_and_peer_id_and_stdout_stays_empty(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    node = start_node(tmp_path, "--role", "relay", "--log-level", "debug")
    nodes.append(node)
    assert node.stop() == 0
    assert node.proc.stdout is not None
    assert node.proc.stdout.read() == ""
    entries = [json.loads(line) for line in node.raw_stderr if line.strip()]
    assert entries, "no log lines"
    for entry in entries:
        assert entry["role"] == "relay"
        assert entry["peer_id"] == node.peer_id
        assert {"event", "level", "timestamp"} <= entry.keys()


def test_libp2p_logs_are_routed_into_ours(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    from tests.conftest import node_env

    node = start_node(tmp_path, env=node_env(P2PCHAT_LOG__LIBP2P_LEVEL="debug"))
    nodes.append(node)
    assert node.stop() == 0
    entries = [json.loads(line) for line in node.raw_stderr if line.strip()]
    library = [entry for entry in entries if str(entry.get("logger", "")).startswith("libp2p")]
    assert library, "no libp2p log line came through our formatter"
    assert all(entry["peer_id"] == node.peer_id for entry in library)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def failure_line(node: NodeProcess, exit_code: int) -> str:
    """Wait for a node that must fail at startup; return its one error line."""
    assert node.proc.wait(timeout=60) == exit_code, node.raw_stderr
    prefix = "p2pchat: config error:" if exit_code == 2 else "p2pchat: error:"
    errors = [line for line in node.raw_stderr if line.startswith(prefix)]
    assert len(errors) == 1, node.raw_stderr
    assert "Traceback" not in "".join(node.raw_stderr)
    return errors[0]


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A loopback port held by a plain listening socket for the duration."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_listen_address_in_use_is_a_clear_runtime_error(tmp_path: Path) -> None:
    with port_in_use() as port:
        node = start_node(tmp_path, "--listen", f"/ip4/127.0.0.1/tcp/{port}", wait_ready=False)
        line = failure_line(node, 1)
    assert f"cannot listen on 127.0.0.1 port {port}: Address already in use" in line


def test_a_port_held_by_another_node_is_refused(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    # The library's listeners set SO_REUSEPORT: without the host layer's probe, the second node
    # would share the port and the kernel would split incoming connections between the two.
    first = start_node(tmp_path / "a")
    nodes.append(first)
    port = first.addr("tcp").split("/")[4]
    second = start_node(tmp_path / "b", "--listen", f"/ip4/127.0.0.1/tcp/{port}", wait_ready=False)
    nodes.append(second)
    assert f"port {port}" in failure_line(second, 1)


def test_metrics_address_in_use_is_a_clear_runtime_error(tmp_path: Path) -> None:
    with port_in_use() as port:
        node = start_node(tmp_path, "--metrics", f"127.0.0.1:{port}", wait_ready=False)
        line = failure_line(node, 1)
    assert f"metrics endpoint 127.0.0.1:{port}" in line


def test_a_data_dir_in_use_is_refused(tmp_path: Path, nodes: list[NodeProcess]) -> None:
    first = start_node(tmp_path)
    nodes.append(first)
    second = start_node(tmp_path, wait_ready=False)
    assert "in use by another p2pchat process" in failure_line(second, 2)
    assert first.http_get("/readyz")[0] == 200


def test_metric_value_parser() -> None:
    text = 'a_total{dir="in",x="1"} 3.0\na_total{dir="out",x="1"} 4.0\nb 1.0\n'
    assert metric_value(text, "a_total", dir="out") == 4.0
    assert metric_value(text, "b") == 1.0
    assert metric_value(text, "a") == 0.0
