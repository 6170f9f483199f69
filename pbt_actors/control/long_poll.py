"""The long poll's held requests: which request for work each peer is waiting on, and since when.

A ``request_trial`` (or ``report`` with ``next``) that the core answers ``wait`` is held rather
than answered, goes back to the core with every batch that can have created work, and is
answered ``wait(0)`` once held ``park_s`` (docs/protocol.md §4). This module keeps the held
requests and their deadlines; ``control/session.py`` decides when to hold, requeue and answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbt_actors.common.bounded_lru import BoundedLru


@dataclass(frozen=True, slots=True)
class Parked:
    """A held request for work: answered when the core's answer is not ``wait``, or at
    ``since + park_s`` with ``wait(0)``. ``since`` survives re-asking, so the limit counts
    from when the worker asked, however often the request went back to the core."""

    request_id: int
    worker: str
    since: float


class HeldRequests(BoundedLru[bytes, Parked]):
    """Held requests by peer, the one held longest first; past ``cap`` the oldest is returned
    by ``put`` (the session answers it ``wait(0)`` early: it asks again)."""

    __slots__ = ()

    def next_deadline(self, park_s: float) -> float | None:
        """When the oldest held request falls due (None: nothing held)."""
        if not self._items:
            return None
        return min(p.since for p in self._items.values()) + park_s

    def take_overdue(self, now: float, park_s: float) -> list[tuple[bytes, Parked]]:
        """Remove and return the requests held ``park_s`` or longer at ``now``."""
        items = self._items
        overdue = [(peer, p) for peer, p in items.items() if now >= p.since + park_s]
        for peer, _ in overdue:
            del items[peer]
        return overdue
