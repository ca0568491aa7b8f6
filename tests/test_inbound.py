"""The inbound gate (node/p2p/inbound.py) between real in-process hosts: a connection takes one
slot, over TCP or WebSocket on a shared port, and gives it back when it closes (py-libp2p kept
it until the host stopped: trap 31)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_host import loopback_addr, running_host, wait_until


@pytest.mark.parametrize("transport", ["tcp", "ws"])
async def test_a_connection_holds_one_slot_until_it_closes(tmp_path: Path, transport: str) -> None:
    async with running_host(tmp_path / "a") as (a, _), running_host(tmp_path / "b") as (b, _):
        for _ in range(3):
            await b.connect(loopback_addr(a, ws=transport == "ws"))
            # Identified (a knows b's protocols): established, no longer transient.
            await wait_until(lambda: a.admission.total == 1 and a.admission.transient == 0)
            assert a.admission.group_count("127.0.0.1/32") == 1
            await b.disconnect(a.peer_id)
            await wait_until(lambda: a.admission.total == 0)


async def test_a_returning_peer_is_not_kept_waiting_for_an_identify_that_never_comes(
    tmp_path: Path,
) -> None:
    # py-libp2p identifies a peer once: a returning one has its protocols in the peerstore and
    # is not identified again. Its connection must not wait for identify (and die at the
    # deadline): it is established at once.
    async with running_host(tmp_path / "a") as (a, _), running_host(tmp_path / "b") as (b, _):
        await b.connect(loopback_addr(a))
        await wait_until(lambda: a.admission.total == 1 and a.admission.transient == 0)
        await b.disconnect(a.peer_id)
        await wait_until(lambda: a.admission.total == 0)
        await b.connect(loopback_addr(a))
        # Well before the transient deadline (15 s), and still connected.
        await wait_until(lambda: a.admission.total == 1 and a.admission.transient == 0, 10)
        assert a.is_connected(b.peer_id)
