"""Shared test helpers: start real ``p2pchat`` processes on 127.0.0.1 and talk to them.

Every node listens on port 0 (the OS picks a free port) and reports its bound addresses in its
``node ready`` JSON log line, which :class:`NodeProcess` waits for.

Every object a ``--json`` node writes to stdout and these helpers read is validated against the
events schema shipped in the package (``p2pchat/roles/peer/schema/events-v1.schema.json``): a
violation fails the test that caused it, at the next event it reads and at its teardown.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import pty
import queue
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pyte
import pytest
from prometheus_client.parser import text_string_to_metric_families

START_TIMEOUT = 60.0  # generous: shared CI machines can be slow to import libp2p
TERMINAL_COLUMNS, TERMINAL_ROWS = 120, 40
EVENTS_SCHEMA = "events-v1.schema.json"
INPUT_SCHEMA = "input-v1.schema.json"


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema of the ``--json`` contract, read from the installed package."""
    text = resources.files("p2pchat.roles").joinpath("peer", "schema", name).read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.cache
def schema_validator(name: str = EVENTS_SCHEMA) -> jsonschema.Draft202012Validator:
    """A validator of the shipped schema ``name`` (checked against its metaschema first)."""
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@functools.cache
def _branch_validator(name: str, event_type: str) -> jsonschema.Draft202012Validator | None:
    """The validator of the ``oneOf`` branch of schema ``name`` for objects of ``event_type``
    (None if there is none): each branch of the events schema fixes ``type`` to one value, so an
    object matches the whole schema exactly when it matches its type's branch, and checking that
    branch alone is four times faster than trying them all (thousands of events per test)."""
    validator = schema_validator(name)
    branches = [branch.get("$ref") for branch in validator.schema.get("oneOf", [])]
    if f"#/$defs/{event_type}" not in branches:
        return None
    return validator.evolve(schema=validator.schema["$defs"][event_type])


def contract_violations(event: object, name: str = EVENTS_SCHEMA) -> list[str]:
    """Why ``event`` does not match the shipped schema ``name``, one line each (empty: it does).

    An object whose ``type`` names a branch is checked against that branch alone, so the
    reasons name the offending field rather than "not valid under any of the given schemas".
    """
    event_type = event.get("type") if isinstance(event, dict) else None
    validator = None
    if isinstance(event_type, str):
        validator = _branch_validator(name, event_type)
    if validator is None:
        validator = schema_validator(name)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"
        for error in validator.iter_errors(event)
    ]


def p2pchat_command() -> list[str]:
    """The installed console script, or the module when run from a bare checkout."""
    script = shutil.which("p2pchat", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "p2pchat.node"]


def node_env(**extra: str) -> dict[str, str]:
    """A clean environment: no P2PCHAT_* or CHAT_TOPIC leaking from the developer's shell."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("P2PCHAT_") and key != "CHAT_TOPIC"
    }
    # Tests never run mDNS on the machine's real interfaces; the mDNS test enables it inside
    # network namespaces it creates.
    env["P2PCHAT_DISCOVERY__MDNS"] = "false"
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``p2pchat ARGS`` to completion and capture its output."""
    return subprocess.run(
        [*p2pchat_command(), *args],
        capture_output=True,
        text=True,
        env=env or node_env(),
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@dataclass
class NodeProcess:
    """A running ``p2pchat`` process and what its logs (and, with --json, stdout) said."""

    proc: subprocess.Popen[str]
    data_dir: Path
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    log: list[dict[str, Any]] = field(default_factory=list)
    raw_stderr: list[str] = field(default_factory=list)
    ready: dict[str, Any] = field(default_factory=dict)
    chat_queue: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    chat: list[dict[str, Any]] = field(default_factory=list)
    terminal: int | None = None  # the pty master, for nodes started with terminal=True
    screen: list[str] = field(default_factory=list)  # raw terminal output, as received
    netns: str | None = None  # the network namespace the node runs in, if not the test's own
    # --json stdout that broke the events schema (or was not JSON), kept to fail the test.
    contract_violations: list[str] = field(default_factory=list)
    stdout_reader: threading.Thread | None = None

    def type_keys(self, keys: str) -> None:
        """Type into the node's terminal (needs terminal=True)."""
        assert self.terminal is not None
        os.write(self.terminal, keys.encode())

    def screen_text(self) -> str:
        """What a person would read: the output replayed on a VT100 emulator (scrollback
        included), one line per row, trailing blanks trimmed."""
        screen = pyte.HistoryScreen(TERMINAL_COLUMNS, TERMINAL_ROWS, history=10_000)
        pyte.Stream(screen).feed("".join(self.screen))
        rows = [
            "".join(char.data for char in (row[x] for x in range(TERMINAL_COLUMNS)))
            for row in screen.history.top
        ]
        rows += list(screen.display)
        return "\n".join(row.rstrip() for row in rows)

    def wait_screen(self, text: str, count: int = 1, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``text`` has appeared ``count`` times on the terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.screen_text().count(text) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not shown {count}x; screen:\n{self.screen_text()[-3000:]}")

    def say(self, line: str) -> None:
        """Type a line into the chat (needs --json)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def send_json(self, message: dict[str, Any]) -> None:
        """Write one input object to the node's stdin (needs --json)."""
        self.say(json.dumps(message))

    def read_stdout_line(self, line: str) -> dict[str, Any] | None:
        """One line the node wrote to stdout (with --json): the event it holds, checked against
        the shipped schema; a violation is kept in :attr:`contract_violations`. None for a line
        that is not a JSON object (kept as a violation too)."""
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            self.contract_violations.append(f"not JSON ({error}): {line[:300]!r}")
            return None
        problems = contract_violations(event)
        if problems:
            self.contract_violations.append(
                f"{json.dumps(event)[:500]}\n    " + "\n    ".join(problems)
            )
        return event if isinstance(event, dict) else None

    def check_contract(self) -> None:
        """Fail if anything this node wrote so far broke the JSON contract."""
        if self.contract_violations:
            raise AssertionError(
                f"{self.data_dir.name}: --json output breaks {EVENTS_SCHEMA}:\n"
                + "\n".join(self.contract_violations)
            )

    def next_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = START_TIMEOUT
    ) -> dict[str, Any]:
        """The next chat event (after those already consumed) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_contract()
            try:
                event = self.chat_queue.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"p2pchat exited ({self.proc.returncode}); chat events: {self.chat}"
                    ) from None
                continue
            self.chat.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"no matching chat event within {timeout}s; saw {self.chat[-20:]}")

    def drain_events(self) -> list[dict[str, Any]]:
        """Every chat event received so far and not yet consumed."""
        self.check_contract()
        while True:
            try:
                self.chat.append(self.chat_queue.get_nowait())
            except queue.Empty:
                return self.chat

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ready['metrics']}"

    def addr(self, transport: str = "tcp") -> str:
        """A dialable /ip4/127.0.0.1 address of this node ending in /p2p/<id>."""
        for addr in self.ready["advertised"]:
            kind = "ws" if "/ws/" in addr else "quic" if "/quic-v1/" in addr else "tcp"
            if addr.startswith("/ip4/127.0.0.1/") and kind == transport:
                return str(addr)
        raise AssertionError(f"no 127.0.0.1 {transport} address in {self.ready['advertised']}")

    def wait_for(self, event: str, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        """Wait for a JSON log line whose event is ``event``; fail if the process exits first."""
        for entry in self.log:
            if entry.get("event") == event:
                return entry
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(
                        f"p2pchat exited ({self.proc.returncode}) before {event!r}:\n"
                        + "".join(self.raw_stderr[-30:])
                    ) from None
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.log.append(entry)
            if entry.get("event") == event:
                return entry
        raise AssertionError(f"no {event!r} within {timeout}s:\n" + "".join(self.raw_stderr[-30:]))

    def http_get(self, path: str) -> tuple[int, str]:
        """GET a path of the metrics endpoint: (status, body)."""
        if self.netns is not None:  # the endpoint is on the namespace's own loopback
            return _http_get_in(self.netns, self.metrics_url + path)
        try:
            with urllib.request.urlopen(self.metrics_url + path, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample in /metrics (0.0 when absent)."""
        status, text = self.http_get("/metrics")
        assert status == 200
        return metric_value(text, name, **labels)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the process and wait for it; return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


_GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
sys.stdout.write(str(status) + "\\n" + body.decode())
"""


def _http_get_in(netns: str, url: str) -> tuple[int, str]:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", _GET, url],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    status, _, body = result.stdout.partition("\n")
    return int(status), body


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of the first sample ``name`` whose labels include ``labels`` (0.0 if none)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def wait_metric(
    node: NodeProcess, name: str, at_least: float, timeout: float = 60.0, **labels: str
) -> float:
    """Until ``node``'s metric ``name`` (with ``labels``) reaches ``at_least``: its value then.
    Raises AssertionError, naming the value it got to, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = node.metric(name, **labels)
        if value >= at_least:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{name}{labels} never reached {at_least} (is {value})")
        time.sleep(0.2)


def wait_metric_down(
    node: NodeProcess, name: str, at_most: float, timeout: float = 60.0, **labels: str
) -> float:
    """Until ``node``'s metric ``name`` (with ``labels``) falls to ``at_most``: its value then.
    For what a node releases after its peer left (the teardown runs on its own time).
    Raises AssertionError, naming the value it stayed at, after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = node.metric(name, **labels)
        if value <= at_most:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{name}{labels} never fell to {at_most} (is {value})")
        time.sleep(0.2)


def start_node(
    data_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    terminal: bool = False,
    netns: str | None = None,
    read_output: bool = True,
    discard_output: bool = False,
) -> NodeProcess:
    """Start ``p2pchat`` with loopback-only listeners and JSON logs; wait until it is ready.

    With --json, stdout is read into :attr:`NodeProcess.chat_queue` unless ``read_output`` is
    False (then nobody reads it unless the test does) or ``discard_output`` is True (then it
    goes to /dev/null: a benchmark's own reading must not compete with the nodes for CPU).
    """
    command = [
        *(["ip", "netns", "exec", netns] if netns else []),
        *p2pchat_command(),
        "--data-dir",
        str(data_dir),
        "--log-format",
        "json",
        *args,
    ]
    if "--listen" not in args:
        command += ["--listen", "/ip4/127.0.0.1/tcp/0,/ip4/127.0.0.1/tcp/0/ws"]
    if "--metrics" not in args:
        command += ["--metrics", "127.0.0.1:0"]
    interactive = "--json" in args
    master = slave = None
    if terminal:  # stdin and stdout on a pseudo-terminal; stderr (JSON logs) stays a pipe
        master, slave = pty.openpty()
        size = struct.pack("HHHH", TERMINAL_ROWS, TERMINAL_COLUMNS, 0, 0)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    proc = subprocess.Popen(
        command,
        stdin=slave if terminal else subprocess.PIPE if interactive else subprocess.DEVNULL,
        stdout=slave if terminal else subprocess.DEVNULL if discard_output else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # No cursor-position requests: the test's terminal does not answer them.
        env={**(env or node_env()), "TERM": "xterm", "PROMPT_TOOLKIT_NO_CPR": "1"}
        if terminal
        else env or node_env(),
    )
    node = NodeProcess(proc=proc, data_dir=data_dir, terminal=master, netns=netns)
    if slave is not None:
        os.close(slave)

    def pump_terminal() -> None:
        assert master is not None
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            node.screen.append(data.decode(errors="replace"))

    if terminal:
        threading.Thread(target=pump_terminal, daemon=True).start()

    def pump_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            node.raw_stderr.append(line)
            node.lines.put(line)

    def pump_log_file() -> None:
        # With the chat console on the terminal the node logs to its file, not to stderr
        # (node/logs.py): follow the file as stderr is followed, until the process ends.
        path = data_dir / "logs" / "p2pchat.log"
        while not path.exists():
            if proc.poll() is not None:
                return
            time.sleep(0.05)
        with path.open(encoding="utf-8") as file:
            pending = ""
            ended = False
            while True:
                chunk = file.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        node.raw_stderr.append(pending)
                        node.lines.put(pending)
                        pending = ""
                    continue
                if ended:
                    return  # read to the end once more after the process ended
                ended = proc.poll() is not None
                time.sleep(0.05)

    if terminal:
        threading.Thread(target=pump_log_file, daemon=True).start()

    def pump_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not line.endswith("\n"):
                return  # the last line, cut short by a kill: nothing the node meant to say
            event = node.read_stdout_line(line)
            if event is not None:
                node.chat_queue.put(event)

    threading.Thread(target=pump_stderr, daemon=True).start()
    if interactive and read_output and not discard_output:
        node.stdout_reader = threading.Thread(target=pump_stdout, daemon=True)
        node.stdout_reader.start()
    _started_in_this_test.append(node)
    if wait_ready:
        node.ready = node.wait_for("node ready")
    return node


def lab_listen(ip: str, *, quic: bool = False) -> str:
    """A listen value at ``ip``: TCP on a free port, and QUIC beside it with ``quic``."""
    return f"/ip4/{ip}/tcp/0" + (f",/ip4/{ip}/udp/0/quic-v1" if quic else "")


def start_node_in(
    netns: str,
    ip: str,
    path: Path,
    nodes: list[NodeProcess],
    *args: str,
    quic: bool = False,
    **env: str,
) -> NodeProcess:
    """Start ``p2pchat`` in network namespace ``netns``, listening on TCP (and QUIC with
    ``quic``) at ``ip`` and serving metrics on the namespace's loopback; ``env`` adds P2PCHAT_*
    settings. Kept in ``nodes``."""
    node = start_node(
        path,
        *args,
        "--listen",
        lab_listen(ip, quic=quic),
        "--metrics",
        "127.0.0.1:0",
        env=node_env(**env),
        netns=netns,
    )
    nodes.append(node)
    return node


_started_in_this_test: list[NodeProcess] = []


# tryfirst: before pytest-xdist's own, which would answer first. optionalhook: a venv without
# pytest-xdist (made before it was a dev dependency) still runs the tests, one after another.
@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``make unit`` (``pytest -n N --dist loadgroup``) runs the load-sensitive tests one at a
    time, each kind on one worker: tests/scheduling.py says which and why. Other ``--dist``
    modes are pytest-xdist's own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.scheduling import PathGroupScheduling  # imports pytest-xdist

    return PathGroupScheduling(config, log)


@pytest.fixture(autouse=True)
def json_contract() -> Iterator[None]:
    """Fails a test if any ``--json`` node it started wrote output that breaks the events
    schema, including output the test never read. Autouse fixtures are set up first, so this
    runs after ``nodes`` has stopped its processes: their output is read to the end."""
    _started_in_this_test.clear()
    yield
    started = list(_started_in_this_test)
    _started_in_this_test.clear()
    for node in started:
        if node.stdout_reader is not None and node.proc.poll() is not None:
            node.stdout_reader.join(timeout=10)
    failures = []
    for node in started:
        try:
            node.check_contract()
        except AssertionError as failure:
            failures.append(str(failure))
    if failures:
        raise AssertionError("\n".join(failures))


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[NodeProcess]]:
    """Collects started nodes and kills whatever is still running at the end of the test."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=10)
