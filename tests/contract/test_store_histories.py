"""The in-memory twin and the LMDB store agree on random histories: the same operations, the
same observable state after every step (``store_helpers.snapshot``)."""

from __future__ import annotations

import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt_actors.model.records import (
    Measurement,
    Origin,
    OriginKind,
    Trial,
    TrialStatus,
)
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TRIAL_ID_COUNTER, TrialStore
from tests.contract.store_helpers import (
    PENDING,
    RUNNING,
    Boom,
    make_ref,
    make_spec,
    run_batch,
    snapshot,
)

# --- the two stores agree on random histories -------------------------------------------------------
# A "pick" selects an existing trial (or, now and then, the next, missing id): see ``_pick``.
_PICK = st.integers(min_value=0, max_value=1000)
_RARELY = st.integers(0, 4).map(lambda x: x == 0)
_OPS = st.one_of(
    st.tuples(st.just("create"), st.integers(0, 3), st.one_of(st.none(), _PICK),
              st.floats(0.001, 1.0)),
    st.tuples(st.just("transition"), _PICK, st.sampled_from(list(TrialStatus)), _RARELY,
              _RARELY, st.booleans(), st.booleans(), _RARELY),
    st.tuples(st.just("measure"), _PICK, st.integers(0, 1000), _RARELY),
    st.tuples(st.just("delete_checkpoint"), _PICK),
    st.tuples(st.just("counter"), st.sampled_from(["a", "b"]), st.integers(-3, 3)),
    st.tuples(st.just("meta"), st.sampled_from(["note", "cfg"]), st.integers(0, 5)),
)
_STEPS = st.lists(
    st.one_of(
        _OPS.map(lambda op: ("single", [op])),
        st.tuples(st.sampled_from(["batch", "batch_fail"]), st.lists(_OPS, max_size=8)),
    ),
    max_size=25,
)


def _pick(store: TrialStore, pick: int) -> int:
    """An id in 1..count+1: mostly existing trials, sometimes the missing next one."""
    return 1 + pick % (store.counter(TRIAL_ID_COUNTER) + 1)


def _apply(store: TrialStore, op: tuple[Any, ...]) -> Any:
    """One random operation; its result (or exception type) is what both stores compare."""
    kind = op[0]
    try:
        if kind == "create":
            _, generation, parent, lr = op
            parent_id = None if parent is None else _pick(store, parent)
            return store.create_trial(make_spec(generation, parent_id, lr), 1.0)
        if kind == "transition":
            _, pick, status, wrong_status, wrong_attempt, initiated, ckpt, bump = op
            trial_id = _pick(store, pick)
            current = store.find_trial(trial_id)
            if current is None:
                return store.transition(
                    trial_id,
                    PENDING,
                    1,
                    Trial(trial_id, generation=0, hparams={}, start_step=0, end_step=1, origin=Origin(OriginKind.SEED)),
                )
            new = current.evolve(status=status, initiated=initiated,
                                 attempt=current.attempt + (1 if bump else 0),
                                 checkpoint=make_ref(trial_id, current.attempt) if ckpt else None)
            expected = RUNNING if (wrong_status and current.status is not RUNNING) else (
                PENDING if wrong_status else current.status)
            attempt = current.attempt + (1 if wrong_attempt else 0)
            return store.transition(trial_id, expected, attempt, new)
        if kind == "measure":
            _, pick, step, wrong_attempt = op
            running = store.ids_with_status(RUNNING)  # mostly aim at a trial that can take it
            trial_id = running[pick % len(running)] if running and pick % 4 else _pick(store, pick)
            current = store.find_trial(trial_id)
            attempt = (current.attempt if current else 1) + (1 if wrong_attempt else 0)
            return store.record_measurement(trial_id, attempt, Measurement(step, {"loss": 1.0}))
        if kind == "delete_checkpoint":
            return store.delete_checkpoint(_pick(store, op[1]))
        if kind == "counter":
            return store.incr_counter(op[1], op[2])
        if kind == "meta":
            return store.put_meta(op[1], {"v": op[2], "list": [op[2]] * op[2]})
    except ValueError as exc:
        return type(exc).__name__
    raise AssertionError(op)


def _run_step(store: TrialStore, step: tuple[str, list[tuple[Any, ...]]]) -> list[Any]:
    mode, ops = step
    if mode == "single":
        return [_apply(store, ops[0])]
    results: list[Any] = []

    def body() -> None:
        results.clear()
        results.extend(_apply(store, op) for op in ops)
        if mode == "batch_fail":
            raise Boom

    with suppress(Boom):
        run_batch(store, body)
    return results


@pytest.mark.timeout(120)
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=_STEPS)
def test_both_stores_agree_on_random_histories(steps: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        memory = InMemoryTrialStore()
        # A tiny map so that random histories also cross map growth inside batches.
        lmdb_store = LmdbTrialStore(Path(tmp) / "store", map_size=64 * 1024, sync=False)
        try:
            for step in steps:
                assert _run_step(memory, step) == _run_step(lmdb_store, step), step
            assert snapshot(memory) == snapshot(lmdb_store)
        finally:
            lmdb_store.close()

