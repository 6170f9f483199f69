"""Jaderberg et al.'s toy problem, driven through ControllerCore with simulated workers."""

from __future__ import annotations

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.control.progress import best_completed
from pbt_actors.storage.memory import InMemoryTrialStore
from tests.support.toy import ToyCluster, toy_experiment

pytestmark = pytest.mark.timeout(120)


def best_q(policy: str, seed: int) -> float:
    store = InMemoryTrialStore()
    experiment = toy_experiment(policy, seed)
    core = ControllerCore(store, experiment)
    ToyCluster(core).run()
    assert core.finished
    best = best_completed(store, experiment)
    assert best is not None
    return best.final["Q"]


@pytest.mark.parametrize("policy", ["initiator", "truncation"])
def test_pbt_policies_solve_the_toy_in_every_seed(policy: str) -> None:
    results = [best_q(policy, seed) for seed in range(10)]
    assert min(results) >= 1.19, results


def test_random_baseline_with_fixed_h_stays_stuck() -> None:
    results = [best_q("random", seed) for seed in range(10)]
    assert max(results) <= 0.4, results
