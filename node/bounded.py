"""A mapping with a size bound, for state that remote peers can add keys to.

Any map keyed by something a remote peer chooses (a PeerId: fresh ones cost nothing; a payload;
a (room, peer) pair) must not grow with what peers send. :class:`BoundedDict` keeps at most
``max_size`` keys and forgets the one written least recently when a new key would exceed it.

Reads never reorder: ``dict(bounded)`` and iteration see a stable order (oldest write first),
and a lookup costs what a dict lookup costs. A write (or :meth:`BoundedDict.touch`) makes its
key the most recent. Entries that carry their own time (a failure, a question asked) need no
separate expiry: an old entry is harmless until it is evicted.

Not thread-safe (like a dict, it is meant for one trio thread).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import ItemsView, Iterator, KeysView, MutableMapping, ValuesView
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(MutableMapping[K, V]):
    """At most ``max_size`` keys; writing a new key beyond that evicts the least recently
    written one.

    Raises:
        ValueError: ``max_size`` is less than 1.
    """

    __slots__ = ("_data", "max_size")

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, not {max_size}")
        self.max_size = max_size
        self._data: OrderedDict[K, V] = OrderedDict()

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __setitem__(self, key: K, value: V) -> None:
        """Store ``value`` under ``key`` and make ``key`` the most recent."""
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self.max_size:
            self._data.popitem(last=False)

    def __delitem__(self, key: K) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return f"BoundedDict(max_size={self.max_size}, {dict(self._data)!r})"

    # The mixins would work, but through __getitem__ per key; the dict's own views are faster.
    def keys(self) -> KeysView[K]:
        return self._data.keys()

    def items(self) -> ItemsView[K, V]:
        return self._data.items()

    def values(self) -> ValuesView[V]:
        return self._data.values()

    def touch(self, key: K) -> None:
        """Make ``key`` the most recent without changing its value (no-op if absent)."""
        if key in self._data:
            self._data.move_to_end(key)

    def newest_first(self) -> Iterator[tuple[K, V]]:
        """The entries, most recently written first."""
        return reversed(self._data.items())
