"""The dashboard's analysis side without a browser: why a trial exists (``tools.explain``), a
trial's own log lines, the trials table's filter and order, and the importance fit."""

from __future__ import annotations

import time

import pytest

from pbt_actors.model.records import Origin, OriginKind, Trial
from pbt_actors.model.space import Categorical, Discrete, Float, Int, SearchSpace
from pbt_actors.tools.dashboard import analysis
from pbt_actors.tools.dashboard.index import StoreIndex
from pbt_actors.tools.dashboard.views import trial_lines
from pbt_actors.tools.explain import classify, explain
from pbt_actors.tools.sim import LearningCurve, SimConfig, simulate


def _trial(trial_id: int, hparams: dict, origin: Origin, parent: int | None = None, crossover: int | None = None,
           final: dict | None = None) -> Trial:
    return Trial(id=trial_id, generation=0 if parent is None else 1, hparams=hparams, start_step=0, end_step=5,
                 origin=origin, parent_id=parent, crossover_id=crossover, final=final)


def test_explore_changes_are_told_apart_perturbed_resampled_kept() -> None:
    assert classify(Float(0.0, 1.0), 0.5, 0.6) == "perturbed"  # x1.2
    assert classify(Float(0.0, 1.0), 0.5, 0.4) == "perturbed"  # x0.8
    assert classify(Float(0.0, 1.0), 0.5, 0.77) == "resampled"
    assert classify(Float(0.0, 1.0), 0.9, 1.0) == "perturbed"  # clipped at the bound
    assert classify(Float(1e-4, 1.0, log=True), 0.01, 0.012) == "perturbed"
    assert classify(Int(1, 100), 10, 12) == "perturbed"
    assert classify(Discrete([8, 16, 32, 64]), 16, 32) == "perturbed"
    assert classify(Discrete([8, 16, 32, 64]), 16, 64) == "resampled"
    assert classify(Categorical(["a", "b"]), "a", "b") == "resampled"
    assert classify(Float(0.0, 1.0), 0.5, 0.5) == "kept"


def test_the_why_line_names_the_match_the_copy_and_each_change() -> None:
    space = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "m": Float(0.0, 1.0), "w": Float(0.0, 1.0)})
    seed = Origin(OriginKind.SEED)
    trials = {1: _trial(1, {"lr": 0.01, "m": 0.5, "w": 0.3}, seed, final={"Q": 0.7}),
              2: _trial(2, {"lr": 0.1, "m": 0.9, "w": 0.9}, seed, final={"Q": 0.4})}
    child = _trial(3, {"lr": 0.012, "m": 0.9, "w": 0.123}, Origin(OriginKind.TOURNAMENT, initiator=2, opponent=1,
                                                                    winner=1), parent=1, crossover=2)
    why = explain(child, trials.get, None, space)
    assert why.text == ("#3: tournament; initiator #2 (Q=0.4) vs opponent #1 (Q=0.7) -> opponent #1 won; "
                        "warm-started from #1, crossover with #2; explore: lr 0.01 -> 0.012 (perturbed), "
                        "m 0.5 -> 0.9 (crossover), w 0.3 -> 0.123 (resampled)")
    assert explain(trials[1], trials.get).text.startswith("#1: seed; sampled from the prior")


def test_a_trials_log_lines_are_its_own_not_its_workers_latest() -> None:
    t0 = time.mktime(time.strptime("2026-01-02 03:04:05", "%Y-%m-%d %H:%M:%S"))
    text = "\n".join([
        "2026-01-02 03:04:05,000 INFO x: starting",
        "trial 7 attempt 1: training",
        "Traceback (most recent call last):",
        "RuntimeError: boom",
        "2026-01-02 03:04:09,000 WARNING x: trial 7 attempt 1 failed: boom",
        "trial 8 attempt 1: training",
        "2026-01-02 03:04:30,000 INFO x: unrelated later line",
        "trial 7 attempt 2: training",
    ])
    lines = trial_lines(text, 7, [(t0, t0 + 4)])
    assert lines == ["2026-01-02 03:04:05,000 INFO x: starting", "trial 7 attempt 1: training",
                     "Traceback (most recent call last):", "RuntimeError: boom",
                     "2026-01-02 03:04:09,000 WARNING x: trial 7 attempt 1 failed: boom", "trial 7 attempt 2: training"]


@pytest.fixture(scope="module")
def index() -> StoreIndex:
    _, sim = simulate(LearningCurve(max_steps=300, steps_per_trial=30), policy="initiator", population=6, seed=5,
                      config=SimConfig(workers=3))
    built = StoreIndex(sim.store)
    built.refresh()
    return built


def test_the_table_filters_and_sorts_on_the_server(index: StoreIndex) -> None:
    name = analysis.hparam_names(index)[0]
    values = sorted(r.hparams[name] for r in index.rows)
    cut = values[len(values) // 2]
    page = analysis.trials_table(index, sort=f"hp:{name}", desc=True, query=f"{name}<{cut}")
    got = [r["hparams"][name] for r in page["rows"]]
    assert page["matched"] == sum(1 for v in values if v < cut) == len(got)
    assert got == sorted(got, reverse=True) and all(v < cut for v in got)
    assert analysis.trials_table(index, query="no-such-worker")["matched"] == 0


def test_importance_is_a_deterministic_forest_fit(index: StoreIndex) -> None:
    first = analysis.importance(index)
    assert first["importance"] and sum(i["importance"] for i in first["importance"]) == pytest.approx(1, abs=1e-4)
    assert analysis.importance(index) == first
