"""The one "is the run finished?" rule (``pbt_actors.control.progress``), and the faces that use
it: the rule's table, its store reader, and verify's inference (which asks the same rule while
letting a stalled initiator show)."""

from __future__ import annotations

import pytest

from pbt_actors.control.progress import Counts, StoreFacts, finished, run_finished
from pbt_actors.model.records import Lease, Origin, OriginKind, TrialSpec, TrialStatus
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_FINISHED_AT
from pbt_actors.tools.verify import verify_store

# (ended, active, waiting, total) -> finished
TABLE = [
    ((False, 0, 0, 0), False),  # an empty store has not run yet
    ((True, 0, 0, 0), True),  # ... unless the controller said it is over
    ((False, 0, 0, 5), True),  # nothing active, nothing waiting to reproduce
    ((False, 1, 0, 5), False),  # a trial pending or running
    ((False, 0, 1, 5), False),  # an initiator may still spawn a child
    ((True, 2, 1, 5), True),  # the controller's record wins (the active ones are orphans)
]


@pytest.mark.parametrize(("facts", "expected"), TABLE)
def test_the_rule(facts: tuple[bool, int, int, int], expected: bool) -> None:
    assert finished(Counts(*facts)) is expected


class Recorder:
    """RunFacts that log which facts the rule read."""

    def __init__(self, ended: bool, active: int, waiting: int, total: int) -> None:
        self.values = {"ended": ended, "active": active, "waiting": waiting, "total": total}
        self.read: list[str] = []

    def __getattr__(self, name: str) -> object:
        if name not in ("ended", "active", "waiting", "total"):
            raise AttributeError(name)
        self.read.append(name)
        return self.values[name]


def test_the_rule_reads_lazily() -> None:
    """The controller asks on every request: a recorded end or work in flight decide at once."""
    ended = Recorder(True, 3, 3, 9)
    assert finished(ended) and ended.read == ["ended"]  # type: ignore[arg-type]
    busy = Recorder(False, 3, 3, 9)
    assert not finished(busy) and busy.read == ["ended", "active"]  # type: ignore[arg-type]


def _store(statuses: list[TrialStatus], *, initiated: bool = True) -> InMemoryTrialStore:
    store = InMemoryTrialStore()
    for status in statuses:
        trial = store.create_trial(
            TrialSpec(generation=0, hparams={"x": 1.0}, start_step=0, end_step=10, origin=Origin(OriginKind.SEED)), 0.0
        )
        if status is TrialStatus.PENDING:
            continue
        running = trial.evolve(status=TrialStatus.RUNNING, lease=Lease("w", 9.0), worker="w", started_at=1.0)
        assert store.transition(trial.id, TrialStatus.PENDING, 1, running)
        if status is TrialStatus.RUNNING:
            continue
        end = running.evolve(status=status, lease=None, ended_at=2.0, final={"x": 1.0}, completed_attempt=1,
                             initiated=initiated)
        assert store.transition(trial.id, TrialStatus.RUNNING, 1, end)
    return store


def test_run_finished_reads_the_store() -> None:
    assert not run_finished(InMemoryTrialStore())
    assert run_finished(_store([TrialStatus.COMPLETED, TrialStatus.FAILED]))
    assert not run_finished(_store([TrialStatus.COMPLETED, TrialStatus.RUNNING]))
    assert not run_finished(_store([TrialStatus.COMPLETED, TrialStatus.PENDING]))
    waiting = _store([TrialStatus.COMPLETED], initiated=False)
    assert not run_finished(waiting)
    assert StoreFacts(waiting).waiting == 1
    waiting.put_meta(META_FINISHED_AT, 3.0)
    assert run_finished(waiting)


def test_verify_lets_a_stalled_initiator_show() -> None:
    """At rest with a COMPLETED trial that never reproduced, the run is not finished by the rule
    (the controller would wait), but verify's inference treats it as over so it reports the
    stall instead of excusing it."""
    stalled = _store([TrialStatus.COMPLETED, TrialStatus.COMPLETED], initiated=False)
    assert not run_finished(stalled)
    problems = verify_store(stalled).problems
    assert any("never reproduced" in p for p in problems), problems


def test_verify_inference_orphans_only_after_the_recorded_end() -> None:
    going = _store([TrialStatus.COMPLETED, TrialStatus.RUNNING, TrialStatus.PENDING])
    assert verify_store(going).ok, verify_store(going).problems
    going.put_meta(META_FINISHED_AT, 5.0)
    problems = verify_store(going).problems
    assert any("orphaned RUNNING" in p for p in problems) and any("left PENDING" in p for p in problems)
    assert verify_store(going, finished=False).ok  # an explicit answer overrides the inference


def test_verify_checks_every_index_against_the_records() -> None:
    store = _store([TrialStatus.COMPLETED, TrialStatus.RUNNING, TrialStatus.PENDING], initiated=False)
    assert verify_store(store, finished=False).ok
    store._generations[0].discard(2)  # damage: an index loses an entry
    store._leases["w"].add(3)  # ... and another gains one (3 is PENDING)
    problems = verify_store(store, finished=False).problems
    assert "index generation[0] misses trial(s) 2" in problems, problems
    assert "index lease[w] lists trial(s) 3 that the records do not put there" in problems, problems
