"""Which peers a controller answered and which it told ``done``, so it can linger at the end of
a run until every worker heard ``done`` (a clean exit) and no longer."""

from __future__ import annotations

from collections.abc import KeysView

from pbt_actors.common.bounded_lru import BoundedLru
from pbt_actors.model.protocol import Done, Reply

MAX_TRACKED_PEERS = 16_384
"""Peers remembered as seen / told ``done``, least recently seen out first."""


class AnsweredPeers:
    """Peers that got a non-error answer (the workers to tell ``done`` before exiting: a peer
    that only ever sent rejected input is nobody's worker and is not waited for) and peers that
    were answered ``done``; each at most ``cap``."""

    __slots__ = ("_done", "_seen")

    def __init__(self, cap: int = MAX_TRACKED_PEERS) -> None:
        self._seen: BoundedLru[str, None] = BoundedLru(cap)
        self._done: BoundedLru[str, None] = BoundedLru(cap)

    @property
    def seen(self) -> KeysView[str]:
        return self._seen.keys()

    @property
    def done(self) -> KeysView[str]:
        return self._done.keys()

    def answered(self, peer: str, reply: Reply) -> None:
        """``peer`` got ``reply``, not an error."""
        self._seen.put(peer, None)
        if isinstance(reply, Done):
            self._done.put(peer, None)

    def forget(self, worker: str) -> None:
        """A worker reported lost is no longer waited for."""
        self._seen.pop(worker)

    def not_done(self) -> set[str]:
        """Workers answered but not told ``done`` yet (a copy: another thread may read it)."""
        return set(self._seen) - set(self._done)
