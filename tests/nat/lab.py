"""The container NAT lab of ops/compose/nat.yml, driven from Python (the tests in this package
and tests/bench/nat.py).

:class:`Topology` brings the Compose project up with testcontainers' ``DockerCompose`` (a unique
project name and free subnets per topology) and takes it down again with its containers,
networks and volumes, sweeping by the project's label whatever ``down`` left. :class:`LabPeer`
drives a chat peer the way a script drives ``p2pchat --json``: lines written to the container's
stdin through the engine's attach socket, JSON events read from its stdout and JSON log lines
from its stderr through the engine's log stream (both survive a restart of the container). It
has the attributes the process helpers of tests/conftest.py have (``say``, ``next_event``,
``metric``, ``log``, ``lines``, ``peer_id``), so the chat helpers of the other tests work on it.

The images come from the project's scripts: ``ops/containers/image.sh`` (``make image``; it also
starts the engine) and ``ops/containers/base-image.sh`` (the routers'). ``NAT_LAB_IMAGE`` names
an existing image to use instead of building one (it must exist).

Shared machines: everything a topology creates belongs to its Compose project, whose name is
``$P2PCHAT_LAB_PREFIX-nat-<random>`` (prefix default ``p2pchat``), on subnets no other network
uses; teardown removes by that project's label only. The suite's node image is its run's own
tag (tests/containers/image.py), removed at the end of the session. Every failure to get an
engine or an image raises :class:`LabError`: the suite fails, it never skips.

Traffic: the tests reach the nodes' metrics endpoints at their container addresses (the host is
each lab network's gateway) and write to the peers' stdin; the nodes talk only to each other.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container
from testcontainers.compose import DockerCompose

from tests.conftest import metric_value
from tests.containers.image import ImageError, build

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "ops" / "compose"
COMPOSE_FILE = "nat.yml"
NATS = ("port-preserving", "symmetric")
METRICS_PORT = 9464
START_WAIT = 120.0  # a peer's container started and its first events streamed
MEET_WAIT = 360.0  # AutoNAT (two 15 s dial-backs), reservation, DHT rendezvous, relayed dial
EVENT_WAIT = 60.0
# Service -> (last octet on its network, port). Public nodes are on the internet (x.0.0/24);
# peer-a on lan-a (x.1.0/24), peer-b on lan-b (x.2.0/24); routers: .2 / .3 outside, .2 inside.
PUBLIC = {"bootstrap": (11, 4001), "relay": (12, 4011), "archiver": (13, 4021)}
PEERS = {"peer-a": (1, 4101), "peer-b": (2, 4102)}
ROUTERS = {"router-a": (2, 1), "router-b": (3, 2)}  # -> (octet outside, LAN number)
# The first part of every topology's Compose project name (a random part follows).
PROJECT_PREFIX = os.environ.get("P2PCHAT_LAB_PREFIX", "p2pchat")
# Environment variables that would override the lab's own settings (Compose gives the
# process environment precedence over --env-file).
_OVERRIDES = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "P2PCHAT_IMAGE")


class LabError(RuntimeError):
    """The engine, an image or a topology could not be had."""


def _run(*args: str | Path, timeout: float = 1800) -> str:
    try:
        result = subprocess.run(
            [str(arg) for arg in args],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise LabError(f"{args[0]}: {error}") from None
    if result.returncode:
        raise LabError(
            f"{args[0]} exited {result.returncode}:\n{result.stderr[-4000:]}{result.stdout[-2000:]}"
        )
    lines = result.stdout.strip().splitlines()
    if not lines:
        raise LabError(f"{args[0]} printed nothing")
    return lines[-1]


def build_images(tag: str | None = None, owner: str | None = None) -> tuple[str, str]:
    """(the node image, the routers' base image): built, or reused when up to date, by the
    project's scripts. The node image is ``make image``'s, under ``tag`` as ``owner`` (None:
    the script's defaults, ``P2PCHAT_IMAGE`` or ``p2pchat:local`` and this user's checkout);
    the suite passes its run's own (tests/containers/image.py). Raises LabError."""
    image = os.environ.get("NAT_LAB_IMAGE")
    if image:
        _run("docker", "image", "inspect", "--format", "{{.Id}}", image, timeout=60)
    else:
        try:
            image = build(tag, owner)
        except ImageError as error:
            raise LabError(str(error)) from None
    base = _run(REPO / "ops" / "containers" / "base-image.sh")
    return image, base


def _host_routes() -> list[ipaddress.IPv4Network]:
    routes = []
    with contextlib.suppress(OSError), open("/proc/net/route") as table:
        for line in list(table)[1:]:
            fields = line.split()
            dest, mask = (int(fields[i], 16).to_bytes(4, "little") for i in (1, 7))
            if int.from_bytes(mask, "big"):  # not the default route
                network = f"{ipaddress.IPv4Address(dest)}/{ipaddress.IPv4Address(mask)}"
                routes.append(ipaddress.IPv4Network(network, strict=False))
    return routes


_NET_LOCK = threading.Lock()
_NETS_TAKEN: set[str] = set()


def free_net(client: docker.DockerClient) -> str:
    """The first two octets of a /22 (the lab uses its first three /24s) that no engine
    network, host route or other topology of this process uses, from 10.200 to 10.249."""
    taken = _host_routes()
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                taken.append(ipaddress.IPv4Network(config["Subnet"], strict=False))
    with _NET_LOCK:
        for second in range(200, 250):
            prefix = f"10.{second}"
            block = ipaddress.IPv4Network(f"{prefix}.0.0/22")
            if prefix not in _NETS_TAKEN and not any(block.overlaps(net) for net in taken):
                _NETS_TAKEN.add(prefix)
                return prefix
    raise LabError("no free 10.2xx.0.0/22 for a NAT lab")


def engine() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=120, max_pool_size=32)
        client.ping()
    except Exception as error:  # the SDK raises several types when there is no engine
        raise LabError(f"no container engine: {error}") from None
    return client


class Topology:
    """One Compose project of ops/compose/nat.yml with ``nat`` routers.

    ``env`` adds or overrides the file's variables (``LAB_PEER_B_PORT``, ...). Use it as a
    context manager, or call :meth:`up` and, whatever happened, :meth:`down`.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        nat: str,
        image: str,
        router_image: str,
        workdir: Path,
        **env: str,
    ) -> None:
        assert nat in NATS, nat
        # Compose lets the process environment override --env-file: the lab's settings must
        # not come from whoever runs the tests.
        for name in _OVERRIDES:
            os.environ.pop(name, None)
        for name in [name for name in os.environ if name.startswith("LAB_")]:
            os.environ.pop(name)
        self.client = client
        self.nat = nat
        self.project = f"{PROJECT_PREFIX}-nat-{secrets.token_hex(4)}"
        self.net = free_net(client)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._env = {
            "LAB_PROJECT": self.project,
            "LAB_NET": self.net,
            "LAB_NAT": nat,
            "LAB_ROUTER_IMAGE": router_image,
            "P2PCHAT_IMAGE": image,
            "LAB_TTY": "false",
            "LAB_PEER_UI": "json",
            "LAB_PEER_LOG_LEVEL": "info",
            **env,
        }
        self._generation = 0
        self.stopping = threading.Event()  # set by down(): waits on peers give up
        self._down = False
        self.compose = self._compose()
        self.peers: dict[str, LabPeer] = {}

    def _compose(self, services: list[str] | None = None) -> DockerCompose:
        self._generation += 1
        env_file = self.workdir / f"{self.project}.{self._generation}.env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in self._env.items()))
        return DockerCompose(
            context=COMPOSE_DIR,
            compose_file_name=COMPOSE_FILE,
            env_file=str(env_file),
            services=services,
            wait=True,
        )

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, services: list[str] | None = None) -> None:
        """Start ``services`` (and what they depend on; default: everything), wait for the
        health checks, and attach to the peers started."""
        for attempt in range(3):
            try:
                (self._compose(services) if services else self.compose).start()
                break
            except subprocess.CalledProcessError as error:
                stderr = _text(error.stderr)
                if "overlap" not in stderr or attempt == 2:
                    raise LabError(f"compose up failed:\n{stderr[-4000:]}") from None
            # Another lab (of another process) took the subnets meanwhile: move.
            with contextlib.suppress(Exception):
                self.compose.stop(down=True)
            self.sweep()
            self.net = self._env["LAB_NET"] = free_net(self.client)
            self.compose = self._compose()
        for name in PEERS:
            if services is None or name in services:
                self.peers[name] = LabPeer(self, name)
                self.peers[name].attach(since=None)

    def recreate(self, service: str, **env: str) -> None:
        """Recreate ``service`` with changed variables (Compose recreates what changed)."""
        self._env.update(env)
        try:
            self._compose([service]).start()
        except subprocess.CalledProcessError as error:
            raise LabError(f"compose up {service} failed:\n{_text(error.stderr)[-4000:]}") from None
        if service in PEERS:
            if service in self.peers:
                self.peers[service].close()
            self.peers[service] = LabPeer(self, service)
            self.peers[service].attach(since=None)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes (``down -v``, then a sweep
        by label of anything left). Never raises; a second call does nothing."""
        self.stopping.set()
        if self._down:
            return
        self._down = True
        for peer in self.peers.values():
            peer.close()
        with contextlib.suppress(Exception):
            self.save_logs(self.workdir / f"{self.project}-logs")
        with contextlib.suppress(Exception):
            self.compose.stop(down=True)
        self.sweep()

    def sweep(self) -> None:
        label = {"label": f"com.docker.compose.project={self.project}"}
        with contextlib.suppress(Exception):
            for container in self.client.containers.list(all=True, filters=label):
                with contextlib.suppress(Exception):
                    container.remove(force=True, v=True)
        with contextlib.suppress(Exception):
            for network in self.client.networks.list(filters=label):
                with contextlib.suppress(Exception):
                    network.remove()
        with contextlib.suppress(Exception):
            for volume in self.client.volumes.list(filters=label):
                with contextlib.suppress(Exception):
                    volume.remove(force=True)

    def leftovers(self) -> list[str]:
        """Whatever of this project the engine still holds (empty after :meth:`down`)."""
        label = {"label": f"com.docker.compose.project={self.project}"}
        return [
            *(f"container {c.name}" for c in self.client.containers.list(all=True, filters=label)),
            *(f"network {n.name}" for n in self.client.networks.list(filters=label)),
            *(f"volume {v.name}" for v in self.client.volumes.list(filters=label)),
        ]

    def save_logs(self, directory: Path) -> None:
        """Every service's logs (stdout and stderr) into ``directory``, one file each."""
        directory.mkdir(parents=True, exist_ok=True)
        label = {"label": f"com.docker.compose.project={self.project}"}
        for container in self.client.containers.list(all=True, filters=label):
            service = container.labels.get("com.docker.compose.service", container.name)
            (directory / f"{service}.log").write_bytes(container.logs(timestamps=True))

    # --- addresses and containers -----------------------------------------------------------

    def container(self, service: str) -> Container:
        filters = {
            "label": [
                f"com.docker.compose.project={self.project}",
                f"com.docker.compose.service={service}",
            ]
        }
        found = self.client.containers.list(all=True, filters=filters)
        if not found:
            raise LabError(f"no container for {service} in {self.project}")
        return found[0]

    def ip(self, service: str) -> str:
        """The service's address: on the internet for public nodes and routers (their outside
        address), on its LAN for a peer."""
        if service in PUBLIC:
            return f"{self.net}.0.{PUBLIC[service][0]}"
        if service in PEERS:
            return f"{self.net}.{PEERS[service][0]}.10"
        if service in ROUTERS:
            return f"{self.net}.0.{ROUTERS[service][0]}"
        raise KeyError(service)

    def port(self, service: str) -> int:
        if service in PUBLIC:
            return PUBLIC[service][1]
        default = PEERS[service][1]
        return int(self._env.get(f"LAB_PEER_{service[-1].upper()}_PORT", default))

    def public_id(self, service: str) -> str:
        """The PeerId a public node published in the ids volume."""
        return self.exec("relay", "cat", f"/run/p2pchat/{service}.id").strip()

    def addr(self, service: str) -> str:
        return f"/ip4/{self.ip(service)}/tcp/{self.port(service)}/p2p/{self.public_id(service)}"

    def exec(self, service: str, *command: str, check: bool = True) -> str:
        """Run ``command`` in the service's container; its output (stdout and stderr)."""
        result = self.container(service).exec_run(list(command), demux=False)
        output = _text(result.output)
        if check and result.exit_code:
            raise LabError(f"{service}: {command} exited {result.exit_code}: {output[-2000:]}")
        return output

    def metrics(self, service: str) -> str:
        url = f"http://{self.ip(service)}:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def metric(self, service: str, name: str, **labels: str) -> float:
        return metric_value(self.metrics(service), name, **labels)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode(errors="replace")


class LabPeer:
    """A chat peer container of a topology, driven through stdin and read from its logs."""

    def __init__(self, lab: Topology, service: str) -> None:
        self.lab = lab
        self.service = service
        self.ip = lab.ip(service)
        self.lines: queue.Queue[str] = queue.Queue()  # stderr: JSON log lines
        self.log: list[dict[str, Any]] = []
        self.chat_queue: queue.Queue[dict[str, Any]] = queue.Queue()  # stdout: chat events
        self.chat: list[dict[str, Any]] = []
        self.ready: dict[str, Any] = {}
        self._stdin: socket.socket | None = None
        self._attach_socket: Any = None
        self._stopped = threading.Event()

    # --- attach, stop, start ----------------------------------------------------------------

    def attach(self, since: float | None) -> None:
        """Stream the container's output (from ``since``, a Unix time, or from its start) and
        open its stdin; wait for the chat's ``ready`` event."""
        container = self.lab.container(self.service)
        self._stopped.clear()
        for stdout in (True, False):
            threading.Thread(
                target=self._pump, args=(container, stdout, since), daemon=True
            ).start()
        self._attach_socket = container.attach_socket(params={"stdin": 1, "stream": 1})
        self._stdin = self._attach_socket._sock
        ready = self.next_event(
            lambda e: e["type"] == "output" and e["command"] == "ready", timeout=START_WAIT
        )
        self.ready = dict(ready["data"])

    def _pump(self, container: Container, stdout: bool, since: float | None) -> None:
        kwargs: dict[str, Any] = {"stream": True, "follow": True}
        if since is not None:
            kwargs["since"] = since
        buffer = b""
        try:
            for chunk in container.logs(stdout=stdout, stderr=not stdout, **kwargs):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self._take(raw.decode(errors="replace"), stdout)
        except Exception:  # the container went away: nothing more to read
            return

    def _take(self, line: str, stdout: bool) -> None:
        if not stdout:
            self.lines.put(line)
            return
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                self.chat_queue.put(event)

    def close(self) -> None:
        if self._attach_socket is not None:
            with contextlib.suppress(Exception):
                self._attach_socket.close()
        self._attach_socket = self._stdin = None

    def stop(self) -> int:
        """Stop the container (SIGTERM, as an operator would); the peer's exit code."""
        self.close()
        container = self.lab.container(self.service)
        container.stop(timeout=20)
        container.reload()
        return int(container.attrs["State"]["ExitCode"])

    def start(self) -> None:
        """Start the stopped container again and attach to the new run."""
        since = time.time()
        self.lab.container(self.service).start()
        self.chat_queue, self.chat = queue.Queue(), []
        self.lines, self.log = queue.Queue(), []
        self.attach(since=since)

    # --- what tests/conftest.py's NodeProcess offers ---------------------------------------

    @property
    def peer_id(self) -> str:
        return str(self.ready["peer_id"])

    def say(self, line: str) -> None:
        """Type a line into the peer (a message, or a command)."""
        assert self._stdin is not None, "not attached"
        self._stdin.sendall((line + "\n").encode())

    def next_event(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = EVENT_WAIT
    ) -> dict[str, Any]:
        """The next chat event (after those already consumed) matching ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lab.stopping.is_set():
                raise LabError(f"{self.lab.project} is being taken down")
            try:
                event = self.chat_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.chat.append(event)
            if predicate(event):
                return event
        raise AssertionError(
            f"{self.service}: no matching chat event within {timeout}s; saw {self.chat[-20:]}"
        )

    def read_logs(self) -> list[dict[str, Any]]:
        """Every JSON log line the peer has written so far (stderr), parsed, in order."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.log
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    self.log.append(entry)

    def metric(self, name: str, **labels: str) -> float:
        return self.lab.metric(self.service, name, **labels)


def probe(lab: Topology, source: str, targets: Iterable[tuple[str, int]]) -> dict[str, str]:
    """From ``source``'s container, a TCP connect to each (ip, port) at once, 5 s each:
    ``{"ip:port": "connected" | "refused" | "timeout" | "unreachable" | error}``.

    Python in the node image; bash's /dev/tcp in a router (no Python there)."""
    pairs = [f"{ip}:{port}" for ip, port in targets]
    if source in ROUTERS:
        script = " ".join(
            f'(if timeout 5 bash -c "</dev/tcp/{pair.replace(":", "/")}" 2>/dev/null; '
            f'then echo "{pair} connected"; else echo "{pair} failed"; fi) &'
            for pair in pairs
        )
        output = lab.exec(source, "bash", "-c", f"{script} wait")
        return dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    code = (
        "import json, socket, sys, threading\n"
        "out = {}\n"
        "def one(pair):\n"
        "    ip, port = pair.rsplit(':', 1)\n"
        "    try:\n"
        "        socket.create_connection((ip, int(port)), timeout=5).close()\n"
        "        out[pair] = 'connected'\n"
        "    except ConnectionRefusedError: out[pair] = 'refused'\n"
        "    except TimeoutError: out[pair] = 'timeout'\n"
        "    except OSError as e: out[pair] = 'unreachable' if e.errno in (101, 113) else repr(e)\n"
        "threads = [threading.Thread(target=one, args=(p,)) for p in sys.argv[1:]]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print(json.dumps(out))\n"
    )
    output = lab.exec(source, "python3", "-c", code, *pairs)
    return dict(json.loads(output.strip().splitlines()[-1]))


def conntrack(lab: Topology, router: str) -> list[str]:
    """The router's connection-tracking table (its NAT mappings), one entry per line."""
    return lab.exec(router, "cat", "/proc/net/nf_conntrack").splitlines()
