"""The parallel run of ``make unit`` (tests/scheduling.py): its serial groups name real paths,
cover new files under a listed directory, and really keep a group on one worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.scheduling import SERIAL_GROUPS, group_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_listed_path_exists() -> None:
    for group, paths in SERIAL_GROUPS.items():
        for path in paths:
            target = ROOT / path
            assert target.is_dir() if path.endswith("/") else target.is_file(), (group, path)


def test_a_new_file_under_a_listed_directory_is_in_its_group() -> None:
    assert group_of("tests/hostile/test_written_tomorrow.py") == "hostile"
    assert group_of("tests/nat/test_written_tomorrow.py") == "labs"
    assert group_of("tests/test_ansible.py") == "ansible"
    assert group_of("tests/test_ansible_more.py") is None  # a file entry is that file only
    assert group_of("tests/test_chat.py") is None


_RECORDING_TEST = """
import json, os, pathlib, time
import pytest

@pytest.mark.parametrize("n", range({count}))
def test_records_its_worker(n):
    time.sleep(0.2)  # long enough that an idle worker takes the next free one
    worker = os.environ["PYTEST_XDIST_WORKER"]
    with open(os.environ["RECORD"], "a") as out:
        out.write(json.dumps([pathlib.Path(__file__).stem, worker]) + "\\n")
"""

_CONFTEST = """
import pytest
from tests.scheduling import PathGroupScheduling

@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    return PathGroupScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None
"""


def test_a_group_runs_on_one_worker_and_free_tests_spread(tmp_path: Path) -> None:
    """A real ``pytest -n 2 --dist loadgroup`` over a tree shaped like ours: the two hostile
    files share one worker; a free file is spread over both (so the check can tell the two
    apart: pytest-xdist's own marker-based loadgroup spread the group too, here)."""
    tree = tmp_path / "project"
    (tree / "tests" / "hostile").mkdir(parents=True)
    (tree / "conftest.py").write_text(_CONFTEST)
    # The group is done early (8 tests); its worker then helps with the free ones (24).
    for name, count in (("hostile/test_one", 4), ("hostile/test_two", 4), ("test_free", 24)):
        (tree / "tests" / f"{name}.py").write_text(_RECORDING_TEST.replace("{count}", str(count)))
    record = tmp_path / "record.jsonl"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup"),
            *("-p", "no:cacheprovider", "-q", "-c", os.devnull, "--rootdir", str(tree), "tests"),
        ],
        cwd=tree,
        env={**os.environ, "RECORD": str(record), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    workers: dict[str, set[str]] = {}
    for line in record.read_text().splitlines():
        module, worker = json.loads(line)
        workers.setdefault(module, set()).add(worker)
    hostile = workers["test_one"] | workers["test_two"]
    assert len(hostile) == 1, workers
    assert len(workers["test_free"]) == 2, workers
