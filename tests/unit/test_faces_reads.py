"""``status``, ``status --watch`` and ``lineage best`` read O(population) records, never the store.

A store of a real simulated run (controller core and policy over the in-memory store) counts
every record it hands out; the faces must stay far below the number of trials, so a refresh of
``status --watch`` on a million-trial store costs what it costs on a small one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pbt_actors.cli.status import watch_snapshot
from pbt_actors.cli.summary import store_summary, stored_experiment
from pbt_actors.model.records import Trial
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.tools.lineage import resolve_trial
from pbt_actors.tools.sim.engine import simulate
from pbt_actors.tools.sim.objectives import make_objective
from tests.support.oracles import scan_best_completed

pytestmark = pytest.mark.timeout(60)

TRIALS = 1500
POPULATION = 10


class CountingStore(InMemoryTrialStore):
    """Counts the records read (by id and by iteration)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def find_trial(self, trial_id: int) -> Trial | None:
        self.reads += 1
        return super().find_trial(trial_id)

    def iter_trials(self, start_id: int = 1) -> Iterator[Trial]:
        for trial in super().iter_trials(start_id):
            self.reads += 1
            yield trial


@pytest.fixture(scope="module")
def store() -> CountingStore:
    s = CountingStore()
    simulate(make_objective("curve"), population=POPULATION, seed=5, store=s, max_trials=TRIALS,
             max_steps=10**9, steps_per_trial=10)
    assert s.count() == TRIALS
    return s


def test_a_watch_refresh_reads_about_the_population(store: CountingStore) -> None:
    store.reads = 0
    snap = watch_snapshot(store, "mem")
    assert snap is not None and snap["trials"] == TRIALS
    assert store.reads <= 4 * POPULATION + 20, store.reads
    experiment = stored_experiment(store)
    assert experiment is not None
    best = scan_best_completed(store, experiment)
    assert best is not None and snap["best"]["trial_id"] == best.id == snap["top"][0]["trial_id"]


def test_status_and_lineage_best_read_about_the_population(store: CountingStore) -> None:
    experiment = stored_experiment(store)
    assert experiment is not None
    store.reads = 0
    summary = store_summary(store, experiment)
    best_id = resolve_trial(store, "best")
    assert store.reads <= 3 * POPULATION + 10, store.reads
    assert summary["best"]["trial_id"] == best_id
    assert summary["final_population"]["size"] == POPULATION
    assert summary["budget"]["leased_steps"] == sum(t.end_step - t.start_step for t in store.iter_trials())
