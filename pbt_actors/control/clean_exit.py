"""Which peers a controller answered and which it told ``done``, so it can linger at the end of
a run until every worker heard ``done`` (a clean exit) and no longer.

A host supervisor speaks too (its ``hello``, every few seconds) but never asks for work, so it
is never answered ``done`` itself: it counts as done once every worker its ``hello`` listed
was told ``done`` or reported lost (its workers exit on ``done``, and it exits with them).
Without that rule a controller whose hosts had all gone lingered its whole ``--linger``
(issue 21, item 4a). Nor is a peer waited for that has been silent for ``SILENT_S``: at the end
of a run no trial runs, so a live worker asks again within the long-poll interval (``PARK_S``,
2 s) and a live host says ``hello`` every 3 s; one silent for longer died unannounced (a lost
node takes its host supervisor along, so nobody says ``worker_lost``)."""

from __future__ import annotations

from collections.abc import KeysView

from pbt_actors.common.bounded_lru import BoundedLru
from pbt_actors.model.protocol import Done, Reply

MAX_TRACKED_PEERS = 16_384
"""Peers remembered as seen / told ``done``, least recently seen out first."""
SILENT_S = 10.0
"""At the end of a run, a peer not heard from for this long is not waited for (module doc)."""


class AnsweredPeers:
    """Peers that got a non-error answer (the workers to tell ``done`` before exiting: a peer
    that only ever sent rejected input is nobody's worker and is not waited for) and peers that
    were answered ``done``; each at most ``cap``."""

    __slots__ = ("_done", "_hosts", "_seen")

    def __init__(self, cap: int = MAX_TRACKED_PEERS) -> None:
        self._seen: BoundedLru[str, float] = BoundedLru(cap)
        """Peer -> when it was last answered (the caller's clock)."""
        self._done: BoundedLru[str, None] = BoundedLru(cap)
        self._hosts: BoundedLru[str, tuple[str, ...]] = BoundedLru(cap)
        """Host supervisor peer -> the worker ids of its last answered ``hello``."""

    @property
    def seen(self) -> KeysView[str]:
        return self._seen.keys()

    @property
    def done(self) -> KeysView[str]:
        return self._done.keys()

    def answered(self, peer: str, reply: Reply, host_workers: tuple[str, ...] | None = None,
                 now: float = 0.0) -> None:
        """``peer`` got ``reply``, not an error, at ``now``; ``host_workers``: the peer is a
        host supervisor and its ``hello`` listed these workers."""
        self._seen.put(peer, now)
        if isinstance(reply, Done):
            self._done.put(peer, None)
        if host_workers is not None:
            self._hosts.put(peer, tuple(host_workers))

    def forget(self, worker: str) -> None:
        """A worker reported lost is no longer waited for."""
        self._seen.pop(worker)

    def not_done(self, now: float | None = None, silent_s: float = SILENT_S) -> set[str]:
        """Peers answered but not told ``done`` yet (a copy: another thread may read it), less
        those silent for ``silent_s`` at ``now`` (None: no such rule) and the host supervisors
        none of whose workers is still waited for."""
        done = set(self._done)
        waiting = {peer for peer, last in list(self._seen.items())
                   if peer not in done and (now is None or now - last <= silent_s)}
        for host, workers in list(self._hosts.items()):
            if host in waiting and not waiting.intersection(workers):
                waiting.discard(host)
        return waiting
