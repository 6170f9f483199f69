"""In-memory twin of the LMDB store, for simulations and unit tests.

Same contract as ``LmdbTrialStore`` (one contract suite runs against both), including atomic
batches: an undo log restores every touched structure when a batch raises. Records are frozen
dataclasses, so returning them without copying cannot alias later writes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pbt_actors.model import wire
from pbt_actors.model.records import CheckpointRef, Trial, TrialSpec, TrialStatus
from pbt_actors.storage.base import (
    TRIAL_ID_COUNTER,
    TrialStore,
    check_spec,
    check_transition,
    status_counter,
)


class InMemoryTrialStore(TrialStore):
    """Dicts and sets; every query the controller makes is O(result), not O(history)."""

    def __init__(self) -> None:
        self._meta: dict[str, Any] = {}
        self._trials: dict[int, Trial] = {}
        self._by_status: dict[TrialStatus, set[int]] = {s: set() for s in TrialStatus}
        self._children: dict[int, set[int]] = {}
        self._generations: dict[int, set[int]] = {}
        self._completed: dict[int, set[int]] = {}
        self._uninitiated: set[int] = set()
        self._checkpoints: dict[int, CheckpointRef] = {}
        self._undo: list[Callable[[], None]] | None = None
        self._depth = 0
        self._closed = False

    # --- undo log -----------------------------------------------------------------------------
    def _remember(self, undo: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def _set_item(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        if key in mapping:
            old = mapping[key]
            self._remember(lambda: mapping.__setitem__(key, old))
        else:
            self._remember(lambda: mapping.pop(key, None))
        mapping[key] = value

    def _del_item(self, mapping: dict[Any, Any], key: Any) -> None:
        if key in mapping:
            old = mapping.pop(key)
            self._remember(lambda: mapping.__setitem__(key, old))

    def _set_add(self, target: set[int], value: int) -> None:
        if value not in target:
            target.add(value)
            self._remember(lambda: target.discard(value))

    def _set_discard(self, target: set[int], value: int) -> None:
        if value in target:
            target.discard(value)
            self._remember(lambda: target.add(value))

    @contextmanager
    def batch(self, durable: bool = True) -> Iterator[None]:
        self._check_open()
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._undo, self._depth = [], 1
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo):
                undo()
            raise
        finally:
            self._undo, self._depth = None, 0

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        self._check_open()
        return copy.deepcopy(self._meta.get(key))

    def put_meta(self, key: str, value: Any) -> None:
        self._check_open()
        # A msgpack round trip, as on disk: same refusals, and tuples come back as lists.
        self._set_item(self._meta, key, wire.unpack(wire.pack(value)))

    def incr_counter(self, name: str, delta: int = 1) -> int:
        self._check_open()
        key = f"counter:{name}"
        value = int(self._meta.get(key, 0)) + delta
        self._set_item(self._meta, key, value)
        return value

    def counter(self, name: str) -> int:
        self._check_open()
        return int(self._meta.get(f"counter:{name}", 0))

    # --- trials -------------------------------------------------------------------------------
    def create_trial(self, spec: TrialSpec, now: float) -> Trial:
        self._check_open()
        check_spec(spec)
        trial_id = self.incr_counter(TRIAL_ID_COUNTER)
        trial = Trial.from_spec(trial_id, spec, now)
        self._write(None, trial)
        return trial

    def find_trial(self, trial_id: int) -> Trial | None:
        self._check_open()
        return self._trials.get(trial_id)

    def transition(self, trial_id: int, expected_status: TrialStatus, expected_attempt: int,
                   new: Trial) -> bool:
        self._check_open()
        if new.id != trial_id:
            raise ValueError(f"record id {new.id} does not match trial id {trial_id}")
        current = self._trials.get(trial_id)
        if (current is None or current.status is not expected_status
                or current.attempt != expected_attempt):
            return False
        check_transition(current, new)
        self._write(current, new)
        return True

    def _write(self, old: Trial | None, new: Trial) -> None:
        """Write a record and keep every derived index consistent with it."""
        self._set_item(self._trials, new.id, new)
        if old is None:
            self._set_add(self._generations.setdefault(new.generation, set()), new.id)
            if new.parent_id is not None:
                self._set_add(self._children.setdefault(new.parent_id, set()), new.id)
        if old is None or old.status is not new.status:
            if old is not None:
                self._set_discard(self._by_status[old.status], new.id)
                self.incr_counter(status_counter(old.status), -1)
                if old.status is TrialStatus.COMPLETED:
                    self._set_discard(self._completed.setdefault(new.generation, set()), new.id)
            self._set_add(self._by_status[new.status], new.id)
            self.incr_counter(status_counter(new.status), 1)
            if new.status is TrialStatus.COMPLETED:
                self._set_add(self._completed.setdefault(new.generation, set()), new.id)
        if new.status is TrialStatus.COMPLETED and not new.initiated:
            self._set_add(self._uninitiated, new.id)
        else:
            self._set_discard(self._uninitiated, new.id)
        if new.checkpoint is not None and (old is None or old.checkpoint != new.checkpoint):
            self._set_item(self._checkpoints, new.id, new.checkpoint)

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        self._check_open()
        return sorted(self._by_status[status])

    def first_with_status(self, status: TrialStatus) -> int | None:
        self._check_open()
        ids = self._by_status[status]
        return min(ids) if ids else None

    def count(self, status: TrialStatus | None = None) -> int:
        self._check_open()
        if status is None:
            return len(self._trials)
        return len(self._by_status[status])

    def children(self, trial_id: int) -> list[int]:
        self._check_open()
        return sorted(self._children.get(trial_id, ()))

    def generation(self, generation: int) -> list[int]:
        self._check_open()
        return sorted(self._generations.get(generation, ()))

    def completed_in_generation(self, generation: int) -> list[int]:
        self._check_open()
        return sorted(self._completed.get(generation, ()))

    def max_generation(self) -> int:
        self._check_open()
        populated = [g for g, ids in self._generations.items() if ids]
        return max(populated) if populated else -1

    def uninitiated(self) -> list[int]:
        self._check_open()
        return sorted(self._uninitiated)

    def iter_trials(self, start_id: int = 1) -> Iterator[Trial]:
        self._check_open()
        for trial_id in range(start_id, self.counter(TRIAL_ID_COUNTER) + 1):
            trial = self._trials.get(trial_id)
            if trial is not None:
                yield trial

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, trial_id: int) -> CheckpointRef | None:
        self._check_open()
        return self._checkpoints.get(trial_id)

    def delete_checkpoint(self, trial_id: int) -> None:
        self._check_open()
        self._del_item(self._checkpoints, trial_id)

    def checkpoint_ids(self) -> list[int]:
        self._check_open()
        return sorted(self._checkpoints)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("store is closed")
