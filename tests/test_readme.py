"""The README stays true: every config key, flag and metric it must document is there."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from p2pchat.node.config import Config
from p2pchat.node.metrics import CatchUpMetrics, NodeMetrics, StoreClientMetrics, StoreServerMetrics
from p2pchat.roles.archiver.metrics import ArchiveMetrics
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.relay.metrics import RelayMetrics
from pydantic import BaseModel

README = (Path(__file__).parent.parent / "README.md").read_text()


def config_keys(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, object]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from config_keys(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.get_default(call_default_factory=True)


def test_every_config_key_is_documented_with_its_default() -> None:
    for key, default in config_keys(Config):
        row = f"| `{key}` | `{json.dumps(default)}` |"
        assert row in README, f"README configuration table lacks or misstates: {row}"


def test_every_metric_family_is_documented() -> None:
    metrics = NodeMetrics(["peer", "relay"])
    RelayMetrics(metrics.registry)
    for role_metrics in (
        ArchiveMetrics,
        StoreServerMetrics,
        StoreClientMetrics,
        CatchUpMetrics,
        ChatMetrics,
    ):
        role_metrics(metrics.registry)
    for family in metrics.registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in README, f"README does not document metric {name}"


def test_the_two_commands_are_documented() -> None:
    assert "make run" in README
    assert "make test" in README
