"""The per-sender budget of a room (sans-IO): burst then rate, new senders through the room's
shared budget, a bounded table."""

from __future__ import annotations

import pytest
from p2pchat.node.p2p.sender_budget import (
    FLOOD,
    FLOOD_NEW,
    BudgetSettings,
    RoomBudget,
)


def admitted(budget: RoomBudget, sender: str, count: int, now: float) -> int:
    return sum(budget.admit(sender, now) is None for _ in range(count))


def test_a_sender_gets_its_burst_then_its_rate() -> None:
    budget = RoomBudget(BudgetSettings(rate=5, burst=50, new_rate=1, new_burst=1))
    assert admitted(budget, "alice", 100, now=0.0) == 50  # the burst
    assert budget.admit("alice", 0.0) == FLOOD
    assert admitted(budget, "alice", 100, now=100.0) == 50  # refilled to the burst, no more
    assert admitted(budget, "alice", 100, now=101.0) == 5  # then the rate
    assert admitted(budget, "alice", 100, now=101.5) == 2


def test_a_refusal_spends_nothing() -> None:
    budget = RoomBudget(BudgetSettings(rate=1, burst=1, new_rate=10, new_burst=10))
    assert budget.admit("a", 0.0) is None
    for _ in range(1000):
        assert budget.admit("a", 0.5) == FLOOD
    assert budget.admit("a", 1.0) is None  # the refused ones cost no tokens


def test_fresh_keys_share_the_rooms_new_sender_budget() -> None:
    budget = RoomBudget(BudgetSettings(rate=5, burst=50, new_rate=2, new_burst=20))
    verdicts = [budget.admit(f"sybil-{n}", 0.0) for n in range(100)]
    assert verdicts.count(None) == 20 and verdicts.count(FLOOD_NEW) == 80
    # One second later: two more fresh keys, however many are tried.
    verdicts = [budget.admit(f"late-{n}", 1.0) for n in range(100)]
    assert verdicts.count(None) == 2
    # A sender already heard is not held back by the fresh keys.
    assert budget.admit("sybil-0", 1.0) is None


def test_fresh_keys_spend_only_the_budget_of_the_peer_they_come_through() -> None:
    budget = RoomBudget(BudgetSettings(rate=5, burst=50, new_rate=2, new_burst=20))
    flood = [budget.admit(f"sybil-{n}", 0.0, via="mallory") for n in range(100)]
    assert flood.count(None) == 20
    # An honest newcomer relayed by another peer is not starved by them.
    assert budget.admit("newcomer", 0.0, via="honest relay") is None


def test_the_table_is_bounded_and_forgets_the_least_recently_heard() -> None:
    budget = RoomBudget(
        BudgetSettings(rate=1, burst=1, new_rate=1000, new_burst=1000, max_senders=3)
    )
    for sender in ("a", "b", "c", "d"):
        assert budget.admit(sender, 0.0) is None
    assert len(budget) == 3
    assert budget.admit("b", 0.0) == FLOOD  # b, c, d are kept; a was forgotten
    assert budget.admit("a", 0.0) is None  # a comes back as a new sender


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        BudgetSettings(rate=0)
    with pytest.raises(ValueError):
        BudgetSettings(max_senders=0)
