"""The interop matrix: which libp2p implementations p2pchat is tested against, over which
transport, for which feature, as the README shows it (issue #20).

Each interop test carries one ``@pytest.mark.interop(impl, transport, feature)`` per cell it
proves (a parametrized test on its params). ``make interop-matrix`` runs every test file that
has such marks and rewrites the README's table between its markers from the outcomes: a cell
is "yes" (with the tests' names in a footnote list) only if every test marked for it passed.
``tests/test_interop_matrix.py`` checks, without running them, that the README lists exactly
the cells the marks declare, so a README cell cannot claim what no test proves.

Usage: python -m tests.interop_matrix [--check | --from-marks]: run the tests and write the
README; --check: compare the README with the marks, write nothing; --from-marks: write it from
the marks without running (each cell as passed: only when the suite just passed, e.g. in CI).
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

IMPLEMENTATIONS = ("js", "go", "rust")
TRANSPORTS = ("tcp", "ws", "quic")
FEATURES = {
    "chat": "chat both ways",
    "hub": "one side relays the room between two of the other",
    "history": "history answered to them",
    "relay-ours": "p2pchat's relay serves them",
    "relay-theirs": "their relay serves p2pchat",
    "dcutr-they-dial": "DCUtR, they dial through the relay",
    "dcutr-we-dial": "DCUtR, p2pchat dials through the relay",
}
START = "<!-- interop-matrix:start -->"
END = "<!-- interop-matrix:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"
FILES = "tests/test_interop_*.py"

Cell = tuple[str, str, str]


def cells_of(item: pytest.Item) -> list[Cell]:
    """The cells ``item`` is marked for (checked against the known names)."""
    cells = []
    for mark in item.iter_markers("interop"):
        impl, transport, feature = mark.args
        if impl not in IMPLEMENTATIONS or transport not in TRANSPORTS or feature not in FEATURES:
            raise ValueError(f"{item.nodeid}: unknown interop cell {mark.args}")
        cells.append((impl, transport, feature))
    return cells


def render(tests: dict[Cell, list[str]], failed: set[Cell]) -> str:
    """The README block: one row per implementation and transport, one column per feature."""
    lines = [
        START,
        "| implementation | transport | " + " | ".join(FEATURES) + " |",
        "|---|---|" + "---|" * len(FEATURES),
    ]
    for impl in IMPLEMENTATIONS:
        for transport in TRANSPORTS:
            marks = []
            for feature in FEATURES:
                cell = (impl, transport, feature)
                marks.append("—" if cell not in tests else "no" if cell in failed else "yes")
            lines.append(f"| {impl} | {transport} | " + " | ".join(marks) + " |")
    lines.append("")
    lines.extend(f"- `{name}`: {meaning}" for name, meaning in FEATURES.items())
    lines.append("- a dash: no test yet")
    lines.append("")
    lines.append("The tests of each cell:")
    lines.append("")
    for cell, names in sorted(tests.items()):
        lines.append(f"- {' / '.join(cell)}: " + ", ".join(f"`{n}`" for n in sorted(names)))
    lines.append(END)
    return "\n".join(lines)


def readme_block(text: str) -> str:
    """The README's current block, markers included."""
    match = re.search(re.escape(START) + ".*?" + re.escape(END), text, re.S)
    if match is None:
        raise ValueError(f"README has no {START} ... {END} block")
    return match.group(0)


class Collector:
    """A pytest plugin: the interop cells of the collected tests, and those that failed."""

    def __init__(self) -> None:
        self.tests: dict[Cell, list[str]] = defaultdict(list)
        self.items: dict[str, list[Cell]] = {}
        self.failed: set[Cell] = set()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            cells = cells_of(item)
            if cells:
                self.items[item.nodeid] = cells
                for cell in cells:
                    self.tests[cell].append(item.nodeid.split("::", 1)[1])

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed and report.nodeid in self.items:
            self.failed.update(self.items[report.nodeid])


def main(argv: list[str]) -> int:
    check, collect_only = "--check" in argv, bool({"--check", "--from-marks"} & set(argv))
    collector = Collector()
    files = sorted(str(p) for p in Path().glob(FILES))
    args = [*files, "-p", "no:cacheprovider", "-n", "0", "-q"]
    code = pytest.main([*args, "--collect-only"] if collect_only else args, plugins=[collector])
    text = README.read_text()
    block = render(collector.tests, collector.failed)
    if check:
        same = readme_block(text) == block
        print("README interop matrix is current" if same else "README interop matrix is stale")
        return 0 if same else 1
    README.write_text(text.replace(readme_block(text), block))
    print(f"README interop matrix written ({len(collector.tests)} cells, pytest exit {code})")
    return int(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
