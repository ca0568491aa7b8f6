"""The Helm chart (helm/p2pchat), proven without a cluster.

No Kubernetes cluster can run on the project's machines (no image registry), so the chart is
checked by what can be checked offline, with Helm's own library (helm-python-sdk: lint, render,
values schema) and the Kubernetes API schemas (kubernetes-validate, strict, Kubernetes
``KUBE_VERSION``):

- lint, and every manifest of several value sets validated against the API schemas, plus what
  an API server or a running release would notice that the schemas do not say (name and label
  lengths, port names, selectors that select the pods, probes and Services naming ports that
  exist, volumes that are mounted);
- the contents: a StatefulSet, ConfigMap and Services per enabled component only, claims,
  probes, security contexts, Service types, the ServiceMonitor only when asked for;
- every config the chart renders is loaded by p2pchat's own loader with the pod's environment
  (the image's plus the container's), as the node in the pod would, and must come out with the
  role, ports, data dir and settings the values asked for;
- bad values are refused by values.schema.json, whose p2pchat part is generated from the config
  model (``python -m tests.test_helm`` regenerates it) and must match it;
- the init container's script is run (identity generated once, or copied from a Secret, and
  checked against the expected PeerId);
- the three nodes are started from their rendered configs in a private network namespace whose
  DNS answers the cluster's Service names, and the relay and the archiver reach the bootstrap
  node through the address the chart wires them with.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from p2pchat.node.config import Config, load_config
from p2pchat.node.errors import ConfigError

ROOT = Path(__file__).parent.parent
CHART_DIR = ROOT / "helm" / "p2pchat"
SCHEMA_FILE = CHART_DIR / "values.schema.json"
README = CHART_DIR / "README.md"
DOCKERFILE = ROOT / "Dockerfile"
BIN = Path(sys.executable).parent

KUBE_VERSION = "1.31.0"
RELEASE, NAMESPACE = "p2pchat", "chat"
COMPONENTS = ("bootstrap", "relay", "archiver")
CONFIG_FILE = "/etc/p2pchat/config.yaml"

# Real PeerIds (multiaddr parsing checks them).
PEER_IDS = {
    "bootstrap": "12D3KooWPb8GcNu1PU1YKkpJrDTaB1dUDYJ2P4tSotXX21HJGe25",
    "relay": "12D3KooWAf6jouQeHQj1kbdkNES1BB3DydipEnG2CYJMkUYSHF3g",
    "archiver": "12D3KooWN1xq6N8zKxc5dA6GG7HFTsBWi4SfaM6vTyrEt9CyeNDT",
    "elsewhere": "12D3KooWDGZz1jjTQ7qnmWFnKzUDgVTrcuP35sLDFN4UFDPhipNH",
}

ONLY = {
    "bootstrap": {"relay": {"enabled": False}, "archiver": {"enabled": False}},
    "relay": {"bootstrap": {"enabled": False}, "archiver": {"enabled": False}},
    "archiver": {"bootstrap": {"enabled": False}, "relay": {"enabled": False}},
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "relay-loadbalancer": {
        **ONLY["relay"],
        "relay": {
            "announce": ["/ip4/203.0.113.7/tcp/4011", "/dns4/relay.example.org/tcp/4011/ws"],
            "service": {
                "type": "LoadBalancer",
                "externalTrafficPolicy": "Local",
                "loadBalancerSourceRanges": ["0.0.0.0/0"],
                "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
            },
            "config": {
                "relay": {"max_reservations": 1000, "max_reservations_per_ip": 16},
                "node": {"max_connections": 2000},
                "log": {"level": "warning"},
            },
        },
    },
    "all-secret-monitor-nodeport": {
        "bootstrapPeers": [f"/ip4/198.51.100.20/tcp/4001/p2p/{PEER_IDS['elsewhere']}"],
        "monitoring": {
            "serviceMonitor": {
                "enabled": True,
                "labels": {"release": "kube-prometheus-stack"},
                "interval": "15s",
                "scrapeTimeout": "10s",
            }
        },
        **{
            component: {
                "existingSecret": f"{component}-identity",
                "peerId": PEER_IDS[component],
                "announce": [f"/ip4/198.51.100.10/tcp/{30001 + 10 * index}"],
                "service": {
                    "type": "NodePort",
                    "nodePort": 30001 + 10 * index,
                    "externalTrafficPolicy": "Local",
                },
            }
            for index, component in enumerate(COMPONENTS)
        },
    },
    "archiver-big-storage": {
        **ONLY["archiver"],
        "archiver": {
            "persistence": {"size": "2Ti", "storageClassName": "fast-ssd"},
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"memory": "4Gi"},
            },
            "config": {
                "archiver": {
                    "all_rooms": True,
                    "max_rooms": 5000,
                    "retention": {
                        "max_age_days": 730,
                        "max_messages": None,
                        "max_bytes": 1099511627776,
                    },
                    "room_retention": {"lobby": {"max_age_days": 30}},
                },
                "history": {"rate": 50, "burst": 100},
            },
        },
    },
}


# --- the p2pchat part of values.schema.json, generated from the config model -----------------

# Keys the chart sets itself; the schema refuses them in <component>.config.
MANAGED_KEYS = {
    "Config": {"roles", "metrics"},
    "NodeSection": {"data_dir", "listen", "announce", "bootstrap"},
}
MANAGED_SECTIONS = {"MetricsSection"}
_ANNOTATIONS = {"title", "default", "description", "format"}


def _strip_annotations(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip_annotations(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    stripped: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ANNOTATIONS:
            continue
        if key == "properties":
            stripped[key] = {name: _strip_annotations(sub) for name, sub in value.items()}
        elif key == "$ref":
            stripped[key] = value.replace("#/$defs/", "#/$defs/p2pchat")
        else:
            stripped[key] = _strip_annotations(value)
    return stripped


def config_schema_defs() -> dict[str, Any]:
    """The ``$defs`` entries (``p2pchat*``) describing ``<component>.config``: p2pchat's own
    model (key names, types, enums and limits) without the keys the chart owns."""
    model = Config.model_json_schema()
    sections = {name: sub for name, sub in model.pop("$defs").items()}
    sections["Config"] = model
    defs: dict[str, Any] = {}
    for name, sub in sections.items():
        if name in MANAGED_SECTIONS:
            continue
        sub = _strip_annotations(sub)
        for key in MANAGED_KEYS.get(name, ()):
            del sub["properties"][key]
        defs[f"p2pchat{name}"] = sub
    return dict(sorted(defs.items()))


def write_schema() -> None:
    """Regenerate the p2pchat part of values.schema.json from the config model."""
    schema = json.loads(SCHEMA_FILE.read_text())
    kept = {k: v for k, v in schema["$defs"].items() if not k.startswith("p2pchat")}
    schema["$defs"] = {**kept, **config_schema_defs()}
    SCHEMA_FILE.write_text(json.dumps(schema, indent=2) + "\n")


# --- rendering ---------------------------------------------------------------------------------


@dataclass
class Release:
    """What one render produced."""

    manifests: list[dict[str, Any]]
    notes: str

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.manifests if doc["kind"] == kind]

    def by_component(self, kind: str) -> dict[str, dict[str, Any]]:
        """``kind`` objects keyed by component, headless Services left out."""
        found: dict[str, dict[str, Any]] = {}
        for doc in self.all(kind):
            if kind == "Service" and doc["spec"].get("clusterIP") == "None":
                continue
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            assert component not in found, f"two {kind}s for {component}"
            found[component] = doc
        return found

    def headless(self, component: str) -> dict[str, Any]:
        (service,) = [
            doc
            for doc in self.all("Service")
            if doc["spec"].get("clusterIP") == "None"
            and doc["metadata"]["labels"]["app.kubernetes.io/component"] == component
        ]
        return service

    def pod(self, component: str) -> dict[str, Any]:
        spec: dict[str, Any] = self.by_component("StatefulSet")[component]["spec"]["template"]
        return spec

    def container(self, component: str, name: str = "p2pchat") -> dict[str, Any]:
        spec = self.pod(component)["spec"]
        (found,) = [
            c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name
        ]
        return found

    def config_text(self, component: str) -> str:
        text: str = self.by_component("ConfigMap")[component]["data"]["config.yaml"]
        return text


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


def render(
    chart: helm.Chart, values: dict[str, Any], name: str = RELEASE, namespace: str = NAMESPACE
) -> Release:
    files = chart.render(values, name=name, namespace=namespace)
    notes = files.pop(f"{chart.name}/templates/NOTES.txt", "")
    manifests = [doc for text in files.values() for doc in yaml.safe_load_all(text) if doc]
    return Release(manifests, notes)


def image_env() -> dict[str, str]:
    """The P2PCHAT_* variables the image sets (Dockerfile ENV), which the pod inherits."""
    return dict(re.findall(r"\b(P2PCHAT_[A-Z0-9_]+)=(\S+)", DOCKERFILE.read_text()))


def clean_env() -> dict[str, str]:
    """This process's environment without any p2pchat setting."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("P2PCHAT_") and k != "CHAT_TOPIC"
    }


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container's process sees of p2pchat's settings: the image's, then the pod's."""
    return {**image_env(), **{item["name"]: item["value"] for item in container.get("env", [])}}


def effective_config(release: Release, component: str, tmp_path: Path) -> Config:
    """Load the component's rendered config file as the node in its pod would."""
    container = release.container(component)
    assert container.get("args") == ["--config", CONFIG_FILE], container.get("args")
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert f"{mount['mountPath']}/config.yaml" == CONFIG_FILE
    path = tmp_path / f"{component}.yaml"
    path.write_text(release.config_text(component))
    return load_config(file=path, environ=pod_env(container))


# --- what an API server or a running release would notice ---------------------------------------

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
PORT_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([-a-z0-9]{0,13}[a-z0-9])?$")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def check_service_monitor(monitor: dict[str, Any], release: Release) -> None:
    """No Kubernetes schema covers the Prometheus Operator's CRD: its fields by hand."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"namespaceSelector", "selector", "endpoints", "targetLabels", "jobLabel"}
    assert NAMESPACE in spec["namespaceSelector"]["matchNames"]
    scraped = [
        svc
        for svc in release.all("Service")
        if selects(spec["selector"]["matchLabels"], svc["metadata"]["labels"])
    ]
    assert scraped and all(svc["spec"].get("clusterIP") == "None" for svc in scraped)
    assert {svc["metadata"]["labels"]["app.kubernetes.io/component"] for svc in scraped} == set(
        release.by_component("StatefulSet")
    )
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics" and endpoint["scheme"] == "http"
        assert re.fullmatch(r"([0-9]+(ms|s|m|h))+", endpoint["interval"])
        for svc in scraped:
            assert endpoint["port"] in {port["name"] for port in svc["spec"]["ports"]}
    for label in spec.get("targetLabels", []):
        assert all(label in svc["metadata"]["labels"] for svc in scraped)


def check_release(release: Release) -> None:
    """Every manifest against the Kubernetes schemas, and the release's internal wiring."""
    for doc in release.manifests:
        meta = doc["metadata"]
        assert DNS_LABEL.match(meta["name"]), f"{doc['kind']} name {meta['name']!r}"
        assert meta.get("namespace") == NAMESPACE or doc["kind"] == "ServiceMonitor"
        for key, value in meta.get("labels", {}).items():
            assert LABEL_VALUE.match(str(value)), f"label {key}={value!r}"
        if doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc, release)
        else:
            try:
                kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                raise AssertionError(
                    f"{doc['kind']} {meta['name']}: {path}: {error.message}"
                ) from None

    services = release.all("Service")
    config_maps = {doc["metadata"]["name"]: doc for doc in release.all("ConfigMap")}
    for sts in release.all("StatefulSet"):
        name = sts["metadata"]["name"]
        # The controller-revision-hash label is "<name>-<10 characters>".
        assert len(name) <= 52, name
        spec = sts["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        assert selects(spec["selector"]["matchLabels"], pod_labels)
        (governing,) = [s for s in services if s["metadata"]["name"] == spec["serviceName"]]
        assert governing["spec"]["clusterIP"] == "None"
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
        assert not volumes.keys() & claims
        for container in pod["containers"] + pod.get("initContainers", []):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            assert all(PORT_NAME.match(port) for port in ports)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports
            for mount in container["volumeMounts"]:
                assert mount["name"] in volumes or mount["name"] in claims, mount
        for volume in volumes.values():
            if "configMap" in volume:
                config_map = config_maps[volume["configMap"]["name"]]
                assert "config.yaml" in config_map["data"]
        main = next(c for c in pod["containers"] if c["name"] == "p2pchat")
        pod_ports = {p["name"] for p in main["ports"]}
        selected_by = [s for s in services if selects(s["spec"]["selector"], pod_labels)]
        assert len(selected_by) == 2  # the public Service and the headless one
        for service in selected_by:
            for port in service["spec"]["ports"]:
                assert PORT_NAME.match(port["name"]) and port["targetPort"] in pod_ports
    for service in services:
        assert any(
            selects(service["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
            for sts in release.all("StatefulSet")
        ), f"Service {service['metadata']['name']} selects no pod"
        if service["spec"]["type"] == "ClusterIP":
            assert "externalTrafficPolicy" not in service["spec"]
            assert all("nodePort" not in port for port in service["spec"]["ports"])


# --- tests -------------------------------------------------------------------------------------


def test_helm_library_version() -> None:
    assert helm.helm_sdk_version().startswith("v4.")


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint(values: dict[str, Any]) -> None:
    report = helm.lint(CHART_DIR, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational (an icon "is recommended"); nothing at warning or above.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_schema_config_part_matches_p2pchat_model() -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    ours = {k: v for k, v in schema["$defs"].items() if k.startswith("p2pchat")}
    assert ours == config_schema_defs(), (
        "values.schema.json's p2pchat config differs from node/config.py: "
        "run `python -m tests.test_helm` to regenerate it"
    )


@pytest.mark.parametrize("name", VALUE_SETS.keys())
def test_values_pass_schema_and_manifests_validate(chart: helm.Chart, name: str) -> None:
    values = VALUE_SETS[name]
    chart.validate_schema(values)
    check_release(render(chart, values))


@pytest.mark.parametrize("name", VALUE_SETS.keys())
def test_rendered_configs_are_accepted_by_p2pchat(
    chart: helm.Chart, name: str, tmp_path: Path
) -> None:
    values = VALUE_SETS[name]
    merged = chart.merge_values(values)
    release = render(chart, values)
    for component in release.by_component("ConfigMap"):
        config = effective_config(release, component, tmp_path)
        wanted = merged[component]
        container = release.container(component)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert config.roles == [component]
        assert str(config.data_dir()) == "/data"
        (data,) = [m for m in container["volumeMounts"] if m["name"] == "data"]
        assert data["mountPath"] == "/data"
        assert config.node.listen == [
            f"/ip4/0.0.0.0/tcp/{ports['p2p']}",
            f"/ip4/0.0.0.0/tcp/{ports['p2p']}/ws",
        ]
        assert ports["p2p"] == wanted["port"]
        assert config.metrics.enabled
        assert config.metrics.listen == f"0.0.0.0:{ports['metrics']}"
        assert ports["metrics"] == merged["metrics"]["port"]
        assert config.node.announce == wanted["announce"]
        # What the values passed through arrives, with the types p2pchat wants.
        effective = config.model_dump(mode="json")
        assert contains(effective, wanted["config"]), (wanted["config"], effective)


def contains(whole: Any, part: Any) -> bool:
    """Whether ``part`` (nested mappings) is in ``whole``, value for value."""
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and contains(whole[key], value) for key, value in part.items()
        )
    return bool(whole == part)


def test_defaults(chart: helm.Chart) -> None:
    release = render(chart, {})
    for kind in ("StatefulSet", "ConfigMap", "Service"):
        assert set(release.by_component(kind)) == set(COMPONENTS), kind
    assert len(release.all("Service")) == 6
    assert release.all("ServiceMonitor") == []
    for component, port in zip(COMPONENTS, (4001, 4011, 4021), strict=True):
        assert release.by_component("Service")[component]["spec"]["type"] == "ClusterIP"
        assert release.by_component("Service")[component]["spec"]["ports"][0]["port"] == port
        pod = release.pod(component)["spec"]
        # Generated identity: no Secret, no expected PeerId.
        assert not [v for v in pod["volumes"] if "secret" in v]
        init = release.container(component, "identity")
        assert {e["name"] for e in init["env"]} == {
            "P2PCHAT_NODE__DATA_DIR",
            "P2PCHAT_METRICS__LISTEN",
        }
        assert "p2pchat id --config /etc/p2pchat/config.yaml" in init["command"][2]
        sts = release.by_component("StatefulSet")[component]
        assert sts["spec"]["replicas"] == 1
        assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert "storageClassName" not in claim["spec"]
        size = "20Gi" if component == "archiver" else "1Gi"
        assert claim["spec"]["resources"]["requests"]["storage"] == size
    # The bootstrap PeerId is not known yet: nobody is wired to it, and NOTES says how.
    assert "node:\n  announce: []\n  bootstrap: []" in release.config_text("relay")
    assert (
        "--set bootstrap.peerId=$(kubectl -n chat logs p2pchat-bootstrap-0 -c identity"
        in release.notes
    )


def test_relay_only_with_load_balancer_and_announce(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, VALUE_SETS["relay-loadbalancer"])
    for kind in ("StatefulSet", "ConfigMap", "Service"):
        assert set(release.by_component(kind)) == {"relay"}, kind
    assert len(release.all("Service")) == 2
    service = release.by_component("Service")["relay"]["spec"]
    assert service["type"] == "LoadBalancer"
    assert service["externalTrafficPolicy"] == "Local"
    assert service["loadBalancerSourceRanges"] == ["0.0.0.0/0"]
    assert [p["name"] for p in service["ports"]] == ["p2p"]  # metrics never public
    config = effective_config(release, "relay", tmp_path)
    assert config.node.announce == [
        "/ip4/203.0.113.7/tcp/4011",
        "/dns4/relay.example.org/tcp/4011/ws",
    ]
    assert (config.relay.max_reservations, config.relay.circuit_data) == (1000, 67108864)
    assert config.node.bootstrap == []
    assert (
        "WARNING" not in release.notes and "announced: /ip4/203.0.113.7/tcp/4011" in release.notes
    )


def test_all_components_with_secrets_service_monitor_and_node_ports(
    chart: helm.Chart, tmp_path: Path
) -> None:
    release = render(chart, VALUE_SETS["all-secret-monitor-nodeport"])
    assert set(release.by_component("StatefulSet")) == set(COMPONENTS)
    bootstrap_service = release.by_component("Service")["bootstrap"]
    for index, component in enumerate(COMPONENTS):
        spec = release.by_component("Service")[component]["spec"]
        assert spec["type"] == "NodePort" and spec["externalTrafficPolicy"] == "Local"
        assert spec["ports"][0]["nodePort"] == 30001 + 10 * index
        pod = release.pod(component)["spec"]
        (secret,) = [v["secret"] for v in pod["volumes"] if "secret" in v]
        assert secret["secretName"] == f"{component}-identity"
        assert secret["items"] == [{"key": "identity.key", "path": "identity.key"}]
        assert secret["defaultMode"] == 0o440
        init = release.container(component, "identity")
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["EXPECTED_PEER_ID"] == PEER_IDS[component]
        (mount,) = [m for m in init["volumeMounts"] if m["name"] == "identity"]
        assert env["IDENTITY_SECRET"] == f"{mount['mountPath']}/identity.key" and mount["readOnly"]
        # The node itself never sees the Secret, only the copy in its volume.
        assert "identity" not in {m["name"] for m in release.container(component)["volumeMounts"]}
        config = effective_config(release, component, tmp_path)
        elsewhere = f"/ip4/198.51.100.20/tcp/4001/p2p/{PEER_IDS['elsewhere']}"
        if component == "bootstrap":
            assert config.node.bootstrap == [elsewhere]
        else:
            # The bootstrap node through its Service's DNS name, port and PeerId.
            name = bootstrap_service["metadata"]["name"]
            port = bootstrap_service["spec"]["ports"][0]["port"]
            assert config.node.bootstrap == [
                elsewhere,
                f"/dns4/{name}.{NAMESPACE}.svc.cluster.local/tcp/{port}/p2p/{PEER_IDS['bootstrap']}",
            ]
    (monitor,) = release.all("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {
            "port": "metrics",
            "path": "/metrics",
            "scheme": "http",
            "interval": "15s",
            "scrapeTimeout": "10s",
        }
    ]


def test_archiver_with_big_storage(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, VALUE_SETS["archiver-big-storage"])
    assert set(release.by_component("StatefulSet")) == {"archiver"}
    (claim,) = release.by_component("StatefulSet")["archiver"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert claim["spec"]["storageClassName"] == "fast-ssd"
    assert release.container("archiver")["resources"]["limits"]["memory"] == "4Gi"
    config = effective_config(release, "archiver", tmp_path)
    assert config.archiver.all_rooms and config.archiver.max_rooms == 5000
    assert config.archiver.retention.max_bytes == 1 << 40
    assert config.archiver.retention.max_messages is None
    assert config.archiver.policy("lobby").max_age_days == 30
    # "-" asks for no storage class at all (static volumes).
    none = render(
        chart, {**ONLY["archiver"], "archiver": {"persistence": {"storageClassName": "-"}}}
    )
    (claim,) = none.by_component("StatefulSet")["archiver"]["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["storageClassName"] == ""


@pytest.mark.parametrize("name", ["defaults", "all-secret-monitor-nodeport"])
def test_pods_run_unprivileged(chart: helm.Chart, name: str) -> None:
    release = render(chart, VALUE_SETS[name])
    for component in release.by_component("StatefulSet"):
        pod = release.pod(component)["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001 != 0
        assert pod["securityContext"]["fsGroup"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod["initContainers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            # With a read-only root, what is written goes to volumes.
            writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            assert writable == {"/data", "/tmp"}
            assert container["resources"]["limits"]["memory"]


def test_probes(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, {"metrics": {"port": 9100}})
    for component in COMPONENTS:
        container = release.container(component)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        assert ports["metrics"] == 9100
        # The node serves them where the probes look, whatever the image's default port.
        assert effective_config(release, component, tmp_path).metrics.listen == "0.0.0.0:9100"
        headless = release.headless(component)["spec"]["ports"]
        assert {
            "name": "metrics",
            "protocol": "TCP",
            "port": 9100,
            "targetPort": "metrics",
        } in headless


def test_service_links_are_off(chart: helm.Chart, tmp_path: Path) -> None:
    """Kubernetes' service links would give the pod a variable per Service in the namespace:
    those of Services named p2pchat-* start with P2PCHAT_ and p2pchat refuses them."""
    release = render(chart, {})
    for component in COMPONENTS:
        assert release.pod(component)["spec"]["enableServiceLinks"] is False
    path = tmp_path / "relay.yaml"
    path.write_text(release.config_text("relay"))
    links = {
        "P2PCHAT_RELAY_PORT": "tcp://10.96.0.20:4011",
        "P2PCHAT_RELAY_SERVICE_HOST": "10.96.0.20",
    }
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(file=path, environ={**pod_env(release.container("relay")), **links})


def test_public_service_without_announce_is_flagged(chart: helm.Chart) -> None:
    release = render(chart, {"relay": {"service": {"type": "LoadBalancer"}}})
    assert "relay.announce is empty" in release.notes
    assert "bootstrap.announce is empty" not in release.notes


def test_long_release_name(chart: helm.Chart) -> None:
    name = "a-very-long-release-name-that-still-passes-helm-53-ch"
    assert len(name) == 53  # Helm's limit
    helm.validate_release_name(name)
    release = render(chart, VALUE_SETS["all-secret-monitor-nodeport"], name=name)
    check_release(release)
    objects = [(doc["kind"], doc["metadata"]["name"]) for doc in release.manifests]
    assert len(set(objects)) == len(objects)
    for component, sts in release.by_component("StatefulSet").items():
        assert sts["metadata"]["name"].endswith(f"-{component}")
        assert len(release.headless(component)["metadata"]["name"]) <= 63


def test_no_component_enabled_is_refused(chart: helm.Chart) -> None:
    values = {component: {"enabled": False} for component in COMPONENTS}
    with pytest.raises(helm.HelmRenderError, match="no component enabled"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


BAD_VALUES = {
    "unknown top-level key": ({"replicaCount": 3}, "at '': additional properties 'replicaCount'"),
    "unknown component key": (
        {"relay": {"replicas": 2}},
        "at '/relay': additional properties 'replicas'",
    ),
    "unknown p2pchat key": (
        {"relay": {"config": {"relay": {"max_circuitz": 4}}}},
        "at '/relay/config/relay': additional properties 'max_circuitz'",
    ),
    "unknown p2pchat section": (
        {"archiver": {"config": {"archive": {"all_rooms": True}}}},
        "at '/archiver/config': additional properties 'archive'",
    ),
    "chart-owned key: roles": (
        {"relay": {"config": {"roles": ["peer"]}}},
        "at '/relay/config': additional properties 'roles'",
    ),
    "chart-owned key: node.listen": (
        {"relay": {"config": {"node": {"listen": ["/ip4/0.0.0.0/tcp/1"]}}}},
        "at '/relay/config/node': additional properties 'listen'",
    ),
    "chart-owned key: metrics": (
        {"bootstrap": {"config": {"metrics": {"listen": "0.0.0.0:1"}}}},
        "at '/bootstrap/config': additional properties 'metrics'",
    ),
    "port as a string": ({"relay": {"port": "4011"}}, "at '/relay/port': got string, want integer"),
    "port out of range": ({"relay": {"port": 70000}}, "at '/relay/port'"),
    "enabled as a string": (
        {"archiver": {"enabled": "yes"}},
        "at '/archiver/enabled': got string, want boolean",
    ),
    "p2pchat value of the wrong type": (
        {"relay": {"config": {"relay": {"circuit_data": "64MiB"}}}},
        "at '/relay/config/relay/circuit_data': got string, want integer",
    ),
    "p2pchat value out of its range": (
        {"relay": {"config": {"relay": {"max_circuits": 0}}}},
        "at '/relay/config/relay/max_circuits'",
    ),
    "p2pchat enum": (
        {"relay": {"config": {"log": {"level": "verbose"}}}},
        "at '/relay/config/log/level': value must be one of",
    ),
    "service type not in the enum": (
        {"relay": {"service": {"type": "ExternalName"}}},
        "at '/relay/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'",
    ),
    "nodePort on a ClusterIP Service": (
        {"relay": {"service": {"nodePort": 30011}}},
        "at '/relay/service/nodePort': got number, want null",
    ),
    "externalTrafficPolicy Local on a ClusterIP Service": (
        {"relay": {"service": {"externalTrafficPolicy": "Local"}}},
        "at '/relay/service/externalTrafficPolicy'",
    ),
    "loadBalancerIP on a NodePort Service": (
        {"relay": {"service": {"type": "NodePort", "loadBalancerIP": "203.0.113.7"}}},
        "at '/relay/service/loadBalancerIP'",
    ),
    "announce with /p2p/": (
        {"relay": {"announce": [f"/ip4/203.0.113.7/tcp/4011/p2p/{PEER_IDS['relay']}"]}},
        "at '/relay/announce/0'",
    ),
    "peerId that is not one": (
        {"bootstrap": {"peerId": "QmNotAnEd25519PeerId"}},
        "at '/bootstrap/peerId'",
    ),
    "bootstrap peer without /p2p/": (
        {"bootstrapPeers": ["/ip4/198.51.100.20/tcp/4001"]},
        "at '/bootstrapPeers/0'",
    ),
    "storage size that is not a quantity": (
        {"archiver": {"persistence": {"size": "lots"}}},
        "at '/archiver/persistence/size'",
    ),
    "pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    "scrape interval": (
        {"monitoring": {"serviceMonitor": {"enabled": True, "interval": "soon"}}},
        "at '/monitoring/serviceMonitor/interval'",
    ),
}


@pytest.mark.parametrize(
    ("values", "message"),
    BAD_VALUES.values(),
    ids=[re.sub(r"\W+", "-", key).strip("-") for key in BAD_VALUES],
)
def test_bad_values_are_refused(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        chart.validate_schema(values)
    assert message in str(refused.value)
    # Installing or rendering checks the same schema first.
    with pytest.raises(helm.HelmValuesError):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_readme_documents_every_value(chart: helm.Chart) -> None:
    """Every key of values.yaml has a row in the chart README's values table (component keys
    as ``<component>.key``; maps and Kubernetes objects as one row)."""
    whole = {
        "config",
        "resources",
        "podSecurityContext",
        "securityContext",
        "startup",
        "liveness",
        "readiness",
    }
    keys: set[str] = set()

    def walk(values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and value and key not in whole:
                walk(value, f"{path}.")
            else:
                keys.add(path)

    defaults = chart.values
    for component in COMPONENTS:
        walk(defaults.pop(component), "<component>.")
    walk(defaults, "")
    table = README.read_text()
    missing = sorted(key for key in keys if f"| `{key}` |" not in table)
    assert missing == [], f"undocumented values: {missing}"


# --- running what the chart renders ------------------------------------------------------------


def run_init_container(
    release: Release, component: str, volume: Path, tmp_path: Path, secret: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the component's init container script as the pod would, with the volume at
    ``volume`` instead of /data (and the Secret's file at ``secret``)."""
    init = release.container(component, "identity")
    assert init["command"][:2] == ["sh", "-ec"]
    config = tmp_path / f"{component}-config.yaml"
    config.write_text(release.config_text(component))
    script = init["command"][2].replace(CONFIG_FILE, str(config)).replace("/data", str(volume))
    env = {**clean_env(), **pod_env(init), "P2PCHAT_NODE__DATA_DIR": str(volume)}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    if "IDENTITY_SECRET" in env:
        assert secret is not None
        env["IDENTITY_SECRET"] = str(secret)
    volume.mkdir(exist_ok=True)
    return subprocess.run(
        ["sh", "-ec", script], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_init_container_generates_the_identity_once(chart: helm.Chart, tmp_path: Path) -> None:
    release = render(chart, ONLY["relay"])
    volume = tmp_path / "relay-volume"
    first = run_init_container(release, "relay", volume, tmp_path)
    assert first.returncode == 0, first.stderr
    peer_id = first.stdout.strip()
    assert re.fullmatch(r"12D3KooW[1-9A-HJ-NP-Za-km-z]{44}", peer_id)
    assert "created a new identity" in first.stderr
    key = volume / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # Restarts find it in the volume.
    again = run_init_container(release, "relay", volume, tmp_path)
    assert (again.returncode, again.stdout.strip(), again.stderr) == (0, peer_id, "")
    # With peerId set to it, the pod starts; with another, it does not.
    pinned = render(chart, {**ONLY["relay"], "relay": {"peerId": peer_id}})
    assert run_init_container(pinned, "relay", volume, tmp_path).returncode == 0
    wrong = render(chart, {**ONLY["relay"], "relay": {"peerId": PEER_IDS["relay"]}})
    refused = run_init_container(wrong, "relay", volume, tmp_path)
    assert refused.returncode == 1
    assert f"has PeerId {peer_id}, not peerId {PEER_IDS['relay']}" in refused.stderr


def test_init_container_installs_the_key_from_the_secret(chart: helm.Chart, tmp_path: Path) -> None:
    made = subprocess.run(
        [str(BIN / "p2pchat"), "id", "--data-dir", str(tmp_path / "operator")],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    peer_id = made.stdout.strip()
    secret = tmp_path / "secret-identity.key"
    secret.write_bytes((tmp_path / "operator" / "identity.key").read_bytes())
    secret.chmod(0o440)  # as the Secret volume's defaultMode gives it
    values = {**ONLY["bootstrap"], "bootstrap": {"existingSecret": "boot-id", "peerId": peer_id}}
    release = render(chart, values)
    volume = tmp_path / "bootstrap-volume"
    # A volume that already holds another (generated) key: the Secret wins.
    generated = run_init_container(render(chart, ONLY["bootstrap"]), "bootstrap", volume, tmp_path)
    assert generated.returncode == 0 and generated.stdout.strip() != peer_id
    installed = run_init_container(release, "bootstrap", volume, tmp_path, secret=secret)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.strip() == peer_id
    key = volume / "identity.key"
    assert key.read_bytes() == secret.read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert sorted(p.name for p in volume.iterdir()) == ["identity.key"]


# Runs inside `unshare --mount --net`: loopback up, /etc/resolv.conf replaced (privately) by one
# naming a DNS server on 127.0.0.1 that answers every *.svc.cluster.local name with 127.0.0.1,
# then the nodes given on stdin; prints what their endpoints and metrics said, as JSON.
LAB = r"""
import json, signal, socket, subprocess, sys, threading, time, urllib.error, urllib.request
import dns.message, dns.rrset

spec = json.load(sys.stdin)
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "--bind", spec["resolv_conf"], "/etc/resolv.conf"], check=True)

def serve_dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    while True:
        data, peer = sock.recvfrom(4096)
        query = dns.message.from_wire(data)
        reply = dns.message.make_response(query)
        question = query.question[0]
        if question.rdtype == 1 and str(question.name).endswith(spec["dns_suffix"]):
            reply.answer.append(dns.rrset.from_text(question.name, 30, "IN", "A", "127.0.0.1"))
        sock.sendto(reply.to_wire(), peer)

threading.Thread(target=serve_dns, daemon=True).start()

def get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""

def dials(port):
    for line in get(port, "/metrics")[1].splitlines():
        if line.startswith('p2pchat_bootstrap_dials_total{outcome="success"}'):
            return float(line.split()[-1])
    return 0.0

procs = {}
result = {}
try:
    for node in spec["nodes"]:
        log = open(node["log"], "w")
        procs[node["name"]] = subprocess.Popen(
            node["command"], env=node["env"], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 90
    pending = {node["name"]: node for node in spec["nodes"]}
    while pending and time.monotonic() < deadline:
        for name, node in list(pending.items()):
            if procs[name].poll() is not None:
                result[name] = {"exited": procs[name].returncode}
                del pending[name]
                continue
            ready = get(node["metrics_port"], "/readyz")[0] == 200
            if ready and (not node["dials_bootstrap"] or dials(node["metrics_port"]) >= 1):
                result[name] = {
                    "healthz": get(node["metrics_port"], "/healthz")[0],
                    "readyz": 200,
                    "bootstrap_dials": dials(node["metrics_port"]),
                }
                del pending[name]
        time.sleep(0.3)
    for name in pending:
        result[name] = {"timeout": True}
finally:
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in procs.items():
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        result.setdefault(name, {})["exit_code"] = code
print(json.dumps(result))
"""


@pytest.mark.slow
def test_release_runs_and_nodes_reach_the_bootstrap_node_by_service_name(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """The operator's path: install (the bootstrap identity is generated by its init
    container), read the PeerId, upgrade with bootstrap.peerId; then the three nodes run from
    their rendered configs and environments, and the relay and the archiver connect to the
    bootstrap node through /dns4/<its Service>.<namespace>.svc.cluster.local."""
    volumes = {component: tmp_path / f"{component}-volume" for component in COMPONENTS}
    first = run_init_container(render(chart, {}), "bootstrap", volumes["bootstrap"], tmp_path)
    assert first.returncode == 0, first.stderr
    bootstrap_id = first.stdout.strip()
    release = render(chart, {"bootstrap": {"peerId": bootstrap_id}})
    check_release(release)
    nodes = []
    for index, component in enumerate(COMPONENTS):
        init = run_init_container(release, component, volumes[component], tmp_path)
        assert init.returncode == 0, init.stderr
        container = release.container(component)
        config = tmp_path / f"{component}-config.yaml"  # written by run_init_container
        args = [arg.replace(CONFIG_FILE, str(config)) for arg in container["args"]]
        # One network namespace for the three pods: the metrics ports must differ here.
        metrics_port = 9464 + index
        env = {
            **clean_env(),
            **pod_env(container),
            "P2PCHAT_NODE__DATA_DIR": str(volumes[component]),
            "P2PCHAT_METRICS__LISTEN": f"127.0.0.1:{metrics_port}",
        }
        nodes.append(
            {
                "name": component,
                "command": [str(BIN / "p2pchat"), *args],
                "env": env,
                "log": str(tmp_path / f"{component}.log"),
                "metrics_port": metrics_port,
                "dials_bootstrap": component != "bootstrap",
            }
        )
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    spec = {"nodes": nodes, "resolv_conf": str(resolv), "dns_suffix": ".svc.cluster.local."}
    lab = subprocess.run(
        ["unshare", "--mount", "--net", sys.executable, "-c", LAB],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert lab.returncode == 0, lab.stderr[-3000:]
    result = json.loads(lab.stdout)
    logs = {c: (tmp_path / f"{c}.log").read_text() for c in COMPONENTS}
    for component in COMPONENTS:
        outcome = result[component]
        assert outcome.get("readyz") == 200 and outcome.get("healthz") == 200, (
            outcome,
            logs[component][-2000:],
        )
        assert outcome["exit_code"] == 0, logs[component][-2000:]
    address = f"/dns4/p2pchat-bootstrap.chat.svc.cluster.local/tcp/4001/p2p/{bootstrap_id}"
    for component in ("relay", "archiver"):
        assert result[component]["bootstrap_dials"] >= 1, logs[component][-2000:]
        events = [json.loads(line) for line in logs[component].splitlines() if line.startswith("{")]
        connected = [e["addr"] for e in events if e["event"] == "bootstrap peer connected"]
        assert connected[:1] == [address], logs[component][-2000:]


if __name__ == "__main__":
    write_schema()
    print(f"wrote {SCHEMA_FILE.relative_to(ROOT)}")
