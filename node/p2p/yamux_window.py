"""Yamux receive-window updates as go-yamux sends them (a py-libp2p trap not in the notes).

py-libp2p's ``YamuxStream`` sends a WINDOW_UPDATE frame after nearly every read: by default it
"releases on read", and even without that it tops the window up whenever it is below target by
any amount. Each update is a Noise-encrypted frame and a syscall. go-yamux (and the yamux spec's
intent) sends one only once the window has fallen by at least half, so a stream of small
messages costs no update traffic at all. Profiles of a relaying chat peer showed a sixth of its
CPU in these updates.

:mod:`~p2pchat.node.p2p.patches` installs :func:`send_window_update_like_go_yamux` on
``YamuxStream``: the update logic becomes
go-yamux's ``sendWindowUpdate`` (``delta < max/2 => no update``), keeping py-libp2p's window
auto-tuning. Re-check on every library upgrade (``tests/test_host_perf_traps.py`` fails if the
library's behaviour returns).
"""

from __future__ import annotations

from collections.abc import Callable

from libp2p.stream_muxer.yamux.yamux import YamuxStream


async def send_window_update_like_go_yamux(self: YamuxStream, *, bytes_read: int = 0) -> None:
    increment = 0
    async with self.window_lock:
        buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
        shortfall = self.target_recv_window - (self.recv_window + buffered)
        if shortfall >= max(self._grow_threshold(), 1):
            increment = self._grow_to_delta(buffered) + self._apply_autotune_epoch(buffered)
            self._pending_recv_release = 0
    if increment > 0:
        await self.send_window_update(increment, skip_lock=True)


def read_once(switch: Callable[[], object]) -> Callable[[], object]:
    """``switch``, read now and answered from then on without reading the environment: the
    library reads its PY_YAMUX_* tuning switches from os.environ on every frame it receives and
    every window check (one to three lookups a message, ~1% of a relaying peer's CPU), and the
    environment does not change under a running node."""
    value = switch()
    return lambda: value


def never() -> bool:
    """The library's debug-log switch, off for good (read per frame otherwise)."""
    return False


SWITCHES = (
    "_yamux_data_read_timeout",
    "_yamux_disable_hysteresis",
    "_yamux_release_on_read",
    "_yamux_batch_threshold_divisor",
)
