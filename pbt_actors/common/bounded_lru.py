"""A mapping that holds at most ``cap`` entries, the least recently stored dropped first.

Every per-peer structure of the controller's protocol session is one of these, so that a flood
of ever new identities cannot grow memory without limit, and the rule for what goes first when
one is full is written once (``_evict``). A plain ``OrderedDict`` underneath: no dependency, and
as fast as the hand-written caches it replaced on the simulator's hot path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, ValuesView
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_NONE_EVICTED: tuple[()] = ()


class BoundedLru(Generic[K, V]):
    """At most ``cap`` entries; ``put`` makes an entry the most recent and, past the cap, drops
    the least recent ones and returns them (``()`` when none went: the caller that must answer
    for a dropped entry can, the others ignore it). Reading does not refresh an entry."""

    __slots__ = ("_items", "cap")

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._items: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> list[tuple[K, V]] | tuple[()]:
        items = self._items
        items[key] = value
        items.move_to_end(key)
        if len(items) > self.cap:
            return self._evict()
        return _NONE_EVICTED

    def put_all(self, keys: Iterable[K], value: V) -> list[tuple[K, V]] | tuple[()]:
        """``put(key, value)`` for each key, the cap applied once at the end (same result)."""
        items = self._items
        for key in keys:
            items[key] = value
            items.move_to_end(key)
        if len(items) > self.cap:
            return self._evict()
        return _NONE_EVICTED

    def make_room(self, keys: Iterable[K], expired: Callable[[K, V], bool]) -> bool:
        """Whether ``keys`` fit without evicting a live entry, for entries that must never be
        dropped while live (a host's claim on its worker ids): past the cap, the entries that
        ``expired`` says are dead are dropped (only those); False if that leaves too little room.
        The caller then stores with ``put_all`` (which, having room, evicts nothing)."""
        items = self._items
        wanted = set(keys)
        if len(items) + sum(key not in items for key in wanted) <= self.cap:
            return True
        for dead in [k for k, v in items.items() if expired(k, v)]:
            del items[dead]
        return len(items) + sum(key not in items for key in wanted) <= self.cap

    def _evict(self) -> list[tuple[K, V]]:
        """The eviction policy, in one place: the least recently stored first, down to ``cap``."""
        items = self._items
        evicted = []
        while len(items) > self.cap:
            evicted.append(items.popitem(last=False))
        return evicted

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def pop(self, key: K) -> V | None:
        """Remove ``key`` (if present) and return its value."""
        return self._items.pop(key, None)

    def take_all(self) -> OrderedDict[K, V]:
        """Empty the mapping and return what it held, least recent first."""
        items = self._items
        self._items = OrderedDict()
        return items

    def keys(self) -> KeysView[K]:
        """A live, set-like view (compares equal to a set of the same keys)."""
        return self._items.keys()

    def values(self) -> ValuesView[V]:
        return self._items.values()

    def items(self) -> ItemsView[K, V]:
        return self._items.items()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __repr__(self) -> str:
        return f"BoundedLru({dict(self._items)!r}, cap={self.cap})"
