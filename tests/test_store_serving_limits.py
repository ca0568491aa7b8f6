"""The history server's budgets, sans-IO: bytes per key with debt, stream slots shared by
address group, and refusals logged at a bounded rate."""

from __future__ import annotations

import pytest
import trio
from p2pchat.node.ratelimit import DebtBudget
from p2pchat.node.refusals import RefusalLog
from p2pchat.node.store_server import StreamSlot, StreamSlots
from p2pchat.node.wire.framing import FrameDecoder
from p2pchat.node.wire.store_query import Reply, Status, decode_reply, encode_reply

MIB = 1024**2


def test_a_byte_budget_admits_while_positive_and_charges_the_real_cost() -> None:
    budget = DebtBudget(rate=MIB, burst=4 * MIB)
    assert budget.wait("p", now=0) == 0
    budget.charge("p", 2 * MIB, now=0)
    assert budget.wait("p", now=0) == 0  # 2 MiB left
    budget.charge("p", 3 * MIB, now=0)  # a page bigger than the balance: 1 MiB of debt
    assert budget.wait("p", now=0) == pytest.approx(1 + 1 / MIB)
    assert budget.wait("p", now=0.5) > 0
    assert budget.wait("p", now=1.01) == 0
    assert budget.wait("other", now=0) == 0  # per key


def test_served_bytes_over_a_window_are_bounded_by_burst_plus_rate() -> None:
    budget = DebtBudget(rate=MIB, burst=4 * MIB)
    served, page, now = 0, 2 * MIB, 0.0
    while now < 10:  # a greedy client asking every 10 ms for 10 s
        if budget.wait("p", now) == 0:
            budget.charge("p", page, now)
            served += page
        now += 0.01
    assert served <= 4 * MIB + 10 * MIB + page


def test_byte_budget_memory_is_bounded() -> None:
    budget = DebtBudget(rate=1, burst=1, max_keys=100)
    for n in range(10_000):
        budget.charge(f"p{n}", 5, now=n)
    assert len(budget) == 100


def test_stream_slots_per_peer_and_per_group() -> None:
    slots = StreamSlots(total=100, per_peer=2, per_group=3)
    assert isinstance(slots.admit("a", "g1", 0), StreamSlot)
    assert isinstance(slots.admit("a", "g1", 0), StreamSlot)
    assert slots.admit("a", "g1", 0) == "peer_streams"
    assert isinstance(slots.admit("b", "g1", 0), StreamSlot)
    assert slots.admit("c", "g1", 0) == "group_streams"
    assert isinstance(slots.admit("c", "g2", 0), StreamSlot)


async def test_a_full_server_takes_an_idle_slot_back_from_the_biggest_group() -> None:
    slots = StreamSlots(total=4, per_peer=4, per_group=4)
    held = [slots.admit(f"m{n}", "mallory", float(n)) for n in range(4)]
    assert all(isinstance(s, StreamSlot) for s in held)
    scopes = []
    for slot in held:
        assert isinstance(slot, StreamSlot)
        slot.scope = trio.CancelScope()
        scopes.append(slot.scope)
    assert isinstance(held[1], StreamSlot)
    held[0].idle_since = None  # type: ignore[union-attr]  # busy answering: never evicted
    honest = slots.admit("alice", "alice-net", 10)
    assert isinstance(honest, StreamSlot)
    # The longest idle of the biggest group went (held[0] was busy), its scope cancelled.
    assert held[1].evicted and scopes[1].cancel_called and not scopes[0].cancel_called
    assert len(slots) == 4
    # Groups as big as each other (within one) do not take slots from each other.
    even = StreamSlots(total=2, per_peer=4, per_group=4)
    assert isinstance(even.admit("a", "g1", 0), StreamSlot)
    assert isinstance(even.admit("b", "g2", 0), StreamSlot)
    assert even.admit("c", "g3", 1) == "total_streams"


def test_release_is_idempotent() -> None:
    slots = StreamSlots(total=1, per_peer=1, per_group=1)
    slot = slots.admit("a", "g", 0)
    assert isinstance(slot, StreamSlot)
    slots.release(slot)
    slots.release(slot)
    assert len(slots) == 0 and isinstance(slots.admit("a", "g", 0), StreamSlot)


def test_a_refusal_carries_its_retry_hint_on_the_wire() -> None:
    reply = Reply(7, Status.TOO_MANY_REQUESTS, "peer bytes limit", retry_after_ms=1500)
    [payload] = FrameDecoder(1 << 22).feed(encode_reply(reply))
    assert decode_reply(payload) == reply


class _Log:
    def __init__(self) -> None:
        self.lines: list[dict[str, object]] = []

    def info(self, event: str, **fields: object) -> None:
        self.lines.append({"event": event, **fields})


def test_refusals_are_logged_once_a_minute_per_reason_with_the_count_between() -> None:
    now = [0.0]
    log = _Log()
    refusals = RefusalLog(log, "refused", clock=lambda: now[0])  # type: ignore[arg-type]
    assert refusals.refused("peer_bytes")
    for _ in range(1000):
        assert not refusals.refused("peer_bytes")
    assert refusals.refused("read_timeout")  # another reason has its own minute
    now[0] = 61
    assert refusals.refused("peer_bytes")
    assert [line["since_last_logged"] for line in log.lines] == [0, 0, 1000]
