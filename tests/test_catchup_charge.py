"""Catch-up charged per sender (#18): the sans-IO charge, and a catch-up on a real RocksDB
history fed by a source serving sybils."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import structlog
from p2pchat.node.catchup import MAX_STRANGERS, CatchUp, QuietCatchUpObserver
from p2pchat.node.catchup_charge import NEWCOMERS, SENDER_SHARE, ChargeSettings, charge
from p2pchat.node.catchup_sources import SOURCE, SourceAllowance
from p2pchat.node.config import HistorySection
from p2pchat.node.history import History, StoredMessage
from p2pchat.node.p2p.host import ConnectionInfo
from p2pchat.node.store import Store

from tests.catchup_fakes import MemorySources

ROOM = "room"


def msg(text: str, sender: str, sent_at_ms: int) -> StoredMessage:
    return StoredMessage(
        room=ROOM,
        message_id=hashlib.sha256(text.encode()).digest()[:16],
        sent_at_ms=sent_at_ms,
        received_at_ms=sent_at_ms,
        sender=sender,
        envelope=text.encode(),
    )


def sybils(count: int, each: int, first_ms: int) -> list[StoredMessage]:
    flood = [
        msg(f"sybil-{s}-{n}", f"sybil-{s}", first_ms + n * count + s)
        for s in range(count)
        for n in range(each)
    ]
    return sorted(flood, key=lambda m: (m.sent_at_ms, m.message_id))


def test_one_big_sender_brings_its_share_its_newest() -> None:
    big = [msg(f"big-{n}", "mallory", n) for n in range(500)]
    result = charge(big, lambda s: 40, 50, ChargeSettings(100, 0.1, 0.1))
    assert [m.sent_at_ms for m in result.admitted] == list(range(490, 500))
    assert result.refused == {SENDER_SHARE: 490}


def test_newcomers_share_a_tenth_of_the_cap_level_by_level() -> None:
    honest = [msg(f"carol-{n}", "carol", 10_000 + n) for n in range(3)]
    known = [msg(f"alice-{n}", "alice", 20_000 + n) for n in range(5)]
    offered = sorted(
        sybils(200, 10, 0) + honest + known, key=lambda m: (m.sent_at_ms, m.message_id)
    )
    held = {"alice": 5}
    # 35 places are free, but the newcomers share 10% of the cap: 10, one each.
    result = charge(offered, lambda s: held.get(s, 0), 60, ChargeSettings(100, 0.1, 0.1))
    senders = [m.sender for m in result.admitted]
    assert senders.count("alice") == 5  # known senders within their share are not charged here
    strangers = [s for s in senders if s != "alice"]
    assert len(strangers) == 10 and len(set(strangers)) == 10
    assert result.refused == {NEWCOMERS: 2000 + 3 - 10}
    assert result.newcomers == set(strangers)
    # A bigger share: the level rises, Carol's 3 fit under it, the sybils get 3 or 4 each.
    wide = charge(offered, lambda s: held.get(s, 0), 60, ChargeSettings(1000, 0.1, 0.7))
    assert [m.sender for m in wide.admitted].count("carol") == 3
    assert len(wide.admitted) == 5 + 700


def test_a_first_join_takes_the_whole_cap_shared_out_and_no_share_applies() -> None:
    offered = sybils(20, 10, 0)
    result = charge(offered, lambda s: 0, 0, ChargeSettings(100, 0.1, 0.1))
    assert len(result.admitted) == 100 and result.refused == {NEWCOMERS: 100}
    one = [msg(f"carol-{n}", "carol", n) for n in range(60)]  # one sender, 6 shares: all fit
    assert charge(one, lambda s: 0, 0, ChargeSettings(100, 0.1, 0.1)).admitted == one


def test_what_fits_is_all_admitted() -> None:
    offered = sybils(5, 4, 0)
    result = charge(offered, lambda s: 0, 0, ChargeSettings(100, 0.1, 0.1))
    assert result.admitted == offered and result.refused == {}


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        ChargeSettings(0, 0.1, 0.1)
    with pytest.raises(ValueError):
        ChargeSettings(10, 0.1, 0.0)


class _Refusals(QuietCatchUpObserver):
    """The quiet observer, remembering the refusals it is told of."""

    def __init__(self) -> None:
        self.counted: dict[str, int] = {}

    def refused(self, reason: str, count: int) -> None:
        self.counted[reason] = self.counted.get(reason, 0) + count


async def _nothing_to_show(room: str, new: list[StoredMessage], sources: list[str]) -> None:
    return None


def _sources(served: dict[str, tuple[list[StoredMessage], str | None]]) -> MemorySources:
    """Sources by PeerId, each serving what it was given from the address it was given."""
    return MemorySources(
        {peer: messages for peer, (messages, _) in served.items()},
        ips={peer: ip for peer, (_, ip) in served.items() if ip is not None},
    )


@pytest.mark.parametrize("charged", [True, False])
async def test_a_source_serving_sybils_cannot_push_the_honest_history_out(
    tmp_path: Path, charged: bool
) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    honest = [msg(f"h-{n}", "alice" if n % 2 else "bob", n) for n in range(60)]
    history.add_many(honest)
    observer = _Refusals()
    cap = 100

    def trim(room: str) -> int:
        return history.apply_retention(
            room, max_count=cap, max_age_ms=None, now_ms=0, sender_share=0.1
        )

    catch_up = CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        history,
        MemorySources(everywhere=honest + sybils(200, 10, 1_000)),
        HistorySection(),
        lambda: [ROOM],
        _nothing_to_show,
        observer,
        structlog.get_logger(),
        charged=ChargeSettings(cap, 0.1, 0.1) if charged else None,
        trim=trim,
    )
    await catch_up.catch_up(ROOM, ["hostile"])
    kept = {m.message_id for m in history.range(ROOM, 0)}
    survived = sum(m.message_id in kept for m in honest)
    if charged:
        assert survived == 60 and history.count(ROOM) == 60 + 10
        assert observer.counted == {NEWCOMERS: 2000 - 10}
    else:  # the negative control: the sybils' newer messages pushed every honest one out
        assert survived == 0 and observer.counted == {}
    store.close()


@pytest.mark.parametrize("remembered", [True, False])
async def test_sybils_brought_in_once_stay_newcomers_at_the_next_catch_up(
    tmp_path: Path, remembered: bool
) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    honest = [msg(f"h-{n}", "alice", n) for n in range(60)]
    history.add_many(honest)
    source = MemorySources(everywhere=sybils(200, 10, 1_000))

    def trim(room: str) -> int:
        return history.apply_retention(
            room, max_count=100, max_age_ms=None, now_ms=0, sender_share=0.1
        )

    catch_up = CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        history,
        source,
        HistorySection(),
        lambda: [ROOM],
        _nothing_to_show,
        _Refusals(),
        structlog.get_logger(),
        charged=ChargeSettings(100, 0.1, 0.1),
        trim=trim,
    )
    await catch_up.catch_up(ROOM, ["hostile"])
    assert len(catch_up._strangers) == 10  # 10% of the cap, one message each
    # It comes back (a reconnect asks again at once) with newer messages of the same sybils.
    source.messages = sybils(200, 10, 1_000_000)
    catch_up.connection_closed(ConnectionInfo("hostile", "inbound", "tcp", "/noise", "/yamux"))
    if not remembered:  # the negative control: the 10 count by what they hold (1 each)
        catch_up._strangers.clear()
    await catch_up.catch_up(ROOM, ["hostile"])
    kept = {m.message_id for m in history.range(ROOM, 0)}
    survived = sum(m.message_id in kept for m in honest)
    if remembered:  # the newcomers' 10% of the cap again: 80 held, under the cap
        assert survived == 60 and history.count(ROOM) == 80
    else:  # each of the 10 brought a share (10): 100 more, and the trim took all of Alice's
        assert survived == 0
    store.close()


async def test_the_strangers_remembered_are_bounded(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    flood = [msg(f"s-{n}", f"sybil-{n}", n) for n in range(MAX_STRANGERS + 2000)]
    catch_up = CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        history,
        MemorySources(everywhere=flood),
        HistorySection(),
        lambda: [ROOM],
        _nothing_to_show,
        _Refusals(),
        structlog.get_logger(),
        charged=ChargeSettings(100_000, 0.1, 0.1),  # an empty room: every one of them fits
    )
    assert await catch_up.catch_up(ROOM, ["hostile"]) == len(flood)
    assert len(catch_up._strangers) == MAX_STRANGERS
    store.close()


def test_a_source_allowance_is_per_peer_and_per_group_and_refills() -> None:
    allowance = SourceAllowance(10, 100.0)
    flood = sybils(20, 1, 0)
    sources_of = {m.message_id: ["mallory"] for m in flood}
    groups = {"mallory": "192.0.2.7/32", "eve": "192.0.2.7/32", "carol": "198.51.100.1/32"}
    admitted, refused = allowance.admit(ROOM, flood, sources_of, groups, 0.0)
    # Its newest 10, then nothing: not from it, nor from another PeerId at its address.
    assert admitted == {m.message_id for m in flood[10:]} and refused == 10
    assert allowance.admit(ROOM, flood[:10], sources_of, groups, 1.0) == (set(), 10)
    eve = {m.message_id: ["eve"] for m in flood}
    assert allowance.admit(ROOM, flood[:1], eve, groups, 1.0) == (set(), 1)
    # Another address pays for what both returned; another room has its own allowance.
    both = {m.message_id: ["mallory", "carol"] for m in flood}
    assert allowance.admit(ROOM, flood[:5], both, groups, 1.0)[1] == 0
    assert allowance.admit("other", flood[:5], sources_of, groups, 1.0)[1] == 0
    # A tenth of the window later, one message more.
    assert len(allowance.admit(ROOM, flood[:5], sources_of, groups, 11.0)[0]) == 1
    with pytest.raises(ValueError):
        SourceAllowance(0, 1.0)


def _repeat_catch_up(
    tmp_path: Path, source: object, per_source: SourceAllowance | None
) -> tuple[History, Store, CatchUp]:
    store = Store.open(tmp_path / "store")
    history = History(store)
    history.add_many([msg(f"h-{n}", "alice", n) for n in range(60)])

    def trim(room: str) -> int:
        return history.apply_retention(
            room, max_count=100, max_age_ms=None, now_ms=0, sender_share=0.1
        )

    catch_up = CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        history,
        source,
        HistorySection(),
        lambda: [ROOM],
        _nothing_to_show,
        _Refusals(),
        structlog.get_logger(),
        charged=ChargeSettings(100, 0.1, 0.1),
        trim=trim,
        per_source=per_source,
    )
    return history, store, catch_up


@pytest.mark.parametrize("limited", [True, False])
async def test_a_source_reconnecting_cannot_bring_newcomers_again_and_again(
    tmp_path: Path, limited: bool
) -> None:
    source = _sources({"hostile": (sybils(200, 10, 1_000), "192.0.2.7")})
    allowance = SourceAllowance(10, 86_400.0) if limited else None
    history, store, catch_up = _repeat_catch_up(tmp_path, source, allowance)
    observer = catch_up._observer
    assert isinstance(observer, _Refusals)
    for _ in range(10):  # it disconnects and reconnects: each time a catch-up, asked at once
        await catch_up.catch_up(ROOM, ["hostile"])
        catch_up.connection_closed(ConnectionInfo("hostile", "inbound", "tcp", "/noise", "/yy"))
    alice = sum(m.sender == "alice" for m in history.range(ROOM, 0))
    if limited:  # the first catch-up's 10, then nothing more from it
        assert alice == 60 and history.count(ROOM) == 70
        assert observer.counted[SOURCE] == 9 * 10
    else:  # the negative control: 10 more each time; the trim cut Alice, over her share
        assert alice < 60 and history.count(ROOM) == 100 and SOURCE not in observer.counted
    store.close()


async def test_a_first_join_is_not_charged_to_its_source(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "store")
    history = History(store)
    flood = sybils(50, 1, 0)
    catch_up = CatchUp(
        None,  # type: ignore[arg-type]  # the host is only used by run()
        history,
        _sources({"archiver": (flood, "192.0.2.7")}),
        HistorySection(),
        lambda: [ROOM],
        _nothing_to_show,
        _Refusals(),
        structlog.get_logger(),
        charged=ChargeSettings(100, 0.1, 0.1),
        per_source=SourceAllowance(10, 86_400.0),
    )
    assert await catch_up.catch_up(ROOM, ["archiver"]) == 50
    store.close()


@pytest.mark.parametrize("heard", [True, False])
async def test_a_stranger_heard_live_is_charged_by_what_it_holds(
    tmp_path: Path, heard: bool
) -> None:
    first = [msg(f"s-{n}", f"sybil-{n}", 1_000 + n) for n in range(20)]
    source = _sources({"archiver": (first, None)})
    history, store, catch_up = _repeat_catch_up(tmp_path, source, None)
    await catch_up.catch_up(ROOM, ["archiver"])
    assert ("room", "sybil-0") in catch_up._strangers  # 10 of the 20, one each
    stranger = next(sender for (_, sender) in catch_up._strangers)
    if heard:  # it speaks live: its message passed the validator and its budget
        history.add_many([msg("live", stranger, 5_000)])
        catch_up.heard_live(ROOM, {stranger})
    # It was away, and said 15 more meanwhile; so did 9 senders never heard of.
    said = [msg(f"x-{n}", stranger, 6_000 + n) for n in range(15)]
    said += [
        msg(f"o-{n}-{k}", f"other-{n}", 7_000 + 10 * n + k) for n in range(9) for k in range(3)
    ]
    source.served["archiver"] = said
    catch_up.connection_closed(ConnectionInfo("archiver", "inbound", "tcp", "/noise", "/yy"))
    await catch_up.catch_up(ROOM, ["archiver"])
    brought = sum(m.sender == stranger and m.sent_at_ms >= 6_000 for m in history.range(ROOM, 0))
    # Known now: its share of the room (10). Still a stranger (the negative control): one of
    # the newcomers' 10, shared with the 9 others.
    assert brought == (10 if heard else 1)
    assert ((ROOM, stranger) in catch_up._strangers) is not heard
    store.close()


@pytest.mark.parametrize(
    ("second_ip", "shared"),
    [("2001:db8::2", True), ("2001:db8:0:1::1", False), ("192.0.2.7", False)],
)
async def test_sources_in_one_address_group_share_an_allowance(
    tmp_path: Path, second_ip: str | None, shared: bool
) -> None:
    # Two PeerIds, the second in the first's IPv6 /64 or not.
    source = _sources(
        {
            "one": (sybils(100, 10, 1_000), "2001:db8::1"),
            "two": (sybils(100, 10, 100_000), second_ip),
        }
    )
    history, store, catch_up = _repeat_catch_up(tmp_path, source, SourceAllowance(10, 86_400.0))
    await catch_up.catch_up(ROOM, ["one"])
    assert history.count(ROOM) == 70
    await catch_up.catch_up(ROOM, ["two"])
    assert history.count(ROOM) == (70 if shared else 80)
    store.close()


async def test_relayed_sources_share_one_allowance(tmp_path: Path) -> None:
    # Through a relay a new PeerId costs nothing: a source coming back as a new one each time
    # gets no new allowance.
    served = {f"fresh-{n}": (sybils(100, 10, 1_000 * (n + 1)), None) for n in range(3)}
    history, store, catch_up = _repeat_catch_up(
        tmp_path, _sources(served), SourceAllowance(10, 86_400.0)
    )
    for name in served:
        await catch_up.catch_up(ROOM, [name])
    assert history.count(ROOM) == 70
    store.close()
