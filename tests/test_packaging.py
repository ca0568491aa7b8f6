"""Every Python package in node/ and roles/ ships in the wheel (the package list is explicit)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    for top, name in (("node", "p2pchat.node"), ("roles", "p2pchat.roles")):
        for init in (ROOT / top).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / top)
            package = ".".join([name, *relative.parts])
            assert package in listed, f"{package} is missing from [tool.setuptools] packages"
