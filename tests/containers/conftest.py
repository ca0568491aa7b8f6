"""Fixtures of the container suites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containers.image import build_image, remove


@pytest.fixture(scope="session")
def p2pchat_image() -> Iterator[str]:
    """This run's image tag (``p2pchat:test-<run id>``), built once per session (``make
    image``'s script) and removed at its end: only that tag, and only while it is this run's."""
    yield build_image()
    remove()
