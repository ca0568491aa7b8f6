"""The one place py-libp2p's behaviour is changed (node/p2p/patches.py): applied explicitly and
once, refused on a library it was not written for, and every patch named with its test."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest
from libp2p.pubsub import floodsub as floodsub_module
from libp2p.pubsub import gossipsub as gossipsub_module
from libp2p.pubsub import pubsub as pubsub_module
from p2pchat.node.p2p import patches
from p2pchat.node.p2p.patches import LibraryMismatch, Patch

from tests.conftest import node_env, run_cli

ROOT = Path(__file__).resolve().parent.parent


def _counting_patch(owner: object, attribute: str, calls: list[object]) -> Patch:
    def replace(original: object) -> object:
        calls.append(original)
        return f"patched {original}"

    return Patch(owner, attribute, replace, "a test trap", "tests/test_patches.py::none")


def test_apply_is_idempotent() -> None:
    owner = SimpleNamespace(value="library")
    calls: list[object] = []
    table = (_counting_patch(owner, "value", calls),)
    patches.apply(table)
    patches.apply(table)
    assert owner.value == "patched library"
    assert calls == ["library"]  # replaced once, not wrapped twice
    assert patches.applied(table[0])


def test_a_library_of_another_version_is_refused_and_left_as_it_is() -> None:
    owner = SimpleNamespace(value="library")
    calls: list[object] = []
    with pytest.raises(LibraryMismatch) as refused:
        patches.apply((_counting_patch(owner, "value", calls),), version="0.9.0")
    assert "py-libp2p 0.9.0 is installed" in str(refused.value)
    assert "libp2p==0.8.1" in str(refused.value)
    assert owner.value == "library" and calls == []


def test_a_missing_target_is_refused_before_anything_changes() -> None:
    present = SimpleNamespace(value="library")
    gone = SimpleNamespace()
    calls: list[object] = []
    table = (_counting_patch(present, "value", calls), _counting_patch(gone, "value", calls))
    with pytest.raises(LibraryMismatch) as refused:
        patches.apply(table)
    assert "has no" in str(refused.value) and ".value" in str(refused.value)
    assert present.value == "library" and calls == []  # all or nothing


def test_apply_installs_every_patch() -> None:
    # (That the node calls it: the version test below fails at the host's construction.)
    patches.apply()
    assert all(patches.applied(patch) for patch in patches.PATCHES)
    # The record functions are replaced in every module that holds a copy of them.
    for module in (pubsub_module, gossipsub_module, floodsub_module):
        assert module.env_to_send_in_RPC.__name__ == "env_to_send_in_rpc"


def test_every_patch_names_a_test_that_exists() -> None:
    for patch in patches.PATCHES:
        path, _, name = patch.test.partition("::")
        tree = ast.parse((ROOT / path).read_text())
        defined = {
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert name in defined, f"{patch.target}: {patch.test} does not exist"


def test_every_patch_is_in_the_readme_trap_table() -> None:
    readme = (ROOT / "README.md").read_text()
    for patch in patches.PATCHES:
        assert patch.test.split("::")[1] in readme, patch.target


def test_a_node_on_another_py_libp2p_version_stops_with_one_line(tmp_path: Path) -> None:
    # A distribution record found first on the path is what importlib.metadata reports: the
    # node sees "9.9.9" while importing the real library.
    fake = tmp_path / "site" / "libp2p-9.9.9.dist-info"
    fake.mkdir(parents=True)
    (fake / "METADATA").write_text("Metadata-Version: 2.1\nName: libp2p\nVersion: 9.9.9\n")
    result = run_cli(
        "--role",
        "bootstrap",
        "--data-dir",
        str(tmp_path / "node"),
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--metrics",
        "off",
        env=node_env(PYTHONPATH=str(tmp_path / "site")),
    )
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "py-libp2p" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "py-libp2p 9.9.9 is installed" in lines[0] and "libp2p==0.8.1" in lines[0]
