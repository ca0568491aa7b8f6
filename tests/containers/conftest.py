"""Fixtures of the container suites."""

from __future__ import annotations

import pytest

from tests.containers.image import build_image


@pytest.fixture(scope="session")
def p2pchat_image() -> str:
    """The p2pchat image's tag, built once per session (``make image``)."""
    return build_image()
