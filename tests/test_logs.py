"""Logs: the rotated file the chat console sends them to, the warnings its notice line shows
(at most one a second per event), and a real console peer whose terminal carries no log line."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import stat
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from p2pchat.node import logs
from p2pchat.node.config import load_config
from p2pchat.node.logs import (
    LogFile,
    WarningWatch,
    configure_logging,
    get_logger,
    summarize,
)

from tests.conftest import (
    START_TIMEOUT,
    TERMINAL_COLUMNS,
    TERMINAL_ROWS,
    NodeProcess,
    node_env,
    p2pchat_command,
)
from tests.peer_ids import fresh_peer_id


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Each test configures the process's logging; put stderr back afterwards."""
    yield
    configure_logging(level="info", fmt="json")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(event: str, level: int = logging.WARNING, **fields: Any) -> logging.LogRecord:
    """A record as structlog hands it to the stdlib handlers: the event dict as ``msg``."""
    return logging.LogRecord("p2pchat", level, __file__, 1, {"event": event, **fields}, (), None)


# --- summaries ------------------------------------------------------------------------------------


def test_a_summary_is_the_event_and_its_error_on_one_short_line() -> None:
    assert summarize(record("relay reservation failed", error="connection refused")) == (
        "relay reservation failed",
        "relay reservation failed: connection refused",
    )
    assert summarize(record("room not archived", room="x"))[1] == "room not archived"
    trace = "Traceback (most recent call last):\n  File 'x'\nZeroDivisionError: division by zero"
    assert summarize(record("handler failed", exception=trace))[1] == (
        "handler failed: ZeroDivisionError: division by zero"
    )
    long = summarize(record("dial failed", error="a\nb " + "x" * 500))[1]
    assert "\n" not in long and len(long) == logs.SUMMARY_MAX_CHARS and long.endswith("…")
    peer = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    dial = summarize(record("bootstrap dial failed", error=f"dial /ip4/1.2.3.4/tcp/1/p2p/{peer}"))
    assert dial[1] == "bootstrap dial failed: dial /ip4/1.2.3.4/tcp/1/p2p/12D3Ko…U5SA"
    # A library's own stdlib record: its template is the event, its message the line.
    library = logging.LogRecord("libp2p.swarm", logging.ERROR, __file__, 1, "dial %s", ("x",), None)
    assert summarize(library) == ("dial %s", "dial x")


# --- the rate limit -------------------------------------------------------------------------------


def test_a_storm_of_one_warning_reaches_the_watcher_once_a_second_with_a_count() -> None:
    clock = FakeClock()
    watch = WarningWatch(interval=1.0, clock=clock)
    seen: list[str] = []
    watch.watch(seen.append)

    for _ in range(1000):  # 1000 in the same instant: one passes, 999 are held back
        watch.handle(record("bootstrap dial failed", error="refused"))
    assert seen == ["bootstrap dial failed: refused"]

    # A storm of 10 s at 64 a second (1/64 s steps: exact in binary floating point): never
    # more than one a second, and each tells how many it held back.
    for tick in range(1, 641):
        clock.now += 1 / 64
        watch.handle(record("bootstrap dial failed", error="refused"))
        assert len(seen) <= 1 + tick // 64, tick
    assert len(seen) == 11
    assert seen[1] == "bootstrap dial failed: refused (and 1062 more)"
    assert seen[2:] == ["bootstrap dial failed: refused (and 63 more)"] * 9
    # Every warning was either shown or counted, once.
    counted = sum(int(line.split("(and ")[1].split(" ")[0]) for line in seen[1:])
    assert counted + len(seen) == 1000 + 640

    # Another event is not held back by the first one's storm.
    watch.handle(record("archive write failed", error="disk full"))
    assert seen[-1] == "archive write failed: disk full"


def test_below_warning_nothing_and_a_failing_watcher_breaks_nothing() -> None:
    watch = WarningWatch(clock=FakeClock())
    seen: list[str] = []

    def broken(line: str) -> None:
        raise RuntimeError("front end bug")

    watch.watch(broken)
    unwatch = watch.watch(seen.append)
    logger = logging.getLogger("test_logs.levels")
    logger.addHandler(watch)
    try:
        logger.setLevel(logging.DEBUG)
        logger.info("routine")
        logger.warning("a %s warning", "library")
        assert seen == ["a library warning"]
        unwatch()
        logger.error("after unwatch")
        assert seen == ["a library warning"]
    finally:
        logger.removeHandler(watch)


# --- the log file ---------------------------------------------------------------------------------


def test_with_a_file_logs_are_json_lines_there_and_nothing_on_the_stream(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "p2pchat.log"
    stream = io.StringIO()
    configure_logging(level="info", fmt="console", stream=stream, file=LogFile(path, 1 << 20, 2))
    assert logs.log_file() == path
    seen: list[str] = []
    unwatch = logs.watch_warnings(seen.append)
    try:
        log = get_logger("p2pchat.test")
        log.info("started", port=4001)
        log.warning("relay reservation failed", error="connection refused")
        logging.getLogger("libp2p.swarm").critical("library %s", "trouble")
        # From another thread, as trio's worker threads and the library's do.
        thread = threading.Thread(target=lambda: log.error("from a thread", error="boom"))
        thread.start()
        thread.join()
    finally:
        unwatch()
    assert stream.getvalue() == ""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == [
        "started",
        "relay reservation failed",
        "library trouble",
        "from a thread",
    ]
    assert lines[0]["port"] == 4001 and lines[0]["level"] == "info"
    assert seen == [
        "relay reservation failed: connection refused",
        "library trouble",
        "from a thread: boom",
    ]

    configure_logging(level="info", fmt="json", stream=stream)
    assert logs.log_file() is None
    get_logger("p2pchat.test").info("back on the stream")
    assert json.loads(stream.getvalue())["event"] == "back on the stream"


def test_the_file_is_rotated_and_capped(tmp_path: Path) -> None:
    path = tmp_path / "data" / "logs" / "p2pchat.log"
    max_bytes, backups = 2048, 3
    configure_logging(level="info", fmt="json", file=LogFile(path, max_bytes, backups))
    log = get_logger("p2pchat.test")
    for n in range(2000):  # ~300 KB of lines into a cap of 8 KB
        log.info("line", n=n, padding="x" * 80)
    # The directories made for it are private (the data dir too, when it was not there yet).
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == [
        "p2pchat.log",
        "p2pchat.log.1",
        "p2pchat.log.2",
        "p2pchat.log.3",
    ]
    assert all(f.stat().st_size <= max_bytes for f in files)
    assert sum(f.stat().st_size for f in files) <= (backups + 1) * max_bytes
    newest = [json.loads(line) for line in path.read_text().splitlines()]
    assert newest[-1]["n"] == 1999  # the newest lines are kept, the oldest deleted


def test_an_unusable_log_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match=r"log file .*: cannot open: Not a directory$"):
        configure_logging(
            level="info", fmt="json", file=LogFile(blocker / "logs" / "p2pchat.log", 4096, 1)
        )


# --- the rule: which front end, which destination -------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "tty", "front_end", "to_file"),
    [
        ({}, True, "console", True),
        ({}, False, "none", False),
        ({"P2PCHAT_CHAT__UI": "console"}, False, "console", True),
        ({"P2PCHAT_CHAT__UI": "json"}, True, "json", False),
        ({"P2PCHAT_CHAT__UI": "none"}, True, "none", False),
        ({"P2PCHAT_ROLES": "relay"}, True, "console", False),  # no peer role: no console
        ({"P2PCHAT_ROLES": "relay,peer"}, True, "console", True),
        ({"P2PCHAT_LOG__DESTINATION": "stderr"}, True, "console", False),
        ({"P2PCHAT_LOG__DESTINATION": "file", "P2PCHAT_ROLES": "relay"}, False, "none", True),
    ],
)
def test_logs_go_to_the_file_exactly_when_the_console_front_end_runs(
    tmp_path: Path, environ: dict[str, str], tty: bool, front_end: str, to_file: bool
) -> None:
    config = load_config(environ={"P2PCHAT_NODE__DATA_DIR": str(tmp_path), **environ})
    assert config.chat.front_end(stdin_is_tty=tty) == front_end
    expected = tmp_path / "logs" / "p2pchat.log" if to_file else None
    assert config.log_file(stdin_is_tty=tty) == expected


def test_log_settings_are_validated_and_default_to_5_mib_by_5() -> None:
    config = load_config(environ={})
    assert (config.log.max_bytes, config.log.backups, config.log.file) == (5 << 20, 5, None)
    elsewhere = load_config(environ={"P2PCHAT_LOG__FILE": "/var/log/p2pchat/chat.log"})
    assert elsewhere.log_file(stdin_is_tty=True) == Path("/var/log/p2pchat/chat.log")
    with pytest.raises(Exception, match=r"^log\.max_bytes \(from environment P2PCHAT_LOG__MAX"):
        load_config(environ={"P2PCHAT_LOG__MAX_BYTES": "10"})
    with pytest.raises(Exception, match=r"^log\.backups \(from environment P2PCHAT_LOG__BACK"):
        load_config(environ={"P2PCHAT_LOG__BACKUPS": "0"})


# --- a real console peer --------------------------------------------------------------------------


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_console_peer_logs_to_its_file_and_never_to_the_terminal(tmp_path: Path) -> None:
    """stdin, stdout and stderr all on one terminal, as when a person runs ``p2pchat``; a
    bootstrap address where nothing listens makes the node warn again and again."""
    data_dir = tmp_path / "alice"
    master, slave = pty.openpty()
    fcntl.ioctl(
        slave, termios.TIOCSWINSZ, struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0)
    )
    command = [
        *p2pchat_command(),
        "--data-dir",
        str(data_dir),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "127.0.0.1:0",
        "--bootstrap",
        f"/ip4/127.0.0.1/tcp/1/p2p/{fresh_peer_id()}",
    ]
    env = {**node_env(), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    node = NodeProcess(proc=proc, data_dir=data_dir, terminal=master)

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            node.screen.append(data.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    log_path = data_dir / "logs" / "p2pchat.log"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            events = [line["event"] for line in _read_log(log_path)]
            if "node ready" in events and "bootstrap dial failed" in events:
                break
            assert proc.poll() is None, node.screen_text()
            time.sleep(0.2)
        else:
            raise AssertionError(f"no node ready and dial warning in {log_path}")
        node.wait_screen("p2p-chat-default>")
        entries = _read_log(log_path)
        assert {entry["level"] for entry in entries} >= {"info", "warning"}
        assert all(entry.get("peer_id") for entry in entries if entry["event"] == "node ready")

        node.type_keys("/quit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    # Everything the node logged, to its last line, is in the file; no log line is on the
    # terminal (a warning may be there only as the console's one-line notice of its summary).
    entries = _read_log(log_path)
    assert entries[-1]["event"] == "stopped"
    screen = node.screen_text()
    for entry in entries:
        if entry["level"] == "info" and " " in entry["event"]:  # "stopped" could be a chat word
            assert entry["event"] not in screen, (entry, screen)
    for logged in ('"event"', "[info", "[warning", "timestamp"):
        assert logged not in screen, screen
    os.close(master)
