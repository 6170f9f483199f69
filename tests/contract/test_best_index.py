"""The best index (``pbt_actors.storage.best_index``) gives the answer the full scan gives.

The proof is a property test: random stores (weighted and Pareto objectives, invalid metrics,
ties, completed records that change or leave COMPLETED, rolled-back batches) on both stores,
comparing ``best_completed`` (index) with ``scan_best_completed`` (the objective's ``rank_keys``)
and the front with a brute-force front after every step; the step counters and the population
index are checked against their oracles on the way. (Stores written before the index:
``test_store_migrations.py``.)
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_actors.control.final_population import population_tails
from pbt_actors.control.progress import best_completed, top_completed
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fitness import Metric, Objective
from pbt_actors.model.ranking import BestEntry, dominates, pareto_front
from pbt_actors.model.records import Origin, OriginKind, TrialSpec, TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.model.trial_cost import step_totals_of
from pbt_actors.storage.best_index import META_BEST_INDEX, decode_sort_key, sort_key
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT, TrialStore
from tests.support.oracles import ranked_by_scan, scan_best_completed

pytestmark = pytest.mark.timeout(120)

COMPLETED = TrialStatus.COMPLETED

OBJECTIVES = {
    "max": Objective.maximize("acc"),
    "weighted": Objective([Metric("acc", "max", 2.0), Metric("loss", "min", 0.5)]),
    "pareto": Objective([Metric("acc", "max"), Metric("loss", "min")], comparison="pareto"),
    "pareto3": Objective([Metric("acc", "max"), Metric("loss", "min"), Metric("speed", "max", 3.0)],
                         comparison="pareto"),
}


def experiment_of(objective: Objective) -> Experiment:
    return Experiment(name="best-index", space={"lr": Float(0.01, 1.0)}, objective=objective, max_steps=100)


def spec(lr: float = 0.1) -> TrialSpec:
    return TrialSpec(generation=0, hparams={"lr": lr}, start_step=0, end_step=100, origin=Origin(OriginKind.SEED))


def complete(store: TrialStore, final: dict[str, Any]) -> int:
    trial = store.create_trial(spec(), 0.0)
    done = trial.evolve(status=COMPLETED, final=final, completed_attempt=1, ended_at=1.0)
    assert store.transition(trial.id, TrialStatus.PENDING, trial.attempt, done)
    return trial.id


def brute_front(store: TrialStore, objective: Objective) -> set[int]:
    trials = store.trials(store.ids_with_status(COMPLETED))
    valid = [(t.id, o) for t in trials if (o := objective.oriented(t.final)) is not None]
    return {i for i, o in valid if not any(dominates(p, o) for j, p in valid if j != i)}


@pytest.fixture(params=["memory", "lmdb"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    opened: list[TrialStore] = []

    def make(name: str = "s") -> TrialStore:
        s: TrialStore = (InMemoryTrialStore() if request.param == "memory"
                         else LmdbTrialStore(tmp_path / name, sync=False))
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


# --- the key encoding --------------------------------------------------------------------------
@given(st.lists(st.tuples(st.floats(allow_nan=False), st.integers(1, 2**63)), min_size=2, max_size=30))
def test_sort_keys_order_as_scalar_desc_then_id_asc(pairs: list[tuple[float, int]]) -> None:
    keys = sorted(sort_key(s, i) for s, i in pairs)
    assert [decode_sort_key(k) for k in keys] == sorted(((s + 0.0, i) for s, i in pairs), key=lambda p: (-p[0], p[1]))


def test_pareto_front_keeps_a_dominator_with_an_equal_scalar_and_a_younger_id() -> None:
    a, b = BestEntry(1.0, 1, (1.0, 0.0)), BestEntry(1.0, 2, (1.0, 1e-300))  # b dominates a
    assert pareto_front([a, b]) == [b]


# --- the property: index answer == scan answer -------------------------------------------------
METRIC = st.one_of(st.sampled_from([0.0, 1.0, 0.5, -1.0]), st.floats(-10, 10, allow_nan=False),
                   st.sampled_from([math.nan, math.inf]))
FINAL = st.fixed_dictionaries({"acc": METRIC, "loss": METRIC, "speed": METRIC})
STEP = st.one_of(
    st.tuples(st.just("complete"), FINAL),
    st.tuples(st.just("complete"), st.just({"loss": 1.0})),  # a metric missing: invalid
    st.tuples(st.just("stop"), st.integers(0, 50)),  # a COMPLETED record leaves COMPLETED
    st.tuples(st.just("rewrite"), st.tuples(st.integers(0, 50), FINAL)),  # a COMPLETED record's metrics change
    st.tuples(st.just("initiate"), st.integers(0, 50)),  # changes no index entry
    st.tuples(st.just("rollback"), FINAL),  # a batch that raises: nothing of it stays
    st.tuples(st.just("create"), st.integers(1, 30)),  # PENDING: queued steps
    st.tuples(st.just("lease"), st.integers(0, 50)),  # PENDING -> RUNNING: leased steps
    st.tuples(st.just("follow"), st.tuples(st.integers(0, 50), FINAL)),  # completes, naming an initiator
)


class Boom(Exception):
    pass


def apply_step(store: TrialStore, step: tuple[str, Any]) -> None:
    kind, arg = step
    if kind == "complete":
        complete(store, arg)
        return
    if kind == "create":
        store.create_trial(TrialSpec(generation=0, hparams={"lr": 0.1}, start_step=0, end_step=arg,
                                     origin=Origin(OriginKind.SEED)), 0.0)
        return
    if kind == "lease":
        pending = store.ids_with_status(TrialStatus.PENDING)
        if pending:
            trial = store.get_trial(pending[arg % len(pending)])
            assert store.transition(trial.id, TrialStatus.PENDING, trial.attempt,
                                    trial.evolve(status=TrialStatus.RUNNING, started_at=1.0))
        return
    if kind == "follow":
        ids = store.ids_with_status(COMPLETED) or [0]
        origin = Origin(OriginKind.TOURNAMENT, initiator=ids[arg[0] % len(ids)] or None)
        trial = store.create_trial(TrialSpec(generation=1, hparams={"lr": 0.1}, start_step=0, end_step=10,
                                             origin=origin), 0.0)
        assert store.transition(trial.id, TrialStatus.PENDING, trial.attempt,
                                trial.evolve(status=COMPLETED, final=arg[1], completed_attempt=1))
        return
    if kind == "rollback":
        try:
            with store.batch():
                complete(store, arg)
                raise Boom
        except Boom:
            pass
        return
    ids = store.ids_with_status(COMPLETED)
    if not ids:
        return
    trial = store.get_trial(ids[(arg if isinstance(arg, int) else arg[0]) % len(ids)])
    if kind == "stop":
        new = trial.evolve(status=TrialStatus.STOPPED, stop_reason="test")
    elif kind == "rewrite":
        new = trial.evolve(final=arg[1])
    else:
        new = trial.evolve(initiated=True)
    assert store.transition(trial.id, COMPLETED, trial.attempt, new)


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
@pytest.mark.parametrize("objective_name", sorted(OBJECTIVES))
@settings(max_examples=150, deadline=None)
@given(steps=st.lists(STEP, min_size=1, max_size=40))
def test_best_from_the_index_is_the_scans_answer(kind: str, objective_name: str,
                                                  steps: list[tuple[str, Any]]) -> None:
    objective = OBJECTIVES[objective_name]
    experiment = experiment_of(objective)
    with tempfile.TemporaryDirectory() as tmp:
        store: TrialStore = InMemoryTrialStore() if kind == "memory" else LmdbTrialStore(Path(tmp) / "s", sync=False)
        try:
            store.put_meta(META_EXPERIMENT, experiment.to_dict())
            for step in steps:
                apply_step(store, step)
                tails = population_tails(store.trials(store.ids_with_status(COMPLETED)))
                assert store.population_tails() == [t.id for t in tails]
                assert store.step_totals() == step_totals_of(store.iter_trials())
                best, scan = best_completed(store, experiment), scan_best_completed(store, experiment)
                assert (best and best.id) == (scan and scan.id)
                if objective.comparison == "pareto":
                    assert set(store.best_ranked(objective, 10**6)) == brute_front(store, objective)
                else:
                    ranked = ranked_by_scan(store, experiment)
                    valid = [t.id for t in ranked if objective.is_valid(t.final)]
                    oldest = store.ids_with_status(COMPLETED)[:5]
                    assert [t.id for t in top_completed(store, experiment, 5)] == (valid[:5] if valid else oldest)
        finally:
            store.close()


# --- objective changes, migration, readers -----------------------------------------------------
def test_a_new_objective_rebuilds_the_index(make_store: Any) -> None:
    store = make_store()
    ids = [complete(store, {"acc": a, "loss": loss}) for a, loss in ((0.9, 5.0), (0.5, 0.1), (0.1, 9.0))]
    with pytest.raises(ValueError, match="no objective"):  # no experiment yet: no index
        store.best_ranked(OBJECTIVES["max"])
    store.put_meta(META_EXPERIMENT, experiment_of(OBJECTIVES["max"]).to_dict())
    assert store.best_ranked(OBJECTIVES["max"], 3) == [ids[0], ids[1], ids[2]]
    with pytest.raises(ValueError, match="ranks by the stored experiment's objective"):  # built for another
        store.best_ranked(OBJECTIVES["pareto"])
    store.put_meta(META_EXPERIMENT, experiment_of(OBJECTIVES["pareto"]).to_dict())
    assert store.best_ranked(OBJECTIVES["pareto"], 3) == [ids[1], ids[0]]  # the front, by scalar
    assert store.get_meta(META_BEST_INDEX) == {"objective": OBJECTIVES["pareto"].to_dict()}


READER = """
import sys
from pbt_actors.control.progress import best_completed
from pbt_actors.model.experiment import Experiment
from pbt_actors.storage.lmdb_store import LmdbTrialStore
with LmdbTrialStore(sys.argv[1], readonly=True) as store:
    experiment = Experiment.from_dict(store.get_meta("experiment"))
    best = best_completed(store, experiment)
    print(store.best_ranked(experiment.objective_, 5), None if best is None else best.id)
"""


def read_in_another_process(path: Path) -> str:
    """A reader must live in another process (LMDB opens a folder once per process)."""
    done = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, timeout=60,
                          check=True, start_new_session=True)
    return done.stdout.strip()


@pytest.mark.timeout(120)
def test_a_reader_sees_the_index_the_writer_commits(tmp_path: Path) -> None:
    path = tmp_path / "live"
    experiment = experiment_of(OBJECTIVES["weighted"])
    with LmdbTrialStore(path, sync=False) as writer:
        writer.put_meta(META_EXPERIMENT, experiment.to_dict())
        assert read_in_another_process(path) == "[] None"
        first = complete(writer, {"acc": 0.5, "loss": 1.0})
        with writer.batch():
            second = complete(writer, {"acc": 0.9, "loss": 1.0})
            assert read_in_another_process(path) == f"[{first}] {first}"  # uncommitted: unseen
        assert read_in_another_process(path) == f"[{second}, {first}] {second}"


def test_invalid_metrics_only_give_the_oldest_completed(make_store: Any) -> None:
    store = make_store()
    experiment = experiment_of(OBJECTIVES["pareto"])
    store.put_meta(META_EXPERIMENT, experiment.to_dict())
    ids = [complete(store, {"acc": math.nan, "loss": 1.0}), complete(store, {"acc": 1.0})]
    assert store.best_ranked(experiment.objective_) == []
    best = best_completed(store, experiment)
    assert best is not None and best.id == ids[0] == scan_best_completed(store, experiment).id  # type: ignore[union-attr]
