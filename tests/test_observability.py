"""The observability pack (ops/observability) asks only for series p2pchat nodes export.

Real nodes of every role (peer, bootstrap, relay, archiver) run on 127.0.0.1, one process each,
and their /metrics are read with prometheus_client's parser. Every PromQL expression in the
Grafana dashboard (panel targets and template-variable queries) and in the alert rules is
reduced to the metric names it selects by a small extractor (strings, label matchers, range
selectors and by/without/on/ignoring/group_* label lists removed; what remains is function and
aggregation calls, keywords, numbers and metric names; an unknown function fails the test), and
each name must be exported. Besides the nodes' series, only Prometheus' own ``up`` is allowed.

Exported means: a metric *family* in the exposition, with or without samples. A labelled
counter such as ``p2pchat_bootstrap_dials_total{outcome}`` has no sample before its first event,
but prometheus_client writes its ``# HELP`` and ``# TYPE`` lines from the moment it is
registered (unlabelled counters, gauges and histograms also get a zero sample), and the parser
yields the family even without samples. So the check does not depend on events having happened.
A family's queryable names follow its type: counter ``x`` gives ``x_total`` (its ``x_created``
is a family of its own), histogram ``x`` gives ``x_bucket``, ``x_count`` and ``x_sum``, gauge
``x`` gives ``x``.

The dashboard's rows are checked against the role they are about (the relay row's series must
come from the relay node, the overview's from every node), every exported family is shown on
the dashboard, and the dashboard, rules and scrape config have the structure Grafana and
Prometheus expect.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NodeProcess, start_node

ROOT = Path(__file__).parent.parent
PACK = ROOT / "ops" / "observability"
DASHBOARD = PACK / "grafana" / "dashboards" / "p2pchat.json"
ROLES = ("peer", "bootstrap", "relay", "archiver")

# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up"}

# Which node a dashboard row is about ("*": every node must export its series).
ROW_ROLES = {
    "Overview: every node": "*",
    "Relay": "relay",
    "Bootstrap and DHT": "bootstrap",
    "Archiver": "archiver",
    "Chat peers": "peer",
}

# PromQL's functions and aggregation operators (Prometheus 2.x), and its keywords.
FUNCTIONS = {
    *("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values"),
    *("bottomk", "topk", "quantile", "limitk", "limit_ratio"),
    *("abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min"),
    *("day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp"),
    *("floor", "histogram_quantile", "histogram_count", "histogram_sum", "histogram_fraction"),
    *("holt_winters", "hour", "idelta", "increase", "irate", "label_join", "label_replace"),
    *("ln", "log2", "log10", "minute", "month", "predict_linear", "rate", "resets", "round"),
    *("scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp", "vector", "year"),
    *("avg_over_time", "min_over_time", "max_over_time", "sum_over_time", "count_over_time"),
    *("quantile_over_time", "stddev_over_time", "stdvar_over_time", "last_over_time"),
    *("present_over_time",),
}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(?P<expr>.*),)?\s*(?P<label>\w+)\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = _STRING.sub('""', expr)
    text = _GRAFANA_VARIABLE.sub("1m", text)  # $__rate_interval, ${datasource}, ...
    for opening, closing in ("()", "{}", "[]"):
        assert text.count(opening) == text.count(closing), f"unbalanced {opening}: {expr}"
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range selectors and subqueries
    text = _LABEL_LIST.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in: {expr}"
        elif word.lower() not in KEYWORDS:
            names.add(word)
    return names


def template_query_names(query: str) -> set[str]:
    """The metric names of a Grafana template-variable query (label_values(...) or PromQL)."""
    match = _LABEL_VALUES.match(query)
    if match:
        return metric_names(match["expr"]) if match["expr"] else set()
    return metric_names(query)


def exported_names(exposition: str) -> set[str]:
    """Every name a query may select from this exposition, samples or not (see the module doc)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
        elif family.type == "summary":
            names.update((family.name, family.name + "_count", family.name + "_sum"))
        else:
            names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """role -> the names its node's /metrics offers."""
    base = tmp_path_factory.mktemp("observability")
    started: list[NodeProcess] = []
    try:
        for role in ROLES:
            started.append(start_node(base / role, "--role", role))
        result: dict[str, set[str]] = {}
        for role, node in zip(ROLES, started, strict=True):
            status, text = node.http_get("/metrics")
            assert status == 200
            result[role] = exported_names(text)
        yield result
    finally:
        for node in started:
            if node.proc.poll() is None:
                node.stop()


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """(row title, panel title, expression) of every panel target."""
    row = ""
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            row = panel["title"]
            continue
        for target in panel["targets"]:
            yield row, panel["title"], target["expr"]


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((PACK / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


# --- the extractor ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('up{job=~"p2pchat.*"} == 0', {"up"}),
        (
            "histogram_quantile(0.99, sum by (job, instance, le) "
            "(rate(p2pchat_archive_insert_duration_seconds_bucket[10m]))) > 0.5",
            {"p2pchat_archive_insert_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{x="{not_a_metric}"}[$__rate_interval])) by (le) / ignoring(x) '
            "group_left(y) b offset 5m or vector(0)",
            {"a_total", "b"},
        ),
        (
            "libp2p_autonat_reachability_status == 2 and on (job, instance) "
            "p2pchat_autorelay_reservations == 0",
            {"libp2p_autonat_reachability_status", "p2pchat_autorelay_reservations"},
        ),
        ("count(up == 0) unless absent(x:recorded:rate5m) > bool 1e3", {"up", "x:recorded:rate5m"}),
    ],
)
def test_extractor_reads_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_extractor_refuses_unknown_functions() -> None:
    with pytest.raises(AssertionError, match="unknown PromQL function 'rat'"):
        metric_names("rat(x[5m])")


def test_exported_names_include_families_without_samples() -> None:
    exposition = (
        "# HELP a_total h\n# TYPE a_total counter\n"
        "# HELP h_seconds h\n# TYPE h_seconds histogram\n"
        "# HELP g h\n# TYPE g gauge\n"
    )
    assert exported_names(exposition) == {
        *("a_total", "g"),
        *("h_seconds_bucket", "h_seconds_count", "h_seconds_sum"),
    }


# --- against real nodes -------------------------------------------------------------------------


def test_every_dashboard_query_asks_for_exported_series(exported: dict[str, set[str]]) -> None:
    everywhere = set.intersection(*exported.values())
    anywhere = set.union(*exported.values())
    checked = 0
    for row, title, expr in dashboard_queries():
        names = metric_names(expr) - PROMETHEUS_SERIES
        assert names or "up" in expr, f"{title}: no metric in {expr}"
        role = ROW_ROLES[row]
        offered = everywhere if role == "*" else exported[role]
        missing = names - offered
        assert not missing, (
            f"dashboard row {row!r}, panel {title!r} asks for {sorted(missing)}, which the "
            f"{'every' if role == '*' else role} node does not export"
            + (" (another role does)" if missing <= anywhere else "")
        )
        checked += 1
    assert checked >= 40


def test_dashboard_variables_ask_for_exported_series(exported: dict[str, set[str]]) -> None:
    anywhere = set.union(*exported.values())
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        names = template_query_names(text)
        assert names, f"variable {variable['name']}: {text}"
        assert names <= anywhere, f"variable {variable['name']} asks for {names - anywhere}"


def test_dashboard_shows_every_exported_family(exported: dict[str, set[str]]) -> None:
    shown: set[str] = set()
    for _, _, expr in dashboard_queries():
        shown |= metric_names(expr)
    for role, names in exported.items():
        histograms = {name[: -len("_bucket")] for name in names if name.endswith("_bucket")}
        for name in names:
            if name.endswith("_created"):  # prometheus_client's creation times
                continue
            family = re.sub(r"_(bucket|count|sum)$", "", name)
            if family in histograms:  # any of a histogram's series shows it
                series = {family + suffix for suffix in ("_bucket", "_count", "_sum")}
                assert series & shown, f"histogram {family} ({role}) is on no dashboard panel"
            else:
                assert name in shown, f"{name} ({role}) is exported but on no dashboard panel"


def test_every_alert_asks_for_exported_series(exported: dict[str, set[str]]) -> None:
    anywhere = set.union(*exported.values()) | PROMETHEUS_SERIES
    rules = alert_rules()
    assert len(rules) >= 15
    for rule in rules:
        names = metric_names(rule["expr"])
        assert names, f"{rule['alert']}: no metric in {rule['expr']}"
        missing = names - anywhere
        assert not missing, f"alert {rule['alert']} asks for {sorted(missing)}: not exported"


# --- structure ----------------------------------------------------------------------------------


def test_alert_rules_have_the_expected_shape() -> None:
    document = yaml.safe_load((PACK / "alerts.yml").read_text())
    assert set(document) == {"groups"}
    names: list[str] = []
    for group in document["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"], group.get("name")
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert rule["alert"].startswith("P2PChat"), rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
            assert rule["annotations"]["summary"], rule["alert"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
            names.append(rule["alert"])
    assert len(names) == len(set(names)), "duplicate alert names"
    # What issue #6 asks the rules to cover.
    for wanted in (
        "P2PChatNodeDown",
        "P2PChatRelayReservationsNearLimit",
        "P2PChatArchiveWriteErrors",
        "P2PChatHistoryRejectedMessages",
        "P2PChatHolePunchFailureRatio",
    ):
        assert wanted in names


def test_prometheus_config_has_the_expected_shape() -> None:
    text = (PACK / "prometheus.yml").read_text()
    config = yaml.safe_load(text)
    assert {"global", "rule_files", "alerting", "scrape_configs"} <= set(config)
    assert re.fullmatch(r"\d+[smh]", config["global"]["scrape_interval"])
    for rule_file in config["rule_files"]:
        assert (PACK / rule_file).is_file(), rule_file
    ports = {"p2pchat-bootstrap": "9464", "p2pchat-relay": "9465", "p2pchat-archiver": "9466"}
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(ports)
    for name, job in jobs.items():
        targets = [target for static in job["static_configs"] for target in static["targets"]]
        assert targets, name
        for target in targets:
            assert target.rpartition(":")[2] == ports[name], target
    # The service-discovery examples (comments) are there.
    assert "file_sd_configs" in text and "kubernetes_sd_configs" in text


def test_dashboard_has_the_expected_shape() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] == "p2pchat"
    assert isinstance(board["schemaVersion"], int)
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    datasource = {"type": "prometheus", "uid": "${datasource}"}
    for name in ("job", "instance"):
        assert variables[name]["datasource"] == datasource

    ids: list[int] = []
    rows: list[str] = []
    occupied: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        ids.append(panel["id"])
        position = panel["gridPos"]
        assert position["x"] >= 0 and position["x"] + position["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(position["x"], position["x"] + position["w"])
            for y in range(position["y"], position["y"] + position["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            assert panel["panels"] == [] and not panel.get("targets"), panel["title"]
            rows.append(panel["title"])
            continue
        assert panel["type"] in {"timeseries", "stat", "table"}, panel["title"]
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == datasource, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert rows == list(ROW_ROLES)
