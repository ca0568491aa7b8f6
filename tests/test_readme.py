"""The README stays true: every config key, flag and metric it must document is there."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path

from p2pchat.node.config import Config
from p2pchat.node.metrics import CatchUpMetrics, NodeMetrics, StoreClientMetrics, StoreServerMetrics
from p2pchat.roles.archiver.metrics import ArchiveMetrics
from p2pchat.roles.peer.metrics import ChatMetrics
from p2pchat.roles.relay.metrics import RelayMetrics
from pydantic import BaseModel

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


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


def _command_lines() -> Iterator[str]:
    """Every `p2pchat ...` example: lines of the ```sh blocks (continuations joined, comments
    and leading VAR=value assignments dropped) and inline `p2pchat ...` spans."""
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                words.pop(0)
            if words[:1] == ["p2pchat"]:
                yield shlex.join(words)
    for span in re.findall(r"`(p2pchat [^`]*)`", README):
        yield " ".join(span.split())


def test_every_p2pchat_example_parses_with_the_current_command_line() -> None:
    # The README's examples stay true to the parser (which the man page and the completions
    # are generated from); a bare command name (`p2pchat history`) is a reference, not a call.
    from p2pchat.node.cli import _build_parser

    commands = {"id", "history", "config", "check"}
    examples = list(_command_lines())
    assert len(examples) >= 10, examples
    for example in examples:
        args = shlex.split(example)[1:]
        if set(args) <= commands:
            continue
        try:
            _build_parser().parse_args(args)
        except SystemExit as exit:
            assert exit.code == 0, f"README example does not parse: {example}"


def test_install_says_how_p2pchat_reaches_path_and_where_its_files_land() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"**`{project['name']}`**" in README  # the distribution name, once and in bold
    for command in ("pipx install .", "make install", "source .venv/bin/activate"):
        assert command in README, command
    data_files = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for files in data_files["data-files"].values():
        for name in files:
            assert f"| `{name}` |" in README, f"README's Install table lacks {name}"
    for document in ("CHANGELOG.md", "SECURITY.md", "LICENSE"):
        assert (ROOT / document).is_file(), document
    assert "[CHANGELOG.md](CHANGELOG.md)" in README
    assert "[SECURITY.md](SECURITY.md)" in README
