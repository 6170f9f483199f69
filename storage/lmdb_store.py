"""``LmdbTrialStore``: the trial graph in one LMDB environment per store folder.

Layer 2. The store is put together from one module per concern:

* ``lmdb_txn``: the environment, batches, map growth, read-only opening (see its docstring
  for the transaction and concurrency rules), with ``writer_lock`` (one writer per store);
* ``migrations``: the schema version, checked at open; the writer migrates an older store,
  a reader refuses it with the remedy;
* ``lmdb_records``: records, counters and the derived indexes inside a transaction, with
  the writer's in-memory index mirror; ``lmdb_best``: the best index;
* ``schema``: key layout and codecs.

This module answers the ``TrialStore`` queries on top of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import lmdb

from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import CheckpointRef, Trial, TrialSpec, TrialStatus
from pbt_actors.storage import migrations, schema
from pbt_actors.storage.index_mirror import IndexMirror
from pbt_actors.storage.lmdb_records import LmdbRecords, scan
from pbt_actors.storage.lmdb_txn import LmdbTxns
from pbt_actors.storage.trial_store import (
    META_EXPERIMENT,
    STEPS_LEASED,
    STEPS_QUEUED,
    TRIAL_ID_COUNTER,
    TrialStore,
    check_spec,
    check_transition,
    status_counter,
)

T = TypeVar("T")

# Trials decoded per read transaction in ``iter_trials``: keeps read transactions short.
ITER_CHUNK: Final = 256


class LmdbTrialStore(TrialStore):
    """The real ``TrialStore``: one LMDB environment per folder, see the module docstring."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False,
                 map_size: int = 1 << 30, sync: bool = True) -> None:
        """Open (or, unless ``readonly``, create) the store in folder ``path``.

        Args:
            map_size: initial LMDB map size; grown by doubling whenever it fills. Ignored
                when ``readonly``: a reader adopts the writer's size and follows it.
            sync: make commits durable. With ``True`` (the default) every commit outside a
                batch, and every ``batch(durable=True)``, is flushed to disk (fdatasync) before
                it returns; ``batch(durable=False)`` commits without the flush (leases,
                heartbeats: losing them on power loss only re-queues work), and the next
                durable commit flushes it too. LMDB without WRITEMAP keeps atomicity and
                consistency for the unflushed commits on a write-order preserving file
                system. ``False`` never flushes (tests, simulations).
        Raises:
            StoreError: the folder cannot be created or written, holds no store (readonly),
                or is already open in this process.
            SchemaVersionError: the store was written by a newer pbt-actors, or (a reader,
                ``migrations.StoreNeedsMigration``) by an older one.
        """
        self._path = Path(path)
        self._readonly = readonly
        self._txns = LmdbTxns(self._path, readonly=readonly, map_size=map_size, sync=sync)
        self.migrated: tuple[migrations.Migration, ...] = ()
        """The migrations this writer applied when it opened the store."""
        try:
            if readonly:
                self._records = LmdbRecords(self._path, migrations.open_for_reading(self._txns))
            else:
                self._records, self.migrated = migrations.open_for_writing(self._txns)
        except BaseException:
            self._txns.close()
            raise
        self._txns.hooks = self._records
        dbs = self._records.dbs
        self._meta = dbs[schema.DB_META]
        self._trials = dbs[schema.DB_TRIALS]
        self._children = dbs[schema.DB_CHILDREN]
        self._generations = dbs[schema.DB_GENERATIONS]
        self._status = dbs[schema.DB_STATUS]
        self._uninitiated = dbs[schema.DB_UNINITIATED]
        self._checkpoints = dbs[schema.DB_CHECKPOINTS]
        self._completed = dbs[schema.DB_COMPLETED]
        self._followed = dbs[schema.DB_FOLLOWED]
        self._tails = dbs[schema.DB_TAILS]

    # --- transactions (``lmdb_txn``) -------------------------------------------------------------
    def _read(self, op: Callable[[lmdb.Transaction], T]) -> T:
        return self._txns.read(op)

    def _write(self, op: Callable[[lmdb.Transaction], T]) -> T:
        return self._txns.write(op)

    def _check_open(self) -> None:
        self._txns.check_open()

    def batch(self, durable: bool = True) -> Any:
        """One write transaction for the whole block (``lmdb_txn``); ``durable=False`` skips the
        disk flush at commit (see ``sync`` in ``__init__``).

        Raises:
            StoreFullRetry: the map filled up; nothing of the batch was written and the map
                has grown. Re-run the whole batch.
        """
        return self._txns.batch(durable)

    def close(self) -> None:
        """Abort any open batch and close the environment. Idempotent."""
        self._txns.close()

    def _indexed(self, from_mirror: Callable[[IndexMirror], T], from_disk: Callable[[lmdb.Transaction], T]) -> T:
        """An index query: from the mirror inside this process's write txn, else from LMDB."""
        return self._read(lambda txn: self._records.indexed(txn, from_mirror, from_disk))

    @staticmethod
    def _valid_id(trial_id: int) -> bool:
        """Ids outside the key range cannot be stored, so queries for them find nothing."""
        return isinstance(trial_id, int) and 0 <= trial_id <= schema.MAX_ID

    @staticmethod
    def _valid_generation(generation: int) -> bool:
        """Likewise for generations."""
        return isinstance(generation, int) and 0 <= generation <= schema.MAX_GENERATION

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        return self._read(lambda txn: self._records.get_meta(txn, key))

    def put_meta(self, key: str, value: Any) -> None:
        data = schema.encode_meta(value)  # fail on non-msgpack data before opening a txn

        def op(txn: lmdb.Transaction) -> None:
            txn.put(schema.meta_key(key), data, db=self._meta)
            if key == META_EXPERIMENT:  # the objective may be new: the index follows it
                self._records.sync_best_index(txn)

        self._write(op)

    def incr_counter(self, name: str, delta: int = 1) -> int:
        return self._write(lambda txn: self._records.incr(txn, name, delta))

    def counter(self, name: str) -> int:
        return self._read(lambda txn: self._records.counter(txn, name))

    def step_totals(self) -> tuple[int, int]:
        return self._read(lambda txn: (self._records.counter(txn, STEPS_LEASED),
                                       self._records.counter(txn, STEPS_QUEUED)))

    # --- trials -------------------------------------------------------------------------------
    def create_trial(self, spec: TrialSpec, now: float) -> Trial:
        check_spec(spec)

        def op(txn: lmdb.Transaction) -> Trial:
            trial = Trial.from_spec(self._records.counter(txn, TRIAL_ID_COUNTER) + 1, spec, now)
            self._records.put_trial(txn, None, trial)  # encodes before its first put
            self._records.put_counter(txn, TRIAL_ID_COUNTER, trial.id)
            return trial

        return self._write(op)

    def find_trial(self, trial_id: int) -> Trial | None:
        if not self._valid_id(trial_id):
            self._check_open()
            return None
        return self._read(lambda txn: self._records.get_trial(txn, trial_id))

    def transition(self, trial_id: int, expected_status: TrialStatus, expected_attempt: int,
                   new: Trial) -> bool:
        self._check_open()
        if new.id != trial_id:
            raise ValueError(f"record id {new.id} does not match trial id {trial_id}")
        if not self._valid_id(trial_id):
            self._txns.check_writable()
            return False

        def op(txn: lmdb.Transaction) -> bool:
            current = self._records.get_trial(txn, trial_id)
            if (current is None or current.status is not expected_status
                    or current.attempt != expected_attempt):
                return False
            check_transition(current, new)
            self._records.put_trial(txn, current, new)
            return True

        return self._write(op)

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        prefix = schema.status_prefix(status)
        return self._indexed(lambda mirror: mirror.ids_with_status(status),
                             lambda txn: [schema.decode_status_key(k)[1] for k in scan(txn, self._status, prefix)])

    def first_with_status(self, status: TrialStatus) -> int | None:
        prefix = schema.status_prefix(status)
        return self._indexed(lambda mirror: mirror.first_with_status(status),
                             lambda txn: next((schema.decode_status_key(k)[1]
                                               for k in scan(txn, self._status, prefix)), None))

    def running_leased_to(self, worker: str) -> list[int]:
        """From the writer's mirror; a reader (the lease index is not on disk) reads the
        RUNNING records in its snapshot."""
        def from_disk(txn: lmdb.Transaction) -> list[int]:
            prefix = schema.status_prefix(TrialStatus.RUNNING)
            running = (self._records.existing(txn, schema.decode_status_key(k)[1])
                       for k in scan(txn, self._status, prefix))
            return [t.id for t in running if t.lease is not None and t.lease.worker == worker]

        return self._indexed(lambda mirror: mirror.running_leased_to(worker), from_disk)

    def count(self, status: TrialStatus | None = None) -> int:
        if status is None:
            return self._read(lambda txn: int(txn.stat(self._trials)["entries"]))
        return self._indexed(lambda mirror: mirror.count(status),
                             lambda txn: self._records.counter(txn, status_counter(status)))

    def children(self, trial_id: int) -> list[int]:
        if not self._valid_id(trial_id):
            self._check_open()
            return []
        prefix = schema.children_prefix(trial_id)
        return self._read(lambda txn: [schema.decode_children_key(k)[1] for k in scan(txn, self._children, prefix)])

    def followers(self, initiator: int) -> list[int]:
        if not self._valid_id(initiator):
            self._check_open()
            return []
        prefix = schema.children_prefix(initiator)
        return self._read(lambda txn: [schema.decode_children_key(k)[1] for k in scan(txn, self._followed, prefix)])

    def population_tails(self) -> list[int]:
        return self._read(lambda txn: [schema.decode_id(k) for k in scan(txn, self._tails)])

    def best_ranked(self, objective: Objective, limit: int = 1) -> list[int]:
        return self._read(lambda txn: self._records.best.ranked(txn, objective, limit))

    def count_uninitiated(self) -> int:
        return self._indexed(lambda mirror: len(mirror.uninitiated_ids()),
                             lambda txn: int(txn.stat(self._uninitiated)["entries"]))

    def generation(self, generation: int) -> list[int]:
        if not self._valid_generation(generation):
            self._check_open()
            return []
        prefix = schema.generation_prefix(generation)
        return self._read(lambda txn: [schema.decode_generation_key(k)[1]
                                       for k in scan(txn, self._generations, prefix)])

    def completed_in_generation(self, generation: int) -> list[int]:
        if not self._valid_generation(generation):
            self._check_open()
            return []
        prefix = schema.generation_prefix(generation)
        return self._indexed(lambda mirror: mirror.completed_in_generation(generation),
                             lambda txn: [schema.decode_generation_key(k)[1]
                                          for k in scan(txn, self._completed, prefix)])

    def max_generation(self) -> int:
        def op(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=self._generations)
            return schema.decode_generation_key(cursor.key())[0] if cursor.last() else -1

        return self._read(op)

    def uninitiated(self) -> list[int]:
        return self._indexed(lambda mirror: mirror.uninitiated_ids(),
                             lambda txn: [schema.decode_id(k) for k in scan(txn, self._uninitiated)])

    def iter_trials(self, start_id: int = 1) -> Iterator[Trial]:
        """Trials by ascending id up to the highest id at the first ``next()``, as the
        in-memory store. Reads ``ITER_CHUNK`` records per short read transaction, so a slow
        consumer never holds a reader open (that would grow the file)."""
        self._check_open()
        limit: int | None = None
        next_id = max(start_id, 0)
        while True:
            limit, trials = self._read(partial(self._trial_chunk, first=next_id, limit=limit))
            yield from trials
            if len(trials) < ITER_CHUNK:
                return
            next_id = trials[-1].id + 1

    def _trial_chunk(self, txn: lmdb.Transaction, first: int,
                     limit: int | None) -> tuple[int, list[Trial]]:
        """Up to ``ITER_CHUNK`` trials with ``first <= id <= limit`` (limit: the id counter,
        read in the first chunk's transaction)."""
        top = self._records.counter(txn, TRIAL_ID_COUNTER) if limit is None else limit
        out: list[Trial] = []
        cursor = txn.cursor(db=self._trials)
        if first > top or not cursor.set_range(schema.encode_id(first)):
            return top, out
        for key, value in cursor.iternext(keys=True, values=True):
            trial_id = schema.decode_id(key)
            if trial_id > top or len(out) == ITER_CHUNK:
                break
            out.append(self._records.decode_trial(trial_id, bytes(value)))
        return top, out

    # --- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, trial_id: int) -> CheckpointRef | None:
        if not self._valid_id(trial_id):
            self._check_open()
            return None
        raw = self._read(lambda txn: txn.get(schema.encode_id(trial_id), db=self._checkpoints))
        return None if raw is None else schema.decode_checkpoint(trial_id, raw)

    def delete_checkpoint(self, trial_id: int) -> None:
        if not self._valid_id(trial_id):
            self._check_open()
            self._txns.check_writable()
            return
        self._write(lambda txn: txn.delete(schema.encode_id(trial_id), db=self._checkpoints))

    def checkpoint_ids(self) -> list[int]:
        return self._read(lambda txn: [schema.decode_id(k) for k in scan(txn, self._checkpoints)])

    # --- introspection ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def map_size(self) -> int:
        """The current LMDB map size in bytes (grows by doubling)."""
        return self._txns.map_size

    def __repr__(self) -> str:
        mode = ", readonly=True" if self._readonly else ""
        state = " (closed)" if self._txns.closed else ""
        return f"LmdbTrialStore({str(self._path)!r}{mode}){state}"
