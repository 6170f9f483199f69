"""Stores written before this build open: the writer migrates them, a reader refuses them.

The fixtures are real stores, written by the builds of their schema version (see
``fixtures/make_old_stores.py``): ``store_v1`` by the last v1 build, ``store_v2`` by the last
build before the numbered migrations. Both ran the same scenario.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any

import lmdb
import pytest

from pbt_actors.cli.main import main
from pbt_actors.model import wire
from pbt_actors.model.errors import SchemaVersionError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import TrialStatus
from pbt_actors.storage import schema
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.migrations import MIGRATIONS, StoreNeedsMigration
from pbt_actors.storage.trial_store import META_EXPERIMENT, TRIAL_ID_COUNTER, TrialStore
from pbt_actors.tools.verify import verify_store

pytestmark = pytest.mark.timeout(60)

FIXTURES = Path(__file__).parent / "fixtures"


def unpack(version: int, into: Path) -> Path:
    """A writable copy of the fixture store of ``version``."""
    into.mkdir(parents=True)
    with tarfile.open(FIXTURES / f"store_v{version}.tar.gz") as archive:
        data = archive.extractfile("data.mdb")
        assert data is not None
        (into / "data.mdb").write_bytes(data.read())
    return into


def stored_version(path: Path) -> int:
    env = lmdb.open(str(path), readonly=True, max_dbs=schema.MAX_DBS, lock=False)
    try:
        with env.begin() as txn:
            meta = env.open_db(schema.DB_META, txn=txn, create=False)
            return int(wire.unpack(txn.get(schema.meta_key(schema.SCHEMA_VERSION_KEY), db=meta)))
    finally:
        env.close()


def dump(path: Path) -> dict[bytes, list[tuple[bytes, bytes]]]:
    """Every key and value of every database but the records (whose bytes an older build wrote)."""
    env = lmdb.open(str(path), readonly=True, max_dbs=schema.MAX_DBS, lock=False)
    try:
        with env.begin() as txn:
            return {name: [(bytes(k), bytes(v)) for k, v in txn.cursor(db=env.open_db(name, txn=txn, create=False))]
                    for name in schema.ALL_DBS if name != schema.DB_TRIALS}
    finally:
        env.close()


def answers(store: TrialStore) -> dict[str, Any]:
    """What the faces and the controller ask a store."""
    experiment = Experiment.from_dict(store.get_meta(META_EXPERIMENT))
    completed = store.ids_with_status(TrialStatus.COMPLETED)
    return {
        "trials": [t.to_dict() for t in store.iter_trials()],
        "status": {s: store.ids_with_status(s) for s in TrialStatus},
        "counts": {s: store.count(s) for s in TrialStatus},
        "best": store.best_ranked(experiment.objective_, 10),
        "tails": store.population_tails(), "totals": store.step_totals(),
        "uninitiated": store.uninitiated(), "followers": {i: store.followers(i) for i in completed},
        "max_generation": store.max_generation(),
    }


def test_the_fixtures_are_the_versions_they_claim(tmp_path: Path) -> None:
    assert stored_version(unpack(1, tmp_path / "v1")) == 1
    assert stored_version(unpack(2, tmp_path / "v2")) == 2 == schema.STORE_SCHEMA_VERSION
    assert [m.version for m in MIGRATIONS] == [2]


def test_a_writer_migrates_a_v1_store_once_with_a_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = unpack(1, tmp_path / "v1")
    with caplog.at_level(logging.WARNING, logger="pbt_actors.storage.migrations"), LmdbTrialStore(path) as store:
        assert [m.version for m in store.migrated] == [2]
        assert verify_store(store).problems == []
        migrated = answers(store)
    assert [r.getMessage() for r in caplog.records] == [
        f"migrated the store at {path} to storage schema v2 (the best index, the step counters and the current "
        f"population); builds older than this one can no longer open it"]
    assert stored_version(path) == 2
    assert migrated["best"] and migrated["tails"] and migrated["totals"][0] > 0  # the scenario filled them
    caplog.clear()
    with LmdbTrialStore(path) as again:  # once: a migrated store is current
        assert again.migrated == ()
    assert caplog.records == []
    with LmdbTrialStore(path, readonly=True) as reader:
        assert answers(reader) == migrated


def test_a_migrated_store_holds_what_a_store_written_by_this_build_holds(tmp_path: Path) -> None:
    """The same records written one by one through this build's write path give the same
    indexes, counters and meta, byte for byte (and the v2 fixture, written by the previous
    build from the same scenario, answers the same)."""
    path = unpack(1, tmp_path / "v1")
    with LmdbTrialStore(path) as migrated:
        trials = list(migrated.iter_trials())
        meta = {key: migrated.get_meta(key) for key in ("experiment", "run_id", "finished_at")}
        expected = answers(migrated)
    with LmdbTrialStore(tmp_path / "fresh", sync=False) as fresh:
        for key, value in meta.items():
            if value is not None:
                fresh.put_meta(key, value)
        for trial in trials:  # as if each record had been written whole by this build
            fresh._write(lambda txn, t=trial: fresh._records.put_trial(txn, None, t))
        fresh.incr_counter(TRIAL_ID_COUNTER, len(trials))
        assert answers(fresh) == expected
    assert dump(tmp_path / "fresh") == dump(path)
    with LmdbTrialStore(unpack(2, tmp_path / "v2"), readonly=True) as v2:
        assert answers(v2) == expected


def test_a_reader_refuses_an_older_store_with_the_remedy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = unpack(1, tmp_path / "v1")
    with pytest.raises(StoreNeedsMigration) as refused:
        LmdbTrialStore(path, readonly=True)
    assert str(refused.value) == (f"the store at {path} has storage schema v1, this build reads v2: run "
                                  f"`pbt-actors migrate --store {path}` (or open it with a controller)")
    assert isinstance(refused.value, SchemaVersionError)
    assert stored_version(path) == 1  # the reader wrote nothing
    assert main(["status", "--store", str(path)]) != 0
    assert f"run `pbt-actors migrate --store {path}`" in capsys.readouterr().err


def test_pbt_actors_migrate_brings_an_older_store_up_to_date(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = unpack(1, tmp_path / "v1")
    assert main(["migrate", "--store", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"migrated {path} to storage schema v2: the best index, the step counters and the current population"]
    with LmdbTrialStore(path, readonly=True) as reader:
        assert verify_store(reader).problems == []
    assert main(["migrate", "--store", str(path)]) == 0
    assert capsys.readouterr().out.strip() == f"{path} is at storage schema v2: nothing to migrate"
    assert main(["migrate", "--store", str(tmp_path / "nothing")]) != 0
    assert "no pbt-actors store" in capsys.readouterr().err


def test_a_current_store_opens_without_a_migration(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = unpack(2, tmp_path / "v2")
    before = dump(path)
    with LmdbTrialStore(path, readonly=True) as reader:
        assert verify_store(reader).problems == []
    with caplog.at_level(logging.INFO), LmdbTrialStore(path) as writer:
        assert writer.migrated == ()
    assert not [r for r in caplog.records if "migrat" in r.getMessage()]
    assert dump(path) == before
