"""The stream limits, sans-IO: the Yamux frame judge, the per-peer stream counts, the
multistream-select negotiation bounds, and Mplex stream names (issue #18).

The same limits against a real node, attacked with raw frames: tests/hostile/test_muxers.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
from libp2p.stream_muxer.mplex.datastructures import StreamID
from p2pchat.node.config import Config
from p2pchat.node.p2p.inbound_streams import NegotiationFailed, message, negotiate
from p2pchat.node.p2p.mplex_guard import MAX_NAME_BYTES, stream_name
from p2pchat.node.p2p.stream_limits import (
    LIMITS,
    YAMUX_INITIAL_WINDOW,
    PeerStreams,
    StreamLimits,
)
from p2pchat.node.p2p.streams import Stream
from p2pchat.node.p2p.yamux_guard import Action, YamuxInbound
from p2pchat.node.ratelimit import TokenBucket
from p2pchat.node.runtime import host_settings
from p2pchat.node.wire.framing import encode_uvarint, frame

HEADER = struct.Struct("!BBHII")
DATA, WINDOW_UPDATE, PING, GO_AWAY = 0, 1, 2, 3
SYN, ACK, FIN, RST = 1, 2, 4, 8


def header(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    return HEADER.pack(0, kind, flags, stream_id, length)


@dataclass
class FakeView:
    """The library's connection state, as the judge reads it."""

    windows: dict[int, int] = field(default_factory=dict)  # stream -> receive window
    closed: set[int] = field(default_factory=set)
    unread: int = 0

    def credit(self, stream_id: int) -> int | None:
        return self.windows.get(stream_id)

    def is_live(self, stream_id: int) -> bool:
        return stream_id in self.windows and stream_id not in self.closed

    def buffered(self) -> int:
        return self.unread


def judge(limits: StreamLimits | None = None) -> YamuxInbound:
    return YamuxInbound(limits or StreamLimits(), now=0.0)


# --- Yamux ------------------------------------------------------------------------------------


def test_data_within_the_window_passes_and_past_it_closes_the_connection() -> None:
    view = FakeView(windows={3: 1000})
    inbound = judge()
    assert inbound.judge(header(DATA, 0, 3, 1000), view, 0.0) == (Action.PASS, None)
    assert inbound.judge(header(DATA, 0, 3, 1001), view, 0.0) == (Action.CLOSE, "yamux_window")


def test_a_new_stream_may_carry_an_initial_window_and_no_more() -> None:
    view = FakeView()
    inbound = judge()
    opening = header(DATA, SYN, 3, YAMUX_INITIAL_WINDOW)
    assert inbound.judge(opening, view, 0.0) == (Action.PASS, None)
    too_much = header(DATA, SYN, 5, YAMUX_INITIAL_WINDOW + 1)
    assert inbound.judge(too_much, view, 0.0) == (Action.CLOSE, "yamux_window")


def test_data_for_a_forgotten_stream_is_bounded_by_the_initial_window() -> None:
    inbound = judge()
    in_flight = header(DATA, 0, 7, YAMUX_INITIAL_WINDOW)
    assert inbound.judge(in_flight, FakeView(), 0.0) == (Action.PASS, None)
    bomb = header(DATA, 0, 7, YAMUX_INITIAL_WINDOW + 1)
    assert inbound.judge(bomb, FakeView(), 0.0) == (Action.CLOSE, "yamux_window")


def test_unread_bytes_of_a_connection_are_bounded() -> None:
    limits = StreamLimits(connection_buffer_bytes=4 * YAMUX_INITIAL_WINDOW)
    view = FakeView(windows={sid: YAMUX_INITIAL_WINDOW for sid in (1, 3, 5, 7, 9)})
    inbound = judge(limits)
    for sid in (1, 3, 5, 7):
        assert (
            inbound.judge(header(DATA, 0, sid, YAMUX_INITIAL_WINDOW), view, 0.0)[0] is Action.PASS
        )
        view.unread += YAMUX_INITIAL_WINDOW
    assert inbound.judge(header(DATA, 0, 9, 1), view, 0.0) == (
        Action.CLOSE,
        "yamux_connection_buffer",
    )
    view.unread = 0  # the streams were read: the bound is counted again, and holds no more
    assert inbound.judge(header(DATA, 0, 9, 1), view, 0.0) == (Action.PASS, None)


def test_inbound_streams_over_the_connection_limit_are_refused() -> None:
    limits = StreamLimits(streams_per_connection=2, stream_open_burst=100)
    view = FakeView()
    inbound = judge(limits)
    for sid in (2, 4):
        assert inbound.judge(header(WINDOW_UPDATE, SYN, sid, 0), view, 0.0) == (Action.PASS, None)
        view.windows[sid] = YAMUX_INITIAL_WINDOW  # the library now knows it
    refused = inbound.judge(header(WINDOW_UPDATE, SYN, 6, 0), view, 0.0)
    assert refused == (Action.REFUSE, "streams_per_connection")
    view.closed.add(2)  # one ends: a recount (after PRUNE_EVERY) makes room
    assert inbound.judge(header(WINDOW_UPDATE, SYN, 8, 0), view, 1.0) == (Action.PASS, None)


def test_open_and_reset_streams_are_rate_limited_and_dropped() -> None:
    limits = StreamLimits(stream_open_rate=1.0, stream_open_burst=3)
    inbound = judge(limits)
    view = FakeView()
    verdicts = [
        inbound.judge(header(WINDOW_UPDATE, SYN | RST, sid, 0), view, 0.0) for sid in (1, 3, 5, 7)
    ]
    assert verdicts[:3] == [(Action.DROP, None)] * 3  # opened and reset at once: nothing to do
    assert verdicts[3] == (Action.REFUSE, "stream_open_rate")
    assert inbound.judge(header(WINDOW_UPDATE, SYN, 9, 0), view, 1.0) == (Action.PASS, None)


def test_pings_beyond_the_budget_go_unanswered() -> None:
    inbound = judge(StreamLimits(ping_rate=1.0, ping_burst=2))
    pings = [inbound.judge(header(PING, SYN, 0, n), FakeView(), 0.0) for n in range(3)]
    assert pings == [(Action.PASS, None), (Action.PASS, None), (Action.DROP, "yamux_ping_rate")]
    answer = inbound.judge(header(PING, ACK, 0, 1), FakeView(), 0.0)  # our own ping's answer
    assert answer == (Action.PASS, None)


def test_a_connection_refused_too_often_is_closed() -> None:
    inbound = judge(StreamLimits(ping_rate=1.0, ping_burst=1, refusals_per_connection=3))
    verdicts = [inbound.judge(header(PING, SYN, 0, n), FakeView(), 0.0)[0] for n in range(6)]
    dropped = [Action.DROP] * 3
    assert verdicts == [Action.PASS, *dropped, Action.CLOSE, Action.CLOSE]


def test_frames_no_yamux_speaker_sends_close_the_connection() -> None:
    inbound = judge()
    assert inbound.judge(HEADER.pack(1, DATA, 0, 1, 0), FakeView(), 0.0)[0] is Action.CLOSE
    assert inbound.judge(HEADER.pack(0, 4, 0, 1, 0), FakeView(), 0.0) == (
        Action.CLOSE,
        "yamux_protocol",
    )


def test_go_away_and_window_updates_pass() -> None:
    view = FakeView(windows={1: 10})
    inbound = judge()
    assert inbound.judge(header(GO_AWAY, 0, 0, 0), view, 0.0) == (Action.PASS, None)
    assert inbound.judge(header(WINDOW_UPDATE, 0, 1, 1 << 20), view, 0.0) == (Action.PASS, None)


# --- per peer and per protocol ------------------------------------------------------------------


def test_streams_are_counted_per_peer_and_per_protocol_and_forgotten_when_over() -> None:
    counts = PeerStreams(StreamLimits(streams_per_peer=3, streams_per_protocol_per_peer=2))
    assert [counts.open("a") for _ in range(4)] == [None, None, None, "streams_per_peer"]
    assert counts.open("b") is None  # another peer has its own budget
    assert [counts.negotiated("a", "/p") for _ in range(3)] == [None, None, "streams_per_protocol"]
    assert counts.negotiated("a", "/q") is None
    for _ in range(3):
        counts.close("a")
    counts.close("b")
    for protocol in ("/p", "/p", "/q"):
        counts.finished("a", protocol)
    assert len(counts) == 0  # nothing kept for peers that hold nothing


def test_a_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_every_limit_is_a_fixed_label_and_the_config_maps_onto_the_host_limits() -> None:
    assert len(set(LIMITS)) == len(LIMITS)
    section = Config().streams.model_dump()
    assert StreamLimits(**section) == StreamLimits()  # one set of defaults, written twice
    config = Config.model_validate({"streams": {"streams_per_peer": 7, "ping_rate": 0.5}})
    limits = host_settings(config).streams
    assert (limits.streams_per_peer, limits.ping_rate) == (7, 0.5)


# --- multistream-select -------------------------------------------------------------------------


@dataclass
class Scripted:
    """A library stream fed with what the peer sends; records what we write."""

    incoming: bytearray
    written: bytearray = field(default_factory=bytearray)

    async def read(self, n: int = -1) -> bytes:
        await trio.lowlevel.checkpoint()
        if not self.incoming:
            await trio.sleep_forever()
        size = len(self.incoming) if n < 0 else min(n, len(self.incoming))
        out = bytes(self.incoming[:size])
        del self.incoming[:size]
        return out

    async def write(self, data: bytes) -> None:
        self.written += data


HELLO = message("/multistream/1.0.0")
PROTOCOLS: dict[str, Any] = {"/chat/1": object(), "/history/1": object()}


async def run_negotiation(peer_sends: bytes, limits: StreamLimits | None = None) -> str:
    library = Scripted(bytearray(peer_sends))
    return await negotiate(Stream(library), PROTOCOLS, limits or StreamLimits())  # type: ignore[arg-type]


async def test_a_proposal_we_serve_is_echoed_and_chosen() -> None:
    peer = HELLO + message("/nope/1") + message("ls") + message("/history/1") + b"next"
    library = Scripted(bytearray(peer))
    chosen = await negotiate(Stream(library), PROTOCOLS, StreamLimits())  # type: ignore[arg-type]
    assert chosen == "/history/1"
    assert library.incoming == b"next"  # nothing past the negotiation was read
    assert bytes(library.written) == (
        HELLO + message("na") + message("/chat/1\n/history/1\n") + message("/history/1")
    )


@pytest.mark.parametrize(
    ("peer_sends", "limit"),
    [
        (HELLO + encode_uvarint(1 << 30) + b"/" * 4096, "negotiation_bytes"),
        (HELLO + b"\xff" * 11, "negotiation_bytes"),
        (HELLO + message("/x" * 600), "negotiation_bytes"),
        (HELLO + b"".join(message(f"/no/{n}") for n in range(20)), "negotiation_proposals"),
        (HELLO + message("ls") * 20, "negotiation_proposals"),
        (message("/multistream/2.0.0"), "negotiation_malformed"),
        (HELLO + encode_uvarint(3) + b"abc", "negotiation_malformed"),
        (HELLO + frame(b"\xff\xfe\n"), "negotiation_malformed"),
    ],
)
async def test_negotiations_out_of_bounds_fail_by_their_limit(
    peer_sends: bytes, limit: str
) -> None:
    with pytest.raises(NegotiationFailed) as failure:
        await run_negotiation(peer_sends)
    assert failure.value.limit == limit


async def test_a_silent_negotiation_waits_for_the_callers_deadline() -> None:
    with trio.move_on_after(0.1) as deadline:
        await run_negotiation(HELLO)
    assert deadline.cancelled_caught


# --- Mplex --------------------------------------------------------------------------------------


def test_mplex_stream_names_are_kept_short_and_text() -> None:
    sid = StreamID(channel_id=7, is_initiator=False)
    assert stream_name(sid, b"chat") == b"chat"
    assert stream_name(sid, b"x" * (MAX_NAME_BYTES + 1)) == b"7"
    assert stream_name(sid, b"\xff\xfe") == b"7"
