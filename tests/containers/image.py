"""The p2pchat image for container test suites: built once per test session by
``ops/containers/image.sh`` (the engine, the local base image, the wheelhouse, ``docker build``;
what ``make image`` runs).

There is no skipping here: without a container engine, or when the build fails, the suite fails
with the script's own words.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = ROOT / "ops" / "containers" / "image.sh"
BUILD_TIMEOUT = 1800.0  # a cold machine installs the engine and builds the base image first


@functools.cache
def build_image() -> str:
    """Build (or reuse) the image and return its tag (``p2pchat:local``)."""
    try:
        result = subprocess.run(
            [str(IMAGE_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{IMAGE_SCRIPT.name} did not finish in {BUILD_TIMEOUT:.0f} s: {error}")
    if result.returncode != 0:
        pytest.fail(
            f"{IMAGE_SCRIPT.name} failed (exit {result.returncode}); no image, no container "
            f"tests:\n{result.stderr[-4000:]}"
        )
    return result.stdout.strip().splitlines()[-1]
