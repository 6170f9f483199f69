"""The early-stop hook: stop a running trial that diverged or is hopeless at its step.

Pure: a function of the view, the trial and the new measurement. Divergence (a NaN or
infinite objective metric) always stops. The quantile rule compares the trial's value at a
step with the other trials of its generation window that reported *the same step*, so it
never judges a young trial against old ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pbt_actors.control.policies.policy import PopulationView, StopTrial
from pbt_actors.model.experiment import EarlyStop
from pbt_actors.model.fitness import Objective
from pbt_actors.model.records import Trial


def early_stop_decision(view: PopulationView, rule: EarlyStop | None, trial: Trial, step: int,
                        metrics: Mapping[str, float]) -> StopTrial | None:
    """A ``StopTrial`` for ``trial`` given its new ``metrics`` at ``step``, or None."""
    if rule is None:
        return None
    objective = view.experiment.objective_
    names = [rule.metric] if rule.metric else list(objective.names)
    for name in names:
        value = metrics.get(name)
        if isinstance(value, int | float) and not math.isfinite(value):
            return StopTrial(trial.id, f"diverged: {name} is {value} at step {step}")
    if rule.quantile is None or step < rule.min_step:
        return None
    single = Objective([m for m in objective.metrics if m.name in names], "weighted")
    own = single.scalar(metrics)
    if own == -math.inf:
        return None  # the metric is missing in this heartbeat: nothing to judge
    window = view.experiment.opponent_window
    peers: list[float] = []
    for g in range(max(0, trial.generation - window + 1), trial.generation + 1):
        for other in view.generation(g):
            if other.id == trial.id:
                continue
            for m in other.measurements:
                if m.step == step:
                    score = single.scalar(m.metrics)
                    if score != -math.inf:
                        peers.append(score)
                    break
    if len(peers) < rule.min_peers:
        return None
    threshold = float(np.quantile(np.asarray(peers), rule.quantile))
    if own < threshold:
        return StopTrial(trial.id, f"below the {rule.quantile:.0%} quantile of {len(peers)} peers "
                                   f"at step {step} ({own:.4g} < {threshold:.4g})")
    return None
