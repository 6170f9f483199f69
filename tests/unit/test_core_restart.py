"""A ControllerCore rebuilt from the LMDB store mid-run continues exactly as the original.

The core keeps no state outside the store and derives every decision's randomness from
(seed, trial id, kind), so closing the store, reopening it and building a new core must not
change a single decision. Same event sequence, fake clock: the graphs must be identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pbt_actors.control.core import ControllerCore
from pbt_actors.model.experiment import Experiment
from pbt_actors.model.protocol import TrialAssignment
from pbt_actors.model.space import Categorical, Discrete, Float
from pbt_actors.storage.lmdb_store import LmdbTrialStore
from pbt_actors.storage.trial_store import TrialStore
from tests.support.driver import drive_in_fixed_order, graph

pytestmark = pytest.mark.timeout(120)


def experiment(policy: str, budget: bool) -> Experiment:
    return Experiment(name="restart", space={"lr": Float(1e-4, 1.0, log=True), "bs": Discrete([16, 32, 64]),
                                             "opt": Categorical(["sgd", "adam"])},
                      objective="score", population=5, steps_per_trial=10, max_steps=80, seed=21,
                      policy=policy, budget_mode=budget, crossover_prob=0.3)


def drive(store_dir: Path, policy: str, budget: bool, restart_after: int | None) -> list[dict]:
    """Three virtual workers, fixed completion order; optionally rebuild the core after N events."""
    def reopen(store: TrialStore) -> TrialStore:  # the controller dies; a new one opens the same store
        store.close()
        return LmdbTrialStore(store_dir)

    def score(spec: TrialAssignment) -> float:
        return float(spec.hparams["lr"]) * (1 + spec.end_step / 10) + (spec.trial_id % 7) / 100

    core = drive_in_fixed_order(ControllerCore(LmdbTrialStore(store_dir), experiment(policy, budget)), score,
                                restart_after, reopen)
    result = graph(core.store)
    core.store.close()
    return result


@pytest.mark.parametrize(("policy", "budget"), [("initiator", False), ("initiator", True), ("truncation", False),
                                                 ("random", False)])
def test_a_core_rebuilt_from_lmdb_mid_run_makes_the_same_decisions(tmp_path: Path, policy: str, budget: bool) -> None:
    reference = drive(tmp_path / "reference", policy, budget, restart_after=None)
    restarted = drive(tmp_path / "restarted", policy, budget, restart_after=17)
    assert len(reference) > 20
    assert restarted == reference
