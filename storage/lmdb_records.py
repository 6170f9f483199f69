"""Trial records and their derived indexes inside one LMDB transaction.

Layer 2. ``LmdbRecords`` reads and writes on a transaction it is handed (``LmdbTxns`` decides
which): a record write encodes it once, applies the index edits it implies
(``pbt_actors.storage.indexes.index_edits``: the rules live there) to the databases of
``schema.INDEX_LAYOUT``, moves the counters, and keeps the writer's in-memory mirror of the hot
indexes (``pbt_actors.storage.index_mirror``) in step. It is also the transaction hooks of the
store, because the mirror is tied to the write transaction it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import lmdb

from pbt_actors.model.errors import StoreError
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.model.trial_cost import charge_deltas, retry_charge
from pbt_actors.storage import schema
from pbt_actors.storage.index_mirror import MIRRORED, IndexMirror
from pbt_actors.storage.indexes import ADD, STATUS, index_edits
from pbt_actors.storage.lmdb_best import LmdbBestIndex
from pbt_actors.storage.population_index import tail_edits
from pbt_actors.storage.trial_store import META_EXPERIMENT, STEPS_LEASED, STEPS_QUEUED, STEPS_RETRIED, status_counter

T = TypeVar("T")
_COMPLETED = TrialStatus.COMPLETED

# Decoded records kept by id (see ``decode_trial``): about the active population and then some.
DECODE_CACHE: Final = 4096


def scan(txn: lmdb.Transaction, db: Any, prefix: bytes = b"") -> Iterator[bytes]:
    """Keys of ``db`` starting with ``prefix``, ascending."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for raw in cursor.iternext(keys=True, values=False):
        key = bytes(raw)  # no copy: txns here use buffers=False, so raw is bytes already
        if not key.startswith(prefix):
            return
        yield key


class LmdbRecords:
    """The record and index operations of one store, on transactions handed in."""

    def __init__(self, path: Path, dbs: dict[bytes, Any]) -> None:
        self.path = path
        self.dbs = dbs
        self.meta = dbs[schema.DB_META]
        self.trials = dbs[schema.DB_TRIALS]
        self.status = dbs[schema.DB_STATUS]
        self.followed = dbs[schema.DB_FOLLOWED]
        self.tails = dbs[schema.DB_TAILS]
        self.best = LmdbBestIndex(dbs)
        # index -> (database, key encoder, value encoder or None): where ``put_trial`` applies
        # the edits of ``pbt_actors.storage.indexes.index_edits``
        self._layout = {index: (dbs[layout.db], layout.key, layout.value)
                        for index, layout in schema.INDEX_LAYOUT.items()}
        # id -> (stored bytes, record). Strict decoding costs ~100 us a record and the
        # controller reads a trial, then compare-and-sets it (reading it again): the cache
        # makes the second read a bytes comparison. It is validated against the bytes the
        # current transaction sees, so it can never serve a stale or rolled-back record.
        self._decoded: dict[int, tuple[bytes, Trial]] = {}
        # The writer's in-memory copy of the status / completed / uninitiated / lease indexes:
        # valid inside ``_mirror_txn`` only, and for the LMDB state committed as transaction
        # ``mirror_txnid``.
        self.mirror: IndexMirror | None = None
        self._mirror_txn: lmdb.Transaction | None = None
        self.mirror_txnid = -1
        self._txn_id = -1
        self._dirty_counts: set[TrialStatus] = set()
        """Statuses whose counter the current write txn changed, written at its end."""

    # --- transaction hooks (``lmdb_txn.TxnHooks``): the mirror follows the write txn ------------
    def began(self, txn: lmdb.Transaction) -> None:
        """Start mirroring in write txn ``txn``; forget a mirror another writer made stale."""
        self._txn_id = txn.id()
        if self.mirror is not None and self._txn_id != self.mirror_txnid + 1:
            self.mirror = None  # another process committed since: rebuild from disk when needed
        self._mirror_txn = txn
        self._dirty_counts.clear()

    def committing(self, txn: lmdb.Transaction) -> None:
        """Write the status counters this txn changed, once each, from the mirror's sets
        (instead of a read-modify-write of a counter for every transition)."""
        if self._dirty_counts and self.mirror is not None and txn is self._mirror_txn:
            for status in self._dirty_counts:
                txn.put(schema.counter_key(status_counter(status)),
                        schema.encode_meta(self.mirror.count(status)), db=self.meta)
        self._dirty_counts.clear()

    def committed(self, wrote: bool) -> None:
        # LMDB does not spend a txn id on a commit without changes: the mirror then reflects
        # the state before this txn, and the next write txn gets this same id again.
        self.mirror_txnid = self._txn_id if wrote else self._txn_id - 1
        self._mirror_txn = None

    def aborted(self, txn: lmdb.Transaction) -> None:
        if txn is self._mirror_txn:
            self.mirror = None  # it holds updates that never reached the disk
            self._mirror_txn = None
            self._dirty_counts.clear()

    def mirror_for(self, txn: lmdb.Transaction) -> IndexMirror | None:
        """The mirror if ``txn`` is this process's current write txn (built on first use),
        else None: readers outside a write use LMDB, which shows them committed state only."""
        if txn is not self._mirror_txn:
            return None
        if self.mirror is None:
            self.mirror = IndexMirror.build(self._mirrored_entries(txn), lambda i: self.existing(txn, i))
        return self.mirror

    def _mirrored_entries(self, txn: lmdb.Transaction) -> Iterator[tuple[str, Any, int]]:
        """``(index, key, id)`` of every on-disk entry of the indexes the mirror keeps."""
        for index in MIRRORED:
            layout = schema.INDEX_LAYOUT.get(index)
            if layout is None or layout.decode is None:
                continue  # not on disk (leases): the mirror derives it from the records
            decode = layout.decode
            for key in scan(txn, self.dbs[layout.db]):
                yield (index, *decode(key))

    def indexed(self, txn: lmdb.Transaction, from_mirror: Callable[[IndexMirror], T],
                from_disk: Callable[[lmdb.Transaction], T]) -> T:
        """An index query: from the mirror inside this process's write txn, else from LMDB."""
        mirror = self.mirror_for(txn)
        return from_disk(txn) if mirror is None else from_mirror(mirror)

    # --- counters -------------------------------------------------------------------------------
    def counter(self, txn: lmdb.Transaction, name: str) -> int:
        if self._dirty_counts and txn is self._mirror_txn and self.mirror is not None:
            for status in self._dirty_counts:  # written at the txn's end: answer from the mirror
                if status_counter(status) == name:
                    return self.mirror.count(status)
        return schema.decode_counter(name, txn.get(schema.counter_key(name), db=self.meta))

    def incr(self, txn: lmdb.Transaction, name: str, delta: int) -> int:
        value = self.counter(txn, name) + delta
        txn.put(schema.counter_key(name), schema.encode_meta(value), db=self.meta)
        return value

    def put_counter(self, txn: lmdb.Transaction, name: str, value: int) -> None:
        txn.put(schema.counter_key(name), schema.encode_meta(value), db=self.meta)

    def get_meta(self, txn: lmdb.Transaction, key: str) -> Any:
        raw = txn.get(schema.meta_key(key), db=self.meta)
        return None if raw is None else schema.decode_meta(key, raw)

    def put_meta(self, txn: lmdb.Transaction, key: str, value: Any) -> None:
        txn.put(schema.meta_key(key), schema.encode_meta(value), db=self.meta)

    def sync_best_index(self, txn: lmdb.Transaction) -> None:
        """Make the best index follow the stored experiment's objective (a damaged experiment:
        no index; ``status`` reports the damage)."""
        raw = txn.get(schema.meta_key(META_EXPERIMENT), db=self.meta)
        try:
            experiment = None if raw is None else schema.decode_meta(META_EXPERIMENT, raw)
        except Exception:
            experiment = None
        self.best.sync(txn, experiment, lambda: self.completed(txn), str(self.path))

    # --- records --------------------------------------------------------------------------------
    def get_trial(self, txn: lmdb.Transaction, trial_id: int) -> Trial | None:
        raw = txn.get(schema.encode_id(trial_id), db=self.trials)
        return None if raw is None else self.decode_trial(trial_id, bytes(raw))

    def existing(self, txn: lmdb.Transaction, trial_id: int) -> Trial:
        """A trial an index names: its record must be there."""
        trial = self.get_trial(txn, trial_id)
        if trial is None:
            raise StoreError(f"the status index of {self.path} names trial {trial_id}, which has no record")
        return trial

    def completed(self, txn: lmdb.Transaction) -> list[Trial]:
        """Every COMPLETED record, by id (building an index over them)."""
        prefix = schema.status_prefix(_COMPLETED)
        return [self.existing(txn, schema.decode_status_key(k)[1]) for k in list(scan(txn, self.status, prefix))]

    def all_trials(self, txn: lmdb.Transaction) -> Iterator[Trial]:
        """Every record, by id, in one transaction (migrations only; ``iter_trials`` chunks)."""
        cursor = txn.cursor(db=self.trials)
        for key, value in cursor.iternext(keys=True, values=True):
            yield self.decode_trial(schema.decode_id(key), bytes(value))

    def decode_trial(self, trial_id: int, raw: bytes) -> Trial:
        """Decode, or reuse the record decoded (or written) from these very bytes."""
        cached = self._decoded.get(trial_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        trial = schema.decode_trial(trial_id, raw)
        self._remember(trial_id, raw, trial)
        return trial

    def _remember(self, trial_id: int, raw: bytes, trial: Trial) -> None:
        cache = self._decoded
        if len(cache) >= DECODE_CACHE and trial_id not in cache:
            cache.pop(next(iter(cache)), None)  # oldest first: insertion order
        cache[trial_id] = (raw, trial)

    def put_trial(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Write a record and apply the index edits it implies (``index_edits``: the rules
        live there) to disk, to the counters and to the mirror."""
        data = schema.encode_trial(new)
        txn.put(schema.encode_id(new.id), data, db=self.trials)
        # Records are frozen, so handing ``new`` back on a later read is what the in-memory
        # store does too. Should this txn abort, the bytes on disk differ and it goes unused.
        self._remember(new.id, data, new)
        touches_completed = new.status is _COMPLETED or (old is not None and old.status is _COMPLETED)
        if touches_completed:
            self.best.put(txn, old, new)
        leased, queued = charge_deltas(old, new)
        if leased:
            self.incr(txn, STEPS_LEASED, leased)
        if queued:
            self.incr(txn, STEPS_QUEUED, queued)
        if retried := retry_charge(old, new):
            self.incr(txn, STEPS_RETRIED, retried)
        edits = index_edits(old, new)
        if not edits:  # e.g. a heartbeat: the record changed, no index entry did
            return
        mirror = self.mirror if txn is self._mirror_txn else None
        layout = self._layout
        for index, op, key, item in edits:
            where = layout.get(index)
            if where is not None:  # stored (the lease index lives in the mirror only)
                db, encode_key, encode_value = where
                if op == ADD:
                    txn.put(encode_key(key, item), b"" if encode_value is None else encode_value(item), db=db)
                else:
                    txn.delete(encode_key(key, item), db=db)
            if index is STATUS:  # the per-status counter follows the status index
                if mirror is None:
                    self.incr(txn, status_counter(key), op)
                else:
                    self._dirty_counts.add(key)  # written once at the txn's end
        if mirror is not None:
            mirror.apply(edits)
        if touches_completed:
            self._put_tails(txn, old, new)

    def _put_tails(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Apply the current-population edits (``population_index.tail_edits``), after this
        write's FOLLOWED edits are in the txn."""
        def followed(initiator: int) -> bool:
            return next(scan(txn, self.followed, schema.children_prefix(initiator)), None) is not None

        def completed(trial_id: int) -> bool:
            return txn.get(schema.status_key(_COMPLETED, trial_id), db=self.status) is not None

        for op, trial_id in tail_edits(old, new, followed, completed):
            if op == ADD:
                txn.put(schema.encode_id(trial_id), b"", db=self.tails)
            else:
                txn.delete(schema.encode_id(trial_id), db=self.tails)
