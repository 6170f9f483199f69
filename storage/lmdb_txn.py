"""The LMDB environment of a store and its transactions: opening, batches, map growth.

Layer 2. ``LmdbTxns`` knows nothing of trials: it runs callables ``op(txn)`` in the right
transaction and tells its ``TxnHooks`` (the store's index mirror) when a write transaction
begins, is about to commit, committed or aborted.

Transactions
    ``batch()`` opens ONE write transaction and holds it until the block ends; every read and
    write the batch's thread makes meanwhile goes through it (so reads see the batch's own
    writes) and the block commits once (one fsync) or, if it raises, aborts. Nested ``batch()``
    calls join the outer one. Outside a batch each write op is its own write transaction and
    each read a short read transaction, so a reader never pins old pages for long (long
    readers make LMDB's file grow).

Map growth
    LMDB needs a map size up front. We start with a large one (sparse on 64-bit: no cost), and
    on ``lmdb.MapFullError`` abort, double the map (``env.set_mapsize``) and try again:

    * a single op outside a batch is simply replayed: it reads its inputs inside its own
      transaction, so the replay is exact;
    * inside a batch the caller's logic cannot be replayed from here. The batch transaction is
      aborted, the map grown, and ``StoreFullRetry`` raised; every later op of that batch raises
      it too and so does leaving the block, so nothing half-done can commit. The controller
      core catches it (as ``pbt_actors.model.errors.StoreRetry``) and re-runs the whole batch,
      which is safe because its handling is a deterministic function of the stored state.

    Readers in other processes get ``lmdb.MapResizedError`` when they begin a transaction
    after the writer grew the map; they adopt the new size (``set_mapsize(0)``) and retry.
    ``set_mapsize`` is only legal with no transaction active in the process, so an in-process
    gate makes resizes wait for running short reads and holds new reads back meanwhile.

Concurrency
    One writer: the controller, enforced across processes and hosts sharing the folder by
    ``pbt_actors.storage.writer_lock``. ``readonly=True`` opens the environment read-only with
    locking (and never takes that lock), so a CLI in another process reads committed snapshots
    while the writer works. Within one process other threads may read concurrently; they never
    use the batch's transaction (LMDB write transactions are bound to their thread). Never
    carry an open store across ``fork``; LMDB also refuses to open the same folder twice in
    one process.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypeVar

import lmdb

from pbt_actors.model.errors import StoreError, StoreFull, StoreFullRetry
from pbt_actors.storage import schema
from pbt_actors.storage.writer_lock import release_writer_lock, take_writer_lock

T = TypeVar("T")

# Doubling from even 64 KiB reaches the 64-bit address-space limit long before this many tries;
# the bound only turns a pathological loop (e.g. one value larger than any map) into an error.
MAX_GROWTHS: Final = 48
# Bounded so a reader racing a fast-growing writer reports rather than spins forever.
MAX_RESIZE_RETRIES: Final = 16
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


class TxnHooks(Protocol):
    """What the store keeps alongside a write transaction (its index mirror)."""

    def began(self, txn: lmdb.Transaction) -> None:
        """A write transaction began."""

    def committing(self, txn: lmdb.Transaction) -> None:
        """``txn`` is about to commit: write what was deferred to its end."""

    def committed(self, wrote: bool) -> None:
        """The current write transaction committed (``wrote``: some write op ran in it)."""

    def aborted(self, txn: lmdb.Transaction) -> None:
        """``txn`` (a write transaction) is being aborted."""


class _NoHooks:
    def began(self, txn: lmdb.Transaction) -> None:
        pass

    def committing(self, txn: lmdb.Transaction) -> None:
        pass

    def committed(self, wrote: bool) -> None:
        pass

    def aborted(self, txn: lmdb.Transaction) -> None:
        pass


@dataclass
class _Batch:
    """The write transaction a ``batch()`` holds, and the thread that may use it."""

    txn: lmdb.Transaction
    thread: int
    depth: int = 1
    doomed: bool = False  # aborted after MapFullError: every later use raises StoreFullRetry


class LmdbTxns:
    """One store folder's LMDB environment and the transactions run on it."""

    def __init__(self, path: Path, *, readonly: bool, map_size: int, sync: bool) -> None:
        """Open (or, unless ``readonly``, create) the environment in folder ``path``; a writer
        takes the folder's writer lock first. See ``LmdbTrialStore`` for the arguments."""
        self.path = path
        self.readonly = readonly
        self.closed = False
        self.hooks: TxnHooks = _NoHooks()
        self._sync = sync and not readonly
        self._batch: _Batch | None = None
        self._wrote = False
        self._gate = threading.Condition()
        self._readers = 0
        self._resizing = False
        self._lock_fd: int | None = None
        self.env = self._open_env(map_size)

    def _open_env(self, map_size: int) -> lmdb.Environment:
        path = self.path
        if self.readonly:
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
            self._lock_fd = take_writer_lock(path)
        try:
            return lmdb.open(
                # A reader maps what the writer has (0: the size recorded in the file) and
                # follows its growth through MapResizedError; see ``read``.
                str(path), map_size=0 if self.readonly else map_size, subdir=True, readonly=self.readonly, lock=True,
                # we flush explicitly (``_flush``) so that a batch can choose to skip it
                max_dbs=schema.MAX_DBS, sync=False, metasync=False,
            )
        except lmdb.Error as exc:
            self._release_lock()
            raise StoreError(f"cannot open the store at {path}: {exc} (is it open elsewhere in "
                             f"this process, or not an LMDB store?)") from exc

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        release_writer_lock(fd)

    # --- checks ---------------------------------------------------------------------------------
    def check_open(self) -> None:
        if self.closed:
            raise RuntimeError("store is closed")

    def check_writable(self) -> None:
        if self.readonly:
            raise StoreError(f"the store at {self.path} is opened read-only; only the "
                             f"controller writes to it")

    def _own_batch(self) -> _Batch | None:
        """The batch of the calling thread, if any (other threads never use its txn)."""
        batch = self._batch
        if batch is not None and batch.thread == threading.get_ident():
            return batch
        return None

    def _doomed(self) -> StoreFullRetry:
        return StoreFullRetry(f"the store at {self.path} was full; its map has grown to "
                              f"{self.env.info()['map_size']} bytes and this batch was rolled "
                              f"back: re-run the whole batch")

    # --- map size -------------------------------------------------------------------------------
    @property
    def map_size(self) -> int:
        self.check_open()
        return int(self.env.info()["map_size"])

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
                self.env.set_mapsize(size)
            except lmdb.Error as exc:  # e.g. a second writer thread holds a txn: one writer!
                raise StoreError(f"cannot resize the map of {self.path}: {exc}") from exc
            finally:
                self._resizing = False
                self._gate.notify_all()

    def _grow(self) -> None:
        self._set_mapsize(int(self.env.info()["map_size"]) * 2)

    # --- running ops ----------------------------------------------------------------------------
    def _begin_write(self) -> lmdb.Transaction:
        for _ in range(MAX_RESIZE_RETRIES):
            try:
                txn = self.env.begin(write=True)
            except lmdb.MapResizedError:  # a previous writer process grew the map
                self._set_mapsize(0)
            except lmdb.Error as exc:
                raise StoreError(f"cannot begin a write on {self.path}: {exc}") from exc
            self._wrote = False
            self.hooks.began(txn)
            return txn
        raise StoreError(f"the map of {self.path} keeps being resized by another process")

    def _commit(self, txn: lmdb.Transaction, durable: bool) -> None:
        self.hooks.committing(txn)
        txn.commit()
        self.hooks.committed(self._wrote)
        self._flush(durable)

    def _abort(self, txn: lmdb.Transaction) -> None:
        self.hooks.aborted(txn)
        with suppress(lmdb.Error):  # already invalid (failed commit, closed env): no-op
            txn.abort()

    def run_write(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``op`` in its own write txn and commit; on a full map grow and replay it."""
        for _ in range(MAX_GROWTHS):
            txn = self._begin_write()
            self._wrote = True
            try:
                result = op(txn)
                self._commit(txn, True)
            except lmdb.MapFullError:
                self._abort(txn)
                self._grow()
                continue
            except lmdb.Error as exc:
                self._abort(txn)
                raise disk_error(self.path, "write to", exc) from exc
            except BaseException:
                self._abort(txn)
                raise
            return result
        raise StoreError(f"a write to {self.path} did not fit after {MAX_GROWTHS} map growths")

    def write(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run a write op: inside the calling thread's batch, or as its own transaction."""
        self.check_open()
        self.check_writable()
        batch = self._own_batch()
        self._wrote = True
        if batch is None:
            return self.run_write(op)
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
            raise StoreError(f"write to {self.path} failed: {exc}") from exc

    def read(self, op: Callable[[lmdb.Transaction], T]) -> T:
        """Run a read op: inside the calling thread's batch (seeing its writes) or in a short
        read transaction of its own."""
        self.check_open()
        batch = self._own_batch()
        if batch is not None:
            if batch.doomed:
                raise self._doomed()
            try:
                return op(batch.txn)
            except lmdb.Error as exc:
                raise StoreError(f"read from {self.path} failed: {exc}") from exc
        for _ in range(MAX_RESIZE_RETRIES):
            with self._reader_slot():
                try:
                    txn = self.env.begin(write=False)
                except lmdb.MapResizedError:  # the writer grew the map: adopt it and retry
                    txn = None
                except lmdb.Error as exc:
                    raise StoreError(f"cannot read {self.path}: {exc}") from exc
                if txn is not None:
                    try:
                        return op(txn)
                    except lmdb.Error as exc:
                        raise StoreError(f"read from {self.path} failed: {exc}") from exc
                    finally:
                        txn.abort()
            self._set_mapsize(0)  # outside the reader slot: it waits for readers to finish
        raise StoreError(f"the map of {self.path} keeps being resized by the writer")

    def _flush(self, durable: bool) -> None:
        """fdatasync what was committed, when this store promises durability."""
        if durable and self._sync:
            try:
                self.env.sync(True)
            except lmdb.Error as exc:
                raise disk_error(self.path, "flushing", exc) from exc

    @contextmanager
    def batch(self, durable: bool = True) -> Iterator[None]:
        """One write transaction for the whole block; see the module docstring.

        Raises:
            StoreFullRetry: the map filled up; nothing of the batch was written and the map
                has grown. Re-run the whole batch.
        """
        self.check_open()
        self.check_writable()
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
            if not batch.doomed and not self.closed:
                self._abort(batch.txn)
            raise
        self._batch = None
        if self.closed:
            raise RuntimeError("store was closed inside a batch; the batch was rolled back")
        if batch.doomed:
            raise self._doomed()
        try:
            self._commit(batch.txn, durable)
        except lmdb.MapFullError:  # commit can allocate pages too (free list)
            self._abort(batch.txn)
            self._grow()
            raise self._doomed() from None
        except lmdb.Error as exc:
            self._abort(batch.txn)
            raise disk_error(self.path, "commit to", exc) from exc

    def close(self) -> None:
        """Abort any open batch and close the environment. Idempotent."""
        if self.closed:
            return
        batch, self._batch = self._batch, None
        if batch is not None and not batch.doomed:
            self._abort(batch.txn)
        self.closed = True
        self.env.close()
        self._release_lock()
