"""The one index rule (``pbt_actors.storage.indexes.index_edits``): a table of record changes
and the exact index edits each implies, plus the law every store relies on (old entries + the
edits = new entries), so a broken rule fails here before it corrupts a store."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest

from pbt_actors.model.records import CheckpointRef, Lease, Measurement, Origin, OriginKind, Trial, TrialStatus
from pbt_actors.storage.indexes import (
    ADD,
    CHECKPOINT,
    CHILDREN,
    COMPLETED,
    GENERATION,
    LEASE,
    REMOVE,
    STATUS,
    UNINITIATED,
    Edit,
    entries,
    index_edits,
)

P, R, C, S, F = (TrialStatus.PENDING, TrialStatus.RUNNING, TrialStatus.COMPLETED, TrialStatus.STOPPED,
                 TrialStatus.FAILED)
REF = CheckpointRef("a/7.ckpt", 10, "0" * 64, 100)
REF_B = CheckpointRef("b/7.ckpt", 10, "1" * 64, 100)

SEED = Trial(id=7, generation=2, hparams={"lr": 0.1}, start_step=0, end_step=10, origin=Origin(OriginKind.SEED))
CHILD = SEED.evolve(parent_id=3)
LEASED = SEED.evolve(status=R, lease=Lease("w1", 5.0), worker="w1", started_at=1.0)
DONE = LEASED.evolve(status=C, lease=None, final={"acc": 1.0}, checkpoint=REF, completed_attempt=1)
INITIATED = DONE.evolve(initiated=True)

# (name, old, new, the exact edits)
TABLE: list[tuple[str, Trial | None, Trial, set[Edit]]] = [
    ("create a seed", None, SEED, {(GENERATION, ADD, 2, 7), (STATUS, ADD, P, 7)}),
    ("create a child", None, CHILD, {(GENERATION, ADD, 2, 7), (CHILDREN, ADD, 3, 7), (STATUS, ADD, P, 7)}),
    ("lease", SEED, LEASED, {(STATUS, REMOVE, P, 7), (STATUS, ADD, R, 7), (LEASE, ADD, "w1", 7)}),
    ("heartbeat: renewal and a measurement", LEASED,
     LEASED.evolve(lease=Lease("w1", 9.0), measurements=(Measurement(5, {"acc": 0.5}),)), set()),
    ("lease moves to another worker", LEASED, LEASED.evolve(lease=Lease("w2", 9.0)),
     {(LEASE, REMOVE, "w1", 7), (LEASE, ADD, "w2", 7)}),
    ("RUNNING without a lease holds none", LEASED, LEASED.evolve(lease=None), {(LEASE, REMOVE, "w1", 7)}),
    ("re-queue", LEASED, LEASED.evolve(status=P, attempt=2, lease=None),
     {(STATUS, REMOVE, R, 7), (STATUS, ADD, P, 7), (LEASE, REMOVE, "w1", 7)}),
    ("complete with a checkpoint", LEASED, DONE,
     {(STATUS, REMOVE, R, 7), (STATUS, ADD, C, 7), (COMPLETED, ADD, 2, 7), (UNINITIATED, ADD, None, 7),
      (LEASE, REMOVE, "w1", 7), (CHECKPOINT, ADD, 7, REF)}),
    ("initiate", DONE, INITIATED, {(UNINITIATED, REMOVE, None, 7)}),
    ("rewrite with an equal checkpoint", INITIATED, INITIATED.evolve(checkpoint=msgspec.structs.replace(REF)), set()),
    ("a different checkpoint is put again", INITIATED, INITIATED.evolve(checkpoint=REF_B),
     {(CHECKPOINT, ADD, 7, REF_B)}),
    ("dropping the checkpoint leaves the entry to garbage collection", INITIATED, INITIATED.evolve(checkpoint=None),
     set()),
    ("fail while running", LEASED, LEASED.evolve(status=F, lease=None),
     {(STATUS, REMOVE, R, 7), (STATUS, ADD, F, 7), (LEASE, REMOVE, "w1", 7)}),
    ("stop while running, lease kept on the record", LEASED, LEASED.evolve(status=S),
     {(STATUS, REMOVE, R, 7), (STATUS, ADD, S, 7), (LEASE, REMOVE, "w1", 7)}),
    ("stop while pending", SEED, SEED.evolve(status=S), {(STATUS, REMOVE, P, 7), (STATUS, ADD, S, 7)}),
    ("leave COMPLETED before reproducing", DONE, DONE.evolve(status=S),
     {(STATUS, REMOVE, C, 7), (STATUS, ADD, S, 7), (COMPLETED, REMOVE, 2, 7), (UNINITIATED, REMOVE, None, 7)}),
    ("create an already completed record", None, DONE,
     {(GENERATION, ADD, 2, 7), (STATUS, ADD, C, 7), (COMPLETED, ADD, 2, 7), (UNINITIATED, ADD, None, 7),
      (CHECKPOINT, ADD, 7, REF)}),
    ("create a running record", None, LEASED, {(GENERATION, ADD, 2, 7), (STATUS, ADD, R, 7), (LEASE, ADD, "w1", 7)}),
]


@pytest.mark.parametrize(("name", "old", "new", "expected"), TABLE, ids=[row[0] for row in TABLE])
def test_each_change_implies_exactly_these_edits(name: str, old: Trial | None, new: Trial,
                                                 expected: set[Edit]) -> None:
    edits = index_edits(old, new)
    assert set(edits) == expected
    assert len(edits) == len(expected), "an edit twice"
    assert all(type(edit) is tuple and len(edit) == 4 for edit in edits)  # plain data, cheap


def _set_entries(trial: Trial) -> set[tuple[str, Any, Any]]:
    return {(index, key, item) for index, op, key, item in entries(trial) if index is not CHECKPOINT and op == ADD}


STATES = [SEED, LEASED, LEASED.evolve(lease=Lease("w2", 3.0)), LEASED.evolve(lease=None), DONE, INITIATED,
          SEED.evolve(status=P, attempt=2), DONE.evolve(status=S), LEASED.evolve(status=F, lease=None),
          INITIATED.evolve(status=S)]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(STATES, STATES)))
def test_old_entries_plus_the_edits_are_the_new_entries(old: Trial, new: Trial) -> None:
    """The diff law: a store that held ``old``'s entries and applies the edits holds exactly
    ``new``'s; and it never removes what was not there nor adds what was."""
    held = _set_entries(old)
    for index, op, key, item in index_edits(old, new):
        if index is CHECKPOINT:
            continue
        if op == ADD:
            assert (index, key, item) not in held
            held.add((index, key, item))
        else:
            assert op == REMOVE and (index, key, item) in held
            held.remove((index, key, item))
    assert held == _set_entries(new)


def test_entries_are_the_edits_of_a_creation() -> None:
    assert entries(DONE) == index_edits(None, DONE)
    assert all(op == ADD for _, op, _, _ in entries(DONE))
