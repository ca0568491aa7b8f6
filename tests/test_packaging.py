"""Every Python package in node/ and roles/ ships in the wheel (the package list is explicit),
and the committed protobuf code is what its schemas generate. The distribution is
``p2pchat-node``: its wheel holds the LICENSE, the command, the man page and the shell
completions (current with the parser), and ``make install`` installs what running needs only."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

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


# --- The distribution: its name, what the wheel holds, what `make install` installs (#17) ---

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _cli_files() -> ModuleType:
    """tools/cli_files.py (`make generated`), loaded from its path: tools/ is no package."""
    spec = importlib.util.spec_from_file_location("cli_files", ROOT / "tools" / "cli_files.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distribution_name_is_ours_and_the_command_is_p2pchat() -> None:
    # `p2pchat` on PyPI is an unrelated project: `pip install p2pchat` must never be the way.
    assert PROJECT["name"] == "p2pchat-node"
    assert PROJECT["scripts"] == {"p2pchat": "p2pchat.node.cli:run"}
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the p2pchat authors" in license_text


def test_the_installed_version_is_the_distributions() -> None:
    # node/__init__.py reads the version from the installed metadata by distribution name: a
    # stale name there makes `p2pchat --version` and p2pchat_build_info say "0+unknown".
    from p2pchat.node import __version__

    assert importlib.metadata.version("p2pchat-node") == PROJECT["version"]
    assert __version__ == PROJECT["version"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel `pip wheel` builds from the files pyproject.toml names, copied elsewhere so
    the build's egg-info and build/ land outside the checkout."""
    source = tmp_path_factory.mktemp("source")
    setuptools = PYPROJECT["tool"]["setuptools"]
    data_sources = [name for names in setuptools["data-files"].values() for name in names]
    for name in [
        "pyproject.toml",
        PROJECT["readme"],
        *PROJECT["license-files"],
        *setuptools["package-dir"].values(),
        *data_sources,
    ]:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--quiet", "--no-deps", str(source), "-w", str(out)], check=True)
    (built,) = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_wheel_is_p2pchat_node_with_its_license_and_command(wheel: zipfile.ZipFile) -> None:
    version = PROJECT["version"]
    assert Path(wheel.filename or "").name == f"p2pchat_node-{version}-py3-none-any.whl"
    info = f"p2pchat_node-{version}.dist-info"
    metadata = wheel.read(f"{info}/METADATA").decode()
    assert "Name: p2pchat-node\n" in metadata
    assert "License-Expression: MIT\n" in metadata
    assert wheel.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    assert "p2pchat = p2pchat.node.cli:run" in wheel.read(f"{info}/entry_points.txt").decode()
    names = set(wheel.namelist())
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        directory = package.replace(".", "/") + "/"
        # p2pchat.presets holds YAML only: no __init__.py, but its files.
        assert any(name.startswith(directory) for name in names), package


def test_wheel_installs_the_man_page_and_completions(wheel: zipfile.ZipFile) -> None:
    # A wheel's <name>.data/data/X is installed at <prefix>/X: share/man/man1/p2pchat.1 etc.
    data = f"p2pchat_node-{PROJECT['version']}.data/data/"
    shipped = {name.removeprefix(data) for name in wheel.namelist() if name.startswith(data)}
    cli_files = _cli_files()
    generated = {str(path) for path in [cli_files.MAN_PAGE, *cli_files.COMPLETIONS.values()]}
    assert shipped == generated
    for name in generated:
        assert wheel.read(data + name) == (ROOT / name).read_bytes(), name


def test_man_page_and_completions_match_the_parser() -> None:
    # Generated from the CLI's parser and committed: a parser changed without
    # `make generated` must fail here.
    for path, content in _cli_files().render().items():
        assert (ROOT / path).read_text() == content, f"run make generated: {path} is stale"


def test_man_page_and_completions_name_every_subcommand_and_option() -> None:
    # Guards the generator itself: what the parser offers is in each generated file.
    from p2pchat.node.cli import _build_parser

    parser = _build_parser()
    options = {
        option
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction)  # argparse-manpage leaves -h out
        for option in action.option_strings
        if option.startswith("--")
    }
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for path in ROOT.joinpath("share").rglob("*"):
        if path.is_file():
            text = path.read_text().replace("\\-", "-")  # roff escapes the man page's dashes
            for word in [*options, *commands.choices]:
                if path.suffix == ".fish" and word.startswith("--"):
                    word = f"-l {word[2:]}"  # fish's own form: complete -c p2pchat -l json
                assert word in text, f"{path.relative_to(ROOT)} lacks {word}"


def _dry_run(target: str, venv: Path) -> list[str]:
    """The commands `make TARGET` would run for a venv at ``venv`` (none is run: -n)."""
    result = subprocess.run(
        ["make", "--dry-run", "--always-make", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_make_install_and_run_install_the_runtime_dependencies_only(tmp_path: Path) -> None:
    for target in ("install", "run"):
        installs = [line for line in _dry_run(target, tmp_path) if "pip install" in line]
        assert any(line.endswith(" -e .") for line in installs), installs
        assert not any("[dev]" in line or "--quiet" in line for line in installs), installs
    # The tools come with the targets that use them, and CI provisions them before testing.
    for target in ("dev", "lint", "typecheck", "unit", "generated"):
        assert any("-e '.[dev]'" in line for line in _dry_run(target, tmp_path)), target
    assert "\nmake dev\n" in (ROOT / ".ci" / "run").read_text()


def test_make_install_puts_the_man_page_and_completions_in_the_venv() -> None:
    # An editable install leaves a wheel's data files out; the Makefile links them in, so an
    # activated .venv gives `man p2pchat` as a wheel install would.
    prefix = Path(sys.prefix)
    for path in _cli_files().render():
        installed = prefix / path
        assert installed.exists(), f"{installed} is missing: make install links share/ there"
        assert installed.read_text() == (ROOT / path).read_text()
