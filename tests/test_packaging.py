"""Every Python package in node/ and roles/ ships in the wheel (the package list is explicit),
and the committed protobuf code is what its schemas generate."""

from __future__ import annotations

import os
import subprocess
import sys
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


def test_generated_protobuf_code_matches_its_schemas(tmp_path: Path) -> None:
    # The generated modules are committed; a schema edited without `make proto` must fail here.
    wire = ROOT / "node" / "wire"
    schemas = sorted(wire.glob("*.proto"))
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{wire}",
            f"--python_out={tmp_path}",
            f"--mypy_out={tmp_path}",
            *map(str, schemas),
        ],
        check=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
    )
    for schema in schemas:
        for suffix in ("_pb2.py", "_pb2.pyi"):
            name = schema.stem + suffix
            assert (tmp_path / name).read_text() == (wire / name).read_text(), (
                f"run make proto: {name}"
            )
