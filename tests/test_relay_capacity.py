"""The relay carries many go-libp2p conversations at once, every message delivered (#21, 5).

A small run of the capacity benchmark (tests/bench/relay_capacity.py): a real relay process
and the Go load generator (tests/interop/go/cmd/load, built by `make load-go`, a prerequisite
of `make unit`) with ``PAIRS`` conversations, each two go-libp2p hosts over one circuit through the
relay, exchanging chat-sized messages for a few seconds. It also keeps the benchmark's
generator and driver working.
"""

from __future__ import annotations

import pytest

from tests.bench.relay_capacity import LOAD, capacity_step

PAIRS = 12


def test_relay_carries_concurrent_go_conversations_without_loss() -> None:
    if not LOAD.exists():
        pytest.fail(f"{LOAD} is missing: run `make load-go` (needs Go; README, Measurements)")
    result = capacity_step(PAIRS, seconds=6)
    assert result["established"] == PAIRS, result
    assert result["setup_failures"] == {}, result
    # 12 conversations at 1 msg/s for 6 s: about 72 messages, all due in the window
    assert result["messages"] >= PAIRS * 5, result
    assert result["lost"] == 0, result
    assert result["stream_errors"] == 0, result
    # The relay carried them: the generator's messages plus the relayed connections' own
    # Yamux and Noise, never less than the messages' bytes.
    assert result["relayed_bytes_per_message"] >= result["message_bytes"], result
