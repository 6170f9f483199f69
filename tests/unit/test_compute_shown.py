"""Issue 23, item 3: the steps a run trained (leased + retried) are shown beside
``population x max_steps`` in the summary (``run``, ``status``, ``status --json``) and the
dashboard's summary. Pure core and in-memory stores, no threads."""

from __future__ import annotations

import random
from typing import Any

import pytest

from pbt_actors.cli.summary import compute_text, print_summary, store_summary
from pbt_actors.control.budget import BudgetLedger
from pbt_actors.control.core import ControllerCore
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.space import Float
from pbt_actors.model.trial_cost import step_totals_of
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import META_EXPERIMENT
from pbt_actors.tools.dashboard.index import StoreIndex
from tests.support.driver import Driver, random_run

pytestmark = pytest.mark.timeout(60)


def experiment(**overrides: Any) -> Experiment:
    settings: dict[str, Any] = dict(name="compute", space={"lr": Float(1e-4, 1.0, log=True)}, objective="score",
                                    population=4, steps_per_trial=10, max_steps=100, seed=5, lease_s=10.0)
    settings.update(overrides)
    return Experiment(**settings)


def finished_run(exp: Experiment) -> InMemoryTrialStore:
    store = InMemoryTrialStore()
    store.put_meta(META_EXPERIMENT, exp.to_dict())
    # members at a smaller step sometimes score better (a noisy, overfitting metric), as in real runs
    random_run(ControllerCore(store, exp), random.Random(1).randrange, workers=3,
               score=lambda spec: float(spec.hparams["lr"]) - spec.end_step / 1000 + (spec.trial_id * 7919 % 13) / 50)
    return store


def test_without_a_budget_copies_of_members_behind_train_more_than_population_x_max_steps() -> None:
    exp = experiment()
    store = finished_run(exp)
    compute = store_summary(store, exp)["compute"]
    leased = step_totals_of(store.iter_trials())[0]  # the oracle: every leased trial's range
    assert compute == {"steps_trained": leased, "leased_steps": leased, "retried_steps": 0,
                       "nominal_steps": 400, "budget_steps": None}
    # asynchronous tournaments: some children continue a winner at a smaller step than their initiator
    assert leased > 400
    text = compute_text(compute, exp.population)
    assert text.startswith(f"{leased:,} steps trained; population 4 x max_steps = 400 (+")
    assert "--budget-steps pins the total" in text


def test_budget_steps_pins_the_total_at_population_x_max_steps() -> None:
    exp = experiment(budget_steps=400)
    compute = store_summary(finished_run(exp), exp)["compute"]
    assert compute["steps_trained"] <= 400 and compute["budget_steps"] == 400
    assert "--budget-steps" not in compute_text(compute)


def test_retried_steps_count_as_trained_and_are_named() -> None:
    exp = experiment()
    d = Driver(ControllerCore(InMemoryTrialStore(), exp))
    d.fail("w0", d.lease("w0"))
    d.lease("w1")  # attempt 2 of the same trial re-trains its 10 steps
    compute = store_summary(d.store, exp)["compute"]
    assert (compute["steps_trained"], compute["leased_steps"], compute["retried_steps"]) == (20, 10, 10)
    assert compute_text(compute).startswith("20 steps trained (10 leased + 10 retried); ")


def test_the_summary_prints_it_and_the_dashboard_sends_it(capsys: pytest.CaptureFixture[str]) -> None:
    exp = experiment()
    store = finished_run(exp)
    summary = store_summary(store, exp)
    print_summary(summary, "STORE")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("compute"))
    assert f"{summary['compute']['steps_trained']:,} steps trained" in line
    index = StoreIndex(store)
    index.refresh()
    assert index.summary()["compute"] == summary["compute"]
    assert BudgetLedger(None, 5, 0, 2).compute(2, 3) == {"steps_trained": 7, "leased_steps": 5, "retried_steps": 2,
                                                         "nominal_steps": 6, "budget_steps": None}
