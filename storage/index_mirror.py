"""The writer's in-memory copy of the LMDB store's derived indexes.

Layer 2. Every controller decision asks "which trials are PENDING / RUNNING", "which trials
of generation g are COMPLETED" (the initiator's tournament) or "which completed trials have not
reproduced yet" (``finished``). Answering those with LMDB cursor scans cost ~40% of the
controller's time per message at a population of 64 (every scanned key is a Python object).
The store's single writer therefore keeps these indexes as Python sets as well, updated by the
same ``_put_trial`` call that writes them to LMDB, from the same edits
(``pbt_actors.storage.indexes.index_edits``). The copy on disk stays the truth (other
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
from typing import Any

from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.storage.indexes import ADD, COMPLETED, LEASE, STATUS, UNINITIATED, Edit, entries

MIRRORED = (STATUS, COMPLETED, UNINITIATED, LEASE)
"""The indexes answered from memory inside the writer's transactions. Others (generation,
children, checkpoints) are read from LMDB: the controller asks them rarely, and ``LEASE`` is
mirrored only (it has no database)."""


class IndexMirror:
    """Per mirrored index, key -> set of ids, exactly as on disk (plus the lease index)."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[Any, set[int]]] = {index: {} for index in MIRRORED}

    @classmethod
    def build(cls, disk: Iterable[tuple[str, Any, int]], read: Callable[[int], Trial]) -> IndexMirror:
        """From the decoded entries ``(index, key, id)`` of the mirrored on-disk indexes; the
        lease index, which is not on disk, from the RUNNING records (``read`` fetches one)."""
        mirror = cls()
        mirror.apply([(index, ADD, key, item) for index, key, item in disk])
        for trial_id in mirror.ids_with_status(TrialStatus.RUNNING):
            mirror.apply([edit for edit in entries(read(trial_id)) if edit[0] is LEASE])
        return mirror

    def apply(self, edits: Iterable[Edit]) -> None:
        """Mirror one record write's index edits (those of the indexes it mirrors).

        Idempotent for the same edits, so an op replayed after map growth is safe. Emptied
        sets are dropped: worker ids come and go, and a dead worker's key must not linger."""
        sets = self.sets
        for index, op, key, item in edits:
            groups = sets.get(index)
            if groups is None:
                continue
            if op == ADD:
                members = groups.get(key)
                if members is None:
                    groups[key] = {item}
                else:
                    members.add(item)
            else:
                members = groups.get(key)
                if members is not None:
                    members.discard(item)
                    if not members:
                        del groups[key]

    def ids(self, index: str, key: Any) -> list[int]:
        return sorted(self.sets[index].get(key, ()))

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        return self.ids(STATUS, status)

    def first_with_status(self, status: TrialStatus) -> int | None:
        ids = self.sets[STATUS].get(status)
        return min(ids) if ids else None

    def count(self, status: TrialStatus) -> int:
        return len(self.sets[STATUS].get(status, ()))

    def completed_in_generation(self, generation: int) -> list[int]:
        return self.ids(COMPLETED, generation)

    def uninitiated_ids(self) -> list[int]:
        return self.ids(UNINITIATED, None)

    def running_leased_to(self, worker: str) -> list[int]:
        return self.ids(LEASE, worker)
