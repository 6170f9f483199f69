"""The LMDB writer's in-memory index mirror answers exactly as the indexes on disk do.

Inside a write transaction the store answers status / generation / uninitiated / lease queries
from ``pbt_actors.storage.index_mirror``; outside one (and in other processes) from LMDB. These tests drive
random operation sequences, with batches that abort half-way and batches that grow the map, and
compare: the mirror's answers inside a batch, LMDB's answers outside, and an in-memory store that
ran the same committed operations. Another process writing in between must make the writer
rebuild its mirror, not serve a stale one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt_actors.model.errors import StoreRetry
from pbt_actors.model.records import Lease, TrialStatus
from pbt_actors.storage.indexes import ADD, STATUS
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TrialStore, status_counter
from tests.contract.store_helpers import make_ref, make_spec, run_batch

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
WORKERS = ("w1", "w2", "w3")


class Aborted(Exception):
    """Raised inside a batch to roll it back."""


def observe(store: TrialStore) -> dict[str, Any]:
    """Every index answer the controller relies on."""
    generations = range(0, 4)
    return {
        "ids": {s: store.ids_with_status(s) for s in TrialStatus},
        "first": {s: store.first_with_status(s) for s in TrialStatus},
        "counts": {s: store.count(s) for s in TrialStatus},
        "counters": {s: store.counter(status_counter(s)) for s in TrialStatus},
        "completed": {g: store.completed_in_generation(g) for g in generations},
        "uninitiated": store.uninitiated(),
        "leases": {w: store.running_leased_to(w) for w in WORKERS},
        "total": store.count(),
    }


def apply_op(store: TrialStore, op: tuple[str, int, int], now: float) -> None:
    """One state change, chosen by ``op`` among what is legal for the picked trial."""
    kind, pick, arg = op
    total = store.count()
    if kind == "create" or total == 0:
        parent = (pick % total) + 1 if total and arg % 2 else None
        store.create_trial(make_spec(generation=arg % 4, parent_id=parent), now)
        return
    trial = store.get_trial(pick % total + 1)
    status = trial.status
    if status is TrialStatus.PENDING:
        worker = WORKERS[arg % len(WORKERS)]
        new = trial.evolve(status=TrialStatus.RUNNING, lease=Lease(worker, now + 10), worker=worker, started_at=now)
    elif status is TrialStatus.RUNNING and kind == "requeue":
        new = trial.evolve(status=TrialStatus.PENDING, attempt=trial.attempt + 1, lease=None)
    elif status is TrialStatus.RUNNING and kind == "renew":
        assert trial.lease is not None
        new = trial.evolve(lease=Lease(trial.lease.worker, now + 20))
    elif status is TrialStatus.RUNNING:
        new = trial.evolve(status=TrialStatus.COMPLETED, final={"acc": 0.5}, ended_at=now, lease=None,
                           completed_attempt=trial.attempt, checkpoint=make_ref(trial.id, trial.attempt))
    elif status is TrialStatus.COMPLETED and not trial.initiated:
        new = trial.evolve(initiated=True)
    else:
        return
    assert store.transition(trial.id, status, trial.attempt, new)


op_strategy = st.tuples(st.sampled_from(["create", "step", "step", "requeue", "renew"]),
                        st.integers(0, 50), st.integers(0, 50))
batch_strategy = st.tuples(st.lists(op_strategy, min_size=1, max_size=8), st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(batch_strategy, min_size=1, max_size=12))
def test_mirror_answers_as_disk_and_as_the_memory_store(tmp_path_factory: pytest.TempPathFactory,
                                                        batches: list[tuple[list[tuple[str, int, int]], bool]]) -> None:
    # a tiny map: some batches fill it, are rolled back and re-run (``run_batch``)
    lmdb_store = LmdbTrialStore(tmp_path_factory.mktemp("mirror") / "store", map_size=64 * 1024)
    reference = InMemoryTrialStore()
    try:
        for number, (ops, abort) in enumerate(batches):
            now = float(number)
            if abort:
                for _ in range(64):  # re-run after map growth, as ``run_batch`` does
                    try:
                        with lmdb_store.batch():
                            for op in ops:
                                apply_op(lmdb_store, op, now)
                            observe(lmdb_store)  # the mirror, with the batch's own writes
                            raise Aborted
                    except StoreRetry:
                        continue
                    except Aborted:
                        break
                continue

            def body(store: TrialStore = lmdb_store, ops: list[tuple[str, int, int]] = ops,
                     now: float = now) -> dict[str, Any]:
                for op in ops:
                    apply_op(store, op, now)
                return observe(store)

            inside = run_batch(lmdb_store, body)
            with reference.batch():
                for op in ops:
                    apply_op(reference, op, now)
            outside = observe(lmdb_store)  # no write txn: answered by LMDB
            expected = observe(reference)
            assert inside == outside == expected
            with lmdb_store.batch():  # a fresh txn after commit: the mirror carried over
                assert observe(lmdb_store) == expected
    finally:
        lmdb_store.close()


WRITE_FROM_ANOTHER_PROCESS = """
import sys
sys.path.insert(0, sys.argv[2])
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from tests.contract.store_helpers import make_spec
with LmdbTrialStore(sys.argv[1]) as store:
    store.create_trial(make_spec(generation=2), 9.0)
"""


def test_a_commit_by_another_process_makes_the_writer_rebuild(tmp_path: Path) -> None:
    path = tmp_path / "store"
    store = LmdbTrialStore(path)
    try:
        run_batch(store, lambda: [store.create_trial(make_spec(), 1.0) for _ in range(3)])
        with store.batch():
            assert store.ids_with_status(TrialStatus.PENDING) == [1, 2, 3]  # builds the mirror
        store.close()  # LMDB allows one environment per folder per process: hand over, reopen
        subprocess.run([sys.executable, "-c", WRITE_FROM_ANOTHER_PROCESS, str(path), str(REPO)], check=True,
                       timeout=60)
        store = LmdbTrialStore(path)
        with store.batch():
            assert store.ids_with_status(TrialStatus.PENDING) == [1, 2, 3, 4]
            assert store.count(TrialStatus.PENDING) == 4
    finally:
        store.close()


def test_a_stale_mirror_is_not_served_after_an_external_commit(tmp_path: Path) -> None:
    """Same process, mirror kept: a commit the writer did not make (simulated by moving the
    recorded txn id back) must be detected by the txn-id check, and the answers rebuilt."""
    store = LmdbTrialStore(tmp_path / "store")
    try:
        run_batch(store, lambda: store.create_trial(make_spec(), 1.0))
        with store.batch():
            assert store.ids_with_status(TrialStatus.PENDING) == [1]
        records = store._records
        assert records.mirror is not None
        records.mirror.apply([(STATUS, ADD, TrialStatus.PENDING, 99)])  # what a stale mirror would claim
        records.mirror_txnid -= 1  # as if someone else had committed since
        with store.batch():
            assert store.ids_with_status(TrialStatus.PENDING) == [1]
    finally:
        store.close()


def test_batches_without_writes_keep_the_mirror(tmp_path: Path) -> None:
    """LMDB spends no txn id on an empty commit; the mirror must survive it, not be rebuilt."""
    store = LmdbTrialStore(tmp_path / "store")
    try:
        run_batch(store, lambda: store.create_trial(make_spec(), 1.0))
        with store.batch():
            store.ids_with_status(TrialStatus.PENDING)
        mirror = store._records.mirror
        for _ in range(3):
            with store.batch():
                assert store.first_with_status(TrialStatus.PENDING) == 1
        run_batch(store, lambda: store.create_trial(make_spec(), 2.0))
        with store.batch():
            assert store.ids_with_status(TrialStatus.PENDING) == [1, 2]
        assert store._records.mirror is mirror
    finally:
        store.close()
