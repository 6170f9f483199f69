"""In-memory twin of the LMDB store, for simulations and unit tests.

Same contract as ``LmdbTrialStore`` (one contract suite runs against both), including atomic
batches: an undo log restores every touched structure when a batch raises. Records are frozen
dataclasses, so returning them without copying cannot alias later writes. The derived indexes
follow ``pbt_actors.storage.indexes.index_edits``, as the LMDB store's do; this store only says
where an edit goes (a dict of sets per index).
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pbt_actors.model import wire
from pbt_actors.model.fitness import Objective
from pbt_actors.model.ranking import BestEntry
from pbt_actors.model.records import CheckpointRef, Trial, TrialSpec, TrialStatus
from pbt_actors.model.trial_cost import charge_deltas, retry_charge
from pbt_actors.storage.best_index import FRONT, META_BEST_INDEX, RANKED, BestEdit, BestRule, ranking_by
from pbt_actors.storage.indexes import (
    ADD,
    CHECKPOINT,
    CHILDREN,
    COMPLETED,
    FOLLOWED,
    GENERATION,
    LEASE,
    SET_INDEXES,
    STATUS,
    UNINITIATED,
    Edit,
    index_edits,
)
from pbt_actors.storage.population_index import tail_edits
from pbt_actors.storage.trial_store import (
    META_EXPERIMENT,
    STEPS_LEASED,
    STEPS_QUEUED,
    STEPS_RETRIED,
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
        # set index -> key -> ids (see pbt_actors.storage.indexes for what each key is)
        self._indexes: dict[str, dict[Any, set[int]]] = {name: {} for name in SET_INDEXES}
        self._by_status = self._indexes[STATUS]
        self._children = self._indexes[CHILDREN]
        self._generations = self._indexes[GENERATION]
        self._completed = self._indexes[COMPLETED]
        self._uninitiated = self._indexes[UNINITIATED]
        self._leases = self._indexes[LEASE]
        self._checkpoints: dict[int, CheckpointRef] = {}
        # the best index (pbt_actors.storage.best_index): id -> entry per index, and the rule
        # (under key "rule", in a dict so the undo log can restore it)
        self._best: dict[str, dict[int, BestEntry]] = {RANKED: {}, FRONT: {}}
        self._best_rule: dict[str, BestRule] = {}
        self._undo: list[Callable[[], None]] | None = None
        self._tails: set[int] = set()
        self._followed = self._indexes[FOLLOWED]
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
        if key == META_EXPERIMENT:
            self._sync_best_index()

    def _sync_best_index(self) -> None:
        """Rebuild the best index when the stored objective changed (as the LMDB store does)."""
        rule = BestRule.from_experiment(self._meta.get(META_EXPERIMENT))
        current = self._best_rule.get("rule")
        if rule is not None and current is not None and rule.fingerprint == current.fingerprint:
            return
        if rule is None and current is None:
            return
        for index in (RANKED, FRONT):
            for trial_id in list(self._best[index]):
                self._del_item(self._best[index], trial_id)
        if rule is None:
            self._del_item(self._best_rule, "rule")
            self._del_item(self._meta, META_BEST_INDEX)
            return
        self._set_item(self._best_rule, "rule", rule)
        completed = sorted(self._by_status.get(TrialStatus.COMPLETED, ()))
        self._apply_best(rule.built(self._trials[i] for i in completed))
        self._set_item(self._meta, META_BEST_INDEX, {"objective": rule.fingerprint})

    def _apply_best(self, edits: list[BestEdit]) -> None:
        for index, op, entry in edits:
            if op > 0:
                self._set_item(self._best[index], entry.trial_id, entry)
            else:
                self._del_item(self._best[index], entry.trial_id)

    def best_ranked(self, objective: Objective, limit: int = 1) -> list[int]:
        """O(indexed) here (a heap selection): this store serves simulations and tests, where
        the LMDB store's ordered keys would buy nothing."""
        self._check_open()
        rule = ranking_by(self._best_rule.get("rule"), objective)
        entries = self._best[FRONT if rule.pareto else RANKED].values()
        return [e.trial_id for e in heapq.nsmallest(limit, entries, key=lambda e: e.order)]

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
        rule = self._best_rule.get("rule")
        if rule is not None and (new.status is TrialStatus.COMPLETED
                                 or (old is not None and old.status is TrialStatus.COMPLETED)):
            self._apply_best(rule.edits(old, new, self._best[FRONT].values(), self._best[RANKED].values()))
        leased, queued = charge_deltas(old, new)
        if leased:
            self.incr_counter(STEPS_LEASED, leased)
        if queued:
            self.incr_counter(STEPS_QUEUED, queued)
        if retried := retry_charge(old, new):
            self.incr_counter(STEPS_RETRIED, retried)
        self._apply(index_edits(old, new))
        if new.status is TrialStatus.COMPLETED or (old is not None and old.status is TrialStatus.COMPLETED):
            completed = self._by_status.get(TrialStatus.COMPLETED, set())
            for op, trial_id in tail_edits(old, new, lambda i: bool(self._followed.get(i)),
                                           lambda i: i in completed):
                (self._set_add if op == ADD else self._set_discard)(self._tails, trial_id)

    def followers(self, initiator: int) -> list[int]:
        self._check_open()
        return sorted(self._followed.get(initiator, ()))

    def population_tails(self) -> list[int]:
        self._check_open()
        return sorted(self._tails)

    def step_totals(self) -> tuple[int, int]:
        return self.counter(STEPS_LEASED), self.counter(STEPS_QUEUED)

    def _apply(self, edits: list[Edit]) -> None:
        """Apply index edits (undoable); ``STATUS`` edits also move the per-status counter."""
        for index, op, key, item in edits:
            if index is CHECKPOINT:
                self._set_item(self._checkpoints, key, item)
                continue
            groups = self._indexes[index]
            members = groups.get(key)
            if members is None:  # an empty set left behind by a rollback answers as none
                members = groups[key] = set()
            if op == ADD:
                self._set_add(members, item)
            else:
                self._set_discard(members, item)
            if index is STATUS:
                self.incr_counter(status_counter(key), op)

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        self._check_open()
        return sorted(self._by_status.get(status, ()))

    def first_with_status(self, status: TrialStatus) -> int | None:
        self._check_open()
        ids = self._by_status.get(status)
        return min(ids) if ids else None

    def count(self, status: TrialStatus | None = None) -> int:
        self._check_open()
        if status is None:
            return len(self._trials)
        return len(self._by_status.get(status, ()))

    def running_leased_to(self, worker: str) -> list[int]:
        self._check_open()
        return sorted(self._leases.get(worker, ()))

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
        return sorted(self._uninitiated.get(None, ()))

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
