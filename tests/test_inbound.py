"""The inbound gate (node/p2p/inbound.py) between real in-process hosts: a connection takes one
slot, over TCP or WebSocket on a shared port, and gives it back when it closes (py-libp2p kept
it until the host stopped: trap 31)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

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


async def test_a_client_whose_first_write_is_one_byte_is_classified_on_a_shared_port(
    tmp_path: Path,
) -> None:
    # js-libp2p sends multistream-select's length byte on its own at times. The library
    # classified a connection to a TCP+WebSocket port on whatever one read returned: one byte
    # was no protocol it knew, and it cut the connection (2 of 6 js dials on loopback).
    async with running_host(tmp_path / "a") as (a, _):
        host, port = loopback_addr(a).split("/")[2], int(loopback_addr(a).split("/")[4])
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(b"\x13")
            await trio.sleep(0.3)
            await stream.send_all(b"/multistream/1.0.0\n")
            answer = b""
            with trio.fail_after(10):
                while b"/multistream/1.0.0\n" not in answer:
                    chunk = await stream.receive_some(64)
                    assert chunk, f"closed by the listener after {answer!r}"
                    answer += chunk
