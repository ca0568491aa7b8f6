"""Catch-up remembers when it asked each source for a bounded number of (room, source) pairs."""

from __future__ import annotations

from pathlib import Path

import structlog
from p2pchat.node.catchup import MAX_ASKED, CatchUp, QuietCatchUpObserver
from p2pchat.node.config import HistorySection
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.store import Store

from tests.catchup_fakes import MemorySources
from tests.peer_ids import fresh_peer_ids

FLOOD = 10_000
ROOM = "p2p-chat-default"


async def _nothing_to_show(room: str, new: list[StoredMessage], sources: list[str]) -> None:
    return None


def _catch_up(tmp_path: Path, client: MemorySources) -> CatchUp:
    store = Store.open(tmp_path / "store")
    return CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        History(store),
        client,
        HistorySection(catchup_sources=16),
        lambda: [ROOM],
        _nothing_to_show,
        QuietCatchUpObserver(),
        structlog.get_logger(),
    )


async def test_a_flood_of_fresh_sources_is_remembered_up_to_the_bound(tmp_path: Path) -> None:
    client = MemorySources()
    catch_up = _catch_up(tmp_path, client)
    sources = list(fresh_peer_ids(FLOOD))
    for first in range(0, FLOOD, 16):
        await catch_up.catch_up(ROOM, sources[first : first + 16])
        assert len(catch_up._asked) <= MAX_ASKED
    assert sorted(client.asked) == sorted(sources)  # sources of one catch-up are asked at once
    assert set(catch_up._asked) == {(ROOM, source) for source in sources[-MAX_ASKED:]}
    # Asked lately: not asked again; forgotten: asked again.
    await catch_up.catch_up(ROOM, [sources[-1], sources[0]])
    assert client.asked[FLOOD:] == [sources[0]]


async def test_a_source_that_disconnected_is_asked_again_at_once(tmp_path: Path) -> None:
    client = MemorySources()
    catch_up = _catch_up(tmp_path, client)
    source, other = fresh_peer_ids(2)
    await catch_up.catch_up(ROOM, [source, other])
    await catch_up.catch_up(ROOM, [source, other])
    assert sorted(client.asked) == sorted([source, other])
    catch_up.connection_closed(ConnectionInfo(source, "inbound", "tcp", "/noise", "/yamux/1.0.0"))
    await catch_up.catch_up(ROOM, [source, other])
    assert client.asked[2:] == [source]


class _ClaimingHost:
    """Peers' roles as identify would have them (the only host method ordering reads)."""

    def __init__(self, archivers: set[str]) -> None:
        self._archivers = archivers

    def peer_roles(self, peer: str) -> frozenset[str] | None:
        return frozenset({"archiver"}) if peer in self._archivers else frozenset({"peer"})


def test_peers_claiming_to_be_archivers_never_take_every_place_of_a_catch_up(
    tmp_path: Path,
) -> None:
    claimants = [f"claims-archiver-{n}" for n in range(5)]
    catch_up = _catch_up(tmp_path, MemorySources())  # catchup_sources=16
    catch_up._settings = HistorySection(catchup_sources=3)
    catch_up._host = _ClaimingHost(set(claimants))  # type: ignore[assignment]
    order = catch_up._archivers_first(["chat-peer", *claimants])
    assert order[:3] == [claimants[0], claimants[1], "chat-peer"]  # one place kept for it
    assert sorted(order) == sorted(["chat-peer", *claimants])
    assert catch_up._archivers_first(claimants) == claimants  # no chat peer: all archivers
    assert catch_up._archivers_first(["a-peer", "b-peer"]) == ["a-peer", "b-peer"]
