"""``explore="model"``: the GP-UCB bandit proposes inside the space, learns where improvement
is, is deterministic per seed, and a controller rebuilt from the store decides the same.
Pure core (in-memory or LMDB store in a tmp dir), no threads."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.policies.model_explore import (
    MIN_OBSERVATIONS,
    Observation,
    decode,
    encode,
    fit_and_propose,
    improvement,
    numeric_names,
)
from pbt_actors.model.errors import ConfigError
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.fitness import Objective
from pbt_actors.model.protocol import TrialAssignment
from pbt_actors.model.records import Origin, OriginKind, Trial, TrialStatus
from pbt_actors.model.space import Categorical, Discrete, Fixed, Float, Int, SearchSpace
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.memory import InMemoryTrialStore
from pbt_actors.storage.trial_store import TrialStore
from tests.support.driver import drive_in_fixed_order, graph

pytestmark = pytest.mark.timeout(60)

MIXED = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "mom": Float(0.0, 0.99), "layers": Int(1, 8),
                     "width": Int(16, 1024, log=True), "bs": Discrete([16, 32, 64, 128]),
                     "opt": Categorical(["sgd", "adam"]), "fixed": Fixed(3)})


def random_observations(space: SearchSpace, rng: np.random.Generator, n: int) -> list[Observation]:
    return [Observation(space.sample(rng), int(rng.integers(1, 6)), float(rng.normal())) for _ in range(n)]


def test_proposals_lie_inside_the_space_and_keep_what_the_model_cannot_order() -> None:
    for seed in range(6):
        rng = np.random.default_rng(seed)
        base = MIXED.sample(rng)
        observations = random_observations(MIXED, rng, int(rng.integers(MIN_OBSERVATIONS, 16)))
        if seed % 2 == 0:  # a diverged child among them
            observations.append(Observation(MIXED.sample(rng), 3, -math.inf))
        proposal = fit_and_propose(MIXED, observations, base, generation=6, rng=rng)
        assert proposal is not None and set(proposal) == set(MIXED)
        for name, param in MIXED.items():
            assert param.contains(proposal[name]), (seed, name, proposal[name])
        assert proposal["opt"] == base["opt"] and proposal["fixed"] == 3
        assert isinstance(proposal["layers"], int) and isinstance(proposal["width"], int)


def test_encode_decode_round_trip_on_the_unit_cube() -> None:
    names = numeric_names(MIXED)
    assert names == ["lr", "mom", "layers", "width", "bs"]
    hparams = {"lr": 1e-2, "mom": 0.5, "layers": 4, "width": 128, "bs": 32, "opt": "adam", "fixed": 3}
    point = encode(MIXED, names, hparams)
    assert np.all((point >= 0) & (point <= 1))
    assert point[0] == pytest.approx(0.5)  # 1e-2 is the log-midpoint of [1e-4, 1]
    back = decode(MIXED, names, point, hparams)
    assert back["lr"] == pytest.approx(1e-2) and back["mom"] == pytest.approx(0.5)
    assert (back["layers"], back["width"], back["bs"], back["opt"]) == (4, 128, 32, "adam")


def test_too_few_observations_leave_the_choice_to_the_mutation_rules() -> None:
    rng = np.random.default_rng(0)
    few = random_observations(MIXED, rng, MIN_OBSERVATIONS - 1)
    assert fit_and_propose(MIXED, few, MIXED.sample(rng), generation=2, rng=rng) is None


def test_the_bandit_proposes_where_improvement_was_observed() -> None:
    # improvement peaks at lr = 1e-2 (log-midpoint) and does not depend on momentum; the winner
    # sits far away at lr = 1e-4: a random perturbation would stay near it, the bandit must not
    space = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "mom": Float(0.0, 0.99)})
    hits = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        observations = []
        for _ in range(40):
            hp = space.sample(rng)
            u = (math.log10(hp["lr"]) + 4) / 4
            observations.append(Observation(hp, int(rng.integers(3, 7)), -(u - 0.5) ** 2 + rng.normal(0, 0.005)))
        proposal = fit_and_propose(space, observations, {"lr": 1e-4, "mom": 0.5}, generation=6, rng=rng)
        assert proposal is not None
        hits += abs(math.log10(proposal["lr"]) + 2) < 1.0  # within a decade of the peak
    assert hits >= 7


def trial(trial_id: int, value: float | None, metric: str = "score") -> Trial:
    return Trial(id=trial_id, generation=1, hparams={}, start_step=0, end_step=1,
                 origin=Origin(OriginKind.SEED), status=TrialStatus.COMPLETED,
                 final=None if value is None else {metric: value})


def test_improvement_is_signed_by_the_goal_and_a_diverged_child_is_the_worst() -> None:
    assert improvement(Objective.maximize("score"), trial(2, 0.9), trial(1, 0.7)) == pytest.approx(0.2)
    assert improvement(Objective.minimize("score"), trial(2, 0.9), trial(1, 0.7)) == pytest.approx(-0.2)
    assert improvement(Objective.minimize("score"), trial(2, math.nan), trial(1, 0.7)) == -math.inf
    assert improvement(Objective.maximize("score"), trial(2, 0.9), trial(1, None)) is None


def experiment(policy: str = "initiator", seed: int = 5, **overrides: Any) -> Experiment:
    settings: dict[str, Any] = dict(name="model", space={"lr": Float(1e-4, 1.0, log=True), "bs": Discrete([16, 32, 64]),
                                         "opt": Categorical(["sgd", "adam"])},
                    objective="score", population=5, steps_per_trial=10, max_steps=80, seed=seed,
                    policy=policy, explore="model", crossover_prob=0.3)
    settings.update(overrides)
    return Experiment(**settings)


def score(spec: TrialAssignment) -> float:
    """A noisy-free landscape whose best lr moves with the step (a schedule to find)."""
    target = -3.0 + spec.end_step / 40
    return -(math.log10(float(spec.hparams["lr"])) - target) ** 2 + spec.end_step / 10 + (spec.trial_id % 5) / 100


def drive(store: TrialStore, exp: Experiment, restart_after: int | None = None,
          reopen: Callable[[TrialStore], TrialStore] | None = None) -> list[dict[str, Any]]:
    """Three virtual workers, a fixed completion order; optionally rebuild the core after N events."""
    return graph(drive_in_fixed_order(ControllerCore(store, exp), score, restart_after, reopen).store)


@pytest.mark.parametrize("policy", ["initiator", "truncation"])
def test_deterministic_per_seed_and_the_model_is_used(policy: str) -> None:
    first = drive(InMemoryTrialStore(), experiment(policy))
    assert drive(InMemoryTrialStore(), experiment(policy)) == first
    assert drive(InMemoryTrialStore(), experiment(policy, seed=6)) != first
    # the same run exploring by the mutation rules differs: the bandit's proposals were taken
    assert drive(InMemoryTrialStore(), experiment(policy, explore="on_exploit")) != first
    space = experiment().space_
    for record in first:
        for name, value in record["hparams"].items():
            assert space[name].contains(value)


@pytest.mark.parametrize("policy", ["initiator", "truncation"])
def test_a_core_rebuilt_from_lmdb_mid_run_decides_the_same(tmp_path: Path, policy: str) -> None:
    def reopen(store: TrialStore) -> TrialStore:
        store.close()
        return LmdbTrialStore(tmp_path / "restarted")

    reference_store = LmdbTrialStore(tmp_path / "reference")
    reference = drive(reference_store, experiment(policy))
    reference_store.close()
    restarted = drive(LmdbTrialStore(tmp_path / "restarted"), experiment(policy), restart_after=20, reopen=reopen)
    assert len(reference) > 25
    assert restarted == reference


def test_the_budget_mode_gate_and_the_window_are_the_policys_own() -> None:
    """Budget mode still reproduces a generation only once it is complete: every child of a
    generation is created after all of that generation completed."""
    exp = experiment(budget_mode=True, population=5, budget_steps=250)
    store = InMemoryTrialStore()
    drive(store, exp)
    trials = list(store.iter_trials())
    for child in trials:
        if child.generation == 0:
            continue
        parents_generation = [t for t in trials if t.generation == child.generation - 1]
        completed = [t for t in parents_generation if t.status is TrialStatus.COMPLETED]
        assert len(completed) >= exp.population
        assert all(t.id < child.id for t in completed[:exp.population])
    assert store.step_totals()[0] <= 250


def test_the_setting_is_validated_and_stored() -> None:
    with pytest.raises(ConfigError):
        experiment(explore="bandit")
    exp = experiment()
    assert Experiment.from_dict(exp.to_dict()) == exp
