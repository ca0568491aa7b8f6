"""The one rate limit of refusal logs (node/refusals.py): its counting core and its levels."""

from __future__ import annotations

from p2pchat.node.refusals import RefusalCount, RefusalLog


def test_a_refusal_count_says_how_many_it_held_back() -> None:
    count = RefusalCount(every=10.0)
    assert count.note("yamux_window", 0.0) == 0  # the first is logged
    assert [count.note("yamux_window", t) for t in (1.0, 2.0, 9.9)] == [None, None, None]
    assert count.note("streams_per_peer", 5.0) == 0  # each reason has its own budget
    assert count.note("yamux_window", 10.0) == 3  # ... and the next says how many were not


def test_a_refusal_log_logs_at_its_level() -> None:
    lines: list[tuple[str, str]] = []

    class Log:
        def info(self, event: str, **fields: object) -> None:
            lines.append(("info", event))

        def warning(self, event: str, **fields: object) -> None:
            lines.append(("warning", event))

    now = [0.0]
    log = RefusalLog(Log(), "refused", every=10.0, clock=lambda: now[0], level="warning")  # type: ignore[arg-type]
    assert log.refused("total")
    assert not log.refused("total")
    assert lines == [("warning", "refused")]


def test_a_refusal_count_with_a_bound_forgets_the_reason_logged_longest_ago() -> None:
    # (the console's warning summaries count library records, whose names are not a fixed set)
    count = RefusalCount(every=10.0, most=2)
    assert count.note("a", 0.0) == 0
    assert count.note("b", 1.0) == 0
    assert count.note("a", 2.0) is None  # held back: "a" is still remembered
    assert count.note("c", 3.0) == 0  # a third reason: "a", logged longest ago, is forgotten
    assert count.note("a", 4.0) == 0  # ... so it is logged again at once, its count lost
    assert count.note("c", 5.0) is None and count.note("a", 6.0) is None  # both remembered
