"""Shared machines: the NAT labs of two runs never share a name, and a lab removes only what it
created. Both labs: the namespace lab of tests/nat_lab.py (real namespaces; needs root and
iproute2, as its suites do) and the Compose topologies of lab.py (names only: nothing is
brought up here).
"""

from __future__ import annotations

import subprocess
import types
from pathlib import Path

import pytest

import tests.nat_lab as nat_lab_module
from tests.nat.lab import PROJECT_PREFIX, Topology, engine
from tests.nat_lab import Lab, nat_lab


def _namespaces() -> set[str]:
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    )
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def _names(lab: Lab) -> set[str]:
    return {lab.relay_ns, lab.dialer_ns, lab.listener_ns, *lab.routers}


def test_two_namespace_labs_side_by_side_have_their_own_names() -> None:
    with nat_lab("port-preserving") as first, nat_lab("port-preserving", "10.78.0") as second:
        assert not _names(first) & _names(second)
        assert _names(first) | _names(second) <= _namespaces()
        assert all(name.startswith(f"{nat_lab_module.PREFIX}-") for name in _names(first))
        assert first.outside_ip(first.dialer_ns) == "10.77.0.2"
        assert second.outside_ip(second.listener_ns) == "10.78.0.3"
    assert not (_names(first) | _names(second)) & _namespaces()


def test_a_lab_whose_names_are_taken_fails_and_leaves_the_other_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The same tag twice: the second lab finds the first's names taken.
    monkeypatch.setattr(
        nat_lab_module, "secrets", types.SimpleNamespace(token_hex=lambda _: "0a0b0c")
    )
    with nat_lab("port-preserving") as first:
        with pytest.raises(RuntimeError, match="ip netns add"), nat_lab("symmetric", "10.78.0"):
            pass
        # The first lab is whole: its namespaces and their links are still there.
        assert _names(first) <= _namespaces()
        links = subprocess.run(
            ["ip", "-n", first.relay_ns, "-o", "link", "show", "master", "br0"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert len(links.stdout.splitlines()) == 2, links.stdout
    assert not _names(first) & _namespaces()


def test_compose_topologies_get_unique_project_names(tmp_path: Path) -> None:
    client = engine()
    labs = [
        Topology(client, "port-preserving", "unused:image", "unused:image", tmp_path)
        for _ in range(2)
    ]
    projects = {lab.project for lab in labs}
    assert len(projects) == 2
    assert all(project.startswith(f"{PROJECT_PREFIX}-nat-") for project in projects)
    assert labs[0].net != labs[1].net  # and subnets of their own
    for lab in labs:
        assert lab.leftovers() == []  # nothing was created
