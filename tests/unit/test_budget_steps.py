"""The compute budget (``budget_steps``) and the smoothed fitness: pure core, no threads."""

from __future__ import annotations

import math

import pytest

from pbt_actors.control.budget import BudgetLedger
from pbt_actors.control.core import ControllerCore
from pbt_actors.control.policies import PopulationView
from pbt_actors.control.policies.policy import lineage_reports
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fitness import Objective
from pbt_actors.model.protocol import Done, Report, TrialAssignment, Wait
from pbt_actors.model.records import Measurement, TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.model.trial_cost import step_totals_of, trial_cost
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.driver import Driver, fake_checkpoint, random_run

pytestmark = pytest.mark.timeout(60)


def experiment(**overrides) -> Experiment:
    settings = dict(name="budget", space={"lr": Float(1e-4, 1.0, log=True)}, objective="score",
                    population=4, steps_per_trial=10, max_steps=100, seed=5, lease_s=10.0)
    settings.update(overrides)
    return Experiment(**settings)


def run_all(core: ControllerCore, workers: int = 3, seed: int = 0) -> None:
    import random

    rng = random.Random(seed)
    random_run(core, rng.randrange, workers=workers)


@pytest.mark.parametrize("policy", ["initiator", "truncation", "random"])
@pytest.mark.parametrize("budget", [10, 95, 100, 230])
def test_leased_steps_never_exceed_the_budget(policy: str, budget: int) -> None:
    core = ControllerCore(InMemoryTrialStore(), experiment(policy=policy, budget_steps=budget))
    run_all(core)
    trials = list(core.store.iter_trials())
    spent = step_totals_of(trials)[0]
    assert spent <= budget
    assert spent > budget - 10  # it spends what fits: the last trial-length is all that may be left
    assert core.finished
    assert core.leased_steps == spent
    assert all(t.status is TrialStatus.COMPLETED for t in trials)  # nothing was created and dropped


def test_without_a_budget_the_run_is_unchanged() -> None:
    a = ControllerCore(InMemoryTrialStore(), experiment())
    b = ControllerCore(InMemoryTrialStore(), experiment(budget_steps=10_000))
    run_all(a)
    run_all(b)
    assert [t.hparams for t in a.store.iter_trials()] == [t.hparams for t in b.store.iter_trials()]
    assert step_totals_of(a.store.iter_trials())[0] == a.leased_steps == b.leased_steps <= 10_000


def test_a_budget_smaller_than_the_population_seeds_only_what_fits() -> None:
    core = ControllerCore(InMemoryTrialStore(), experiment(budget_steps=25))
    assert core.store.count() == 2  # two 10-step seeds; a third would take it to 30
    assert core.ledger.committed == 20 and core.ledger.leased == 0


def test_retries_are_not_charged_again() -> None:
    d = Driver(ControllerCore(InMemoryTrialStore(), experiment(budget_steps=40)))
    spec = d.lease("w0")
    d.fail("w0", spec)  # retryable: re-queued as attempt 2
    again = d.lease("w1")
    assert again.trial_id == spec.trial_id and again.attempt == 2
    assert d.core.leased_steps == 10


@pytest.mark.parametrize("kind", ["memory", "lmdb"])
def test_the_steps_retries_re_lease_are_counted_apart(tmp_path, kind: str) -> None:
    """Issue 20, item 12: not charged, but counted in the store and shown in the summary."""
    from pbt_actors.cli.summary import store_summary

    store = InMemoryTrialStore() if kind == "memory" else LmdbTrialStore(tmp_path / "s")
    exp = experiment(budget_steps=40)
    d = Driver(ControllerCore(store, exp))
    spec = d.lease("w0")
    d.fail("w0", spec)  # re-queued: nothing re-trained yet
    assert store_summary(d.store, exp)["budget"]["retried_steps"] == 0
    d.fail("w1", d.lease("w1"))
    d.lease("w2")  # attempt 3 of the same trial
    budget = store_summary(d.store, exp)["budget"]
    assert budget["retried_steps"] == 20 and budget["leased_steps"] == 10


def test_restarted_core_rebuilds_the_ledger_from_the_store(tmp_path) -> None:
    exp = experiment(budget_steps=60)
    store = LmdbTrialStore(tmp_path / "s")
    core = ControllerCore(store, exp)
    d = Driver(core)
    first = d.lease("w0")
    d.report("w0", first, 1.0)
    d.lease("w1")
    before = (core.ledger.leased, core.ledger.queued)
    store.close()
    store = LmdbTrialStore(tmp_path / "s")
    restarted = ControllerCore(store, exp)
    assert (restarted.ledger.leased, restarted.ledger.queued) == before
    run_all(restarted)
    assert step_totals_of(store.iter_trials())[0] <= 60
    store.close()


def test_a_budget_lowered_on_resume_stops_queued_trials_instead_of_leasing_them() -> None:
    store = InMemoryTrialStore()
    ControllerCore(store, experiment(budget_steps=40))  # 4 seeds queued (40 steps)
    core = ControllerCore(store, experiment(budget_steps=15))
    d = Driver(core)
    spec = d.lease("w0")
    assert isinstance(spec, TrialAssignment)
    reply = d.request("w1")  # a second 10-step seed would take leased steps to 20 > 15
    assert isinstance(reply, Wait)
    stopped = store.trials(store.ids_with_status(TrialStatus.STOPPED))
    assert len(stopped) == 3 and {t.stop_reason for t in stopped} == {"compute budget spent"}
    d.report("w0", spec, 1.0)
    assert isinstance(d.request("w0"), Done)
    assert core.leased_steps == 10 and core.finished


def test_ledger_arithmetic() -> None:
    assert BudgetLedger(30).admits_new(30) and not BudgetLedger(30).admits_new(31)
    queued = BudgetLedger(30, 0, 20)
    assert not queued.admits_new(11) and queued.admits_lease(20)
    leased = BudgetLedger(30, 20, 0)
    assert leased.committed == 20 and not leased.spent() and not leased.admits_lease(11)
    assert BudgetLedger(30, 20, 10).spent()
    assert BudgetLedger(None).admits_new(10**9)
    assert BudgetLedger(None, 5, 7).summary() == {"budget_steps": None, "leased_steps": 5, "queued_steps": 7,
                                                   "retried_steps": 0}


def test_budget_steps_is_validated() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            experiment(budget_steps=bad)


def test_budget_steps_round_trips_and_may_change_on_resume() -> None:
    exp = experiment(budget_steps=70)
    assert Experiment.from_dict(exp.to_dict()) == exp
    assert "budget_steps" not in exp.decision_fields()


# --- smoothed fitness -------------------------------------------------------------------------------
def test_smooth_is_the_mean_of_the_last_k_reports() -> None:
    objective = Objective.maximize("acc", smoothing=3)
    assert objective.smooth([{"acc": 0.1}, {"acc": 0.5}, {"acc": 0.6}, {"acc": 0.7}]) == {"acc": pytest.approx(0.6)}
    assert objective.smooth([{"acc": 0.4}]) == {"acc": 0.4}
    assert objective.smooth([]) is None
    # the newest decides validity; an older invalid report is left out of the mean
    assert not objective.is_valid(objective.smooth([{"acc": 0.9}, {"acc": math.nan}]))
    assert objective.smooth([{"acc": math.nan}, {"acc": 0.2}, {"acc": 0.4}]) == {"acc": pytest.approx(0.3)}


def test_smoothing_is_validated_and_stored() -> None:
    with pytest.raises(ConfigError):
        Objective.maximize("acc", smoothing=0)
    objective = Objective.minimize("loss", smoothing=4)
    assert Objective.from_dict(objective.to_dict()) == objective
    assert "smoothing" not in Objective.maximize("acc").to_dict()  # old stores read back equal


def _complete(d: Driver, worker: str, spec: TrialAssignment, values: list[float]) -> None:
    """Report a trial with one measurement per step, the last one being the final value."""
    steps = range(spec.start_step + 1, spec.end_step + 1)
    measurements = tuple(Measurement(s, {"score": v}) for s, v in zip(steps, values, strict=True))
    d.core.handle(Report(worker, spec.trial_id, spec.attempt, {"score": values[-1]}, measurements=measurements,
                         checkpoint=fake_checkpoint(spec.trial_id, spec.attempt, spec.end_step,
                                                    spec.experiment)), d.now)


def test_lineage_reports_walk_up_to_the_ancestors() -> None:
    exp = experiment(population=1, steps_per_trial=2, max_steps=6, objective=Objective.maximize("score", smoothing=3))
    d = Driver(ControllerCore(InMemoryTrialStore(), exp))
    first = d.lease("w0")
    _complete(d, "w0", first, [0.1, 0.2])
    second = d.lease("w0")
    _complete(d, "w0", second, [0.3, 0.4])
    view = PopulationView(d.store, exp)
    reports = lineage_reports(view, d.trial(second.trial_id), 3)
    assert [r["score"] for r in reports] == [0.2, 0.3, 0.4]


def test_smoothed_fitness_decides_the_tournament() -> None:
    """Trial A ends on a lucky spike, B is steadily better: raw, A wins; smoothed, B wins."""
    outcomes = {}
    for k in (1, 3):
        exp = experiment(population=2, steps_per_trial=3, max_steps=6, opponent_window=1,
                         objective=Objective.maximize("score", smoothing=k))
        d = Driver(ControllerCore(InMemoryTrialStore(), exp))
        a, b = d.lease("w0"), d.lease("w1")
        _complete(d, "w1", b, [0.6, 0.6, 0.6])
        _complete(d, "w0", a, [0.1, 0.1, 0.9])  # a completes last: its tournament sees b
        child = d.store.get_trial(d.store.ids_with_status(TrialStatus.PENDING)[-1])
        assert child.origin.initiator == a.trial_id
        outcomes[k] = child.origin.winner
        assert trial_cost(child) == 3
    assert outcomes[1] != outcomes[3]


def test_budget_is_shown_in_progress_and_summary() -> None:
    from pbt_actors.cli.summary import budget_text, store_summary

    assert budget_text(1200, 4000) == "steps 1,200/4,000  "
    assert budget_text(1200, None) == "steps 1,200  "
    exp = experiment(budget_steps=35)
    d = Driver(ControllerCore(InMemoryTrialStore(), exp))
    d.lease("w0")
    summary = store_summary(d.store, exp)
    assert summary["budget"] == {"budget_steps": 35, "leased_steps": 10, "queued_steps": 20,
                                 "retried_steps": 0}
