"""Which tests may run side by side when ``make unit`` runs the suite on several pytest-xdist
workers (``pytest -n N --dist loadgroup``).

Most tests wait on real ``p2pchat`` processes and sockets, so several at once use the two cores
far better than one after another. Some must not share the machine with tests like themselves:

- the hostile suite measures a victim's RSS and fds and the honest delivery under an attack
  (two attacks at once would measure each other);
- the labs: the container suites build this process's image tag (once per worker that runs
  any of them: tests/containers/image.py) and wait minutes for topologies to meet; the
  network-namespace labs (NAT routers, hole punching with its timed simultaneous open, mDNS,
  links cut with iptables) depend on timings that a loaded machine stretches;
- the Ansible test deploys into one container, a playbook run after another.

Each group below runs on ONE worker, one test after another, in collection order (module and
package fixtures then live once); tests in no group are spread over the workers one by one.
Groups are given by path, not by marker, so that a new file under a listed directory (other
changes add tests/hostile files all the time) is scheduled with its kind without anyone
remembering to mark it; tests/test_scheduling.py checks that every listed path exists.

Without ``-n`` (a developer's ``pytest tests/test_x.py``) the groups change nothing.
"""

from __future__ import annotations

from xdist.scheduler import LoadGroupScheduling

# group -> paths relative to the repository root: a directory (trailing "/") or one file.
SERIAL_GROUPS: dict[str, tuple[str, ...]] = {
    "hostile": ("tests/hostile/",),
    # Its own group: the longest suite after the hostile one (minutes of playbook runs), and it
    # shares nothing with the labs but the daemon.
    "ansible": ("tests/test_ansible.py",),
    "labs": (
        "tests/containers/",
        "tests/nat/",
        "tests/test_holepunch.py",
        "tests/test_holepunch_simultaneous.py",
        "tests/test_interop_js_dcutr.py",
        "tests/test_interop_go_dcutr.py",
        "tests/test_interop_rust_dcutr.py",
        "tests/test_mdns.py",
        "tests/test_catchup_reconnect.py",
        "tests/test_relayed_nat_chat.py",
    ),
}


def group_of(path: str) -> str | None:
    """The serial group of the test file at ``path`` (relative to the root, "/"-separated);
    None when it may run beside anything."""
    for group, prefixes in SERIAL_GROUPS.items():
        for prefix in prefixes:
            if path == prefix or (prefix.endswith("/") and path.startswith(prefix)):
                return group
    return None


class PathGroupScheduling(LoadGroupScheduling):
    """``--dist loadgroup`` with the groups above: a test's work unit is its path's group (all
    of the group's tests go to one worker, in order), else the test alone (any worker).

    It reads the group from the node id's path, on the controller. pytest-xdist 3.8's own
    loadgroup cannot be fed by marking items: it appends ``@group`` to ``item._nodeid`` on the
    workers, which pytest 9.2's structured node ids no longer read, so marked tests are spread
    silently (pytest-dev/pytest-xdist#1386, seen here: a group ran on two workers).
    """

    def _split_scope(self, nodeid: str) -> str:
        group = group_of(nodeid.split("::", 1)[0])
        return f"serial:{group}" if group is not None else super()._split_scope(nodeid)
