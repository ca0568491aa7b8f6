"""``make image`` on a shared machine (ops/containers/image.sh): it never replaces a tag whose
image it did not build for this owner, unless asked (``P2PCHAT_REPLACE=1``), and then leaves
the other image in place; test runs build under tags of their own and remove only those.

Real engine, real builds (the layers are cached by this session's image, so each build is
seconds). Every image made here carries this run's id and is removed at the end by it.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator

import pytest

from tests.containers.image import (
    OWNER_LABEL,
    RUN_ID,
    RUN_IMAGE,
    RUN_OWNER,
    label_of,
    owner_of,
    remove,
    run_image_script,
)

pytestmark = pytest.mark.slow

# A label on the stand-in for another user's image, so that this test removes only its own.
TEST_LABEL = "org.p2pchat.test-run"


def _image_id(tag: str) -> str:
    return subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()


def _stand_in(tag: str, owner: str | None) -> str:
    """Tag an empty image (from an empty tar, in a second) as someone else's would be: with no
    owner label (a user's own `docker build -t`, another tool) or another ``owner``'s. It
    carries this run's test label, by which only this test removes it. Its id."""
    empty = io.BytesIO()
    tarfile.open(fileobj=empty, mode="w").close()
    changes = ["--change", f"LABEL {TEST_LABEL}={RUN_ID}"]
    if owner is not None:
        changes += ["--change", f'LABEL {OWNER_LABEL}="{owner}"']
    subprocess.run(
        ["docker", "import", *changes, "-", tag],
        input=empty.getvalue(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    return _image_id(tag)


@pytest.fixture
def stand_ins() -> Iterator[dict[str, str]]:
    """Two tags of other people's images: "unlabelled" (no owner) and "other" (another
    owner's). Removed afterwards: this run's build under those tags, and the stand-ins."""
    tags = {
        "unlabelled": f"p2pchat-test-foreign:{RUN_ID}",
        "other": f"p2pchat-test-other:{RUN_ID}",
    }
    images = [
        _stand_in(tags["unlabelled"], None),
        _stand_in(tags["other"], f"someone else {RUN_ID}"),
    ]
    try:
        yield tags
    finally:
        for tag in tags.values():
            remove(tag, RUN_OWNER)  # this run's build, if a test made one under the tag
        for ref in [*tags.values(), *images]:
            if label_of(ref, TEST_LABEL) == RUN_ID:
                subprocess.run(["docker", "image", "rm", ref], capture_output=True, timeout=120)


def test_refuses_to_replace_a_tag_it_did_not_build(stand_ins: dict[str, str]) -> None:
    for kind, owner in (("unlabelled", "none"), ("other", f"someone else {RUN_ID}")):
        tag = stand_ins[kind]
        before = _image_id(tag)
        refused = run_image_script(tag, RUN_OWNER)
        assert refused.returncode != 0, kind
        # One clear line, and nothing built: the tag still names the other image.
        assert refused.stderr.splitlines()[-1] == (
            f"image: refusing to replace {tag}: it exists and was not built by make image "
            f"from here (owner: {owner}); pick another tag with P2PCHAT_IMAGE=..., or replace "
            "it with P2PCHAT_REPLACE=1"
        ), refused.stderr
        assert "docker build" not in refused.stderr
        assert _image_id(tag) == before


def test_replaces_when_asked_and_keeps_the_other_image(
    p2pchat_image: str, stand_ins: dict[str, str]
) -> None:
    foreign_tag = stand_ins["unlabelled"]
    before = _image_id(foreign_tag)
    replaced = run_image_script(foreign_tag, RUN_OWNER, P2PCHAT_REPLACE="1")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert replaced.stdout.strip().splitlines()[-1] == foreign_tag
    assert f"replacing {foreign_tag} (owner: none)" in replaced.stderr
    assert owner_of(foreign_tag) == RUN_OWNER
    # The image the tag used to name is still there (by id): it was not ours to delete.
    assert label_of(before, TEST_LABEL) == RUN_ID

    # Now the tag is ours: a rebuild goes ahead without being asked.
    again = run_image_script(foreign_tag, RUN_OWNER)
    assert again.returncode == 0, again.stderr[-3000:]


def test_a_run_builds_under_its_own_tag_and_label(p2pchat_image: str) -> None:
    assert p2pchat_image == RUN_IMAGE == f"p2pchat:test-{RUN_ID}"
    assert p2pchat_image != "p2pchat:local"
    assert label_of(p2pchat_image, OWNER_LABEL) == RUN_OWNER
    # remove() leaves a tag that is not this run's alone.
    assert not remove(p2pchat_image, f"someone else {RUN_ID}")
    assert owner_of(p2pchat_image) == RUN_OWNER
