"""The archiver's mailboxes on disk, with their bounds, sans-IO (the caller passes the clock).

Key layout in the ``mailbox`` namespace of the node's RocksDB store:

- ``e/<address: 32><id: 16>`` -> the sealed letter, where ``id`` is ``<stored at: Unix ms, 8
  bytes big-endian><serial: 8 bytes>``, so a mailbox lists oldest first;
- ``t/<id: 16><address: 32>`` -> empty: the same letters in the order they expire.

Nothing else is written: not who deposited a letter, nor for whom it is (the address is a hash
the archiver cannot invert), nor anything of its content (a sealed box). What each depositing
PeerId and address group holds is counted in memory only, for letters deposited since this
process started (a restart forgets who deposited the letters it finds; they still count
against their mailbox and the totals, and expire).

Bounds (the ``mailbox`` config section): a letter's size; letters and bytes per mailbox;
mailboxes, letters and bytes in all; letters and bytes held per depositing PeerId and per
address group; a letter's age (:meth:`MailboxStore.sweep`). A refusal is a reason word, the
label of ``p2pchat_mailbox_refused_total``.
"""

from __future__ import annotations

from dataclasses import dataclass

from p2pchat.node.config import MailboxSection
from p2pchat.node.store import KeyValue
from p2pchat.node.wire.mailbox import ADDRESS_BYTES, ENTRY_ID_BYTES, Entry

NAMESPACE = "mailbox"
_ENTRIES = b"e/"
_EXPIRY = b"t/"
MAX_ENTRIES_PER_FETCH = 256


@dataclass
class _Held:
    """Letters and bytes held (by a mailbox, a depositor, an address group)."""

    entries: int = 0
    size: int = 0


@dataclass(frozen=True)
class _Owner:
    depositor: str
    group: str
    size: int


class MailboxStore:
    """Every mailbox of this archiver; :meth:`load` once, then deposit, fetch, delete, sweep."""

    def __init__(self, keys: KeyValue, settings: MailboxSection) -> None:
        self._keys = keys
        self._settings = settings
        self._boxes: dict[bytes, _Held] = {}
        self._total = _Held()
        # Letters deposited since start -> who deposited them (at most max_entries).
        self._owners: dict[bytes, _Owner] = {}
        self._depositors: dict[str, _Held] = {}  # at most one per letter held
        self._groups: dict[str, _Held] = {}
        self._serial = 0

    # --- state -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Count what the store holds (letters kept across a restart)."""
        for key, value in self._keys.items(_ENTRIES):
            address = key[len(_ENTRIES) : len(_ENTRIES) + ADDRESS_BYTES]
            self._add(self._boxes.setdefault(address, _Held()), len(value))
            self._add(self._total, len(value))
            self._serial = max(self._serial, int.from_bytes(key[-8:], "big"))

    @property
    def entries(self) -> int:
        return self._total.entries

    @property
    def size(self) -> int:
        return self._total.size

    @property
    def mailboxes(self) -> int:
        return len(self._boxes)

    @property
    def depositors(self) -> int:
        """Depositing PeerIds and address groups tracked (memory held for quotas)."""
        return len(self._depositors) + len(self._groups)

    # --- deposit ---------------------------------------------------------------------------------

    def deposit(
        self, address: bytes, sealed: bytes, depositor: str, group: str, now_ms: int
    ) -> str | None:
        """Keep ``sealed`` in mailbox ``address``, deposited by ``depositor`` (a PeerId) from
        address group ``group``; None if kept, else the reason it was not: ``too_large``,
        ``mailbox_full``, ``full`` (the archiver's mailboxes, letters or bytes), ``quota``
        (the depositor's or its group's letters or bytes)."""
        s = self._settings
        size = len(sealed)
        if size > s.max_entry_bytes:
            return "too_large"
        box = self._boxes.get(address)
        if box is None and len(self._boxes) >= s.max_mailboxes:
            return "full"
        if box is not None and (
            box.entries >= s.max_entries_per_mailbox or box.size + size > s.max_bytes_per_mailbox
        ):
            return "mailbox_full"
        if self._total.entries >= s.max_entries or self._total.size + size > s.max_bytes:
            return "full"
        mine = self._depositors.get(depositor, _Held())
        if (
            mine.entries >= s.max_entries_per_depositor
            or mine.size + size > s.max_bytes_per_depositor
        ):
            return "quota"
        ours = self._groups.get(group, _Held())
        if ours.entries >= s.max_entries_per_group or ours.size + size > s.max_bytes_per_group:
            return "quota"
        self._serial += 1
        entry_id = now_ms.to_bytes(8, "big") + self._serial.to_bytes(8, "big")
        self._keys.put(_ENTRIES + address + entry_id, sealed)
        self._keys.put(_EXPIRY + entry_id + address, b"")
        self._add(self._boxes.setdefault(address, box or _Held()), size)
        self._add(self._total, size)
        self._add(self._depositors.setdefault(depositor, mine), size)
        self._add(self._groups.setdefault(group, ours), size)
        self._owners[address + entry_id] = _Owner(depositor, group, size)
        return None

    # --- fetch and delete ------------------------------------------------------------------------

    def fetch(self, address: bytes, max_bytes: int, now_ms: int) -> tuple[list[Entry], bool]:
        """Mailbox ``address``'s letters, oldest first, at most ``max_bytes`` of them (and
        :data:`MAX_ENTRIES_PER_FETCH`), leaving out expired ones; and whether more are held."""
        oldest = now_ms - int(self._settings.ttl * 1000)
        found: list[Entry] = []
        taken = 0
        for key, value in self._keys.items(_ENTRIES + address):
            entry_id = key[len(_ENTRIES) + ADDRESS_BYTES :]
            if int.from_bytes(entry_id[:8], "big") < oldest:
                continue  # the next sweep deletes it
            if found and (taken + len(value) > max_bytes or len(found) >= MAX_ENTRIES_PER_FETCH):
                return found, True
            found.append(Entry(entry_id, value))
            taken += len(value)
        return found, False

    def delete(self, address: bytes, ids: tuple[bytes, ...]) -> int:
        """Delete the letters ``ids`` of mailbox ``address`` (unknown ids are skipped);
        returns how many were."""
        deleted = 0
        for entry_id in ids:
            if len(entry_id) != ENTRY_ID_BYTES:
                continue
            key = _ENTRIES + address + entry_id
            value = self._keys.get(key)
            if value is None:
                continue
            self._remove(address, entry_id, len(value))
            deleted += 1
        return deleted

    def sweep(self, now_ms: int) -> int:
        """Delete letters older than ``ttl``; returns how many were."""
        oldest = now_ms - int(self._settings.ttl * 1000)
        expired: list[tuple[bytes, bytes]] = []
        for key, _ in self._keys.items(_EXPIRY):
            entry_id = key[len(_EXPIRY) : len(_EXPIRY) + ENTRY_ID_BYTES]
            if int.from_bytes(entry_id[:8], "big") >= oldest:
                break  # in expiry order: the rest is younger
            expired.append((key[len(_EXPIRY) + ENTRY_ID_BYTES :], entry_id))
        for address, entry_id in expired:
            value = self._keys.get(_ENTRIES + address + entry_id)
            if value is None:
                self._keys.delete(_EXPIRY + entry_id + address)
            else:
                self._remove(address, entry_id, len(value))
        return len(expired)

    # --- bookkeeping -----------------------------------------------------------------------------

    def _remove(self, address: bytes, entry_id: bytes, size: int) -> None:
        self._keys.delete(_ENTRIES + address + entry_id)
        self._keys.delete(_EXPIRY + entry_id + address)
        box = self._boxes.get(address)
        if box is not None:
            self._sub(box, size)
            if box.entries <= 0:
                del self._boxes[address]
        self._sub(self._total, size)
        owner = self._owners.pop(address + entry_id, None)
        if owner is not None:
            for table, key in ((self._depositors, owner.depositor), (self._groups, owner.group)):
                held = table.get(key)
                if held is not None:
                    self._sub(held, owner.size)
                    if held.entries <= 0:
                        del table[key]

    @staticmethod
    def _add(held: _Held, size: int) -> None:
        held.entries += 1
        held.size += size

    @staticmethod
    def _sub(held: _Held, size: int) -> None:
        held.entries = max(0, held.entries - 1)
        held.size = max(0, held.size - size)
