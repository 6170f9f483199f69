"""What one simulated run did and reached (``SimResult``), and how it is scored.

Accounting (``SimResult``): ``compute_s`` is every second a worker spent on a trial;
``lost_s`` the work in flight at each preemption (what a preemption destroys);
``wasted_s = compute_s − useful_s``, where ``useful_s`` is the work of the attempts the store
recorded as completing their trial (plus work a graceful preemption saved). If the core
re-queues exactly the lost work, ``wasted_s == lost_s``.
"""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pbt_actors.model.experiment import Experiment
from pbt_actors.model.records import TrialStatus
from pbt_actors.storage.trial_store import TrialStore
from pbt_actors.tools.sim.objectives import SimObjective


@dataclass
class SimResult:
    """What one simulated run did and reached. Fitness values are *true* (noise-free) metrics."""

    objective: str
    policy: str
    seed: int
    population: int
    finished: bool
    trials: int
    by_status: dict[str, int]
    best: float | None
    """True headline metric of the completed trial the controller ranks best (by observed metrics)."""
    median: float | None
    """Median true headline metric over the final population (the last ``population`` completions)."""
    best_step: int
    """The step the best trial reached."""
    hypervolume: float | None
    compute_s: float
    useful_s: float
    lost_s: float
    steps_trained: int
    lost_steps: int
    preemptions: int
    trials_lost: int
    """Trial attempts destroyed by a preemption (each re-queued by the core)."""
    leases_expired: int
    virtual_s: float
    """Virtual time until the controller first answered ``done`` (or the run stopped)."""
    workers_seen: int
    events: int
    wall_s: float
    errors: list[str] = field(default_factory=list)
    held: int = 0
    """Requests for work the controller's session held (long poll) instead of answering ``wait``."""
    resends: int = 0
    """Requests resent after a lost reply (``SimConfig.reply_loss``), answered from the reply cache."""

    @property
    def wasted_s(self) -> float:
        return self.compute_s - self.useful_s

    @property
    def compute_h(self) -> float:
        return self.compute_s / 3600.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective, "policy": self.policy, "seed": self.seed,
            "population": self.population, "finished": self.finished, "trials": self.trials,
            "by_status": dict(self.by_status), "best": self.best, "median": self.median,
            "best_step": self.best_step,
            "hypervolume": self.hypervolume, "compute_h": self.compute_s / 3600.0,
            "useful_h": self.useful_s / 3600.0, "wasted_h": self.wasted_s / 3600.0,
            "lost_h": self.lost_s / 3600.0, "steps_trained": self.steps_trained, "lost_steps": self.lost_steps,
            "preemptions": self.preemptions, "trials_lost": self.trials_lost,
            "leases_expired": self.leases_expired, "virtual_h": self.virtual_s / 3600.0,
            "workers_seen": self.workers_seen, "events": self.events, "wall_s": self.wall_s,
            "errors": list(self.errors), "held": self.held, "resends": self.resends,
        }


class RunScore(NamedTuple):
    best: float | None
    median: float | None
    hypervolume: float | None
    best_step: int


def score_run(store: TrialStore, experiment: Experiment, objective: SimObjective,
              truth: dict[str, dict[str, float]]) -> RunScore:
    """Score the run from the store, by *true* metrics (``truth``, by checkpoint uri) of the
    trials the controller picks.

    ``best``: the completed trial the controller ranks best by its observed metrics
    (``best_completed``, what ``pbt-actors status`` reports; for several metrics, the best
    observed headline metric). ``median`` and ``hypervolume``: over the final population,
    the last ``population`` trials to complete.
    """
    ranking = experiment.objective_
    metric = objective.metric
    sign = 1.0 if objective.goal == "max" else -1.0
    single = len(ranking.metrics) == 1
    best_key: tuple[float, ...] | None = None
    best_trial: tuple[int, dict[str, float]] | None = None
    finals: list[tuple[float, int, dict[str, float]]] = []  # (ended_at, id, true metrics)
    for trial in store.iter_trials():
        if trial.status is not TrialStatus.COMPLETED or trial.checkpoint is None or trial.final is None:
            continue
        true = truth[trial.checkpoint.uri]
        key = (ranking.rank_keys([trial.final])[0] if single
               else (0.0, sign * trial.final.get(metric, -sign * math.inf)))
        if best_key is None or key > best_key:  # ties: the older id, as best_completed
            best_key, best_trial = key, (trial.end_step, true)
        finals.append((trial.ended_at or 0.0, trial.id, true))
    if best_trial is None:
        return RunScore(None, None, None, -1)
    final = [f[2] for f in heapq.nlargest(experiment.population, finals)]
    return RunScore(best_trial[1][metric], statistics.median(f[metric] for f in final), objective.hypervolume(final),
                    best_trial[0])
