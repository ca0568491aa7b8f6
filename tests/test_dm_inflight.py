"""A direct message still being sent when its sender stops is not lost (issue #19): it is kept
in the waiting store from its first attempt until acknowledged, sent again after the restart,
and shown once by the recipient. Real ``p2pchat --json`` processes on 127.0.0.1; the recipient
is frozen (SIGSTOP) so that the first attempt cannot finish before the sender is killed."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.conftest import NodeProcess
from tests.test_dm import WAIT, connected, direct_from, msg
from tests.test_json_contract import chat_peer


def test_a_message_in_flight_at_shutdown_is_sent_after_the_restart(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    b, _ = chat_peer(tmp_path / "b", nodes)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", b.addr())
    connected(b, a)
    assert msg(a, b.peer_id, "warm up", 1)["kind"] == "dm_delivered"
    direct_from(b, a.peer_id, "warm up")

    b.proc.send_signal(signal.SIGSTOP)  # connected, but answers nothing
    try:
        pending = msg(a, b.peer_id, "said as you froze", 2)
        # The send is still running (no answer yet), not refused nor given up.
        assert pending["kind"] == "dm_waiting", pending
        assert pending["data"]["reason"] == "no answer yet", pending
        # Killed outright (a crash, a power cut): a graceful stop would see the exchange fail
        # as its connections close, and keep it waiting even without the waiting store.
        assert a.stop(signal.SIGKILL) == -signal.SIGKILL
        nodes.remove(a)
    finally:
        b.proc.send_signal(signal.SIGCONT)

    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", b.addr())
    got = direct_from(b, a.peer_id, "said as you froze")
    assert got["id"] == pending["data"]["id"]
    delivered = a.next_event(
        lambda e: (
            e["type"] == "notice"
            and e["kind"] == "dm_delivered"
            and e["data"]["id"] == pending["data"]["id"]
        ),
        timeout=WAIT,
    )
    assert delivered["data"]["peer"] == b.peer_id
    # Shown once, whichever copy arrived first (the frozen stream's or the resent one).
    b.drain_events()
    shown = [e for e in b.chat if e["type"] == "direct" and e["text"] == "said as you froze"]
    assert len(shown) == 1, shown
    # Nothing waits any more: a further message goes straight through.
    assert msg(a, b.peer_id, "after", 3)["kind"] == "dm_delivered"
