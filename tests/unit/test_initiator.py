"""Initiator-based evolution: opponent window, exactly-once initiation, budget mode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import OriginKind, TrialStatus
from pbt_actors.model.space import Categorical, Discrete, Float
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.driver import random_run

pytestmark = pytest.mark.timeout(120)


def experiment(**overrides) -> Experiment:
    settings_ = dict(
        name="unit", space={"x": Float(0.0, 1.0), "b": Discrete([1, 2, 4]), "c": Categorical(["p", "q"])},
        objective="score", population=4, steps_per_trial=10, max_steps=60, seed=7,
    )
    settings_.update(overrides)
    return Experiment(**settings_)


@given(st.data(), st.integers(1, 4), st.integers(2, 6), st.integers(1, 4), st.floats(0, 1))
@settings(max_examples=40, deadline=None)
def test_opponents_stay_in_the_window_and_every_completed_trial_initiates_once(
        data, window, population, workers, crossover) -> None:
    store = InMemoryTrialStore()
    core = ControllerCore(store, experiment(opponent_window=window, population=population,
                                            crossover_prob=crossover))
    random_run(core, lambda n: data.draw(st.integers(0, n - 1)), workers=workers, duplicate_prob=0.3)
    trials = {t.id: t for t in store.iter_trials()}
    children_of: dict[int, int] = {}
    for child in trials.values():
        if child.origin.kind is not OriginKind.TOURNAMENT:
            continue
        initiator = trials[child.origin.initiator]
        children_of[initiator.id] = children_of.get(initiator.id, 0) + 1
        assert child.generation == initiator.generation + 1
        if child.origin.opponent is not None:
            opponent = trials[child.origin.opponent]
            assert opponent.id != initiator.id
            assert initiator.generation - window + 1 <= opponent.generation <= initiator.generation
            assert opponent.ended_at is not None and opponent.ended_at <= child.created_at
        assert child.parent_id == child.origin.winner
        assert child.origin.winner in (child.origin.initiator, child.origin.opponent)
        assert child.start_step == trials[child.parent_id].end_step
    assert all(count == 1 for count in children_of.values())
    completed = [t for t in trials.values() if t.status is TrialStatus.COMPLETED]
    assert completed and all(t.initiated for t in completed)
    # an initiator without a child is one whose lineage ended: it (as the default winner or
    # against its opponent) had reached max_steps, so it can never have been re-initiated
    for t in completed:
        if t.id not in children_of:
            assert t.end_step >= 60 or any(o.end_step >= 60 for o in completed), t


def test_winner_is_the_better_of_initiator_and_opponent_with_ties_to_the_initiator() -> None:
    store = InMemoryTrialStore()
    core = ControllerCore(store, experiment(population=2, opponent_window=1))
    seen = []

    def record(_driver) -> None:
        seen.extend(t for t in store.iter_trials() if t.origin.kind is OriginKind.TOURNAMENT)

    random_run(core, lambda n: 0, workers=2, on_step=record)
    for child in {c.id: c for c in seen}.values():
        initiator = store.get_trial(child.origin.initiator)
        if child.origin.opponent is None:
            assert child.origin.winner == initiator.id
            continue
        opponent = store.get_trial(child.origin.opponent)
        if opponent.final["score"] > initiator.final["score"]:
            assert child.origin.winner == opponent.id
        else:
            assert child.origin.winner == initiator.id


@given(st.data(), st.integers(2, 6), st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_budget_mode_never_breeds_generation_g_plus_1_before_g_has_population_completed(
        data, population, workers) -> None:
    store = InMemoryTrialStore()
    core = ControllerCore(store, experiment(population=population, budget_mode=True))

    def invariant(_driver) -> None:
        # The gate: g-1 has `population` completed members, or nothing at or below g-1 is still
        # active (late generations can be thinner: a lineage whose winner reached max_steps
        # retires instead of breeding). No failures here, so nothing below g-1 reappears.
        for g in range(1, store.max_generation() + 1):
            if store.generation(g):
                completed = [t for t in store.trials(store.generation(g - 1))
                             if t.status is TrialStatus.COMPLETED]
                settled = all(t.generation >= g for t in store.trials(
                    store.ids_with_status(TrialStatus.PENDING) + store.ids_with_status(TrialStatus.RUNNING)))
                assert len(completed) >= population or settled, (g, len(completed))

    random_run(core, lambda n: data.draw(st.integers(0, n - 1)), workers=workers,
               duplicate_prob=0.2, on_step=invariant)
    assert len(store.generation(0)) == len(store.generation(1)) == population
    for g in range(store.max_generation() + 1):
        assert len(store.generation(g)) <= population  # one child per initiator, no more


def test_budget_mode_keeps_workers_busy_with_other_pending_trials() -> None:
    store = InMemoryTrialStore()
    core = ControllerCore(store, experiment(population=6, budget_mode=True))
    from tests.support.driver import Driver

    driver = Driver(core)
    first = driver.lease("w0")
    driver.report("w0", first, 1.0)
    # generation 0 is not complete: no child yet, but the next seed is handed out
    assert len(store.generation(1)) == 0
    nxt = driver.lease("w0")
    assert nxt.generation == 0 and nxt.trial_id == first.trial_id + 1
