"""`make typecheck`: mypy over the package as it is installed (p2pchat.node, p2pchat.roles),
read straight from node/ and roles/, with no link tree and no rename.

mypy names a module after its directories and runs no import hooks, so it cannot learn from
the editable install (setuptools' import hook) that p2pchat.node is node/. This hands it every
file of pyproject's [tool.setuptools.package-dir] with its installed module name: mypy accepts
explicit (path, module) sources, and an import of a module among them resolves to it. Options
come from [tool.mypy]; arguments are passed on to mypy (e.g. `--no-incremental`).

trio's own inline types must win over the outdated stubs of trio-typing (a py-libp2p
dependency), which PEP 561 ranks first: trio's modules are handed over as sources too, and
[tool.mypy] ignores their errors.
"""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

import trio
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.modulefinder import BuildSource
from mypy.util import FancyFormatter, count_stats

ROOT = Path(__file__).resolve().parent.parent


def modules(package: str, directory: Path) -> list[BuildSource]:
    """Every module under ``directory`` as the module of ``package`` it is installed as."""
    found = []
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(directory).with_suffix("").parts
        if {"_tests", "_tools", "__pycache__"} & set(parts):
            continue
        if path.with_suffix(".pyi").exists():
            path = path.with_suffix(".pyi")
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append(BuildSource(str(path), ".".join((package, *parts)), None))
    return found


def sources() -> list[BuildSource]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping: dict[str, str] = pyproject["tool"]["setuptools"]["package-dir"]
    ours = [
        source
        for package, directory in mapping.items()
        if package != "p2pchat.presets"  # YAML only
        for source in modules(package, ROOT / directory)
    ]
    return ours + modules("trio", Path(trio.__file__).parent)


def main(args: list[str]) -> int:
    fscache = FileSystemCache()
    # The target given here only satisfies mypy's argument check; sources() replaces it.
    _, options = process_options([*args, str(ROOT / "node")], fscache=fscache)
    found = sources()
    started = time.time()
    _, messages, blockers = run_build(found, options, fscache, started, sys.stdout, sys.stderr)
    formatter = FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    errors, _, files = count_stats(messages)
    if errors:
        print(formatter.format_error(errors, files, len(found), blockers=blockers))
        return 2 if blockers else 1
    print(formatter.format_success(len(found)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
