"""Private rooms between real ``p2pchat --json`` processes on 127.0.0.1 (issue #19, Megolm):
three peers chat in a room the creator made and invited the others to; a removed member decrypts
nothing sent after its removal, even with a copy of the keys it held; an archiver of the room
stores and serves ciphertext only (its data dir and log hold none of the texts, while a public
room's text is found there: the search works)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import trio
from libp2p.peer.id import ID
from p2pchat.node.wire.chat import (
    PRIVATE_OVERHEAD_BYTES,
    ChatText,
    PrivateText,
    decode,
    encode,
    new_message_id,
)

from tests.conftest import NodeProcess, node_env, start_node, wait_metric
from tests.hostile.moderation_attacks import rogue
from tests.test_json_contract import answer, chat_peer
from tests.test_json_contract import seen as seen_event

WAIT = 60.0


def line(node: NodeProcess, text: str, ident: str) -> list[dict[str, Any]]:
    events = answer(node, {"id": ident, "line": text})
    assert events[-1]["ok"] is True, events
    return events


def notice(events: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [e for e in events if e["type"] == "notice" and e["kind"] == kind]
    assert found, events
    return found[0]


def seen_text(node: NodeProcess, text: str) -> bool:
    return any(e["type"] == "message" and e["text"] == text for e in node.drain_events())


def said_until_heard(sender: NodeProcess, room: str, text: str, hearers: list[NodeProcess]) -> None:
    """``sender`` says ``text #n`` in ``room`` every few seconds until each of ``hearers``
    showed one of them (meshes and keys take a moment after an invitation)."""
    deadline = time.monotonic() + WAIT
    sent = 0
    while time.monotonic() < deadline:
        answer(sender, {"id": f"say{sent}", "send": f"{text} #{sent}", "room": room})
        sent += 1
        until = time.monotonic() + 3
        while time.monotonic() < until:
            if all(
                any(e["type"] == "message" and e["text"].startswith(text) for e in h.drain_events())
                for h in hearers
            ):
                return
            time.sleep(0.2)
    logs = [[ln for ln in h.raw_stderr if "refused" in ln or "rror" in ln][-5:] for h in hearers]
    raise AssertionError(f"{text} never reached every hearer: {logs}")


def grep(path: Path, needle: str) -> list[Path]:
    """The files under ``path`` that contain ``needle`` (bytes)."""
    wanted = needle.encode()
    return [f for f in path.rglob("*") if f.is_file() and wanted in f.read_bytes()]


def test_three_members_chat_a_removed_one_reads_nothing_after_and_the_archiver_no_plaintext(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    archiver = start_node(
        tmp_path / "archiver",
        "--role",
        "archiver",
        env=node_env(P2PCHAT_ARCHIVER__ALL_ROOMS="true", P2PCHAT_ARCHIVER__ADMIT_SENDERS="1"),
    )
    nodes.append(archiver)
    a, _ = chat_peer(tmp_path / "a", nodes, "--bootstrap", archiver.addr())
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{a.addr()},{b.addr()}")

    created = notice(line(a, "/create-private club", "create"), "private_created")
    room = created["data"]["room"]
    assert room.startswith("private-") and len(room) == len("private-") + 32
    line(a, f"/invite {b.peer_id}", "invite-b")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT)
    # Said before C was invited (the archiver keeps it): C fetches it, cannot read it.
    said_until_heard(a, room, "before c was invited", [b])
    wait_metric(archiver, "p2pchat_archive_inserted_total", 1)
    line(a, f"/invite {c.peer_id}", "invite-c")
    c.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT)
    deadline = time.monotonic() + WAIT
    while c.metric("p2pchat_private_dropped_total", reason="undecryptable") < 1:
        assert time.monotonic() < deadline, "C never fetched what was said before its invitation"
        time.sleep(0.3)
    assert not any("before c was invited" in str(e.get("text")) for e in c.drain_events())
    members = [e for e in line(a, "/members", "members") if e["type"] == "output"]
    assert sorted(members[0]["data"]["members"]) == sorted([a.peer_id, b.peer_id, c.peer_id])

    # Every member reads every other: each has the others' Megolm keys.
    said_until_heard(a, room, "secret from a", [b, c])
    said_until_heard(b, room, "secret from b", [a, c])
    said_until_heard(c, room, "secret from c", [a, b])
    # What C fetched at its invitation, it could not read: no catch-up of it was shown.
    fetched = [e for e in c.drain_events() if e["type"] == "caught_up" and e["room"] == room]
    assert not fetched, fetched
    # A public room's text, to show the search below finds a text where one is stored.
    answer(a, {"id": "pub", "send": "public canary", "room": "p2p-chat-default"})
    wait_metric(archiver, "p2pchat_archive_inserted_total", 4)

    # C's keys as they are before its removal: a copy of its data dir.
    snapshot = tmp_path / "c-snapshot"
    assert c.stop() == 0
    nodes.remove(c)
    shutil.copytree(tmp_path / "c", snapshot)
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{a.addr()},{b.addr()}")

    removed = [e for e in line(a, f"/remove {c.peer_id}", "remove") if e["type"] == "notice"]
    assert removed[0]["kind"] == "private_member" and removed[0]["data"]["change"] == "removed"
    c.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_removed", timeout=WAIT)
    b.next_event(
        lambda e: (
            e["type"] == "notice"
            and e["kind"] == "private_member"
            and e["data"]["change"] == "removed"
        ),
        timeout=WAIT,
    )
    # B rotated: A reads B's new session, B reads A's.
    said_until_heard(a, room, "after removal from a", [b])
    said_until_heard(b, room, "after removal from b", [a])
    assert not seen_text(c, "after removal from a #0")
    inserted = archiver.metric("p2pchat_archive_inserted_total")
    assert inserted >= 6

    # C with the keys it held before, in the room again: what it gets (live, and from the
    # archiver's catch-up) does not decrypt with them.
    assert c.stop() == 0
    nodes.remove(c)
    shutil.rmtree(tmp_path / "c")
    shutil.copytree(snapshot, tmp_path / "c")
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{a.addr()},{b.addr()}")
    # Catch-up fetches what A and B said after the removal (at least two messages): none
    # decrypts, so no caught_up event is shown, only the count.
    deadline = time.monotonic() + WAIT
    while c.metric("p2pchat_private_dropped_total", reason="unknown_session") < 2:
        assert time.monotonic() < deadline, "C never got the ciphertext from the archiver"
        time.sleep(0.5)
    answer(a, {"id": "late", "send": "after removal, live", "room": room})
    deadline = time.monotonic() + WAIT
    while c.metric("p2pchat_private_dropped_total", reason="unknown_session") < 3:
        assert time.monotonic() < deadline, "C never got the ciphertext"
        time.sleep(0.5)
    texts = [e["text"] for e in c.drain_events() if e["type"] == "message"]
    assert not any("after removal" in t for t in texts), texts
    # ... while what was sent before its removal still reads (it held those keys).
    line(c, f"/switch {room}", "switch")
    history = [e["text"] for e in line(c, "/history", "hist") if e["type"] == "message"]
    reasons = {
        r: c.metric("p2pchat_private_dropped_total", reason=r)
        for r in ("unknown_session", "undecryptable", "replayed", "mismatch", "not_member")
    }
    assert any(t.startswith("secret from a") for t in history), (history, reasons)
    assert not any("after removal" in t for t in history), history

    # The archiver: ciphertext only, in its store and its log; the public text is there.
    assert grep(tmp_path / "archiver", "public canary")
    for secret in ("secret from", "after removal", "club"):
        assert not grep(tmp_path / "archiver", secret), secret
        assert not any(secret in entry for entry in archiver.raw_stderr), secret
    assert not grep(tmp_path / "a", "secret from")  # members store ciphertext too


def invited(node: NodeProcess, room: str) -> bool:
    return any(
        e["type"] == "notice" and e["kind"] == "private_invited" and e["data"]["room"] == room
        for e in node.drain_events()
    )


def wait_counted(node: NodeProcess, name: str, count: float = 1, **labels: str) -> None:
    deadline = time.monotonic() + WAIT
    while node.metric(name, **labels) < count:
        assert time.monotonic() < deadline, f"{name} {labels} never reached {count}"
        time.sleep(0.3)


def wait_dropped(node: NodeProcess, reason: str, count: float = 1) -> None:
    wait_counted(node, "p2pchat_private_dropped_total", count, reason=reason)


def test_invites_are_bounded_per_creator_and_refused_from_an_ignored_peer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    a, _ = chat_peer(tmp_path / "a", nodes)
    b = start_node(
        tmp_path / "b",
        "--json",
        "--bootstrap",
        a.addr(),
        env=node_env(P2PCHAT_CHAT__PRIVATE_ROOMS_PER_CREATOR="1"),
    )
    nodes.append(b)
    b.next_event(lambda e: e["type"] == "output" and e["command"] == "ready")
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{a.addr()},{b.addr()}")
    line(b, f"/ignore {c.peer_id}", "ignore")

    first = notice(line(a, "/create-private one", "one"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite-1")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT)
    # A second room of the same creator: over chat.private_rooms_per_creator.
    second = notice(line(a, "/create-private two", "two"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite-2")
    wait_dropped(b, "too_many_rooms")
    # An ignored peer's invitation.
    third = notice(line(c, "/create-private three", "three"), "private_created")["data"]["room"]
    line(c, f"/invite {b.peer_id}", "invite-3")
    wait_dropped(b, "ignored")
    rooms = next(e for e in line(b, "/rooms", "rooms") if e["type"] == "output")["data"]["rooms"]
    assert first in rooms and second not in rooms and third not in rooms, rooms
    assert not invited(b, second) and not invited(b, third)
    # /remove is the creator's only (/invite is any member's), and of private rooms only.
    line(b, f"/switch {first}", "switch")
    errors = [e for e in answer(b, {"id": "x", "line": f"/remove {a.peer_id}"})]
    assert errors[0]["type"] == "error" and errors[0]["code"] == "not_owner", errors
    errors = [e for e in answer(b, {"id": "y", "line": "/members p2p-chat-default"})]
    assert errors[0]["type"] == "error" and errors[0]["code"] == "not_private", errors


async def test_a_stranger_on_the_topic_is_dropped_counted_and_never_shown(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A peer that learned the topic (a leak, a removed member) publishes validly signed
    messages on it: a plain text, ciphertext of no session, a member's session id over junk,
    and a member's real ciphertext replayed under its own signature. The member shows none,
    counts each, and still reads the creator."""
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    room = notice(line(a, "/create-private club", "create"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite")
    await trio.to_thread.run_sync(
        lambda: b.next_event(
            lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT
        )
    )
    await trio.to_thread.run_sync(lambda: said_until_heard(a, room, "real", [b]))
    async with rogue(tmp_path / "mallory", room, a, b) as mallory:
        captured: list[bytes] = []
        subscription = await mallory.pubsub.subscribe(room)
        await trio.to_thread.run_sync(
            lambda: answer(a, {"id": "cap", "send": "to be replayed", "room": room})
        )
        with trio.fail_after(WAIT):
            while not captured:
                message = await subscription.get()
                payload = decode(message.data, max_text_bytes=4096)
                if isinstance(payload, PrivateText):
                    captured.append(message.data)
        real = decode(captured[0], max_text_bytes=4096)
        assert isinstance(real, PrivateText)
        now = int(time.time() * 1000)
        await mallory.publish(
            encode(ChatText(new_message_id(), room, "Mallory", "plain words", now))
        )
        await mallory.publish(
            encode(PrivateText(new_message_id(), room, now, "A" * 43, b"\x03" + b"x" * 120))
        )
        await mallory.publish(
            encode(PrivateText(new_message_id(), room, now, real.session_id, b"\x03junk"))
        )
        await mallory.publish(captured[0])  # A's ciphertext, signed by Mallory
        over = 4096 + PRIVATE_OVERHEAD_BYTES + 1  # chat.max_message_bytes + the overhead + 1
        await mallory.publish(
            encode(PrivateText(new_message_id(), room, now, real.session_id, b"\x03" * over))
        )
        await trio.to_thread.run_sync(lambda: wait_dropped(b, "plaintext"))
        await trio.to_thread.run_sync(lambda: wait_dropped(b, "unknown_session", 3))
        await trio.to_thread.run_sync(
            lambda: wait_counted(b, "p2pchat_messages_dropped_total", reason="oversized")
        )
    await trio.to_thread.run_sync(lambda: said_until_heard(a, room, "still heard", [b]))
    shown = [e for e in b.drain_events() if e["type"] == "message"]
    assert all(e["sender"] == a.peer_id for e in shown), shown
    assert b.metric("p2pchat_private_dropped_total", reason="undecryptable") == 0


async def test_a_members_ciphertext_tampered_or_replayed_under_its_own_signature_is_dropped(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """B's signing key in other hands (stolen, or B's software gone bad): B's real ciphertext
    with one byte flipped, and unchanged under a new message id, both validly signed by B. A
    decrypts neither, counts each by its reason, and shows neither."""
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    room = notice(line(a, "/create-private club", "create"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite")
    await trio.to_thread.run_sync(
        lambda: b.next_event(
            lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT
        )
    )
    await trio.to_thread.run_sync(lambda: said_until_heard(a, room, "hello b", [b]))
    await trio.to_thread.run_sync(lambda: said_until_heard(b, room, "hello a", [a]))
    # A listener on the topic captures one of B's texts as it travels.
    b_id = ID.from_base58(b.peer_id).to_bytes()
    async with rogue(tmp_path / "listener", room, a) as listener:
        subscription = await listener.pubsub.subscribe(room)
        await trio.to_thread.run_sync(
            lambda: answer(b, {"id": "t", "send": "to be tampered", "room": room})
        )
        with trio.fail_after(WAIT):
            while True:
                message = await subscription.get()
                original = decode(message.data, max_text_bytes=4096)
                if isinstance(original, PrivateText) and message.from_id == b_id:
                    break  # B's (a late copy of A's own might come first)
    await trio.to_thread.run_sync(lambda: seen_or_wait(a, "to be tampered"))
    assert b.stop() == 0
    nodes.remove(b)
    gone = b.peer_id
    await trio.to_thread.run_sync(
        lambda: seen_event(
            a, lambda e: e["type"] == "connection" and e["change"] == "closed" and e["peer"] == gone
        )
    )
    async with rogue(tmp_path / "b", room, a) as forger:  # B's identity: signed as B
        forger._seqno = 1 << 62  # past every seqno B used (A's seen cache keys on it)
        flipped = bytearray(original.ciphertext)
        flipped[len(flipped) // 2] ^= 0x01
        now = int(time.time() * 1000)
        sid = original.session_id
        for reason, ciphertext in (
            ("undecryptable", bytes(flipped)),
            ("replayed", original.ciphertext),
        ):
            # Sent again (under a new id) until A counts it: the forger's mesh forms on its
            # first heartbeats.
            with trio.move_on_after(WAIT):
                while not await trio.to_thread.run_sync(
                    lambda r=reason: a.metric("p2pchat_private_dropped_total", reason=r)
                ):
                    await forger.publish(
                        encode(PrivateText(new_message_id(), room, now, sid, ciphertext))
                    )
                    await trio.sleep(1)
            assert a.metric("p2pchat_private_dropped_total", reason=reason), (
                reason,
                [ln for ln in a.http_get("/metrics")[1].splitlines() if "dropped_total{" in ln],
                [ln for ln in a.raw_stderr if "refused" in ln][-5:],
            )
    texts = [e["text"] for e in a.drain_events() if e["type"] == "message"]
    assert texts.count("to be tampered") == 1, texts


def seen_or_wait(node: NodeProcess, text: str) -> None:
    if not seen_text(node, text):
        node.next_event(lambda e: e["type"] == "message" and e["text"] == text, timeout=WAIT)


def test_a_member_other_than_the_creator_invites_and_every_member_shares_keys_with_the_newcomer(
    tmp_path: Path, nodes: list[NodeProcess]
) -> None:
    """A creates the room and invites B; B (not the creator) invites C: C joins with B's key,
    A and B count C as a member, and each of the three reads the other two."""
    a, _ = chat_peer(tmp_path / "a", nodes)
    b, _ = chat_peer(tmp_path / "b", nodes, "--bootstrap", a.addr())
    c, _ = chat_peer(tmp_path / "c", nodes, "--bootstrap", f"{a.addr()},{b.addr()}")
    room = notice(line(a, "/create-private club", "create"), "private_created")["data"]["room"]
    line(a, f"/invite {b.peer_id}", "invite-b")
    b.next_event(lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT)
    line(b, f"/switch {room}", "switch")
    invited_c = notice(line(b, f"/invite {c.peer_id}", "invite-c"), "private_member")
    assert invited_c["data"] == {"room": room, "peer": c.peer_id, "change": "invited"}
    got = c.next_event(
        lambda e: e["type"] == "notice" and e["kind"] == "private_invited", timeout=WAIT
    )
    assert got["data"]["creator"] == a.peer_id and got["data"]["room"] == room
    assert sorted(got["data"]["members"]) == sorted([a.peer_id, b.peer_id, c.peer_id])
    a.next_event(
        lambda e: (
            e["type"] == "notice"
            and e["kind"] == "private_member"
            and e["data"]["peer"] == c.peer_id
        ),
        timeout=WAIT,
    )
    members = [e for e in line(a, f"/members {room}", "members") if e["type"] == "output"]
    assert sorted(members[0]["data"]["members"]) == sorted([a.peer_id, b.peer_id, c.peer_id])
    said_until_heard(c, room, "from the newcomer", [a, b])
    said_until_heard(a, room, "from the creator", [b, c])
    said_until_heard(b, room, "from the inviter", [a, c])
    for node in (a, b, c):
        assert node.metric("p2pchat_private_dropped_total", reason="not_member") in (None, 0)
