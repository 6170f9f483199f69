"""The writer's in-memory copy of the LMDB store's derived indexes.

Layer 2. Every controller decision asks "which trials are PENDING / RUNNING", "which trials
of generation g are COMPLETED" (the initiator's tournament) or "which completed trials have not
reproduced yet" (``finished``). Answering those with LMDB cursor scans cost ~40% of the
controller's time per message at a population of 64 (every scanned key is a Python object).
The store's single writer therefore keeps these indexes as Python sets as well, updated by the
same ``_put_trial`` call that writes them to LMDB. The copy on disk stays the truth (other
processes read it; ``verify`` checks it); this mirror is a cache of it that is

* used only inside a write transaction of this process, where it reflects exactly what that
  transaction sees (its own uncommitted writes included);
* tied to the LMDB transaction id it was last committed at: when another process committed in
  between (the next write transaction's id is not ours + 1), it is rebuilt from disk;
* dropped when a write transaction aborts (its updates never reached the disk), and rebuilt
  lazily by the next one. Aborts are rare (a poisoned message, map growth).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pbt_actors.model.records import Trial, TrialStatus


class IndexMirror:
    """Status sets, completed-per-generation sets and the uninitiated set, as on disk."""

    def __init__(self) -> None:
        self.by_status: dict[TrialStatus, set[int]] = {status: set() for status in TrialStatus}
        self.completed: dict[int, set[int]] = {}
        self.uninitiated: set[int] = set()
        self.leases: dict[str, set[int]] = {}
        """worker -> RUNNING trials it holds the lease of (``request_trial`` and ``worker_lost``
        ask this for every message; on disk it would be a scan of the RUNNING records)."""

    @classmethod
    def build(cls, status_keys: Iterable[tuple[TrialStatus, int]], completed_keys: Iterable[tuple[int, int]],
              uninitiated_ids: Iterable[int], read: Callable[[int], Trial]) -> IndexMirror:
        """From the decoded keys of the on-disk indexes; ``read`` fetches the RUNNING records
        (for their leases)."""
        mirror = cls()
        for status, trial_id in status_keys:
            mirror.by_status[status].add(trial_id)
        for generation, trial_id in completed_keys:
            mirror.completed.setdefault(generation, set()).add(trial_id)
        mirror.uninitiated.update(uninitiated_ids)
        for trial_id in mirror.by_status[TrialStatus.RUNNING]:
            lease = read(trial_id).lease
            if lease is not None:
                mirror.leases.setdefault(lease.worker, set()).add(trial_id)
        return mirror

    def apply(self, old: Trial | None, new: Trial) -> None:
        """Mirror one record write (the same rules as ``LmdbTrialStore._put_trial``).

        Idempotent for the same ``(old, new)``, so an op replayed after map growth is safe."""
        trial_id = new.id
        if old is not None and old.status is TrialStatus.RUNNING and old.lease is not None:
            held = self.leases.get(old.lease.worker)
            if held is not None:
                held.discard(trial_id)
                if not held:
                    del self.leases[old.lease.worker]
        if new.status is TrialStatus.RUNNING and new.lease is not None:
            self.leases.setdefault(new.lease.worker, set()).add(trial_id)
        if old is not None and old.status is not new.status:
            self.by_status[old.status].discard(trial_id)
            if old.status is TrialStatus.COMPLETED:
                ids = self.completed.get(old.generation)
                if ids is not None:
                    ids.discard(trial_id)
        self.by_status[new.status].add(trial_id)
        if new.status is TrialStatus.COMPLETED:
            self.completed.setdefault(new.generation, set()).add(trial_id)
            if not new.initiated:
                self.uninitiated.add(trial_id)
            else:
                self.uninitiated.discard(trial_id)
        else:
            self.uninitiated.discard(trial_id)

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        return sorted(self.by_status[status])

    def first_with_status(self, status: TrialStatus) -> int | None:
        ids = self.by_status[status]
        return min(ids) if ids else None

    def count(self, status: TrialStatus) -> int:
        return len(self.by_status[status])

    def completed_in_generation(self, generation: int) -> list[int]:
        return sorted(self.completed.get(generation, ()))

    def uninitiated_ids(self) -> list[int]:
        return sorted(self.uninitiated)

    def running_leased_to(self, worker: str) -> list[int]:
        return sorted(self.leases.get(worker, ()))
