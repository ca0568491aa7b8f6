"""The p2pchat image for container test suites, built by ``ops/containers/image.sh`` (the engine,
the local base image, the wheelhouse, ``docker build``; what ``make image`` runs).

Shared machines: a test run never uses or touches another's image. It builds under a tag of its
own, ``p2pchat:test-<run id>``, labelled ``org.p2pchat.owner=p2pchat-tests <run id>`` (the run id is
random, one per test process), and removes it at the end only when the tag still names an image
with that label. The layers are cached, so a run's build after the first costs seconds.

There is no skipping here: without a container engine, or when the build fails, the suite fails
with the script's own words.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = ROOT / "ops" / "containers" / "image.sh"
BUILD_TIMEOUT = 1800.0  # a cold machine installs the engine and builds the base image first
OWNER_LABEL = "org.p2pchat.owner"
RUN_ID = secrets.token_hex(4)  # this test process's: in its image tag and its owner label
RUN_OWNER = f"p2pchat-tests {RUN_ID}"
RUN_IMAGE = f"p2pchat:test-{RUN_ID}"


class ImageError(RuntimeError):
    """The image could not be built (the script's last words are the message)."""


def run_image_script(
    tag: str | None, owner: str | None, **env: str
) -> subprocess.CompletedProcess[str]:
    """``ops/containers/image.sh`` for ``tag`` as ``owner`` (None: the script's defaults, from
    the environment); ``env`` adds variables, e.g. ``P2PCHAT_REPLACE``. The finished process,
    whatever its exit code."""
    environ = dict(os.environ)
    for name, value in (("P2PCHAT_IMAGE", tag), ("P2PCHAT_OWNER", owner)):
        if value is not None:
            environ[name] = value
    if tag is not None:
        environ.pop("IMAGE", None)  # the older name of P2PCHAT_IMAGE
    environ.pop("P2PCHAT_REPLACE", None)
    environ.update(env)
    try:
        return subprocess.run(
            [str(IMAGE_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            env=environ,
        )
    except subprocess.TimeoutExpired as error:
        raise ImageError(f"{IMAGE_SCRIPT.name} did not finish in {BUILD_TIMEOUT:.0f} s") from error


def build(tag: str | None = RUN_IMAGE, owner: str | None = RUN_OWNER) -> str:
    """Build (or reuse) the image under ``tag`` as ``owner`` (None: the script's defaults,
    ``make image``'s); its tag. Raises ImageError."""
    result = run_image_script(tag, owner)
    if result.returncode != 0:
        raise ImageError(
            f"{IMAGE_SCRIPT.name} failed (exit {result.returncode}); no image, no container "
            f"tests:\n{result.stderr[-4000:]}"
        )
    return result.stdout.strip().splitlines()[-1]


def label_of(ref: str, label: str) -> str | None:
    """The value of ``label`` on the image ``ref`` names ("" without that label); None when
    there is no such image."""
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        return None
    labels = json.loads(result.stdout.strip() or "null") or {}
    return str(labels.get(label, ""))


def owner_of(tag: str) -> str | None:
    """The owner label of the image ``tag`` names; None when there is no such image."""
    return label_of(tag, OWNER_LABEL)


def remove(tag: str = RUN_IMAGE, owner: str = RUN_OWNER) -> bool:
    """Remove the tag (and its image, when no other tag or container uses it) if it names an
    image labelled as ``owner``'s; whether it did."""
    if owner_of(tag) != owner:
        return False
    result = subprocess.run(
        ["docker", "image", "rm", tag], capture_output=True, timeout=120, check=False
    )
    return result.returncode == 0


@functools.cache
def build_image() -> str:
    """This run's image (``p2pchat:test-<run id>``), built once per session."""
    try:
        return build()
    except ImageError as error:
        pytest.fail(str(error))
