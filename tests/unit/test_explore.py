"""When policies explore: no mutation in a lineage's last trial (``explore_final``), and the
initiator's ``explore="on_exploit"``. Pure core, no threads."""

from __future__ import annotations

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import Trial, TrialStatus
from pbt_actors.model.space import Float
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.driver import Driver

pytestmark = pytest.mark.timeout(60)


def experiment(**overrides) -> Experiment:
    settings = dict(name="explore", space={"a": Float(0.01, 1.0, log=True), "b": Float(0.0, 1.0)},
                    objective="score", population=2, steps_per_trial=5, max_steps=10, seed=11,
                    initial=[{"a": 0.5, "b": 0.5}, {"a": 0.1, "b": 0.2}])
    settings.update(overrides)
    return Experiment(**settings)


def children_after_seeds(exp: Experiment, scores: tuple[float, float]) -> list[Trial]:
    """Complete both seeds (trial 1 scores ``scores[0]``, trial 2 ``scores[1]``); return the children."""
    d = Driver(ControllerCore(InMemoryTrialStore(), exp))
    first, second = d.lease("w0"), d.lease("w1")
    d.report("w0", first, scores[0])
    d.report("w1", second, scores[1])
    return d.store.trials(d.store.ids_with_status(TrialStatus.PENDING))


@pytest.mark.parametrize("policy", ["initiator", "truncation"])
def test_no_mutation_in_a_lineages_last_trial_by_default(policy: str) -> None:
    for child in children_after_seeds(experiment(policy=policy), (1.0, 0.0)):
        assert child.end_step == 10
        winner = child.parent_id
        assert child.hparams == experiment().initial[winner - 1]  # copied exactly


@pytest.mark.parametrize("policy", ["initiator", "truncation"])
def test_explore_final_restores_the_classic_behaviour(policy: str) -> None:
    children = children_after_seeds(experiment(policy=policy, explore_final=True), (1.0, 0.0))
    mutated = [c for c in children if c.hparams != experiment().initial[c.parent_id - 1]]
    assert mutated  # initiator: both children mutate; truncation: the bottom member's exploit does


def test_a_nearly_spent_budget_stops_exploration() -> None:
    # max_steps is far away; explore needs budget for 2 generations (2 x population 2 x 5 steps = 20)
    # left: 30 - 10 seed steps = 20 leaves it on for the first child; 29 - 10 = 19 turns it off.
    exploring = children_after_seeds(experiment(max_steps=100, budget_steps=30), (1.0, 0.0))
    assert any(c.hparams != experiment().initial[c.parent_id - 1] for c in exploring)
    frozen = children_after_seeds(experiment(max_steps=100, budget_steps=29), (1.0, 0.0))
    assert frozen and all(c.hparams == experiment().initial[c.parent_id - 1] for c in frozen)


def test_on_exploit_mutates_only_a_child_that_copied_its_opponent() -> None:
    exp = experiment(max_steps=100, explore="on_exploit", opponent_window=1)
    children = children_after_seeds(exp, (1.0, 0.0))
    by_initiator = {c.origin.initiator: c for c in children}
    # trial 1 completed first with no opponent: wins by default, continues unchanged
    assert by_initiator[1].origin.winner == 1 and by_initiator[1].hparams == exp.initial[0]
    # trial 2 lost to trial 1: copies trial 1's checkpoint and explores
    assert by_initiator[2].origin.winner == 1 and by_initiator[2].hparams != exp.initial[0]


def test_explore_settings_are_validated_and_stored() -> None:
    with pytest.raises(ConfigError):
        experiment(explore="sometimes")
    with pytest.raises(ConfigError):
        experiment(explore_final=1)
    exp = experiment(explore="on_exploit", explore_final=True)
    assert Experiment.from_dict(exp.to_dict()) == exp
