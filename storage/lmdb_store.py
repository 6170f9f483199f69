"""``LmdbTrialStore``: the trial graph in one LMDB environment per store folder.

Layer 2. Key layout and codecs live in ``pbt_actors.storage.schema``; this module adds transactions,
map growth, the schema-version check and read-only opening.

Transactions
    ``batch()`` opens ONE write transaction and holds it on the store until the block ends;
    every read and write the batch's thread makes meanwhile goes through it (so reads see the
    batch's own writes) and the block commits once (one fsync) or, if it raises, aborts.
    Nested ``batch()`` calls join the outer one. Outside a batch each write op is its own
    write transaction and each read a short read transaction, so a reader never pins old
    pages for long (long readers make LMDB's file grow).

Map growth
    LMDB needs a map size up front. We start with a large one (sparse on 64-bit: no cost), and
    on ``lmdb.MapFullError`` abort, double the map (``env.set_mapsize``) and try again:

    * a single op outside a batch is simply replayed: it reads its inputs inside its own
      transaction, so the replay is exact;
    * inside a batch the caller's logic cannot be replayed from here. The batch transaction is
      aborted, the map grown, and ``StoreFullRetry`` raised; every later op of that batch raises
      it too and so does leaving the block, so nothing half-done can commit. The controller
      core catches it (as ``pbt_actors.model.errors.StoreRetry``) and re-runs the whole batch, which
      is safe because its handling is a deterministic function of the stored state.

    Readers in other processes get ``lmdb.MapResizedError`` when they begin a transaction
    after the writer grew the map; they adopt the new size (``set_mapsize(0)``) and retry.
    ``set_mapsize`` is only legal with no transaction active in the process, so an in-process
    gate makes resizes wait for running short reads and holds new reads back meanwhile.

Concurrency
    One writer: the controller, enforced across processes and hosts sharing the folder by an
    exclusive ``flock`` on ``writer.lock`` (``StoreLocked`` names the holder). ``readonly=True``
    opens the environment read-only with locking (and never takes that lock), so a CLI in
    another process reads committed snapshots while the writer works.
    Within one process other threads may read concurrently; they never use the batch's
    transaction (LMDB write transactions are bound to their thread). Never carry an open
    store across ``fork``; LMDB also refuses to open the same folder twice in one process.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import lmdb

from pbt_actors.model import wire
from pbt_actors.model.errors import SchemaVersionError, StoreError, StoreFull, StoreFullRetry, StoreLocked
from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import CheckpointRef, Trial, TrialSpec, TrialStatus
from pbt_actors.storage import schema, step_totals
from pbt_actors.storage.best_index import (
    FRONT,
    META_BEST_INDEX,
    RANKED,
    BestEdit,
    BestEntry,
    BestRule,
    pareto_front,
    sort_key,
)
from pbt_actors.storage.index_mirror import MIRRORED, IndexMirror
from pbt_actors.storage.indexes import ADD, STATUS, index_edits
from pbt_actors.storage.population_index import META_POPULATION_INDEX, tail_edits, tails_of
from pbt_actors.storage.trial_store import (
    META_EXPERIMENT,
    TRIAL_ID_COUNTER,
    TrialStore,
    check_spec,
    check_transition,
    status_counter,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
_COMPLETED = TrialStatus.COMPLETED

# Doubling from even 64 KiB reaches the 64-bit address-space limit long before this many tries;
# the bound only turns a pathological loop (e.g. one value larger than any map) into an error.
MAX_GROWTHS: Final = 48
# Bounded so a reader racing a fast-growing writer reports rather than spins forever.
MAX_RESIZE_RETRIES: Final = 16
# Trials decoded per read transaction in ``iter_trials``: keeps read transactions short.
ITER_CHUNK: Final = 256
# Decoded records kept by id (see ``_get_trial``): about the active population and then some.
DECODE_CACHE: Final = 4096
# The writer's lock file in the store folder (see ``_take_writer_lock``).
WRITER_LOCK: Final = "writer.lock"
# errno values of a commit or flush that mean "the disk is full (or failing)", not a bug: a short
# write() is reported by LMDB as EIO (seen with RLIMIT_FSIZE), a failed one as ENOSPC / EFBIG / EDQUOT.
DISK_FULL_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT})


def disk_error(path: Path, what: str, exc: lmdb.Error) -> StoreError:
    """The ``StoreError`` for an LMDB error of a commit or flush: ``StoreFull`` when the disk is
    full or failing (``DISK_FULL_ERRNOS``; the transaction is aborted and the store keeps its last
    committed state), a plain ``StoreError`` otherwise."""
    if isinstance(exc, lmdb.DiskError) or getattr(exc, "code", None) in DISK_FULL_ERRNOS:
        return StoreFull(f"{what} {path} failed: {exc}")
    return StoreError(f"{what} {path} failed: {exc}")


@dataclass
class _Batch:
    """The write transaction a ``batch()`` holds, and the thread that may use it."""

    txn: lmdb.Transaction
    thread: int
    depth: int = 1
    doomed: bool = False  # aborted after MapFullError: every later use raises StoreFullRetry


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
            SchemaVersionError: the store was written by a newer pbt-actors.
        """
        self._path = Path(path)
        self._readonly = readonly
        self._closed = False
        self._batch: _Batch | None = None
        self._gate = threading.Condition()
        self._readers = 0
        self._resizing = False
        # id -> (stored bytes, record). Strict decoding costs ~100 us a record and the
        # controller reads a trial, then compare-and-sets it (reading it again): the cache
        # makes the second read a bytes comparison. It is validated against the bytes the
        # current transaction sees, so it can never serve a stale or rolled-back record.
        self._decoded: dict[int, tuple[bytes, Trial]] = {}
        self._sync = sync and not readonly
        # The writer's in-memory copy of the status / completed / uninitiated indexes (see
        # ``pbt_actors.storage.index_mirror``): valid inside ``_mirror_txn`` only, and for the LMDB
        # state committed as transaction ``_mirror_txnid``.
        self._mirror: IndexMirror | None = None
        self._mirror_txn: lmdb.Transaction | None = None
        self._mirror_txnid = -1
        self._txn_id = -1
        self._txn_wrote = False
        self._dirty_counts: set[TrialStatus] = set()
        """Statuses whose counter the current write txn changed, written at its end."""
        self._lock_fd: int | None = None
        self._env = self._open_env(map_size)
        try:
            self._dbs = self._open_dbs()
        except BaseException:
            self._env.close()
            self._release_writer_lock()
            self._closed = True
            raise
        self._meta = self._dbs[schema.DB_META]
        self._trials = self._dbs[schema.DB_TRIALS]
        self._children = self._dbs[schema.DB_CHILDREN]
        self._generations = self._dbs[schema.DB_GENERATIONS]
        self._status = self._dbs[schema.DB_STATUS]
        self._uninitiated = self._dbs[schema.DB_UNINITIATED]
        self._checkpoints = self._dbs[schema.DB_CHECKPOINTS]
        self._completed = self._dbs[schema.DB_COMPLETED]
        # The best index (``pbt_actors.storage.best_index``); None for a reader of a store no v2
        # writer has opened yet. ``_best_rules`` caches the rule per stored META_BEST_INDEX bytes,
        # so the rule a write applies is always the one its own transaction records.
        self._best_dbs = {RANKED: self._dbs.get(schema.DB_BEST_RANKED), FRONT: self._dbs.get(schema.DB_BEST_FRONT)}
        self._best_rules: dict[bytes, BestRule | None] = {}
        self._best_warned = False
        # index -> (database, key encoder, value encoder or None): where ``_put_trial`` applies
        # the edits of ``pbt_actors.storage.indexes.index_edits``
        self._layout = {index: (self._dbs[layout.db], layout.key, layout.value)
                        for index, layout in schema.INDEX_LAYOUT.items()
                        if layout.db in self._dbs}  # (a reader of a v1 store lacks v2's; it never writes)
        self._followed = self._dbs.get(schema.DB_FOLLOWED)
        self._tails = self._dbs.get(schema.DB_TAILS)
        if not readonly:
            try:
                self._run_write(self._sync_best_index)  # builds the index once for an older store
                self._run_write(self._sync_step_totals)  # likewise the step counters
                self._run_write(self._sync_population_index)  # and the current population
            except BaseException:
                self.close()
                raise

    # --- opening ------------------------------------------------------------------------------
    def _open_env(self, map_size: int) -> lmdb.Environment:
        path = self._path
        if self._readonly:
            if not (path / "data.mdb").is_file():
                raise StoreError(f"no pbt-actors store at {path} (no data.mdb); check --store")
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the store folder {path}: {exc.strerror or exc}; "
                                 f"choose a writable location") from exc
            if not os.access(path, os.W_OK | os.X_OK):
                raise StoreError(f"the store folder {path} is not writable; fix its permissions "
                                 f"or choose another location")
            self._take_writer_lock()
        try:
            return lmdb.open(
                # A reader maps what the writer has (0: the size recorded in the file) and
                # follows its growth through MapResizedError; see ``_read``.
                str(path), map_size=0 if self._readonly else map_size, subdir=True, readonly=self._readonly, lock=True,
                # we flush explicitly (``_flush``) so that a batch can choose to skip it
                max_dbs=schema.MAX_DBS, sync=False, metasync=False,
            )
        except lmdb.Error as exc:
            self._release_writer_lock()
            raise StoreError(f"cannot open the store at {path}: {exc} (is it open elsewhere in "
                             f"this process, or not an LMDB store?)") from exc

    def _take_writer_lock(self) -> None:
        """One writer per store (DESIGN §10): an exclusive ``flock`` on ``WRITER_LOCK`` in the
        folder, held until ``close`` (or the process dies: the kernel drops it), with this
        process's pid and host written in it for the next one's error message. Readers never
        take it.

        Raises:
            StoreLocked: another open writer (this process or another) holds it.
        """
        lock_path = self._path / WRITER_LOCK
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot create the store's lock file {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            if not isinstance(holder, dict):
                holder = {}
            raise StoreLocked(f"store {self._path} is in use by pid {holder.get('pid', '?')} on host "
                              f"{holder.get('host', '?')} (one controller per store: stop that one, or "
                              f"choose another --store)") from exc
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
        except OSError:
            pass  # the lock holds without its note (a full disk): the message says "pid ?"
        self._lock_fd = fd

    def _release_writer_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)  # drops the flock

    def _open_dbs(self) -> dict[bytes, Any]:
        """Open the named databases and check (or, for a new store, write) the schema version."""
        if self._readonly:
            try:
                dbs = {name: self._env.open_db(name, create=False) for name in schema.V1_DBS}
                for name in schema.V2_DBS:  # absent until a v2 writer migrated the store
                    with suppress(lmdb.NotFoundError):
                        dbs[name] = self._env.open_db(name, create=False)
            except lmdb.NotFoundError:
                raise StoreError(f"no pbt-actors store at {self._path} (LMDB environment "
                                 f"without our databases)") from None
            except lmdb.Error as exc:
                raise StoreError(f"cannot read the store at {self._path}: {exc}") from exc
            version = self._read(lambda txn: txn.get(
                schema.meta_key(schema.SCHEMA_VERSION_KEY), db=dbs[schema.DB_META]))
            if version is None:
                raise StoreError(f"no pbt-actors store at {self._path} (no schema version)")
            self._check_version(version)
            return dbs

        def init(txn: lmdb.Transaction) -> dict[bytes, Any]:
            # meta first, and the version checked before anything else is created, so a newer
            # store is refused without this build writing a byte into it.
            meta = self._env.open_db(schema.DB_META, txn=txn, create=True)
            key = schema.meta_key(schema.SCHEMA_VERSION_KEY)
            raw = txn.get(key, db=meta)
            if raw is None or self._check_version(raw) < schema.STORE_SCHEMA_VERSION:
                # new store, or an older one this writer migrates (``_sync_best_index`` fills the
                # index right after, before any other write can see the new version)
                txn.put(key, schema.encode_meta(schema.STORE_SCHEMA_VERSION), db=meta)
            dbs = {schema.DB_META: meta}
            for name in schema.ALL_DBS[1:]:
                dbs[name] = self._env.open_db(name, txn=txn, create=True)
            return dbs

        return self._run_write(init)

    def _check_version(self, raw: schema.Buf) -> int:
        """The stored schema version, if this build can read it."""
        version = schema.decode_meta(schema.SCHEMA_VERSION_KEY, raw)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(f"the store at {self._path} has an invalid schema version "
                             f"{version!r}; it is damaged or not a pbt-actors store")
        if version > schema.STORE_SCHEMA_VERSION:
            raise SchemaVersionError(
                f"the store at {self._path} has storage schema v{version}, written by a newer "
                f"pbt-actors; this build reads up to v{schema.STORE_SCHEMA_VERSION}. Upgrade "
                f"pbt-actors to open it (never let an older build write to it).")
        return version

    # --- transaction plumbing -----------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("store is closed")

    def _check_writable(self) -> None:
        if self._readonly:
            raise StoreError(f"the store at {self._path} is opened read-only; only the "
                             f"controller writes to it")

    def _own_batch(self) -> _Batch | None:
        """The batch of the calling thread, if any (other threads never use its txn)."""
        batch = self._batch
        if batch is not None and batch.thread == threading.get_ident():
            return batch
        return None

    def _doomed(self) -> StoreFullRetry:
        return StoreFullRetry(f"the store at {self._path} was full; its map has grown to "
                              f"{self._env.info()['map_size']} bytes and this batch was rolled "
                              f"back: re-run the whole batch")

    @contextmanager
    def _reader_slot(self) -> Iterator[None]:
        """Count a short read transaction so that ``_set_mapsize`` can wait for it."""
        with self._gate:
            while self._resizing:
                self._gate.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._gate:
                self._readers -= 1
                if not self._readers:
                    self._gate.notify_all()

    def _set_mapsize(self, size: int) -> None:
        """Resize the map (0: adopt another process's size) once no read txn is active."""
        with self._gate:
            while self._resizing:
                self._gate.wait()
            self._resizing = True
            try:
                while self._readers:
                    self._gate.wait()
                self._env.set_mapsize(size)
            except lmdb.Error as exc:  # e.g. a second writer thread holds a txn: one writer!
                raise StoreError(f"cannot resize the map of {self._path}: {exc}") from exc
            finally:
                self._resizing = False
                self._gate.notify_all()

    def _grow(self) -> None:
        self._set_mapsize(int(self._env.info()["map_size"]) * 2)

    def _begin_write(self) -> lmdb.Transaction:
        for _ in range(MAX_RESIZE_RETRIES):
            try:
                txn = self._env.begin(write=True)
            except lmdb.MapResizedError:  # a previous writer process grew the map
                self._set_mapsize(0)
            except lmdb.Error as exc:
                raise StoreError(f"cannot begin a write on {self._path}: {exc}") from exc
            self._attach_mirror(txn)
            return txn
        raise StoreError(f"the map of {self._path} keeps being resized by another process")

    # --- the index mirror (see pbt_actors.storage.index_mirror) ------------------------------------------
    def _attach_mirror(self, txn: lmdb.Transaction) -> None:
        """Start mirroring in write txn ``txn``; forget a mirror another writer made stale."""
        self._txn_id = txn.id()
        self._txn_wrote = False
        if self._mirror is not None and self._txn_id != self._mirror_txnid + 1:
            self._mirror = None  # another process committed since: rebuild from disk when needed
        self._mirror_txn = txn
        self._dirty_counts.clear()

    def _write_counts(self, txn: lmdb.Transaction) -> None:
        """Write the status counters this txn changed, once each, from the mirror's sets
        (instead of a read-modify-write of a counter for every transition)."""
        if self._dirty_counts and self._mirror is not None and txn is self._mirror_txn:
            for status in self._dirty_counts:
                txn.put(schema.counter_key(status_counter(status)),
                        schema.encode_meta(self._mirror.count(status)), db=self._meta)
        self._dirty_counts.clear()

    def _mirror_committed(self) -> None:
        # LMDB does not spend a txn id on a commit without changes: the mirror then reflects
        # the state before this txn, and the next write txn gets this same id again.
        self._mirror_txnid = self._txn_id if self._txn_wrote else self._txn_id - 1
        self._mirror_txn = None

    def _mirror_aborted(self) -> None:
        self._mirror = None  # it holds updates that never reached the disk
        self._mirror_txn = None
        self._dirty_counts.clear()

    def _mirror_for(self, txn: lmdb.Transaction) -> IndexMirror | None:
        """The mirror if ``txn`` is this process's current write txn (built on first use),
        else None: readers outside a write use LMDB, which shows them committed state only."""
        if txn is not self._mirror_txn:
            return None
        if self._mirror is None:
            self._mirror = IndexMirror.build(self._mirrored_entries(txn),
                                             lambda trial_id: self._existing(txn, trial_id))
        return self._mirror

    def _mirrored_entries(self, txn: lmdb.Transaction) -> Iterator[tuple[str, Any, int]]:
        """``(index, key, id)`` of every on-disk entry of the indexes the mirror keeps."""
        for index in MIRRORED:
            layout = schema.INDEX_LAYOUT.get(index)
            if layout is None or layout.decode is None:
                continue  # not on disk (leases): the mirror derives it from the records
            decode = layout.decode
            for key in self._scan(txn, self._dbs[layout.db]):
                yield (index, *decode(key))

    def _existing(self, txn: lmdb.Transaction, trial_id: int) -> Trial:
        trial = self._get_trial(txn, trial_id)
        if trial is None:
            raise StoreError(f"the status index of {self._path} names trial {trial_id}, which has no record")
        return trial

    def _abort(self, txn: lmdb.Transaction) -> None:
        if txn is self._mirror_txn:
            self._mirror_aborted()
        with suppress(lmdb.Error):  # already invalid (failed commit, closed env): no-op
            txn.abort()

    def _run_write(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``op`` in its own write txn and commit; on a full map grow and replay it."""
        for _ in range(MAX_GROWTHS):
            txn = self._begin_write()
            self._txn_wrote = True
            try:
                result = op(txn)
                self._write_counts(txn)
                txn.commit()
                self._mirror_committed()
                self._flush(True)
            except lmdb.MapFullError:
                self._abort(txn)
                self._grow()
                continue
            except lmdb.Error as exc:
                self._abort(txn)
                raise disk_error(self._path, "write to", exc) from exc
            except BaseException:
                self._abort(txn)
                raise
            return result
        raise StoreError(f"a write to {self._path} did not fit after {MAX_GROWTHS} map growths")

    def _write(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run a write op: inside the calling thread's batch, or as its own transaction."""
        self._check_open()
        self._check_writable()
        batch = self._own_batch()
        self._txn_wrote = True
        if batch is None:
            return self._run_write(op)
        if batch.doomed:
            raise self._doomed()
        try:
            return op(batch.txn)
        except lmdb.MapFullError:
            # The caller's logic cannot be replayed from here: roll back, grow, tell it to.
            self._abort(batch.txn)
            batch.doomed = True
            self._grow()
            raise self._doomed() from None
        except lmdb.Error as exc:
            raise StoreError(f"write to {self._path} failed: {exc}") from exc

    def _read(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run a read op: inside the calling thread's batch (seeing its writes) or in a short
        read transaction of its own."""
        self._check_open()
        batch = self._own_batch()
        if batch is not None:
            if batch.doomed:
                raise self._doomed()
            try:
                return op(batch.txn)
            except lmdb.Error as exc:
                raise StoreError(f"read from {self._path} failed: {exc}") from exc
        for _ in range(MAX_RESIZE_RETRIES):
            with self._reader_slot():
                try:
                    txn = self._env.begin(write=False)
                except lmdb.MapResizedError:  # the writer grew the map: adopt it and retry
                    txn = None
                except lmdb.Error as exc:
                    raise StoreError(f"cannot read {self._path}: {exc}") from exc
                if txn is not None:
                    try:
                        return op(txn)
                    except lmdb.Error as exc:
                        raise StoreError(f"read from {self._path} failed: {exc}") from exc
                    finally:
                        txn.abort()
            self._set_mapsize(0)  # outside the reader slot: it waits for readers to finish
        raise StoreError(f"the map of {self._path} keeps being resized by the writer")

    def _flush(self, durable: bool) -> None:
        """fdatasync what was committed, when this store promises durability."""
        if durable and self._sync:
            try:
                self._env.sync(True)
            except lmdb.Error as exc:
                raise disk_error(self._path, "flushing", exc) from exc

    @contextmanager
    def batch(self, durable: bool = True) -> Iterator[None]:
        """One write transaction for the whole block; see the module docstring.

        ``durable=False`` skips the disk flush at commit (see ``sync`` in ``__init__``).

        Raises:
            StoreFullRetry: the map filled up; nothing of the batch was written and the map
                has grown. Re-run the whole batch.
        """
        self._check_open()
        self._check_writable()
        own = self._own_batch()
        if own is not None:
            if own.doomed:
                raise self._doomed()
            own.depth += 1
            try:
                yield
            finally:
                own.depth -= 1
            return
        if self._batch is not None:
            raise RuntimeError("another thread holds a batch on this store; it has one writer")
        batch = _Batch(self._begin_write(), threading.get_ident())
        self._batch = batch
        try:
            yield
        except BaseException:
            self._batch = None
            if not batch.doomed and not self._closed:
                self._abort(batch.txn)
            raise
        self._batch = None
        if self._closed:
            raise RuntimeError("store was closed inside a batch; the batch was rolled back")
        if batch.doomed:
            raise self._doomed()
        try:
            self._write_counts(batch.txn)
            batch.txn.commit()
            self._mirror_committed()
            self._flush(durable)
        except lmdb.MapFullError:  # commit can allocate pages too (free list)
            self._abort(batch.txn)
            self._grow()
            raise self._doomed() from None
        except lmdb.Error as exc:
            self._abort(batch.txn)
            raise disk_error(self._path, "commit to", exc) from exc

    def close(self) -> None:
        """Abort any open batch and close the environment. Idempotent."""
        if self._closed:
            return
        batch, self._batch = self._batch, None
        if batch is not None and not batch.doomed:
            self._abort(batch.txn)
        self._closed = True
        self._env.close()
        self._release_writer_lock()

    # --- small txn-level helpers --------------------------------------------------------------
    @staticmethod
    def _scan(txn: lmdb.Transaction, db: Any, prefix: bytes = b"") -> Iterator[bytes]:
        """Keys of ``db`` starting with ``prefix``, ascending."""
        cursor = txn.cursor(db=db)
        if not cursor.set_range(prefix):
            return
        for raw in cursor.iternext(keys=True, values=False):
            key = bytes(raw)  # no copy: txns here use buffers=False, so raw is bytes already
            if not key.startswith(prefix):
                return
            yield key

    def _get_counter(self, txn: lmdb.Transaction, name: str) -> int:
        if self._dirty_counts and txn is self._mirror_txn and self._mirror is not None:
            for status in self._dirty_counts:  # written at the txn's end: answer from the mirror
                if status_counter(status) == name:
                    return self._mirror.count(status)
        return schema.decode_counter(name, txn.get(schema.counter_key(name), db=self._meta))

    def _incr(self, txn: lmdb.Transaction, name: str, delta: int) -> int:
        value = self._get_counter(txn, name) + delta
        txn.put(schema.counter_key(name), schema.encode_meta(value), db=self._meta)
        return value

    def _get_trial(self, txn: lmdb.Transaction, trial_id: int) -> Trial | None:
        raw = txn.get(schema.encode_id(trial_id), db=self._trials)
        return None if raw is None else self._decode_trial(trial_id, bytes(raw))

    def _decode_trial(self, trial_id: int, raw: bytes) -> Trial:
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

    def _put_trial(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Write a record and apply the index edits it implies (``index_edits``: the rules
        live there) to disk, to the status counters and to the mirror."""
        data = schema.encode_trial(new)
        txn.put(schema.encode_id(new.id), data, db=self._trials)
        # Records are frozen, so handing ``new`` back on a later read is what the in-memory
        # store does too. Should this txn abort, the bytes on disk differ and it goes unused.
        self._remember(new.id, data, new)
        if new.status is _COMPLETED or (old is not None and old.status is _COMPLETED):
            self._put_best(txn, old, new)
        leased, queued = step_totals.deltas(old, new)
        if leased:
            self._incr(txn, step_totals.LEASED, leased)
        if queued:
            self._incr(txn, step_totals.QUEUED, queued)
        edits = index_edits(old, new)
        if not edits:  # e.g. a heartbeat: the record changed, no index entry did
            return
        mirror = self._mirror if txn is self._mirror_txn else None
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
                    self._incr(txn, status_counter(key), op)
                else:
                    self._dirty_counts.add(key)  # written once at the txn's end
        if mirror is not None:
            mirror.apply(edits)
        if new.status is _COMPLETED or (old is not None and old.status is _COMPLETED):
            self._put_tails(txn, old, new)

    def _put_tails(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Apply the current-population edits (``population_index.tail_edits``), after this
        write's FOLLOWED edits are in the txn."""
        def followed(initiator: int) -> bool:
            return next(self._scan(txn, self._followed, schema.children_prefix(initiator)), None) is not None

        def completed(trial_id: int) -> bool:
            return txn.get(schema.status_key(_COMPLETED, trial_id), db=self._status) is not None

        for op, trial_id in tail_edits(old, new, followed, completed):
            if op == ADD:
                txn.put(schema.encode_id(trial_id), b"", db=self._tails)
            else:
                txn.delete(schema.encode_id(trial_id), db=self._tails)

    @staticmethod
    def _valid_id(trial_id: int) -> bool:
        """Ids outside the key range cannot be stored, so queries for them find nothing."""
        return isinstance(trial_id, int) and 0 <= trial_id <= schema.MAX_ID

    @staticmethod
    def _valid_generation(generation: int) -> bool:
        """Likewise for generations."""
        return isinstance(generation, int) and 0 <= generation <= schema.MAX_GENERATION

    # --- the best index (see pbt_actors.storage.best_index) ----------------------------------
    def _best_rule(self, txn: lmdb.Transaction) -> BestRule | None:
        """The rule of the index this transaction sees (None: no index kept)."""
        raw = txn.get(schema.meta_key(META_BEST_INDEX), db=self._meta)
        if raw is None:
            return None
        raw = bytes(raw)
        if raw not in self._best_rules:
            stored = schema.decode_meta(META_BEST_INDEX, raw)
            objective = stored.get("objective") if isinstance(stored, dict) else None
            self._best_rules[raw] = BestRule.from_experiment({"objective": objective})
        return self._best_rules[raw]

    def _best_entries(self, txn: lmdb.Transaction, index: str, limit: int | None = None) -> Iterator[BestEntry]:
        """Entries of ``RANKED`` or ``FRONT``, best first."""
        db = self._best_dbs[index]
        if db is None:
            return
        cursor = txn.cursor(db=db)
        if not cursor.first():
            return
        for n, (key, value) in enumerate(cursor.iternext(keys=True, values=True)):
            if limit is not None and n >= limit:
                return
            scalar, trial_id = schema.decode_best_key(bytes(key))
            yield BestEntry(scalar, trial_id, schema.decode_oriented(trial_id, bytes(value)))

    def _apply_best(self, txn: lmdb.Transaction, edits: list[BestEdit]) -> None:
        for index, op, entry in edits:
            key = sort_key(entry.scalar, entry.trial_id)
            if op > 0:
                txn.put(key, wire.pack(list(entry.oriented)), db=self._best_dbs[index])
            else:
                txn.delete(key, db=self._best_dbs[index])

    def _put_best(self, txn: lmdb.Transaction, old: Trial | None, new: Trial) -> None:
        """Apply the best-index edits of one completed record's write (same transaction)."""
        rule = self._best_rule(txn)
        if rule is not None:
            self._apply_best(txn, rule.edits(old, new, self._best_entries(txn, FRONT),
                                             self._best_entries(txn, RANKED)))

    def _sync_best_index(self, txn: lmdb.Transaction) -> None:
        """Make the index describe the stored experiment's objective: rebuild it from the
        COMPLETED records when it was built for another objective or never built (a store
        written before the index existed: once, at the writer's first open)."""
        raw = txn.get(schema.meta_key(META_EXPERIMENT), db=self._meta)
        try:
            experiment = None if raw is None else schema.decode_meta(META_EXPERIMENT, raw)
        except Exception:  # a damaged experiment: no index; ``status`` reports the damage
            experiment = None
        rule = BestRule.from_experiment(experiment)
        stored_raw = txn.get(schema.meta_key(META_BEST_INDEX), db=self._meta)
        stored = None if stored_raw is None else schema.decode_meta(META_BEST_INDEX, stored_raw)
        if rule is None and stored is None:
            return
        if rule is not None and rule.matches(stored):
            return
        for db in self._best_dbs.values():
            if db is not None:  # (always, in the writer: it creates every database)
                txn.drop(db, delete=False)
        if rule is None:
            txn.delete(schema.meta_key(META_BEST_INDEX), db=self._meta)
            return
        prefix = schema.status_prefix(_COMPLETED)
        completed = [schema.decode_status_key(k)[1] for k in self._scan(txn, self._status, prefix)]
        if completed:
            log.info("building the best index of %s over %d completed trials (once)", self._path, len(completed))
        entries = [e for i in completed if (e := rule.entry(self._existing(txn, i))) is not None]
        self._apply_best(txn, [(RANKED, 1, e) for e in entries])
        if rule.pareto:
            self._apply_best(txn, [(FRONT, 1, e) for e in pareto_front(entries)])
        txn.put(schema.meta_key(META_BEST_INDEX), schema.encode_meta({"objective": rule.fingerprint}), db=self._meta)

    def _sync_step_totals(self, txn: lmdb.Transaction) -> None:
        """Start the step counters of a store written before them, from its records (once)."""
        if txn.get(schema.meta_key(step_totals.META_STEP_TOTALS), db=self._meta) is not None:
            return
        leased = queued = 0
        cursor = txn.cursor(db=self._trials)
        for key, value in cursor.iternext(keys=True, values=True):
            trial_id = schema.decode_id(key)
            charged = step_totals.charges(self._decode_trial(trial_id, bytes(value)))
            leased, queued = leased + charged[0], queued + charged[1]
        for name, total in ((step_totals.LEASED, leased), (step_totals.QUEUED, queued)):
            txn.put(schema.counter_key(name), schema.encode_meta(total), db=self._meta)
        txn.put(schema.meta_key(step_totals.META_STEP_TOTALS), schema.encode_meta(1), db=self._meta)

    def _sync_population_index(self, txn: lmdb.Transaction) -> None:
        """Build FOLLOWED and TAILS for a store written before them, from its COMPLETED records
        (once; a new store is marked at creation, with nothing to build)."""
        if txn.get(schema.meta_key(META_POPULATION_INDEX), db=self._meta) is not None:
            return
        prefix = schema.status_prefix(_COMPLETED)
        completed = [self._existing(txn, schema.decode_status_key(k)[1])
                     for k in list(self._scan(txn, self._status, prefix))]
        for trial in completed:
            if trial.origin.initiator is not None:
                txn.put(schema.children_key(trial.origin.initiator, trial.id), b"", db=self._followed)
        for trial_id in tails_of(completed):
            txn.put(schema.encode_id(trial_id), b"", db=self._tails)
        txn.put(schema.meta_key(META_POPULATION_INDEX), schema.encode_meta(1), db=self._meta)

    def followers(self, initiator: int) -> list[int]:
        if not self._valid_id(initiator):
            self._check_open()
            return []
        prefix = schema.children_prefix(initiator)
        return self._read(lambda txn: [] if self._followed is None else [
            schema.decode_children_key(k)[1] for k in self._scan(txn, self._followed, prefix)])

    def population_tails(self) -> list[int] | None:
        def op(txn: lmdb.Transaction) -> list[int] | None:
            if self._tails is None or txn.get(schema.meta_key(META_POPULATION_INDEX), db=self._meta) is None:
                return None
            return [schema.decode_id(k) for k in self._scan(txn, self._tails)]

        return self._read(op)

    def best_ranked(self, objective: Objective, limit: int = 1) -> list[int] | None:
        fingerprint = objective.to_dict()

        def op(txn: lmdb.Transaction) -> list[int] | None:
            rule = self._best_rule(txn) if self._best_dbs[RANKED] is not None else None
            if rule is None or rule.fingerprint != fingerprint:
                return None
            index = FRONT if rule.pareto else RANKED
            return [e.trial_id for e in self._best_entries(txn, index, limit)]

        ids = self._read(op)
        if ids is None and not self._best_warned:
            self._best_warned = True
            log.info("the store at %s has no best index for this objective (written by an older "
                     "pbt-actors, and no controller has opened it since): scanning its completed trials",
                     self._path)
        return ids

    def count_uninitiated(self) -> int:
        return self._indexed(lambda mirror: len(mirror.uninitiated_ids()),
                             lambda txn: int(txn.stat(self._uninitiated)["entries"]))

    # --- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        raw = self._read(lambda txn: txn.get(schema.meta_key(key), db=self._meta))
        return None if raw is None else schema.decode_meta(key, raw)

    def put_meta(self, key: str, value: Any) -> None:
        data = schema.encode_meta(value)  # fail on non-msgpack data before opening a txn

        def op(txn: lmdb.Transaction) -> None:
            txn.put(schema.meta_key(key), data, db=self._meta)
            if key == META_EXPERIMENT:  # the objective may be new: the index follows it
                self._sync_best_index(txn)

        self._write(op)

    def incr_counter(self, name: str, delta: int = 1) -> int:
        return self._write(lambda txn: self._incr(txn, name, delta))

    def counter(self, name: str) -> int:
        return self._read(lambda txn: self._get_counter(txn, name))

    # --- trials -------------------------------------------------------------------------------
    def create_trial(self, spec: TrialSpec, now: float) -> Trial:
        check_spec(spec)

        def op(txn: lmdb.Transaction) -> Trial:
            trial = Trial.from_spec(self._get_counter(txn, TRIAL_ID_COUNTER) + 1, spec, now)
            self._put_trial(txn, None, trial)  # encodes before its first put
            txn.put(schema.counter_key(TRIAL_ID_COUNTER), schema.encode_meta(trial.id),
                    db=self._meta)
            return trial

        return self._write(op)

    def find_trial(self, trial_id: int) -> Trial | None:
        if not self._valid_id(trial_id):
            self._check_open()
            return None
        return self._read(lambda txn: self._get_trial(txn, trial_id))

    def transition(self, trial_id: int, expected_status: TrialStatus, expected_attempt: int,
                   new: Trial) -> bool:
        self._check_open()
        if new.id != trial_id:
            raise ValueError(f"record id {new.id} does not match trial id {trial_id}")
        if not self._valid_id(trial_id):
            self._check_writable()
            return False

        def op(txn: lmdb.Transaction) -> bool:
            current = self._get_trial(txn, trial_id)
            if (current is None or current.status is not expected_status
                    or current.attempt != expected_attempt):
                return False
            check_transition(current, new)
            self._put_trial(txn, current, new)
            return True

        return self._write(op)

    def _indexed(self, from_mirror: Callable[[IndexMirror], T], from_disk: Callable[[lmdb.Transaction], T]) -> T:
        """An index query: from the mirror inside this process's write txn, else from LMDB."""
        def op(txn: lmdb.Transaction) -> T:
            mirror = self._mirror_for(txn)
            return from_disk(txn) if mirror is None else from_mirror(mirror)

        return self._read(op)

    def ids_with_status(self, status: TrialStatus) -> list[int]:
        prefix = schema.status_prefix(status)
        return self._indexed(lambda mirror: mirror.ids_with_status(status),
                             lambda txn: [schema.decode_status_key(k)[1]
                                          for k in self._scan(txn, self._status, prefix)])

    def first_with_status(self, status: TrialStatus) -> int | None:
        prefix = schema.status_prefix(status)
        return self._indexed(lambda mirror: mirror.first_with_status(status),
                             lambda txn: next((schema.decode_status_key(k)[1]
                                               for k in self._scan(txn, self._status, prefix)), None))

    def running_leased_to(self, worker: str) -> list[int]:
        ids: list[int] | None = self._indexed(lambda mirror: mirror.running_leased_to(worker), lambda txn: None)
        return super().running_leased_to(worker) if ids is None else ids

    def count(self, status: TrialStatus | None = None) -> int:
        if status is None:
            return self._read(lambda txn: int(txn.stat(self._trials)["entries"]))
        return self._indexed(lambda mirror: mirror.count(status),
                             lambda txn: self._get_counter(txn, status_counter(status)))

    def children(self, trial_id: int) -> list[int]:
        if not self._valid_id(trial_id):
            self._check_open()
            return []
        prefix = schema.children_prefix(trial_id)
        return self._read(lambda txn: [schema.decode_children_key(k)[1]
                                       for k in self._scan(txn, self._children, prefix)])

    def generation(self, generation: int) -> list[int]:
        if not self._valid_generation(generation):
            self._check_open()
            return []
        prefix = schema.generation_prefix(generation)
        return self._read(lambda txn: [schema.decode_generation_key(k)[1]
                                       for k in self._scan(txn, self._generations, prefix)])

    def completed_in_generation(self, generation: int) -> list[int]:
        if not self._valid_generation(generation):
            self._check_open()
            return []
        prefix = schema.generation_prefix(generation)
        return self._indexed(lambda mirror: mirror.completed_in_generation(generation),
                             lambda txn: [schema.decode_generation_key(k)[1]
                                          for k in self._scan(txn, self._completed, prefix)])

    def max_generation(self) -> int:
        def op(txn: lmdb.Transaction) -> int:
            cursor = txn.cursor(db=self._generations)
            return schema.decode_generation_key(cursor.key())[0] if cursor.last() else -1

        return self._read(op)

    def uninitiated(self) -> list[int]:
        return self._indexed(lambda mirror: mirror.uninitiated_ids(),
                             lambda txn: [schema.decode_id(k) for k in self._scan(txn, self._uninitiated)])

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
        top = self._get_counter(txn, TRIAL_ID_COUNTER) if limit is None else limit
        out: list[Trial] = []
        cursor = txn.cursor(db=self._trials)
        if first > top or not cursor.set_range(schema.encode_id(first)):
            return top, out
        for key, value in cursor.iternext(keys=True, values=True):
            trial_id = schema.decode_id(key)
            if trial_id > top or len(out) == ITER_CHUNK:
                break
            out.append(self._decode_trial(trial_id, bytes(value)))
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
            self._check_writable()
            return
        self._write(lambda txn: txn.delete(schema.encode_id(trial_id), db=self._checkpoints))

    def checkpoint_ids(self) -> list[int]:
        return self._read(lambda txn: [schema.decode_id(k)
                                       for k in self._scan(txn, self._checkpoints)])

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
        self._check_open()
        return int(self._env.info()["map_size"])

    def __repr__(self) -> str:
        mode = ", readonly=True" if self._readonly else ""
        state = " (closed)" if self._closed else ""
        return f"LmdbTrialStore({str(self._path)!r}{mode}){state}"
