"""No hole punch on every new circuit towards a peer whose punches keep failing (issue #21).

In the symmetric-NAT lab (tests/test_relayed_nat_chat.py) every punch fails, and each new relay
circuit brought another one (a direct dial and three DCUtR rounds, relayed). The backoff's rule
here; HolePunch asking it, with a host that records whether a punch was started at all.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from p2pchat.node.config import HolePunchSection
from p2pchat.node.holepunch import HolePunch, QuietHolePunchObserver
from p2pchat.node.punch_backoff import PunchBackoff

PEER = "12D3KooWPeerBehindASymmetricNat"


def test_punches_stop_after_failures_in_a_row_and_resume_later() -> None:
    backoff = PunchBackoff(give_up_after=2, retry_after=600)
    assert backoff.allowed(PEER, 0.0)
    backoff.failed(PEER, 10.0)
    assert backoff.allowed(PEER, 11.0)  # one failure: the next circuit still tries
    backoff.failed(PEER, 130.0)
    assert not backoff.allowed(PEER, 131.0)
    assert not backoff.allowed(PEER, 729.0)
    assert backoff.allowed(PEER, 730.0)  # retry_after since the last failure
    backoff.failed(PEER, 731.0)
    assert not backoff.allowed(PEER, 732.0)  # failed again: backed off again at once
    backoff.succeeded(PEER)
    assert backoff.allowed(PEER, 733.0) and len(backoff) == 0
    assert backoff.allowed("another peer", 131.0)


def test_the_peers_remembered_are_bounded() -> None:
    backoff = PunchBackoff(give_up_after=1, retry_after=600, max_peers=3)
    for n in range(10):
        backoff.failed(f"peer{n}", 1.0)
    assert len(backoff) == 3
    assert backoff.allowed("peer0", 2.0)  # forgotten: one more try
    assert not backoff.allowed("peer9", 2.0)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PunchBackoff(give_up_after=0, retry_after=600)
    with pytest.raises(ValueError):
        PunchBackoff(give_up_after=1, retry_after=-1)
    defaults = HolePunchSection()
    assert (defaults.give_up_after, defaults.retry_after) == (2, 600.0)


class _Host:
    """Enough of a host for HolePunch to start an initiator's work: it records each start
    (the first thing a punch does is look for DCUtR in the peer's identify) and says no."""

    def __init__(self) -> None:
        self.looked_up: list[str] = []

    def is_connected(self, peer: str) -> bool:
        self.looked_up.append(peer)
        return False


async def test_hole_punch_is_not_tried_on_each_new_circuit_after_failures() -> None:
    host = _Host()
    backoff = PunchBackoff(give_up_after=2, retry_after=600)
    punch = HolePunch(
        host,  # type: ignore[arg-type]
        QuietHolePunchObserver(),
        structlog.get_logger(),
        backoff=backoff,
    )
    hp: Any = punch
    await hp._initiate(PEER)
    assert host.looked_up == [PEER]
    hp._finished("initiator", PEER, 3, "failed")
    await hp._initiate(PEER)
    assert host.looked_up == [PEER] * 2
    hp._finished("initiator", PEER, 3, "failed")
    await hp._initiate(PEER)  # the third circuit: no punch
    assert host.looked_up == [PEER] * 2
    hp._finished("receiver", "other", 3, "failed")  # only our own punches count
    await hp._initiate("other")
    assert host.looked_up == [PEER, PEER, "other"]
