"""Fixtures of the container NAT suite: the images (built once per session), and one topology
of ops/compose/nat.yml per NAT type, all brought up at once in the background as soon as the
first test needs one (each takes minutes until its peers have met), each taken down after the
last test of its module, and every one of them at the end of this package whatever happened
(which then checks that the engine holds nothing of them any more).

A missing engine or image fails the suite (CI never skips it). Shared machines: the node image is
this run's own tag and every topology a Compose project of its own (see lab.py); nothing of
another run or user is used or removed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import docker
import pytest

from tests.containers.image import RUN_IMAGE, RUN_OWNER, remove
from tests.nat.lab import MEET_WAIT, NATS, LabError, Topology, build_images, engine

SETUP_WAIT = 900.0  # building nothing new, starting and meeting: minutes; this is the bound


def _nats_wanted(session: pytest.Session) -> list[str]:
    wanted = {getattr(getattr(item, "module", None), "NAT", None) for item in session.items}
    return [nat for nat in NATS if nat in wanted]


def _meet(lab: Topology) -> Topology:
    """Bring ``lab`` up and wait until each peer sees the other in the room."""
    lab.up()
    a, b = lab.peers["peer-a"], lab.peers["peer-b"]
    for peer, other in ((a, b), (b, a)):
        peer.next_event(
            lambda e, other=other: (
                e["type"] == "peer" and e["change"] == "joined" and e["peer"] == other.peer_id
            ),
            timeout=MEET_WAIT,
        )
    return lab


class Labs:
    """The session's topologies by NAT type; :meth:`get` waits for one to be up and met."""

    def __init__(self, topologies: dict[str, Topology]) -> None:
        self.topologies = topologies
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(topologies)))
        self._started: dict[str, Future[Topology]] = {
            nat: self._executor.submit(_meet, lab) for nat, lab in topologies.items()
        }

    def get(self, nat: str) -> Topology:
        try:
            return self._started[nat].result(timeout=SETUP_WAIT)
        except LabError as error:
            pytest.fail(f"{nat} NAT lab: {error}")

    def close(self) -> list[str]:
        """Take every topology down; what the engine still holds of them (should be nothing)."""
        left: list[str] = []
        for lab in self.topologies.values():
            lab.stopping.set()
        for nat, lab in self.topologies.items():
            future = self._started[nat]
            future.cancel()
            if not future.cancelled():
                with contextlib.suppress(Exception):  # timed out: tear down anyway
                    future.exception(timeout=SETUP_WAIT)
            lab.down()
            left += lab.leftovers()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return left


@pytest.fixture(scope="session")
def lab_engine() -> docker.DockerClient:
    try:
        return engine()
    except LabError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def lab_images(lab_engine: docker.DockerClient) -> Iterator[tuple[str, str]]:
    """(node image, router image), built by ``make image``'s script and the base image's. The
    node image is this run's own tag, removed at the end of the session (only while the tag
    still names this run's image); the shared base image stays."""
    try:
        images = build_images(RUN_IMAGE, RUN_OWNER)
    except LabError as error:
        pytest.fail(str(error))
    yield images
    remove(RUN_IMAGE, RUN_OWNER)


@pytest.fixture(scope="package")
def labs(
    request: pytest.FixtureRequest,
    lab_engine: docker.DockerClient,
    lab_images: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Labs]:
    image, router_image = lab_images
    workdir = tmp_path_factory.mktemp("nat-lab")
    topologies = {
        nat: Topology(lab_engine, nat, image, router_image, workdir)
        for nat in _nats_wanted(request.session)
    }
    started = Labs(topologies)
    try:
        yield started
    finally:
        left = started.close()
        print(f"\nNAT lab logs: {workdir}")
        assert not left, f"the NAT labs left behind: {left}"


@pytest.fixture(scope="module")
def lab(labs: Labs, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """The topology of the module's ``NAT`` type, up and met; taken down after the module."""
    started = labs.get(request.module.NAT)
    yield started
    started.down()
