"""Which peers a controller answered and which it told ``done``, so it can linger at the end of
a run until every worker heard ``done`` (a clean exit) and no longer.

A host supervisor speaks too (its ``hello``, every few seconds) but never asks for work, so it
is never answered ``done`` itself: it counts as done once every worker its ``hello`` listed
was told ``done`` or reported lost (its workers exit on ``done``, and it exits with them).
Without that rule a controller whose hosts had all gone lingered its whole ``--linger``
(issue 21, item 4a)."""

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

    __slots__ = ("_done", "_hosts", "_seen")

    def __init__(self, cap: int = MAX_TRACKED_PEERS) -> None:
        self._seen: BoundedLru[str, None] = BoundedLru(cap)
        self._done: BoundedLru[str, None] = BoundedLru(cap)
        self._hosts: BoundedLru[str, tuple[str, ...]] = BoundedLru(cap)
        """Host supervisor peer -> the worker ids of its last answered ``hello``."""

    @property
    def seen(self) -> KeysView[str]:
        return self._seen.keys()

    @property
    def done(self) -> KeysView[str]:
        return self._done.keys()

    def answered(self, peer: str, reply: Reply, host_workers: tuple[str, ...] | None = None) -> None:
        """``peer`` got ``reply``, not an error; ``host_workers``: the peer is a host supervisor
        and its ``hello`` listed these workers."""
        self._seen.put(peer, None)
        if isinstance(reply, Done):
            self._done.put(peer, None)
        if host_workers is not None:
            self._hosts.put(peer, tuple(host_workers))

    def forget(self, worker: str) -> None:
        """A worker reported lost is no longer waited for."""
        self._seen.pop(worker)

    def not_done(self) -> set[str]:
        """Peers answered but not told ``done`` yet (a copy: another thread may read it), less
        the host supervisors none of whose workers is still waited for."""
        waiting = set(self._seen) - set(self._done)
        for host, workers in list(self._hosts.items()):
            if host in waiting and not waiting.intersection(workers):
                waiting.discard(host)
        return waiting
