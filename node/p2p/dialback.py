"""Dialling a peer back on a new connection, from an identity of its own.

AutoNAT must learn whether a peer can be reached *from outside*: a dial that reuses the
connection the peer opened to us proves nothing (py-libp2p's own AutoNAT does exactly that and
reports closed ports as open, trap 7). Like go-libp2p's AutoNAT service, the dial-back comes
from a separate host with a throwaway identity and no listeners, so it can only succeed on a
fresh connection to the address being tested.
"""

from __future__ import annotations

import trio
from p2pchat.node.p2p.host import DialError, HostSettings, P2PHost, QuietObserver
from p2pchat.node.p2p.identity import ephemeral_identity

DIAL_TIMEOUT = 15.0  # go-libp2p's AutoNAT dial timeout
MAX_CONCURRENT_DIALS = 4


class DialBack:
    """Run it (:meth:`run`), then ask :meth:`first_reachable`."""

    def __init__(self, dial_timeout: float = DIAL_TIMEOUT) -> None:
        settings = HostSettings(listen=(), dial_timeout=dial_timeout)
        self._host = P2PHost(ephemeral_identity(), settings, QuietObserver())
        self._timeout = dial_timeout
        self._slots = trio.Semaphore(MAX_CONCURRENT_DIALS)

    @property
    def peer_id(self) -> str:
        """The dialer's own (throwaway) PeerId."""
        return self._host.peer_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the dialer host up until cancelled."""
        async with self._host.run():
            task_status.started()
            await trio.sleep_forever()

    async def first_reachable(self, peer_id: str, addrs: list[str]) -> str | None:
        """The first of ``addrs`` (without /p2p/) at which ``peer_id`` answers on a new
        connection, or None. Each successful connection is closed again at once. The addresses
        are tried in turn within one dial timeout in all (go-libp2p's single deadline), so the
        asking peer, who waits for the answer, gets one whatever the number of addresses."""
        async with self._slots:
            with trio.move_on_after(self._timeout):
                for addr in addrs:
                    try:
                        await self._host.connect(f"{addr}/p2p/{peer_id}")
                    except DialError:
                        continue
                    await self._host.disconnect(peer_id)
                    return addr
            return None
