"""The control of the hostile suite: with no attacker, the harness measures full delivery.

If this fails, the suite's delivery figures measure the harness, not the attacks.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import NodeProcess
from tests.hostile.harness import Footprint, HonestChat, chat_peer, report


def test_without_an_attacker_honest_chat_through_the_victim_is_whole(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    victim = chat_peer(tmp_path / "victim", nodes)
    chat = HonestChat.through(victim, tmp_path, nodes)
    with Footprint(victim.proc.pid) as footprint:
        chat.start(rate=5.0)
        time.sleep(5)
        delivery = chat.stop()
    assert chat.sent >= 10
    assert delivery == 1.0, f"{chat.delivered} of {chat.sent} delivered with no attacker"
    footprint.assert_fds_back()
    report("none (control)", footprint, delivery, sent=chat.sent)
