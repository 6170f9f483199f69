"""Helpers of the store contract tests: specs, refs, the common moves of a trial, a store's
observable state, and raw LMDB access behind a closed store's back."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lmdb

from pbt_actors.model.errors import StoreRetry
from pbt_actors.model.records import (
    CheckpointRef,
    Origin,
    OriginKind,
    Trial,
    TrialSpec,
    TrialStatus,
)
from pbt_actors.storage import schema
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import TRIAL_ID_COUNTER, TrialStore, status_counter

REPO = Path(__file__).resolve().parents[2]
TINY = 64 * 1024
PENDING, RUNNING, COMPLETED = TrialStatus.PENDING, TrialStatus.RUNNING, TrialStatus.COMPLETED
STOPPED, FAILED = TrialStatus.STOPPED, TrialStatus.FAILED


def make_spec(generation: int = 0, parent_id: int | None = None, lr: float = 0.1,
              kind: OriginKind = OriginKind.SEED) -> TrialSpec:
    return TrialSpec(generation=generation, hparams={"lr": lr, "opt": "adam", "layers": 3},
                     start_step=generation * 100, end_step=(generation + 1) * 100,
                     origin=Origin(kind), parent_id=parent_id)


def make_ref(trial_id: int, attempt: int = 1, step: int = 100) -> CheckpointRef:
    data = f"{trial_id}:{attempt}:{step}".encode()
    return CheckpointRef(f"t{trial_id}/a{attempt}.ckpt", len(data),
                         hashlib.sha256(data).hexdigest(), step)


def run_batch(store: TrialStore, body: Callable[[], Any], tries: int = 64) -> Any:
    """Run ``body`` in a batch, re-running it on ``StoreRetry`` as the controller core does."""
    for _ in range(tries):
        try:
            with store.batch():
                return body()
        except StoreRetry:
            continue
    raise AssertionError("batch kept asking for a retry")


def start(store: TrialStore, trial_id: int, worker: str = "w1", now: float = 1.0) -> Trial:
    t = store.get_trial(trial_id)
    new = t.evolve(status=RUNNING, worker=worker, started_at=now)
    assert store.transition(trial_id, t.status, t.attempt, new)
    return new


def complete(store: TrialStore, trial_id: int, *, checkpoint: bool = True,
             now: float = 2.0) -> Trial:
    t = store.get_trial(trial_id)
    new = t.evolve(status=COMPLETED, final={"acc": 0.5 + trial_id / 1000}, ended_at=now,
                   completed_attempt=t.attempt,
                   checkpoint=make_ref(trial_id, t.attempt) if checkpoint else None)
    assert store.transition(trial_id, t.status, t.attempt, new)
    return new


def snapshot(store: TrialStore, probe_ids: int = 0) -> dict[str, Any]:
    """Everything a caller can observe through the query methods."""
    trials = list(store.iter_trials())
    top = max([t.id for t in trials], default=0) + 2 + probe_ids
    ids = range(0, top)
    return {
        "count": store.count(),
        "counts": {s: store.count(s) for s in TrialStatus},
        "with_status": {s: store.ids_with_status(s) for s in TrialStatus},
        "first": {s: store.first_with_status(s) for s in TrialStatus},
        "trials": trials,
        "iter_from_2": [t.id for t in store.iter_trials(2)],
        "find": {i: store.find_trial(i) for i in ids},
        "children": {i: store.children(i) for i in ids},
        "generations": {g: store.generation(g) for g in range(0, store.max_generation() + 2)},
        "max_generation": store.max_generation(),
        "uninitiated": store.uninitiated(),
        "checkpoint_ids": store.checkpoint_ids(),
        "checkpoints": {i: store.checkpoint(i) for i in ids},
        "counters": {n: store.counter(n) for n in
                     [TRIAL_ID_COUNTER, "a", "b", *(status_counter(s) for s in TrialStatus)]},
        "meta": {k: store.get_meta(k) for k in ("note", "cfg", "missing")},
    }



def populate(store: LmdbTrialStore, n: int = 12) -> None:
    """A small but complete graph: every status, lineage, checkpoints, meta and counters."""
    for i in range(n):
        parent = i // 2 if i >= 2 else None
        store.create_trial(make_spec(generation=0 if parent is None else 1, parent_id=parent),
                           float(i))
    for i in range(1, n // 2):
        start(store, i)
    for i in range(1, n // 3):
        complete(store, i)
    t = store.get_trial(n // 2 - 1)
    assert store.transition(t.id, t.status, t.attempt, t.evolve(status=TrialStatus.FAILED))
    store.delete_checkpoint(1)
    store.put_meta("note", {"experiment": "x", "seed": 3})
    store.incr_counter("a", 7)


def raw_env(path: Path) -> lmdb.Environment:
    return lmdb.open(str(path), max_dbs=schema.MAX_DBS, map_size=1 << 26)


def raw_put(path: Path, db_name: bytes, key: bytes, value: bytes) -> None:
    """Write bytes behind the store's back (the store must be closed: one env per process)."""
    env = raw_env(path)
    try:
        db = env.open_db(db_name, create=False)
        with env.begin(write=True) as txn:
            txn.put(key, value, db=db)
    finally:
        env.close()


class Boom(Exception):
    pass
