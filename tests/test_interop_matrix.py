"""The README's interop matrix says exactly what the interop tests' marks declare
(tests/interop_matrix.py): no cell claimed without a test, none tested and left out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_readme_interop_matrix_matches_the_tests_marks() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "tests.interop_matrix", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, checked.stdout[-2000:] + checked.stderr[-2000:]
    assert "README interop matrix is current" in checked.stdout
