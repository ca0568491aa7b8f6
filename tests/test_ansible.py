"""The Ansible role (ops/ansible) deploys real nodes onto a host and keeps them deployed.

The host is a container from the local base image (Debian bookworm with python3 and tini as its
init; no systemd), started for this module and removed at its end, whatever happens.
``ansible-playbook`` reaches it through the ``community.docker.docker`` connection plugin and
deploys three nodes into it, one per infrastructure role, from a wheelhouse built here: a relay
whose key the node creates, an archiver whose key the operator gives as a vault-encrypted file,
and a bootstrap node whose key is a vault-encrypted variable; relay and archiver dial the
bootstrap node. They run under the role's supervised start script (the container has no
systemd); the systemd unit is rendered by the role, checked by ``systemd-analyze verify`` and its
command line is run as the unit says. The tests share the deployment and run in file order: the
first run, the rendered files, a second run (no change), a crash, a changed setting, bad
variables, the unit, and last a new build of the same version.

A container engine is required: when ``docker info`` fails, ``ops/containers/engine.sh`` is run;
if there is still no engine, the tests fail (never skip).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import metric_value, node_env, run_cli
from tests.test_systemd import directives as unit_directives

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parent.parent
ANSIBLE_DIR = ROOT / "ops" / "ansible"
DEPLOY = ANSIBLE_DIR / "deploy.yml"
BIN = Path(sys.executable).parent
VAULT_PASSWORD = "p2pchat-test-vault"
BOOTSTRAP_TCP = "/ip4/127.0.0.1/tcp/4001"
# The distribution is p2pchat-node (p2pchat on PyPI is another project); its wheels' prefix.
DISTRIBUTION, WHEEL_PREFIX = "p2pchat-node", "p2pchat_node-"

# name -> (instance, metrics port)
NODES = {
    "relay": ("p2pchat-relay", 9465),
    "archiver": ("p2pchat-archiver", 9466),
    "bootstrap": ("p2pchat-bootstrap", 9464),
}

RECAP = re.compile(
    r"^(?P<host>\S+)\s+: ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+"
    r"unreachable=(?P<unreachable>\d+)\s+failed=(?P<failed>\d+)",
    re.MULTILINE,
)
REPORT = re.compile(r'"msg": "(?P<instance>\S+) \((?P<roles>[^)]*)\) runs as PeerId (?P<id>\w+);')

_GET = """
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        status, body = response.status, response.read()
except urllib.error.HTTPError as error:
    status, body = error.code, error.read()
except OSError:
    status, body = 0, b""
sys.stdout.write(str(status) + "\\n" + body.decode())
"""


# --- the engine, the image, the wheelhouse ------------------------------------------------------


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def base_image() -> str:
    """The local base image's tag; the engine is started first if it is not running."""
    if not _docker_answers():
        engine = subprocess.run(
            [str(ROOT / "ops" / "containers" / "engine.sh")],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if engine.returncode != 0 or not _docker_answers():
            pytest.fail(f"no container engine (ops/containers/engine.sh): {engine.stderr[-2000:]}")
    built = subprocess.run(
        [str(ROOT / "ops" / "containers" / "base-image.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, f"base-image.sh failed: {built.stderr[-2000:]}"
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """p2pchat and its runtime dependencies as wheels, as an operator builds them
    (`pip wheel . -w build/wheelhouse`), from a copy of the sources so that the build does not
    write into the checkout."""
    base = tmp_path_factory.mktemp("wheelhouse")
    source = base / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("node", "roles", "config"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    # The man page and shell completions (data files) and the licence are in the wheel too.
    shutil.copytree(ROOT / "share", source / "share", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    wheels = base / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", str(source), "-w", str(wheels)],
        check=True,
        timeout=900,
    )
    assert len(list(wheels.glob(f"{WHEEL_PREFIX}*.whl"))) == 1
    return wheels


# --- the host container -------------------------------------------------------------------------


@dataclass
class Host:
    """The container the playbook deploys into."""

    name: str

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            ["docker", "exec", self.name, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"{script!r} in the container: {result.stderr}"
        return result.stdout

    def get(self, url: str) -> tuple[int, str]:
        """GET a URL from inside the container (its python3 and urllib)."""
        result = subprocess.run(
            ["docker", "exec", self.name, "python3", "-c", _GET, url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def wait_ready(self, port: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get(f"http://127.0.0.1:{port}/readyz")[0] == 200:
                return
            time.sleep(0.5)
        raise AssertionError(f"/readyz on port {port} in the container is not 200 in {timeout}s")

    def metrics(self, port: int) -> str:
        status, body = self.get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        return body

    def node_pid(self, instance: str) -> int:
        return int(self.sh(f"cat /run/{instance}/node.pid").strip())


@pytest.fixture(scope="module")
def host(base_image: str) -> Iterator[Host]:
    name = f"p2pchat-ansible-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [
            "docker",
            "run",
            "--detach",
            "--name",
            name,
            "--label",
            "p2pchat.test=ansible",
            "--entrypoint",
            "/usr/bin/tini",
            base_image,
            "--",
            "sleep",
            "infinity",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield Host(name)
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, timeout=120)


# --- playbook runs ------------------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            match["host"]: {
                key: int(match[key]) for key in ("ok", "changed", "unreachable", "failed")
            }
            for match in RECAP.finditer(self.output)
        }

    def peer_ids(self) -> dict[str, str]:
        return {match["instance"]: match["id"] for match in REPORT.finditer(self.output)}


@dataclass
class Deployment:
    host: Host
    inventory: Path
    work: Path
    expected_ids: dict[str, str]
    first: Run
    peer_ids: dict[str, str] = field(default_factory=dict)

    def play(self, *args: str, playbook: Path = DEPLOY) -> Run:
        env = {
            **os.environ,
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_LOCAL_TEMP": str(self.work / "ansible-tmp"),
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        started = time.monotonic()
        result = subprocess.run(
            [
                str(BIN / "ansible-playbook"),
                "-i",
                str(self.inventory),
                "--vault-password-file",
                str(self.work / "vault-password"),
                str(playbook),
                *args,
            ],
            cwd=ANSIBLE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        return Run(result.returncode, result.stdout + result.stderr, time.monotonic() - started)


def _make_key(work: Path, name: str) -> tuple[Path, str]:
    """An identity made the way the README tells operators to: `p2pchat id --data-dir DIR`."""
    result = run_cli("id", "--data-dir", str(work / name), env=node_env())
    assert result.returncode == 0, result.stderr
    return work / name / "identity.key", result.stdout.strip()


def _vault(work: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        [str(BIN / "ansible-vault"), *args, "--vault-password-file", str(work / "vault-password")],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout


@pytest.fixture(scope="module")
def deployment(
    host: Host, wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Deployment:
    work = tmp_path_factory.mktemp("ansible")
    (work / "ansible-tmp").mkdir()
    (work / "vault-password").write_text(VAULT_PASSWORD + "\n")
    inventory = work / "inventory"
    (inventory / "host_vars").mkdir(parents=True)

    # The archiver's key: a vault-encrypted file. The bootstrap node's: a vaulted variable.
    archiver_key, archiver_id = _make_key(work, "archiver-key")
    vaulted_file = inventory / "archiver.identity.key"
    _vault(work, "encrypt", "--output", str(vaulted_file), str(archiver_key))
    assert vaulted_file.read_text().startswith("$ANSIBLE_VAULT")
    bootstrap_key, bootstrap_id = _make_key(work, "bootstrap-key")
    vaulted_var = _vault(
        work,
        "encrypt_string",
        "--stdin-name",
        "p2pchat_identity_key_b64",
        stdin=base64.b64encode(bootstrap_key.read_bytes()).decode(),
    )
    (inventory / "host_vars" / "bootstrap.yml").write_text(vaulted_var)
    assert "!vault" in vaulted_var

    bootstrap_peer = f"{BOOTSTRAP_TCP}/p2p/{bootstrap_id}"
    hosts: dict[str, Any] = {
        "p2pchat": {
            "vars": {
                "ansible_connection": "community.docker.docker",
                "ansible_host": host.name,
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "p2pchat_wheelhouse": str(wheelhouse),
                "p2pchat_service_manager": "supervised",
                "p2pchat_restart_sec": 1,
            },
            "hosts": {
                "relay": {
                    "p2pchat_instance": "p2pchat-relay",
                    "p2pchat_roles": "relay",  # the string form
                    "p2pchat_announce": ["/ip4/203.0.113.7/tcp/4011"],
                    "p2pchat_bootstrap_peers": [bootstrap_peer],
                    "p2pchat_relay": {"circuit_duration": 3600, "max_reservations": 64},
                    "p2pchat_settings": {"node": {"max_connections": 500}},
                },
                "archiver": {
                    "p2pchat_instance": "p2pchat-archiver",
                    "p2pchat_roles": ["archiver"],
                    "p2pchat_bootstrap_peers": [bootstrap_peer],
                    "p2pchat_archiver": {"rooms": ["ops", "p2p-chat-default"]},
                    "p2pchat_identity_key_file": str(vaulted_file),
                    "p2pchat_expected_peer_id": archiver_id,
                    "p2pchat_log_level": "debug",
                },
                "bootstrap": {
                    "p2pchat_instance": "p2pchat-bootstrap",
                    "p2pchat_roles": ["bootstrap"],
                    "p2pchat_expected_peer_id": bootstrap_id,
                },
            },
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    deployment = Deployment(
        host=host,
        inventory=inventory,
        work=work,
        expected_ids={"p2pchat-archiver": archiver_id, "p2pchat-bootstrap": bootstrap_id},
        first=Run(0, "", 0.0),
    )
    deployment.first = deployment.play()
    assert deployment.first.returncode == 0, deployment.first.output[-6000:]
    deployment.peer_ids = deployment.first.peer_ids()
    return deployment


# --- tests --------------------------------------------------------------------------------------


def test_playbook_and_example_inventory_pass_the_syntax_check() -> None:
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(ANSIBLE_DIR / "inventory.example.yml"),
            str(DEPLOY),
        ],
        cwd=ANSIBLE_DIR,
        env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_first_run_deploys_ready_nodes_of_every_role(deployment: Deployment) -> None:
    host = deployment.host
    recap = deployment.first.recap()
    assert set(recap) == set(NODES)
    for name, counts in recap.items():
        assert counts["failed"] == counts["unreachable"] == 0, name
        assert counts["changed"] > 0, name
    for instance, port in NODES.values():
        assert host.get(f"http://127.0.0.1:{port}/readyz")[0] == 200, instance
        assert host.get(f"http://127.0.0.1:{port}/healthz")[0] == 200, instance
    relay, archiver, bootstrap = (host.metrics(port) for _, port in NODES.values())
    assert metric_value(relay, "p2pchat_build_info", roles="relay") == 1
    assert metric_value(relay, "libp2p_relaysvc_status") == 1
    assert metric_value(archiver, "p2pchat_build_info", roles="archiver") == 1
    assert metric_value(archiver, "p2pchat_archive_rooms") == 2
    assert metric_value(bootstrap, "p2pchat_build_info", roles="bootstrap") == 1
    assert metric_value(bootstrap, "p2pchat_ready") == 1
    # Relay and archiver were told the bootstrap node's address: they are connected to it.
    deadline = time.monotonic() + 60
    while metric_value(host.metrics(9464), "p2pchat_connected_peers") < 2:
        assert time.monotonic() < deadline, "relay and archiver did not reach the bootstrap node"
        time.sleep(0.5)
    for port in (9465, 9466):
        dials = metric_value(host.metrics(port), "p2pchat_bootstrap_dials_total", outcome="success")
        assert dials >= 1, port


def test_rendered_config_is_what_the_variables_said(deployment: Deployment) -> None:
    host = deployment.host
    bootstrap_peer = f"{BOOTSTRAP_TCP}/p2p/{deployment.expected_ids['p2pchat-bootstrap']}"

    def rendered(instance: str) -> Any:
        return yaml.safe_load(host.sh(f"cat /etc/{instance}/p2pchat.yaml"))

    def common(instance: str, port: int, metrics: int, level: str = "info") -> dict[str, Any]:
        return {
            "data_dir": f"/var/lib/{instance}",
            "listen": [f"/ip4/0.0.0.0/tcp/{port}", f"/ip4/0.0.0.0/tcp/{port}/ws"],
            "metrics": {"enabled": True, "listen": f"0.0.0.0:{metrics}"},
            "log": {"level": level, "format": "json"},
        }

    def expected(
        roles: list[str], base: dict[str, Any], announce: list[str], bootstrap: list[str]
    ) -> dict[str, Any]:
        return {
            "roles": roles,
            "node": {
                "data_dir": base["data_dir"],
                "listen": base["listen"],
                "announce": announce,
                "bootstrap": bootstrap,
            },
            "discovery": {"mdns": False},
            "metrics": base["metrics"],
            "log": base["log"],
        }

    relay = expected(
        ["relay"],
        common("p2pchat-relay", 4011, 9465),
        ["/ip4/203.0.113.7/tcp/4011"],
        [bootstrap_peer],
    )
    relay["relay"] = {"circuit_duration": 3600, "max_reservations": 64}
    relay["node"]["max_connections"] = 500  # p2pchat_settings, merged into the node section
    assert rendered("p2pchat-relay") == relay

    archiver = expected(
        ["archiver"], common("p2pchat-archiver", 4021, 9466, "debug"), [], [bootstrap_peer]
    )
    archiver["archiver"] = {"rooms": ["ops", "p2p-chat-default"]}
    assert rendered("p2pchat-archiver") == archiver

    bootstrap = expected(["bootstrap"], common("p2pchat-bootstrap", 4001, 9464), [], [])
    assert rendered("p2pchat-bootstrap") == bootstrap

    # What the node runs with (p2pchat's own view: presets and defaults included).
    effective = yaml.safe_load(
        host.sh("/opt/p2pchat-relay/venv/bin/p2pchat config check /etc/p2pchat-relay/p2pchat.yaml")
    )
    assert effective["relay"]["max_reservations"] == 64
    assert effective["relay"]["circuit_duration"] == 3600
    assert effective["node"]["max_connections"] == 500

    # Ownership: root's code and config (readable by the service), the service's data.
    stat = "stat -c '%U:%G %a' "
    assert host.sh(stat + "/etc/p2pchat-relay/p2pchat.yaml").strip() == "root:p2pchat 640"
    assert host.sh(stat + "/var/lib/p2pchat-relay").strip() == "p2pchat:p2pchat 700"
    assert host.sh(stat + "/var/lib/p2pchat-relay/identity.key").strip() == "p2pchat:p2pchat 600"
    assert host.sh(stat + "/opt/p2pchat-relay/venv").strip() == "root:root 755"
    uid = host.sh("id -u p2pchat").strip()
    for instance, _ in NODES.values():
        status = host.sh(f"cat /proc/{host.node_pid(instance)}/status")
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s", status, re.MULTILINE), instance


def test_operator_identities_from_vault_are_used(deployment: Deployment) -> None:
    assert deployment.peer_ids["p2pchat-archiver"] == deployment.expected_ids["p2pchat-archiver"]
    assert deployment.peer_ids["p2pchat-bootstrap"] == deployment.expected_ids["p2pchat-bootstrap"]
    # The relay had no key given: its node made one, distinct from the others.
    assert deployment.peer_ids["p2pchat-relay"].startswith("12D3KooW")
    assert len(set(deployment.peer_ids.values())) == 3
    # Decrypted on the host, never stored there encrypted.
    key = deployment.host.sh("base64 -w0 /var/lib/p2pchat-archiver/identity.key")
    expected = deployment.work / "archiver-key" / "identity.key"
    assert base64.b64decode(key) == expected.read_bytes()


def test_second_run_changes_nothing_and_keeps_identities(deployment: Deployment) -> None:
    host = deployment.host
    pids = {instance: host.node_pid(instance) for instance, _ in NODES.values()}
    keys = {
        instance: host.sh(f"sha256sum /var/lib/{instance}/identity.key")
        for instance, _ in NODES.values()
    }
    again = deployment.play()
    assert again.returncode == 0, again.output[-6000:]
    recap = again.recap()
    assert set(recap) == set(NODES)
    for name, counts in recap.items():
        assert counts["changed"] == 0, f"{name} changed on the second run:\n{again.output}"
        assert counts["failed"] == counts["unreachable"] == 0
    assert again.peer_ids() == deployment.peer_ids
    for instance, _ in NODES.values():
        assert host.node_pid(instance) == pids[instance], f"{instance} was restarted"
        assert host.sh(f"sha256sum /var/lib/{instance}/identity.key") == keys[instance]


def test_supervisor_restarts_a_killed_node(deployment: Deployment) -> None:
    host = deployment.host
    before = host.node_pid("p2pchat-relay")
    host.sh(f"kill -9 {before}")
    deadline = time.monotonic() + 30
    while True:
        now = host.sh("cat /run/p2pchat-relay/node.pid", check=False).strip()
        if now.isdigit() and int(now) != before:
            break
        assert time.monotonic() < deadline, "the supervisor did not start the node again"
        time.sleep(0.2)
    host.wait_ready(9465)
    log = host.sh("cat /var/log/p2pchat-relay/p2pchat-relay.log")
    assert "node exited (137), restarting in 1s" in log
    status = host.sh("/usr/local/sbin/p2pchat-relay-service status")
    assert f"node pid {now}" in status
    # A run now finds everything in place.
    again = deployment.play("--limit", "relay")
    assert again.returncode == 0 and again.recap()["relay"]["changed"] == 0, again.output[-4000:]


def test_changed_setting_restarts_the_node_with_the_same_identity(
    deployment: Deployment,
) -> None:
    host = deployment.host
    before = host.node_pid("p2pchat-relay")
    others = {name: host.node_pid(name) for name in ("p2pchat-archiver", "p2pchat-bootstrap")}
    changed = deployment.play(
        "--limit",
        "relay",
        "-e",
        '{"p2pchat_relay": {"circuit_duration": 3600, "max_reservations": 32}}',
    )
    assert changed.returncode == 0, changed.output[-6000:]
    assert changed.recap()["relay"]["changed"] > 0
    assert "RUNNING HANDLER [p2pchat : Restart p2pchat (supervised)]" in changed.output
    config = yaml.safe_load(host.sh("cat /etc/p2pchat-relay/p2pchat.yaml"))
    assert config["relay"] == {"circuit_duration": 3600, "max_reservations": 32}
    host.wait_ready(9465)
    assert host.node_pid("p2pchat-relay") != before
    assert changed.peer_ids() == {"p2pchat-relay": deployment.peer_ids["p2pchat-relay"]}
    started = host.sh("grep 'relay role started' /var/log/p2pchat-relay/p2pchat-relay.log")
    last = started.splitlines()[-1]  # the restarted node's
    assert '"max_reservations": 32' in last
    assert deployment.peer_ids["p2pchat-relay"] in last
    for name, pid in others.items():
        assert host.node_pid(name) == pid, f"{name} was restarted"


@pytest.mark.parametrize(
    ("extra_vars", "message"),
    [
        pytest.param(
            '{"p2pchat_roles": ["gateway"]}',
            "value of p2pchat_roles must be one or more of: bootstrap, relay, archiver. "
            "Got no match for: gateway",
            id="unknown-role",
        ),
        pytest.param(
            '{"p2pchat_relay": {"max_reservations": 0}}',
            "p2pchat: config error: relay.max_reservations",
            id="value-p2pchat-refuses",
        ),
        pytest.param(
            '{"p2pchat_service_manager": "systemd"}',
            "does not run systemd (no /run/systemd/system); "
            "set p2pchat_service_manager: supervised",
            id="systemd-without-systemd",
        ),
        pytest.param(
            '{"p2pchat_wheelhouse": "/nonexistent/wheelhouse"}',
            "Build it in the repository with: pip wheel . -w build/wheelhouse",
            id="no-wheelhouse",
        ),
    ],
)
def test_bad_variables_fail_clearly_and_change_nothing(
    deployment: Deployment, extra_vars: str, message: str
) -> None:
    host = deployment.host
    config = host.sh("cat /etc/p2pchat-relay/p2pchat.yaml")
    pid = host.node_pid("p2pchat-relay")
    failed = deployment.play("--limit", "relay", "-e", extra_vars)
    assert failed.returncode != 0
    assert message in failed.output, failed.output[-4000:]
    assert failed.recap()["relay"]["failed"] == 1
    assert failed.recap()["relay"]["changed"] == 0
    assert host.sh("cat /etc/p2pchat-relay/p2pchat.yaml") == config
    assert host.node_pid("p2pchat-relay") == pid


def _verify_unit(deployment: Deployment, unit: str) -> None:
    """`systemd-analyze verify` on the unit, in a scratch root holding the machine's own units
    and the container's ExecStart script (verify checks that it exists and is executable)."""
    root = deployment.work / "unit-root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/p2pchat-relay.service").write_text(unit)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "opt/p2pchat-relay/venv/bin").mkdir(parents=True)
    subprocess.run(
        [
            "docker",
            "cp",
            f"{deployment.host.name}:/opt/p2pchat-relay/venv/bin/p2pchat",
            str(root / "opt/p2pchat-relay/venv/bin/p2pchat"),
        ],
        check=True,
        timeout=60,
    )
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", f"--root={root}", "p2pchat-relay.service"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr  # no unknown directives, no bad quoting


def test_systemd_unit_is_rendered_valid_and_its_command_starts_the_node(
    deployment: Deployment,
) -> None:
    host = deployment.host
    render = deployment.work / "render-unit.yml"
    render.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Render the p2pchat systemd unit",
                    "hosts": "relay",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "ansible.builtin.include_role": {
                                "name": "p2pchat",
                                "tasks_from": "systemd_unit",
                            },
                            # the container has no systemd-analyze: verified below, on the machine
                            "vars": {"p2pchat_systemd_verify": False},
                        }
                    ],
                }
            ]
        )
    )
    environment = {
        "P2PCHAT_METRICS__LISTEN": "127.0.0.1:9475",
        "P2PCHAT_CHAT__NAME": 'ops "bot" 100%',
    }
    rendered = deployment.play(
        "-e", json.dumps({"p2pchat_environment": environment}), playbook=render
    )
    assert rendered.returncode == 0, rendered.output[-4000:]
    unit = host.sh("cat /etc/systemd/system/p2pchat-relay.service")
    directives = unit_directives(unit)
    assert directives["Unit.After"] == ["network-online.target"]
    assert directives["Service.Type"] == ["exec"]
    assert directives["Service.User"] == ["p2pchat"]
    assert directives["Service.Group"] == ["p2pchat"]
    assert directives["Service.ExecStart"] == [
        "/opt/p2pchat-relay/venv/bin/p2pchat --config /etc/p2pchat-relay/p2pchat.yaml"
    ]
    assert directives["Service.Restart"] == ["on-failure"]
    assert directives["Service.RestartSec"] == ["1"]
    assert directives["Service.RestartPreventExitStatus"] == ["2"]
    assert directives["Service.KillSignal"] == ["SIGTERM"]
    assert directives["Service.TimeoutStopSec"] == ["10"]
    assert directives["Service.ReadWritePaths"] == ["/var/lib/p2pchat-relay"]
    assert directives["Service.ProtectSystem"] == ["strict"]
    assert directives["Service.NoNewPrivileges"] == ["yes"]
    assert directives["Install.WantedBy"] == ["multi-user.target"]
    assert directives["Service.Environment"] == [
        '"P2PCHAT_CHAT__NAME=ops \\"bot\\" 100%%"',
        '"P2PCHAT_METRICS__LISTEN=127.0.0.1:9475"',
    ]
    # .ci/run installs Debian's systemd package (for systemd-analyze) when it is missing.
    assert shutil.which("systemd-analyze"), "systemd-analyze not found: cannot verify the unit"
    _verify_unit(deployment, unit)

    # Run the unit's command as the unit says (user, group, environment) in place of the
    # supervised relay, and stop it the way systemd would.
    env = {}
    for value in directives["Service.Environment"]:
        (assignment,) = shlex.split(value)
        name, _, setting = assignment.replace("%%", "%").partition("=")
        env[name] = setting
    assert env == environment
    host.sh("/usr/local/sbin/p2pchat-relay-service stop")
    command = shlex.join(
        [
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            *(f"{name}={value}" for name, value in env.items()),
            "setpriv",
            f"--reuid={directives['Service.User'][0]}",
            f"--regid={directives['Service.Group'][0]}",
            "--init-groups",
            "--",
            *shlex.split(directives["Service.ExecStart"][0]),
        ]
    )
    subprocess.run(
        [
            "docker",
            "exec",
            "--detach",
            host.name,
            "sh",
            "-c",
            f"{command} 2>/tmp/unit.log & echo $! >/tmp/unit.pid; wait $!; echo $? >/tmp/unit.rc",
        ],
        check=True,
        timeout=60,
    )
    try:
        host.wait_ready(9475)
        assert metric_value(host.metrics(9475), "libp2p_relaysvc_status") == 1
        assert deployment.peer_ids["p2pchat-relay"] in host.sh("cat /tmp/unit.log")
        started = time.monotonic()
        host.sh("kill -TERM $(cat /tmp/unit.pid)")
        while host.sh("cat /tmp/unit.rc 2>/dev/null", check=False).strip() == "":
            assert time.monotonic() - started < 10, "not stopped within TimeoutStopSec"
            time.sleep(0.1)
        assert host.sh("cat /tmp/unit.rc").strip() == "0"
    finally:
        host.sh("kill -KILL $(cat /tmp/unit.pid) 2>/dev/null", check=False)
        host.sh("/usr/local/sbin/p2pchat-relay-service start")
    host.wait_ready(9465)


def test_wheelhouse_manifest_lists_every_wheel(deployment: Deployment, wheelhouse: Path) -> None:
    # sha1sum's format: the host can check its copy with sha1sum -c
    deployment.host.sh("cd /opt/p2pchat-relay/wheelhouse && sha1sum --check --quiet MANIFEST")
    manifest = deployment.host.sh("cat /opt/p2pchat-relay/wheelhouse/MANIFEST").splitlines()
    local = sorted(wheelhouse.glob("*.whl"))
    assert manifest == [
        f"{hashlib.sha1(path.read_bytes()).hexdigest()}  {path.name}" for path in local
    ]
    assert deployment.host.sh(
        "/opt/p2pchat-relay/venv/bin/python -c "
        f"\"import importlib.metadata as m; print(m.version('{DISTRIBUTION}'))\""
    ).strip() == re.sub(
        rf"^{WHEEL_PREFIX}([^-]+)-.*$", r"\1", next(wheelhouse.glob(f"{WHEEL_PREFIX}*")).name
    )


def _rebuilt(wheelhouse: Path, target: Path) -> Path:
    """The wheelhouse with the p2pchat wheel rebuilt: same version, other bytes (as a new build
    of unreleased code is)."""
    shutil.copytree(wheelhouse, target)
    (wheel,) = target.glob(f"{WHEEL_PREFIX}*.whl")
    with zipfile.ZipFile(wheel) as old:
        entries = [(info, old.read(info)) for info in old.infolist()]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as new:
        for info, data in entries:
            info.date_time = (2030, 1, 1, 0, 0, 0)
            new.writestr(info, data)
    return target


def test_new_build_of_the_same_version_is_installed_and_restarts_the_node(
    deployment: Deployment, wheelhouse: Path
) -> None:
    # Last in this module: the host keeps the new build.
    host = deployment.host
    rebuilt = _rebuilt(wheelhouse, deployment.work / "wheelhouse-rebuilt")
    before = host.node_pid("p2pchat-relay")
    started = time.time()
    run = deployment.play(
        "--limit", "relay", "-e", json.dumps({"p2pchat_wheelhouse": str(rebuilt)})
    )
    assert run.returncode == 0, run.output[-6000:]
    for task in ("Unpack the wheels on the host", "Install the p2pchat wheel"):
        assert re.search(rf"TASK \[p2pchat : {task}\] \*+\nchanged: \[relay\]", run.output)
    assert "RUNNING HANDLER [p2pchat : Restart p2pchat (supervised)]" in run.output
    host.wait_ready(9465)
    assert host.node_pid("p2pchat-relay") != before
    assert run.peer_ids() == {"p2pchat-relay": deployment.peer_ids["p2pchat-relay"]}
    (wheel,) = rebuilt.glob(f"{WHEEL_PREFIX}*.whl")
    copied = host.sh(
        "cd /opt/p2pchat-relay/wheelhouse && sha1sum --check --quiet MANIFEST && "
        f"sha1sum {wheel.name}"
    )
    assert copied.split()[0] == hashlib.sha1(wheel.read_bytes()).hexdigest()
    # pip really reinstalled it (same version): its installed RECORD is newer than the run
    record = host.sh(
        "stat -c %Y /opt/p2pchat-relay/venv/lib/python3*/site-packages/"
        f"{WHEEL_PREFIX}*.dist-info/RECORD"
    )
    assert int(record) >= started - 2
