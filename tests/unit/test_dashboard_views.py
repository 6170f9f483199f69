"""The dashboard's data side without a browser: the incremental index, bounded views, binds,
and the lineage rule shared with the TensorBoard export."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pbt_actors.control.progress import best_completed
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.records import Measurement, Origin, OriginKind, TrialSpec, TrialStatus
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT
from pbt_actors.tools.dashboard import views
from pbt_actors.tools.dashboard.index import StoreIndex
from pbt_actors.tools.dashboard.server import check_bind, is_loopback
from pbt_actors.tools.lineage_paths import LineageAssigner
from pbt_actors.tools.sim import LearningCurve, SimConfig, simulate

SMALL = SimConfig(workers=3, speed_spread=0.3, duration_cv=0.2)


@pytest.fixture(scope="module")
def sim_store() -> InMemoryTrialStore:
    _, sim = simulate(LearningCurve(max_steps=300, steps_per_trial=30), policy="initiator", population=4, seed=3,
                      config=SMALL)
    return sim.store


def test_lineages_are_paths_first_child_continues_later_children_branch() -> None:
    lineages = LineageAssigner()
    assert [lineages.add(i, p) for i, p in [(1, None), (2, None), (3, 1), (4, 1), (5, 3), (6, 2), (7, 4)]] \
        == [1, 2, 1, 4, 1, 2, 4]
    assert lineages.add(3, 1) == 1  # idempotent


@pytest.mark.timeout(30)
def test_the_index_agrees_with_the_store_and_its_best(sim_store: InMemoryTrialStore) -> None:
    index = StoreIndex(sim_store)
    assert index.refresh() == sim_store.count(TrialStatus.COMPLETED) + sim_store.count(TrialStatus.FAILED) \
        + sim_store.count(TrialStatus.STOPPED)
    assert len(index.rows) == sim_store.count()
    experiment = index.experiment
    assert experiment is not None
    best = best_completed(sim_store, experiment)
    assert best is not None and index.best_id == best.id
    assert index.ancestry(best.id)[-1] == best.id and index.row(index.ancestry(best.id)[0]).parent is None
    assert index.refresh() == 0  # nothing new: nothing re-read
    summary = index.summary()
    assert summary["trials"] == sim_store.count() and summary["best"]["trial_id"] == best.id


@pytest.mark.timeout(30)
def test_views_stay_bounded_above_their_limits(sim_store: InMemoryTrialStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    index = StoreIndex(sim_store)
    index.refresh()
    small = views.curves(index)
    assert small["mode"] == "segments" and small["best"]["trial_id"] == index.best_id
    assert views.tree(index)["complete"] and len(views.tree(index)["nodes"]) == len(index.rows)
    monkeypatch.setattr(views, "SEGMENT_LIMIT", 5)
    monkeypatch.setattr(views, "TREE_FULL_LIMIT", 5)
    monkeypatch.setattr(views, "POPULATION_ANCESTRY", 2)
    band = views.curves(index)
    assert band["mode"] == "band" and "segments" not in band
    assert sum(band["band"]["n"]) == band["completed"]
    assert all(lo <= mid <= hi for lo, mid, hi in zip(band["band"]["min"], band["band"]["p50"], band["band"]["max"],
                                                       strict=True))
    partial = views.tree(index)
    ids = {n[0] for n in partial["nodes"]}
    assert not partial["complete"] and set(index.ancestry(index.best_id)) <= ids and len(ids) < len(index.rows)
    around = views.neighbourhood(index, 1)
    assert {n[0] for n in around["nodes"]} >= {1, *index.children.get(1, [])}
    assert views.neighbourhood(index, 10**6) == {"nodes": []}
    no_dir = Path("/nonexistent")
    assert views.trial_details(index, 10**6, no_dir) is None
    details = views.trial_details(index, index.best_id, no_dir)
    assert details is not None and details["is_best"]
    assert details["hparams"] == dict(sim_store.get_trial(index.best_id).hparams)


@pytest.mark.timeout(30)
def test_a_refresh_reads_only_new_and_active_trials_and_the_cursor_moves(sim_store: InMemoryTrialStore) -> None:
    store = InMemoryTrialStore()
    store.put_meta(META_EXPERIMENT, sim_store.get_meta(META_EXPERIMENT))
    index = StoreIndex(store)
    assert index.refresh() == 0 and index.rows == []
    spec = TrialSpec(generation=0, hparams={"lr": 0.1}, start_step=0, end_step=30, origin=Origin(OriginKind.SEED))
    first = store.create_trial(spec, now=1.0)
    index.refresh()
    assert index.active == {first.id} and views.updates(index, 0)["ended"] == []
    t0 = time.time() - 10.0  # a worker that started 10 s ago, was busy 3 s, and idles since
    running = first.evolve(status=TrialStatus.RUNNING, worker="w0", started_at=t0,
                           measurements=(Measurement(10, {"loss": 0.5}),))
    assert store.transition(first.id, TrialStatus.PENDING, 1, running)
    index.refresh()
    assert index.rows[0].status == "running" and index.active == {first.id}
    done = running.evolve(status=TrialStatus.COMPLETED, final={"loss": 0.25}, ended_at=t0 + 3.0,
                           completed_attempt=1)
    assert store.transition(first.id, TrialStatus.RUNNING, 1, done)
    assert index.refresh() == 1
    update = views.updates(index, 0)
    assert [n[0] for n in update["ended"]] == [first.id] and update["cursor"] == 1
    assert views.updates(index, 1)["ended"] == [] and views.updates(index, 99)["cursor"] == 1
    assert index.best_id == first.id and index.active == set()
    (worker,) = views.workers(index, [])["workers"]
    assert worker["worker"] == "w0" and worker["trials"] == 1 and worker["busy_s"] == 3.0 and worker["running"] is None
    assert worker["utilisation"] == pytest.approx(0.3, abs=0.03)

    # a failed trial: counted, listed with its traceback, and never the best
    second = store.create_trial(spec, now=6.0)
    assert store.transition(second.id, TrialStatus.PENDING, 1, second.evolve(status=TrialStatus.RUNNING, worker="w0",
                                                                              started_at=t0 + 4.0))
    index.refresh()
    assert index.summary()["by_status"]["running"] == 1
    failed = store.get_trial(second.id).evolve(status=TrialStatus.FAILED, ended_at=t0 + 5.0,
                                               error="Traceback (most recent call last):\nValueError: boom")
    assert store.transition(second.id, TrialStatus.RUNNING, 1, failed)
    assert index.refresh() == 1
    assert index.summary()["by_status"]["failed"] == 1 and index.best_id == first.id
    (failure,) = views.failures(index)
    assert failure["trial_id"] == second.id and failure["error"].endswith("ValueError: boom")
    assert views.workers(index, [])["workers"][0]["failed"] == 1


def test_only_a_loopback_bind_needs_no_flag() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert check_bind("127.0.0.1", False) is None
    with pytest.raises(ConfigError, match="--allow-remote"):
        check_bind("0.0.0.0", False)
    warning = check_bind("0.0.0.0", True)
    assert warning is not None and "WARNING" in warning
