"""Storage schema versions and the numbered migrations between them.

Layer 2. ``schema.STORE_SCHEMA_VERSION`` names the on-disk layout a build writes; each entry of
``MIGRATIONS`` brings a store of the version before it to its own, inside the transaction that
then records the new version. The writer applies what a store lacks when it opens it (one log
line per migration; ``pbt-actors migrate --store DIR`` does only that), a new store is an empty
v1 store brought up to date the same way (so new and migrated stores hold the same databases
and keys), and a reader of an older store refuses with the remedy: a reader cannot migrate, and
serving a store without the indexes would mean every reader carried a scan of its own.

A build refuses a store newer than it (``SchemaVersionError``): writing to it would leave the
newer indexes stale.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, NamedTuple

import lmdb

from pbt_actors.model.errors import SchemaVersionError, StoreError
from pbt_actors.model.fields import is_int
from pbt_actors.model.trial_cost import step_totals_of
from pbt_actors.storage import schema
from pbt_actors.storage.lmdb_records import LmdbRecords
from pbt_actors.storage.lmdb_txn import LmdbTxns
from pbt_actors.storage.population_index import tails_of
from pbt_actors.storage.trial_store import STEPS_LEASED, STEPS_QUEUED

log = logging.getLogger(__name__)

META_STEP_TOTALS: Final = "step_totals"
META_POPULATION_INDEX: Final = "population_index"
"""Markers v2 writes (value 1) beside its step counters and population index: builds from before
the numbered migrations look for them, so a store stays readable by them."""


class StoreNeedsMigration(SchemaVersionError):
    """A reader opened a store written by an older pbt-actors; the message gives the remedy."""


class Migration(NamedTuple):
    """Brings a store of ``version - 1`` to ``version`` inside one write transaction."""

    version: int
    description: str
    apply: Callable[[lmdb.Transaction, LmdbRecords], None]


def _v2_faces_indexes(txn: lmdb.Transaction, records: LmdbRecords) -> None:
    """The best index, the step counters and the current population, built from the records."""
    records.sync_best_index(txn)
    leased, queued = step_totals_of(records.all_trials(txn))
    records.put_counter(txn, STEPS_LEASED, leased)
    records.put_counter(txn, STEPS_QUEUED, queued)
    records.put_meta(txn, META_STEP_TOTALS, 1)
    completed = records.completed(txn)
    for trial in completed:
        if trial.origin.initiator is not None:
            txn.put(schema.children_key(trial.origin.initiator, trial.id), b"", db=records.followed)
    for trial_id in tails_of(completed):
        txn.put(schema.encode_id(trial_id), b"", db=records.tails)
    records.put_meta(txn, META_POPULATION_INDEX, 1)


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(2, "the best index, the step counters and the current population", _v2_faces_indexes),
)
assert [m.version for m in MIGRATIONS] == list(range(2, schema.STORE_SCHEMA_VERSION + 1))


def check_version(path: Path, raw: schema.Buf) -> int:
    """The stored schema version, if this build can read it.

    Raises:
        StoreError: the version is damaged.
        SchemaVersionError: a newer build wrote the store.
    """
    version = schema.decode_meta(schema.SCHEMA_VERSION_KEY, raw)
    if not is_int(version) or version < 1:
        raise StoreError(f"the store at {path} has an invalid schema version "
                         f"{version!r}; it is damaged or not a pbt-actors store")
    if version > schema.STORE_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"the store at {path} has storage schema v{version}, written by a newer "
            f"pbt-actors; this build reads up to v{schema.STORE_SCHEMA_VERSION}. Upgrade "
            f"pbt-actors to open it (never let an older build write to it).")
    return version


def open_for_reading(txns: LmdbTxns) -> dict[bytes, Any]:
    """The named databases of a store at this build's version, opened read-only.

    Raises:
        StoreError: no pbt-actors store there.
        StoreNeedsMigration: an older build wrote it (the message says how to migrate).
    """
    env, path = txns.env, txns.path
    try:
        meta = env.open_db(schema.DB_META, create=False)
    except lmdb.NotFoundError:
        raise StoreError(f"no pbt-actors store at {path} (LMDB environment without our databases)") from None
    except lmdb.Error as exc:
        raise StoreError(f"cannot read the store at {path}: {exc}") from exc
    raw = txns.read(lambda txn: txn.get(schema.meta_key(schema.SCHEMA_VERSION_KEY), db=meta))
    if raw is None:
        raise StoreError(f"no pbt-actors store at {path} (no schema version)")
    version = check_version(path, raw)
    if version < schema.STORE_SCHEMA_VERSION:
        raise StoreNeedsMigration(
            f"the store at {path} has storage schema v{version}, this build reads "
            f"v{schema.STORE_SCHEMA_VERSION}: run `pbt-actors migrate --store {path}` (or open it with a controller)")
    dbs = {schema.DB_META: meta}
    try:
        for name in schema.ALL_DBS[1:]:
            dbs[name] = env.open_db(name, create=False)
    except lmdb.NotFoundError:
        raise StoreError(f"the store at {path} lacks database {name!r} of schema "
                         f"v{version}; it is damaged") from None
    except lmdb.Error as exc:
        raise StoreError(f"cannot read the store at {path}: {exc}") from exc
    return dbs


def open_for_writing(txns: LmdbTxns) -> tuple[LmdbRecords, tuple[Migration, ...]]:
    """Open (creating where missing) every named database and bring the store to this build's
    version, in one write transaction; returns the store's records and the migrations applied
    to an existing store (a new store is an empty v1 store brought up to date, silently).

    The version is checked before anything is created, so a newer store is refused without
    this build writing a byte into it.
    """
    def op(txn: lmdb.Transaction) -> tuple[LmdbRecords, int | None, tuple[Migration, ...]]:
        meta = txns.env.open_db(schema.DB_META, txn=txn, create=True)
        raw = txn.get(schema.meta_key(schema.SCHEMA_VERSION_KEY), db=meta)
        stored = None if raw is None else check_version(txns.path, raw)
        dbs = {schema.DB_META: meta}
        for name in schema.ALL_DBS[1:]:
            dbs[name] = txns.env.open_db(name, txn=txn, create=True)
        records = LmdbRecords(txns.path, dbs)
        pending = tuple(m for m in MIGRATIONS if m.version > (stored or 1))
        if stored != schema.STORE_SCHEMA_VERSION:
            for migration in pending:
                migration.apply(txn, records)
            records.put_meta(txn, schema.SCHEMA_VERSION_KEY, schema.STORE_SCHEMA_VERSION)
        return records, stored, pending

    records, stored, pending = txns.run_write(op)
    if stored is None or stored == schema.STORE_SCHEMA_VERSION:
        return records, ()
    for migration in pending:
        log.warning("migrated the store at %s to storage schema v%d (%s); builds older than this one "
                    "can no longer open it", txns.path, migration.version, migration.description)
    return records, pending
